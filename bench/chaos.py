"""Chaos harness: real service processes on loopback, a steady annotator load through the
client library (edgesam_client), and one fault in the middle of it. Loopback only, bounded.

    .venv/bin/python bench/chaos.py [--scenario kill|redis|encoder|all] [--seconds 20]
        [--users 4] [--think 0.05] [--clicks 4] [--transport http|grpc] [--model]

Scenarios:
- kill: two replicas sharing a Redis; every annotator's client is given both targets (half
  of them the other way round); replica A gets SIGKILL at 40% of the run. Nothing may be
  lost but requests sent again to replica B (the client's failover).
- redis: one replica and its Redis; Redis is restarted (SIGTERM, then a new one on the same
  port) at 25%, and frozen with SIGSTOP for --freeze seconds at 55%, then SIGCONT. The
  client does not retry anything here, so every 5xx would show: there must be none (the
  service degrades to its in-process cache behind the Redis breaker).
- encoder: an encoder-role replica and a decoder-role replica (EDGESAM_ROLE=decoder,
  forwarding embeds over gRPC); the encoder gets SIGKILL at 40%. Embeds sent to the decoder
  must then answer 503 encoder_unavailable (a clean code, not a 500) and segments on images
  embedded before must keep answering.

By default the replicas run the deterministic fake backend (tests.integration.fake_server:
the real service, transports, cache and Redis code, no model compute): the faults are about
processes and connections, not the model. --model runs `python -m service` with case A's
weights instead. For each scenario it prints requests sent, answered, sent again to another
replica (retried) and failed, before and after the fault, and the failures by code.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# Not bench/ itself: bench/grpc.py would shadow the grpc package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "clients" / "python"))

from bench._common import checkpoint, free_port, pct  # noqa: E402
from edgesam_client import EdgeSamError, RetryPolicy, connect  # noqa: E402

REQUEST_TIMEOUT_S = 15.0


# -- processes -------------------------------------------------------------------------------
class RedisServer:
    """A throwaway redis-server that can be restarted on the same port and frozen."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server is not installed")
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly"]
        self.proc = subprocess.Popen(
            [exe, *args, "no", "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, 10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen one cannot exit
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@dataclass
class Replica:
    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    log_path: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def target(self, transport: str) -> str:
        return self.grpc_target if transport == "grpc" else self.url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def replica_notes(rep: Replica) -> str:
    """The Redis breaker's openings and 'redis unavailable' log lines of a live replica."""
    try:
        text = httpx.get(f"{rep.url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return f"replica {rep.url}: no metrics (gone)"
    opens = sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("edgesam_redis_breaker_opens_total")
    )
    lines = Path(rep.log_path).read_text(errors="replace").count("redis unavailable")
    return f"replica {rep.url}: Redis breaker opened {opens:.0f}x, 'redis unavailable' {lines}"


def spawn(log_dir: str, model: bool, **env: str) -> Replica:
    http_port, grpc_port = free_port(), free_port()
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EDGESAM_")},
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "clients" / "python")]),
        "EDGESAM_HTTP_HOST": "127.0.0.1",
        "EDGESAM_HTTP_PORT": str(http_port),
        "EDGESAM_GRPC_PORT": str(grpc_port),
        "EDGESAM_DRAIN_SECONDS": "0",
        "EDGESAM_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    if model:
        ckpt = checkpoint(None)
        if ckpt is None:
            raise SystemExit("--model needs case A's weights (../shared/reference/case_a)")
        full["EDGESAM_CHECKPOINT"] = str(ckpt)
    module = "service" if model else "tests.integration.fake_server"
    log_path = os.path.join(log_dir, f"replica-{http_port}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], cwd=REPO, env=full, stdout=log, stderr=log
        )
    return Replica(proc, http_port, grpc_port, log_path)


def wait_ready(replicas: list[Replica], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    for rep in replicas:
        while True:
            if rep.proc.poll() is not None:
                raise SystemExit(f"replica {rep.url} exited:\n{Path(rep.log_path).read_text()}")
            try:
                if httpx.get(f"{rep.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"replica {rep.url} did not become ready")
            time.sleep(0.1)
        wait_port(rep.grpc_port, 30)


# -- load ------------------------------------------------------------------------------------
@dataclass
class Tally:
    """Requests by phase (before / after the fault): sent, answered, failures by code."""

    fault_at: float = float("inf")
    sent: Counter = field(default_factory=Counter)
    answered: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    retried: int = 0
    latency: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, op: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            result = fn()
        except EdgeSamError as exc:
            phase = self.phase()
            with self.lock:
                self.sent[(phase, op)] += 1
                self.failed[(phase, op, exc.code, str(exc.status))] += 1
            return None
        except Exception as exc:  # a client bug must count, not end the annotator silently
            phase = self.phase()
            with self.lock:
                self.sent[(phase, op)] += 1
                self.failed[(phase, op, type(exc).__name__, "client")] += 1
            return None
        phase = self.phase()
        with self.lock:
            self.sent[(phase, op)] += 1
            self.answered[(phase, op)] += 1
            self.latency.setdefault((phase, op), []).append(time.perf_counter() - t0)
        return result

    def phase(self) -> str:
        """By when a call ended: one in flight at the fault counts after it."""
        return "before" if time.monotonic() < self.fault_at else "after"

    def total(self, counter: Counter, phase: str | None = None, op: str | None = None) -> int:
        return sum(
            n
            for key, n in counter.items()
            if (phase is None or key[0] == phase) and (op is None or key[1] == op)
        )

    def server_errors(self, expected: frozenset = frozenset()) -> int:
        """Failures with an HTTP 5xx status (or gRPC UNAVAILABLE, INTERNAL, UNKNOWN, or no
        answer at all) whose code is not in `expected`."""
        bad = 0
        for (_, _, code, status), n in self.failed.items():
            if code in expected:
                continue
            if status.isdigit() and int(status) >= 500:
                bad += n
            elif status in ("UNAVAILABLE", "INTERNAL", "UNKNOWN") or code == "unavailable":
                bad += n
        return bad

    def report(self, title: str) -> str:
        lines = [title]
        lines.append(
            f"  sent {self.total(self.sent)}, answered {self.total(self.answered)}, "
            f"retried {self.retried}, failed {self.total(self.failed)}"
        )
        for phase in ("before", "after"):
            parts = []
            for op in ("embed", "segment"):
                sent = self.total(self.sent, phase, op)
                if sent:
                    lat = self.latency.get((phase, op))
                    took = f" (p50 {pct(lat, 50):.0f} ms, p99 {pct(lat, 99):.0f} ms)" if lat else ""
                    parts.append(
                        f"{op} {self.total(self.answered, phase, op)}/{sent} answered{took}"
                    )
            if parts:
                lines.append(f"  {phase} the fault: " + ", ".join(parts))
        if self.failed:
            lines.append(
                "  failures: "
                + ", ".join(f"{p} {op} {c} ({s}): {n}" for (p, op, c, s), n in self.failed.items())
            )
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)


def image_bytes(seed: int, model: bool) -> bytes:
    if model:
        from bench._common import load_image

        image = load_image().copy()
        image[:8, :8] = (seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256
    else:
        image = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@dataclass
class Load:
    """Annotators in threads: embed an image, click `clicks` times with refinement, next
    image. When an embed fails, they keep clicking on the last image they had."""

    targets: list[list[str]]
    tally: Tally
    clicks: int = 4
    think: float = 0.05
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    model: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        for uid, targets in enumerate(self.targets):
            t = threading.Thread(target=self.user, args=(uid, targets), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def finish(self) -> Tally:
        self.stop.set()
        for t in self.threads:
            t.join(REQUEST_TIMEOUT_S * 4)
        return self.tally

    def user(self, uid: int, targets: list[str]) -> None:
        rng = random.Random(uid)
        client = connect(targets, retry=self.retry, timeout=REQUEST_TIMEOUT_S)
        image_id: str | None = None
        n = 0
        try:
            while not self.stop.is_set():
                data = image_bytes(uid * 100_000 + n, self.model)
                n += 1
                embedded = self.tally.call("embed", lambda: client.embed(data))  # noqa: B023
                if embedded is not None:
                    image_id, size = embedded.image_id, (embedded.width, embedded.height)
                if image_id is None:
                    self.stop.wait(self.think)
                    continue
                mask_id = None
                points: list[list[float]] = []
                for _ in range(self.clicks):
                    if self.stop.wait(rng.expovariate(1 / self.think) if self.think else 0):
                        return
                    points.append([rng.uniform(0, size[0] - 1), rng.uniform(0, size[1] - 1)])
                    fields = {"points": list(points), "mask_input_id": mask_id}
                    answer = self.tally.call(
                        "segment",
                        lambda: client.segment(image_id, **fields),  # noqa: B023 (called now)
                    )
                    mask_id = answer.mask_input_id if answer is not None else None
        finally:
            with self.tally.lock:
                self.tally.retried += int(getattr(client, "failovers", 0))
            client.close()


# -- scenarios -------------------------------------------------------------------------------
def kill_scenario(args: argparse.Namespace, log_dir: str) -> Tally:
    redis = RedisServer()
    redis.start()
    replicas: list[Replica] = []
    try:
        shared = {"EDGESAM_REDIS_URL": redis.url}
        replicas = [spawn(log_dir, args.model, **shared) for _ in range(2)]
        wait_ready(replicas)
        a, b = (r.target(args.transport) for r in replicas)
        targets = [[a, b] if u % 2 == 0 else [b, a] for u in range(args.users)]
        tally = Tally()
        load = Load(targets, tally, args.clicks, args.think, model=args.model).start()
        time.sleep(args.seconds * 0.4)
        tally.fault_at = time.monotonic()
        replicas[0].proc.send_signal(signal.SIGKILL)
        time.sleep(args.seconds * 0.6)
        tally = load.finish()
        tally.notes = [replica_notes(r) for r in replicas if r.proc.poll() is None]
        return tally
    finally:
        for rep in replicas:
            rep.stop()
        redis.stop()


def redis_scenario(args: argparse.Namespace, log_dir: str) -> Tally:
    redis = RedisServer()
    redis.start()
    replicas: list[Replica] = []
    try:
        replicas = [spawn(log_dir, args.model, EDGESAM_REDIS_URL=redis.url)]
        wait_ready(replicas)
        targets = [[replicas[0].target(args.transport)] for _ in range(args.users)]
        tally = Tally()
        # No retries at all: a 503 must show, not be retried away.
        load = Load(targets, tally, args.clicks, args.think, RetryPolicy(max_retries=0))
        load.model = args.model
        load.start()
        time.sleep(args.seconds * 0.25)
        tally.fault_at = time.monotonic()
        redis.restart()
        time.sleep(args.seconds * 0.3)
        redis.signal(signal.SIGSTOP)
        time.sleep(args.freeze)
        redis.signal(signal.SIGCONT)
        time.sleep(max(args.seconds * 0.45 - args.freeze, 1.0))
        tally = load.finish()
        tally.notes = [replica_notes(r) for r in replicas]
        return tally
    finally:
        for rep in replicas:
            rep.stop()
        redis.stop()


def encoder_scenario(args: argparse.Namespace, log_dir: str) -> Tally:
    redis = RedisServer()
    redis.start()
    replicas: list[Replica] = []
    try:
        encoder = spawn(log_dir, args.model, EDGESAM_ROLE="encoder", EDGESAM_REDIS_URL=redis.url)
        replicas.append(encoder)
        decoder = spawn(
            log_dir,
            args.model,
            EDGESAM_ROLE="decoder",
            EDGESAM_REDIS_URL=redis.url,
            EDGESAM_ENCODER_GRPC_TARGET=f"127.0.0.1:{encoder.grpc_port}",
        )
        replicas.append(decoder)
        wait_ready([encoder, decoder])
        targets = [[decoder.target(args.transport)] for _ in range(args.users)]
        tally = Tally()
        load = Load(targets, tally, args.clicks, args.think, RetryPolicy(max_retries=0))
        load.model = args.model
        load.start()
        time.sleep(args.seconds * 0.4)
        tally.fault_at = time.monotonic()
        encoder.proc.send_signal(signal.SIGKILL)
        time.sleep(args.seconds * 0.6)
        tally = load.finish()
        tally.notes = [replica_notes(r) for r in replicas if r.proc.poll() is None]
        return tally
    finally:
        for rep in replicas:
            rep.stop()
        redis.stop()


SCENARIOS = {"kill": kill_scenario, "redis": redis_scenario, "encoder": encoder_scenario}
FAULTS = {
    "kill": "replica A SIGKILLed at 40%; clients given both replicas",
    "redis": "Redis restarted at 25%, frozen (SIGSTOP) for {freeze:.0f} s at 55%; no retries",
    "encoder": "encoder SIGKILLed at 40%; clients talk to the decoder only; no retries",
}


# Answers a scenario calls for: a decoder without its encoder says so with a code.
EXPECTED = {"encoder": frozenset({"encoder_unavailable"})}


def run(name: str, args: argparse.Namespace) -> Tally:
    with tempfile.TemporaryDirectory() as log_dir:
        return SCENARIOS[name](args, log_dir)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    ap.add_argument("--seconds", type=float, default=20, help="per scenario; at most 600")
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--clicks", type=int, default=4, help="clicks per image")
    ap.add_argument("--think", type=float, default=0.05, help="mean seconds between clicks")
    ap.add_argument("--freeze", type=float, default=4.0, help="seconds Redis stays frozen")
    ap.add_argument("--transport", choices=["http", "grpc"], default="http")
    ap.add_argument("--model", action="store_true", help="case A weights, not the fake backend")
    args = ap.parse_args()
    args.seconds = min(args.seconds, 600)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    backend = "case A weights" if args.model else "fake backend"
    for name in names:
        tally = run(name, args)
        fault = FAULTS[name].format(freeze=args.freeze)
        title = (
            f"{name}: {args.users} users over {args.transport} ({backend}), "
            f"{args.seconds:.0f} s; {fault}"
        )
        print(tally.report(title), flush=True)
        expected = EXPECTED.get(name, frozenset())
        print(
            f"  unexpected 5xx/UNAVAILABLE answers: {tally.server_errors(expected)}"
            + (f" (expected: {', '.join(sorted(expected))})" if expected else ""),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
