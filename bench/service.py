"""Service benchmark: /v1/segment latency and throughput on a cache hit, /v1/embed cold and
cached, beside the in-process decode of the same prompt in the same run.

    .venv/bin/python bench/service.py [--checkpoint PATH] [--redis-url URL] [--requests N]

Weights: --checkpoint, else EDGESAM_CHECKPOINT, else case A (../shared/reference, or the repository's own reference data) (random
seeded weights: realistic compute, meaningless masks), else random weights. Prints figures;
asserts nothing (the target is HTTP p50 <= 1.15 x in-process decode p50).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import checkpoint, load_image, pct  # noqa: E402
from engine.core import decode, encode_images  # noqa: E402
from engine.loader import load_model  # noqa: E402
from service import codecs  # noqa: E402
from service.config import Settings  # noqa: E402
from service.core import SegmentationService  # noqa: E402
from service.http_app import create_app  # noqa: E402
from tests.conftest import UvicornThread, delete_prefix  # noqa: E402


def line(name: str, lat: list[float], wall: float | None = None) -> str:
    rps = f"  {len(lat) / wall:7.1f} req/s" if wall else ""
    return f"{name:<38} p50 {pct(lat, 50):8.2f} ms  p99 {pct(lat, 99):8.2f} ms{rps}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--redis-url", default=None, help="use Redis behind the in-process LRU")
    ap.add_argument("--requests", type=int, default=60, help="segment requests per client count")
    ap.add_argument("--cold", type=int, default=4, help="cold embeds")
    args = ap.parse_args()

    ckpt = checkpoint(args.checkpoint)
    backend = load_model(ckpt)
    image = load_image()
    h, w = image.shape[:2]
    prompt = {"points": [[w * 0.44, h * 0.21]], "labels": [1]}
    print(f"weights: {ckpt or 'random'}; image {w}x{h}; torch threads: ", end="")
    import torch

    print(torch.get_num_threads())

    # In-process: the same prompt through engine.core, with and without the RLE encoding.
    # Measured interleaved with the 1-client HTTP requests below, so that load from other
    # processes on a shared machine hits both alike.
    emb = encode_images(backend, [image])[0]
    pts, labels = np.array(prompt["points"]), np.array(prompt["labels"])
    raw: list[float] = []
    full: list[float] = []

    def in_process() -> None:
        t0 = time.perf_counter()
        res = decode(backend, emb, point_coords=pts, point_labels=labels)
        mask = res.masks((0, 0)).numpy()
        t1 = time.perf_counter()
        codecs.encode_mask(mask, ["rle"])
        t2 = time.perf_counter()
        raw.append(t1 - t0)
        full.append(t2 - t0)

    for _ in range(5):
        in_process()
    raw.clear()
    full.clear()

    prefix = f"edgesam-bench:{uuid.uuid4().hex[:8]}:"
    settings = Settings(
        grpc_port=0,
        redis_url=args.redis_url,
        redis_key_prefix=prefix,
        drain_seconds=0,
        decode_max_queue=1000,
    )
    svc = SegmentationService(settings, backend=backend, random_weights=ckpt is None)
    server = UvicornThread(create_app(settings, svc)).start()
    try:
        while svc.state == "loading":
            time.sleep(0.05)
        client = httpx.Client(base_url=server.url, timeout=120)
        png = codecs.encode_png_rgb(image)
        cold = []
        for i in range(args.cold):
            variant = image.copy()
            variant[0, 0, 0] ^= i + 1  # different bytes: a real encoder run
            data = codecs.encode_png_rgb(variant)
            t0 = time.perf_counter()
            r = client.post("/v1/embed", content=data, headers={"content-type": "image/png"})
            cold.append(time.perf_counter() - t0)
            assert r.json()["cached"] is False
        image_id = client.post(
            "/v1/embed", content=png, headers={"content-type": "image/png"}
        ).json()["image_id"]
        cached = []
        for _ in range(30):
            t0 = time.perf_counter()
            r = client.post("/v1/embed", content=png, headers={"content-type": "image/png"})
            cached.append(time.perf_counter() - t0)
            assert r.json()["cached"] is True
        body = {"image_id": image_id, **prompt}
        for _ in range(5):
            client.post("/v1/segment", json=body).raise_for_status()

        results = {}
        lat1: list[float] = []
        for _ in range(args.requests):
            in_process()
            t0 = time.perf_counter()
            client.post("/v1/segment", json=body).raise_for_status()
            lat1.append(time.perf_counter() - t0)
        results[1] = (lat1, sum(lat1))
        lat8: list[float] = []
        lock = threading.Lock()
        per_client = max(args.requests // 8, 10)

        def run() -> None:
            with httpx.Client(base_url=server.url, timeout=120) as c:
                for _ in range(per_client):
                    t0 = time.perf_counter()
                    c.post("/v1/segment", json=body).raise_for_status()
                    with lock:
                        lat8.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=run) for _ in range(8)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results[8] = (lat8, time.perf_counter() - t0)

        print(line("in-process decode + masks", raw, sum(raw)))
        print(line("in-process decode + masks + RLE", full, sum(full)))
        for clients, (lat, wall) in results.items():
            print(line(f"HTTP /v1/segment, {clients} client(s)", lat, wall))
        print(line("HTTP /v1/embed cold", cold))
        print(line("HTTP /v1/embed cached", cached))
        ratio = statistics.median(results[1][0]) / statistics.median(raw)
        print(f"HTTP p50 / in-process p50 (1 client): {ratio:.3f}  (target <= 1.15)")
        client.close()
    finally:
        server.stop()
        if args.redis_url:
            delete_prefix(args.redis_url, prefix)
    return 0


if __name__ == "__main__":
    sys.exit(main())
