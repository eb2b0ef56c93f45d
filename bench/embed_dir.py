"""`edgesam embed-dir` throughput beside a loop of single `edgesam embed`-style requests, in
the same run, against one in-process service on loopback HTTP (cold cache each time).

    .venv/bin/python bench/embed_dir.py [--images 8] [--runs 3] [--concurrency 4]
                                        [--checkpoint PATH | --fake-encode-ms 50]

Weights: --checkpoint, else EDGESAM_CHECKPOINT, else ../shared/reference/case_a (realistic
compute), else random weights; --fake-encode-ms uses the deterministic fake backend with that
encoder time instead (the network-bound case). Each run embeds fresh images (never cached);
prints the median images/s of each method and the ratio. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import checkpoint, load_image  # noqa: E402
from edgesam_client import cli, connect  # noqa: E402
from service import codecs  # noqa: E402
from service.config import Settings  # noqa: E402
from service.core import SegmentationService  # noqa: E402
from service.http_app import create_app  # noqa: E402
from tests.conftest import UvicornThread, wait_until  # noqa: E402


def write_images(directory: Path, count: int, seed: int) -> list[Path]:
    """`count` distinct PNGs (the reference photo with a changed corner pixel each)."""
    base = load_image()
    paths = []
    for i in range(count):
        image = base.copy()
        image[0, 0] = [(seed * 31 + i) % 256, (seed * 7 + i // 256) % 256, seed % 256]
        path = directory / f"img_{seed}_{i:04d}.png"
        path.write_bytes(codecs.encode_png_rgb(image))
        paths.append(path)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--fake-encode-ms", type=float, default=None)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()

    if args.fake_encode_ms is not None:
        from service.fake_backend import FakeBackend

        backend = FakeBackend(encode_delay_s=args.fake_encode_ms / 1000)
        label = f"fake backend, {args.fake_encode_ms:g} ms per encode"
    else:
        from engine.loader import load_model

        ckpt = checkpoint(args.checkpoint)
        backend = load_model(ckpt)
        label = f"weights {ckpt or 'random'}"
    settings = Settings(grpc_port=0, drain_seconds=0)  # type: ignore[call-arg]
    service = SegmentationService(settings, backend=backend, random_weights=False)
    server = UvicornThread(create_app(settings, service)).start()
    try:
        wait_until(lambda: service.state != "loading", 300)
        print(f"{label}; {args.images} images per run, {args.runs} runs")
        loop_rates, dir_rates = [], []
        with tempfile.TemporaryDirectory() as tmp, connect(server.url, timeout=300) as client:
            for run in range(args.runs):
                loop_dir = Path(tmp) / f"loop{run}"
                loop_dir.mkdir()
                paths = write_images(loop_dir, args.images, seed=2 * run)
                start = time.perf_counter()
                for path in paths:  # what `edgesam embed FILE` does, once per file
                    client.embed(path)
                loop_rates.append(len(paths) / (time.perf_counter() - start))

                many_dir = Path(tmp) / f"dir{run}"
                many_dir.mkdir()
                write_images(many_dir, args.images, seed=2 * run + 1)
                ns = argparse.Namespace(
                    directory=many_dir,
                    concurrency=args.concurrency,
                    no_recursive=False,
                    results=None,
                    quiet=True,
                )
                summary = cli.embed_dir(client, ns)
                assert summary["embedded"] == args.images, summary
                dir_rates.append(summary["images_per_second"])
        loop_med, dir_med = statistics.median(loop_rates), statistics.median(dir_rates)
        print(f"loop of single embeds        median {loop_med:8.2f} images/s  {loop_rates}")
        print(
            f"embed-dir --concurrency {args.concurrency:<3} median {dir_med:8.2f} images/s  "
            f"{dir_rates}"
        )
        print(f"ratio embed-dir / loop: {dir_med / loop_med:.2f}x")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
