"""Memory per setting: idle and peak RSS of a real `python -m service` process under an
embed storm (distinct images from many concurrent clients), with the throughput and latency
each setting costs. One fresh process per setting; loopback only; bounded in images.

    .venv/bin/python bench/memory.py [--batches 1,2,4,8] [--clients 24] [--images 48]
        [--backend auto] [--precision fp32] [--checkpoint PATH]

Weights: --checkpoint, else EDGESAM_CHECKPOINT, else case A (../shared/reference, or the repository's own reference data). Prints a
table (figures for docs/reliability.md); asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import checkpoint, free_port, load_image, pct  # noqa: E402


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB (Linux): now and the peak so far."""
    now = peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                now = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
    return now, peak


def jpeg_variants(image: np.ndarray, count: int) -> list[bytes]:
    """`count` distinct JPEGs of the image (a different corner patch each: a real encode)."""
    out = []
    for i in range(count):
        variant = image.copy()
        variant[:8, :8] = (i * 37) % 256, (i * 91) % 256, (i * 53) % 256
        buf = io.BytesIO()
        Image.fromarray(variant).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def run_setting(args: argparse.Namespace, batch: int, images: list[bytes], log_dir: str) -> dict:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("EDGESAM_")},
        "EDGESAM_HTTP_HOST": "127.0.0.1",
        "EDGESAM_HTTP_PORT": str(port),
        "EDGESAM_GRPC_PORT": "0",
        "EDGESAM_BACKEND": args.backend,
        "EDGESAM_PRECISION": args.precision,
        "EDGESAM_ENCODE_MAX_BATCH": str(batch),
        "EDGESAM_ENCODE_MAX_QUEUE": str(max(args.clients, 16)),
        "EDGESAM_DRAIN_SECONDS": "0",
        "EDGESAM_LOG_LEVEL": "warning",
    }
    if args.checkpoint_path:
        env["EDGESAM_CHECKPOINT"] = str(args.checkpoint_path)
    else:
        env["EDGESAM_ALLOW_RANDOM_WEIGHTS"] = "1"
    log_path = os.path.join(log_dir, f"service-b{batch}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start:\n{Path(log_path).read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        backend = httpx.get(f"{url}/readyz", timeout=5).json().get("backend", {})
        time.sleep(1.0)
        idle, _ = rss_kib(proc.pid)
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(rss_kib(proc.pid)[0])
                time.sleep(0.1)

        lat: list[float] = []
        codes: dict[int, int] = {}
        lock = threading.Lock()
        queue = list(images)

        def client() -> None:
            with httpx.Client(base_url=url, timeout=300) as c:
                while True:
                    with lock:
                        if not queue:
                            return
                        data = queue.pop()
                    t0 = time.perf_counter()
                    r = c.post("/v1/embed", content=data, headers={"content-type": "image/jpeg"})
                    took = time.perf_counter() - t0
                    with lock:
                        codes[r.status_code] = codes.get(r.status_code, 0) + 1
                        if r.status_code == 200:
                            lat.append(took)
                        else:
                            queue.append(data)  # refused (503): the client retries it
                    if r.status_code != 200:
                        time.sleep(float(r.headers.get("retry-after", "1")))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        _, peak = rss_kib(proc.pid)
        return {
            "batch": batch,
            "backend": f"{backend.get('name')}/{backend.get('precision')}",
            "idle_mb": idle / 1024,
            "peak_mb": max(peak, max(samples or [0])) / 1024,
            "img_s": len(lat) / wall,
            "p50": pct(lat, 50),
            "p99": pct(lat, 99),
            "codes": dict(sorted(codes.items())),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batches", default="1,2,4,8", help="EDGESAM_ENCODE_MAX_BATCH values")
    ap.add_argument("--clients", type=int, default=24, help="concurrent embed clients")
    ap.add_argument("--images", type=int, default=48, help="distinct images per setting")
    ap.add_argument("--backend", default="auto")
    ap.add_argument(
        "--precision", default="fp32", help="EDGESAM_PRECISION (fp32, bf16, int8, auto)"
    )
    ap.add_argument("--checkpoint", default=None)
    args = ap.parse_args()
    args.checkpoint_path = checkpoint(args.checkpoint)
    images = jpeg_variants(load_image(), args.images)
    print(
        f"weights: {args.checkpoint_path or 'random'}; {args.clients} clients, "
        f"{args.images} distinct images per setting; cpus: {os.cpu_count()}"
    )
    print(
        f"{'batch':>5} {'backend':<18} {'idle MB':>8} {'peak MB':>8} {'img/s':>6} "
        f"{'p50 ms':>8} {'p99 ms':>8}  answers"
    )
    with tempfile.TemporaryDirectory() as log_dir:
        for batch in [int(b) for b in args.batches.split(",")]:
            r = run_setting(args, batch, images, log_dir)
            print(
                f"{r['batch']:>5} {r['backend']:<18} {r['idle_mb']:8.0f} {r['peak_mb']:8.0f} "
                f"{r['img_s']:6.2f} {r['p50']:8.0f} {r['p99']:8.0f}  {r['codes']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
