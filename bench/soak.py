"""Load and soak harness (first version): simulated annotators against N service replicas
sharing one throwaway Redis with a `maxmemory`, loopback only, bounded in time.

Each annotator embeds its own image on a random replica, clicks on it with a refinement
chain (every click after the first sends the previous answer's mask_input_id), idles
between clicks, then moves to its next image. An answer `embedding_not_found` counts as "the
embedding was gone" (the annotator re-embeds, as a client would).

    .venv/bin/python bench/soak.py [--replicas 2] [--users 8] [--seconds 60]
        [--clicks 5] [--think 0.5] [--maxmemory 256mb] [--fake] [--checkpoint PATH]
        [--warmup S] [--progress S] [--transport http|grpc|both] [--sweep 2,4,8]

--transport grpc sends the annotators' embeds and segments over gRPC (edgesam.v1 Embed and
Segment, mask_input_id as over HTTP); both: even annotators HTTP, odd ones gRPC, reported
apart ("grpc:segment"). --sweep runs one stage of --seconds per number of annotators on the
same replicas (a capacity sweep) and reports each stage.

--fake runs the deterministic fake backend (tests.integration.fake_server): the harness's
own overhead and Redis behaviour, no model compute. Prints throughput, p50/p99 per
operation, answers by code, each replica's RSS over time, Redis memory, evictions and the
bytes of a refinement mask, the Redis breaker's openings and "redis unavailable" log lines.
Every --progress seconds it prints a line (requests so far, each replica's RSS) so that a
long soak leaves figures behind; SIGINT or SIGTERM ends the run early with the full report
of what ran. RSS flatness: each replica's RSS at the end of --warmup against the end of the
run, and the largest deviation from the warm-up value at any sample after it. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Not bench/ itself: bench/grpc.py would shadow the grpc package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

from bench._common import checkpoint, free_port, load_image, pct  # noqa: E402
from bench.memory import rss_kib  # noqa: E402


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.codes: Counter[str] = Counter()
        self.gone = 0
        # Mutable so that a signal can end the run early with a report.
        self.until = float("inf")

    def record(self, op: str, took: float, code: str) -> None:
        self.latency[op].append(took)
        self.codes[f"{op} {code}"] += 1


def jpeg(image: np.ndarray, seed: int) -> bytes:
    variant = image.copy()
    # Every byte of the seed in its own 8x8 patch: distinct seeds, distinct images (one
    # patch with the seed modulo 256 made images repeat after 256 seeds).
    for k, byte in enumerate(int(seed).to_bytes(4, "little")):
        variant[:8, 8 * k : 8 * k + 8] = byte, 255 - byte, (byte * 53) % 256
    buf = io.BytesIO()
    Image.fromarray(variant).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def start_redis(maxmemory: str) -> tuple[subprocess.Popen, int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory",
            maxmemory,
            "--maxmemory-policy",
            "allkeys-lru",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, port


def start_replica(args: argparse.Namespace, redis_port: int, log_dir: str) -> tuple:
    port = free_port()
    grpc_port = free_port() if args.transport != "http" else 0
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EDGESAM_")},
        "EDGESAM_HTTP_HOST": "127.0.0.1",
        "EDGESAM_HTTP_PORT": str(port),
        "EDGESAM_GRPC_PORT": str(grpc_port),
        "EDGESAM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "EDGESAM_DRAIN_SECONDS": "0",
        "EDGESAM_LOG_LEVEL": "warning",
        **dict(item.split("=", 1) for item in args.env),
    }
    module = "tests.integration.fake_server" if args.fake else "service"
    if not args.fake:
        ckpt = checkpoint(args.checkpoint)
        if ckpt:
            env["EDGESAM_CHECKPOINT"] = str(ckpt)
        else:
            env["EDGESAM_ALLOW_RANDOM_WEIGHTS"] = "1"
    log_path = os.path.join(log_dir, f"replica-{port}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO, env=env, stdout=log, stderr=log
        )
    return proc, f"http://127.0.0.1:{port}", log_path, f"127.0.0.1:{grpc_port}"


async def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"replica {url} exited")
            try:
                if (await c.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"replica {url} did not become ready")


class HttpOps:
    """An annotator's calls over HTTP: (answer code, image_id or mask_input_id, retry-after)."""

    prefix = ""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.client = httpx.AsyncClient(timeout=120)

    async def embed(self, url: int, data: bytes) -> tuple[str, str | None, float]:
        r = await self.client.post(
            f"{self.urls[url]}/v1/embed", content=data, headers={"content-type": "image/jpeg"}
        )
        if r.status_code == 200:
            return "200", str(r.json()["image_id"]), 0.0
        retry = float(r.headers.get("retry-after", "1"))
        return f"{r.status_code} {r.json().get('code', '')}", None, retry

    async def segment(self, url: int, body: dict) -> tuple[str, str | None]:
        r = await self.client.post(f"{self.urls[url]}/v1/segment", json=body)
        if r.status_code == 200:
            return "200", r.json().get("mask_input_id")
        return f"{r.status_code} {r.json().get('code', '')}", None

    async def close(self) -> None:
        await self.client.aclose()


class GrpcOps:
    """The same calls over gRPC (edgesam.v1 Embed and Segment)."""

    prefix = "grpc:"

    def __init__(self, targets: list[str]) -> None:
        import grpc

        from edgesam_client.grpc_stubs import segmentation_pb2 as pb
        from edgesam_client.grpc_stubs import segmentation_pb2_grpc as pb_grpc

        self.grpc, self.pb = grpc, pb
        opts = [("grpc.max_receive_message_length", 256 << 20)]
        self.channels = [grpc.aio.insecure_channel(t, options=opts) for t in targets]
        self.stubs = [pb_grpc.SegmentationStub(c) for c in self.channels]

    def _code(self, exc: Exception) -> tuple[str, float]:
        meta = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
        status = exc.code().name  # type: ignore[attr-defined]
        return f"{status} {meta.get('edgesam-error-code', '')}", float(meta.get("retry-after", 1))

    async def embed(self, url: int, data: bytes) -> tuple[str, str | None, float]:
        request = self.pb.EmbedRequest(image=data, content_type="image/jpeg")
        try:
            answer = await self.stubs[url].Embed(request, timeout=120)
        except self.grpc.RpcError as exc:
            code, retry = self._code(exc)
            return code, None, retry
        return "OK", answer.image_id, 0.0

    async def segment(self, url: int, body: dict) -> tuple[str, str | None]:
        pb = self.pb
        msg = pb.SegmentRequest(image_id=body["image_id"], outputs=[pb.OUTPUT_FORMAT_RLE])
        for x, y in body["points"]:
            msg.points.add(x=x, y=y)
        msg.labels.extend(body["labels"])
        if body.get("mask_input_id"):
            msg.mask_input_id = body["mask_input_id"]
        try:
            answer = await self.stubs[url].Segment(msg, timeout=120)
        except self.grpc.RpcError as exc:
            return self._code(exc)[0], None
        return "OK", answer.mask_input_id or None

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


OK_CODES = ("200", "OK")


async def annotator(
    uid: int,
    ops: HttpOps | GrpcOps,
    image: np.ndarray,
    args: argparse.Namespace,
    stats: Stats,
) -> None:
    rng = random.Random(uid)
    h, w = image.shape[:2]
    replicas = len(getattr(ops, "urls", None) or ops.stubs)  # type: ignore[union-attr]
    seg_op = f"{ops.prefix}segment"
    try:
        n = 0
        while time.monotonic() < stats.until:
            data = jpeg(image, uid * 100_000 + n)
            n += 1
            image_id = await embed(ops, rng.randrange(replicas), data, stats)
            if image_id is None:
                continue
            mask_id = None
            points: list[list[float]] = []
            labels: list[int] = []
            for _ in range(args.clicks):
                if time.monotonic() >= stats.until:
                    return
                await asyncio.sleep(rng.expovariate(1 / args.think))
                points.append([rng.uniform(0, w - 1), rng.uniform(0, h - 1)])
                labels.append(1 if rng.random() < 0.8 else 0)
                body: dict = {"image_id": image_id, "points": points, "labels": labels}
                if mask_id is not None:
                    body["mask_input_id"] = mask_id
                t0 = time.perf_counter()
                try:
                    code, answer = await ops.segment(rng.randrange(replicas), body)
                except Exception as exc:  # a broken connection is an answer to count
                    stats.record(seg_op, time.perf_counter() - t0, type(exc).__name__)
                    continue
                stats.record(seg_op, time.perf_counter() - t0, code)
                if code in OK_CODES:
                    mask_id = answer
                elif code.endswith("embedding_not_found"):
                    stats.gone += 1
                    await embed(ops, rng.randrange(replicas), data, stats)
                    mask_id = None
                elif code.endswith("mask_input_not_found"):
                    mask_id = None
    finally:
        await ops.close()


async def embed(ops: HttpOps | GrpcOps, url: int, data: bytes, stats: Stats) -> str | None:
    op = f"{ops.prefix}embed"
    for _ in range(5):
        t0 = time.perf_counter()
        try:
            code, image_id, retry = await ops.embed(url, data)
        except Exception as exc:
            stats.record(op, time.perf_counter() - t0, type(exc).__name__)
            return None
        stats.record(op, time.perf_counter() - t0, code)
        if image_id is not None:
            return image_id
        await asyncio.sleep(retry)
    return None


def make_ops(uid: int, args: argparse.Namespace, procs: list) -> HttpOps | GrpcOps:
    grpc_user = args.transport == "grpc" or (args.transport == "both" and uid % 2 == 1)
    if grpc_user:
        return GrpcOps([target for *_, target in procs])
    return HttpOps([url for _, url, *_ in procs])


async def heap_mb(url: str) -> str:
    """'in use/free' MB of the replica's glibc heap (edgesam_heap_bytes), '?' if unknown."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(f"{url}/metrics")).text
    except httpx.HTTPError:
        return "?"
    found = dict(re.findall(r'^edgesam_heap_bytes\{state="(\w+)"\} (\S+)$', text, re.M))
    if not found:
        return "?"
    return f"{float(found['in_use']) / 2**20:.0f}/{float(found['free']) / 2**20:.0f}"


async def sample_rss(
    procs: list,
    series: dict[int, list[tuple[float, int]]],
    t0: float,
    stats: Stats,
    progress: float,
) -> None:
    next_line = t0 + progress
    while True:
        for proc, *_ in procs:
            try:
                series[proc.pid].append((time.monotonic() - t0, rss_kib(proc.pid)[0]))
            except OSError:
                pass
        if progress > 0 and time.monotonic() >= next_line:
            next_line += progress
            done = sum(len(v) for v in stats.latency.values())
            bad = sum(n for k, n in stats.codes.items() if not k.endswith((" 200", " OK")))
            rss = " ".join(f"{series[p.pid][-1][1] / 1024:.0f}" for p, *_ in procs if series[p.pid])
            heap = " ".join([await heap_mb(url) for _, url, *_ in procs])
            print(
                f"[{time.monotonic() - t0:6.0f} s] {done} requests, {bad} not OK, "
                f"gone {stats.gone}; RSS MB {rss}; heap MB in use/free {heap}",
                flush=True,
            )
        await asyncio.sleep(2.0)


def redis_figures(port: int) -> dict[str, object]:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        info = client.info()
        masks = [client.memory_usage(k) for k in client.scan_iter(match="*mask:*", count=1000)]
        embs = [client.memory_usage(k) for k in client.scan_iter(match="*emb:*", count=1000)]
        masks = [m for m in masks if m]
        embs = [e for e in embs if e]
        return {
            "used_memory_mb": info["used_memory"] / 2**20,
            "evicted_keys": info["evicted_keys"],
            "masks": len(masks),
            "mask_bytes_max": max(masks or [0]),
            "mask_bytes_mean": sum(masks) / max(len(masks), 1),
            "embeddings": len(embs),
            "embedding_bytes_mean": sum(embs) / max(len(embs), 1),
        }
    finally:
        client.close()


def breaker_opens(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    m = re.search(r"^edgesam_redis_breaker_opens_total (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def main_async(args: argparse.Namespace) -> int:
    image = load_image()
    redis_proc, redis_port = start_redis(args.maxmemory)
    procs: list = []
    with tempfile.TemporaryDirectory() as log_dir:
        try:
            procs = [start_replica(args, redis_port, log_dir) for _ in range(args.replicas)]
            await asyncio.gather(*(wait_ready(url, proc) for proc, url, *_ in procs))
            loop = asyncio.get_running_loop()
            stages = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.users]
            current: list[Stats] = []

            def stop() -> None:  # ends the stage running now and skips the rest
                stages.clear()
                if current:
                    current[-1].until = time.monotonic()

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop)
            while stages:
                args.users = stages.pop(0)
                stats = Stats()
                current.append(stats)
                series: dict[int, list[tuple[float, int]]] = defaultdict(list)
                t0 = time.monotonic()
                sampler = asyncio.ensure_future(sample_rss(procs, series, t0, stats, args.progress))
                stats.until = t0 + args.seconds
                await asyncio.gather(
                    *(
                        # Fresh images per stage: 1000 apart, so no stage finds its
                        # images embedded by an earlier one.
                        annotator(
                            u + 1000 * len(current), make_ops(u, args, procs), image, args, stats
                        )
                        for u in range(args.users)
                    )
                )
                wall = time.monotonic() - t0
                sampler.cancel()
                report(args, stats, wall, series, procs, redis_port)
        finally:
            for proc, *_ in procs:
                proc.terminate()
            for proc, *_ in procs:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            redis_proc.terminate()
            redis_proc.wait(10)
    return 0


def report(args, stats, wall, series, procs, redis_port) -> None:  # type: ignore[no-untyped-def]
    mode = "fake backend" if args.fake else f"weights {checkpoint(args.checkpoint) or 'random'}"
    print(
        f"{args.replicas} replicas ({mode}), {args.users} annotators, {wall:.0f} s, "
        f"{args.clicks} clicks per image, think {args.think} s, Redis maxmemory {args.maxmemory}, "
        f"over {args.transport}"
    )
    for op, lat in sorted(stats.latency.items()):
        print(
            f"  {op:<13} {len(lat):6d} requests {len(lat) / wall:7.1f}/s  "
            f"p50 {pct(lat, 50):8.1f} ms  p99 {pct(lat, 99):8.1f} ms"
        )
    print("  answers: " + ", ".join(f"{k}: {v}" for k, v in sorted(stats.codes.items())))
    print(f"  embeddings found gone (re-embedded): {stats.gone}")
    warmup = min(args.warmup, wall / 3)
    for proc, url, log_path, _ in procs:
        points = series.get(proc.pid, [])
        after = [kib for t, kib in points if t >= warmup]
        flat = (max(after) - min(after)) / max(min(after), 1) * 100 if after else 0.0
        if after:
            base, end = after[0], after[-1]
            dev = max(abs(k - base) for k in after) / max(base, 1) * 100
            print(
                f"  replica {url}: RSS at warm-up end ({warmup:.0f} s) {base / 1024:.0f} MB, "
                f"at end {end / 1024:.0f} MB ({(end - base) / max(base, 1) * 100:+.1f}%), "
                f"max deviation after warm-up {dev:.1f}%, peak {max(after) / 1024:.0f} MB"
            )
        line = " ".join(
            f"{t:.0f}s:{kib / 1024:.0f}" for t, kib in points[:: max(len(points) // 8, 1)]
        )
        unavailable = Path(log_path).read_text(errors="replace").count("redis unavailable")
        print(
            f"  replica {url}: RSS MB over time {line}; after warm-up spread {flat:.1f}%; "
            f"breaker opened {breaker_opens(url):.0f}x; 'redis unavailable' lines {unavailable}"
        )
    figures = redis_figures(redis_port)
    print("  redis: " + ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
                                   for k, v in figures.items()))  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60, help="bounded: at most 3600")
    ap.add_argument("--clicks", type=int, default=5, help="clicks per image (a refinement chain)")
    ap.add_argument("--think", type=float, default=0.5, help="mean idle seconds between clicks")
    ap.add_argument("--maxmemory", default="256mb")
    ap.add_argument("--fake", action="store_true", help="the fake backend (no model compute)")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--warmup", type=float, default=120, help="seconds before RSS is judged")
    ap.add_argument("--progress", type=float, default=60, help="seconds between progress lines")
    ap.add_argument("--transport", choices=["http", "grpc", "both"], default="http")
    ap.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="an environment variable for every replica (repeatable)",
    )  # fmt: skip
    ap.add_argument("--sweep", default="", help="annotator counts, one stage each: 2,4,8")
    args = ap.parse_args()
    args.seconds = min(args.seconds, 3600)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
