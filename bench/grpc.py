"""gRPC vs HTTP benchmark: unary Segment and interactive-session clicks, latency p50/p99 and
requests/s at 1 and 8 concurrent clients, both transports measured in the same run against
the same server process (`python -m service`, HTTP and gRPC in one process).

    .venv/bin/python bench/grpc.py [--checkpoint PATH] [--requests N] [--clicks N]
    .venv/bin/python bench/grpc.py --http http://host:8000 --grpc grpc://host:50051

Weights: --checkpoint, else EDGESAM_CHECKPOINT, else ../shared/reference/case_a (random
seeded weights: realistic compute, meaningless masks). Each client is its own connection
(client library, one thread each). A gRPC session click is one stream message each way with
the embedding and previous logits held by the server; an HTTP "session" click is a unary
/v1/segment carrying every prompt so far plus the previous mask_input_id (cache round trip).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# this file is bench/grpc.py: keep bench/ off the path so `import grpc` finds grpcio
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "clients" / "python"))  # edgesam_client, where not installed

from bench._common import checkpoint, free_port, load_image, pct  # noqa: E402
from edgesam_client import SyncClient, connect  # noqa: E402
from edgesam_client._common import image_bytes  # noqa: E402


def start_server(ckpt: Path | None, redis_url: str | None, log: Path, fake: bool) -> tuple:
    http_port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESAM_")}
    env.update(
        EDGESAM_HTTP_HOST="127.0.0.1",
        EDGESAM_HTTP_PORT=str(http_port),
        EDGESAM_GRPC_PORT=str(grpc_port),
        EDGESAM_DRAIN_SECONDS="0",
        EDGESAM_LOG_LEVEL="warning",
        EDGESAM_DECODE_MAX_QUEUE="1024",
    )
    if ckpt is not None:
        env["EDGESAM_CHECKPOINT"] = str(ckpt)
    else:
        env["EDGESAM_ALLOW_RANDOM_WEIGHTS"] = "1"
    if redis_url:
        env.update(
            EDGESAM_REDIS_URL=redis_url, EDGESAM_REDIS_KEY_PREFIX=f"edgesam-bench:{os.getpid()}:"
        )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.fake_server" if fake else "service"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )
    return proc, f"http://127.0.0.1:{http_port}", f"grpc://127.0.0.1:{grpc_port}"


def _strip_scheme(target: str) -> str:
    """host:port of grpc://host:port (str.removeprefix needs Python 3.9)."""
    prefix = "grpc://"
    return target[len(prefix) :] if target.startswith(prefix) else target


def wait_ready(http: str, grpc_target: str, proc: subprocess.Popen | None, log: Path) -> None:
    import grpc
    import httpx
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 300
    with grpc.insecure_channel(_strip_scheme(grpc_target)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
            try:
                ready = httpx.get(f"{http}/readyz", timeout=2).status_code == 200
                check = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if ready and check.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except (httpx.HTTPError, grpc.RpcError):
                pass
            time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def run_clients(
    target: str, clients: int, per_client: int, work: Callable[[SyncClient, int], list[float]]
) -> tuple[list[float], float]:
    """Each client: its own connection and thread; returns all latencies and wall time."""
    conns = [connect(target, timeout=120) for _ in range(clients)]
    for c in conns:  # connect and warm each connection outside the timing
        work(c, 1)
    results: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = work(conns[i], per_client)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    begin = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - begin
    for c in conns:
        c.close()
    return [v for r in results for v in r], wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument(
        "--fake",
        action="store_true",
        help="the deterministic fake backend (transport overhead without model compute)",
    )
    ap.add_argument("--redis-url", default=None, help="Redis behind the server's LRU")
    ap.add_argument("--http", default=None, help="bench a running server (with --grpc)")
    ap.add_argument("--grpc", default=None, help="its gRPC target, grpc://host:port")
    ap.add_argument("--requests", type=int, default=48, help="unary segments per client count")
    ap.add_argument("--clicks", type=int, default=48, help="session clicks per client count")
    ap.add_argument("--session-length", type=int, default=6, help="clicks before a reset")
    args = ap.parse_args()

    image = load_image()
    data, _ = image_bytes(image)
    h, w = image.shape[:2]
    proc = None
    log = Path(tempfile.mkdtemp()) / "server.log"
    if args.http and args.grpc:
        http, grpc_target = args.http, args.grpc
        print(f"server: {http} / {grpc_target}")
    else:
        ckpt = checkpoint(args.checkpoint)
        proc, http, grpc_target = start_server(ckpt, args.redis_url, log, args.fake)
        weights = "fake backend" if args.fake else f"weights {ckpt or 'random'}"
        print(f"server: python -m service, {weights}, image {w}x{h}")
    try:
        wait_ready(http, grpc_target, proc, log)
        with connect(http) as es:
            image_id = es.embed(data).image_id
        rng = np.random.default_rng(0)
        clicks = [(float(x), float(y)) for x, y in rng.uniform(0.1, 0.9, (64, 2)) * (w, h)]

        def unary(es: SyncClient, n: int) -> list[float]:
            out = []
            for i in range(n):
                x, y = clicks[i % len(clicks)]
                begin = time.perf_counter()
                es.segment(image_id, points=[[x, y]], labels=[1])
                out.append(time.perf_counter() - begin)
            return out

        def session(es: SyncClient, n: int) -> list[float]:
            out = []
            with es.session(image_id) as s:
                for i in range(n):
                    if i and i % args.session_length == 0:
                        s.reset()
                    x, y = clicks[i % len(clicks)]
                    begin = time.perf_counter()
                    s.click(x, y, positive=i % 3 != 2)
                    out.append(time.perf_counter() - begin)
            return out

        print(f"{'':<34}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
        for clients in (1, 8):
            for label, work, total in (
                ("segment (unary)", unary, args.requests),
                ("session click", session, args.clicks),
            ):
                for transport, target in (("HTTP", http), ("gRPC", grpc_target)):
                    per_client = max(1, total // clients)
                    lat, wall = run_clients(target, clients, per_client, work)
                    name = f"{transport} {label}, {clients} client{'s' if clients > 1 else ''}"
                    print(
                        f"{name:<34}{pct(lat, 50):9.2f}{pct(lat, 99):9.2f}"
                        f"{len(lat) / wall:9.1f}   (n={len(lat)}, "
                        f"mean {statistics.fmean(lat) * 1e3:.2f} ms)"
                    )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
