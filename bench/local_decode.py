"""Clicks without a round trip: what a client downloads once, and the per-click time of a
server decode (POST /v1/segment over loopback) beside a local decode of the same prompt with
the downloaded SAM-signature decoder (ONNX Runtime in this process, 1 thread; and with
--browser, the web page's click-to-overlay time in headless Chromium in both modes).

    .venv/bin/python bench/local_decode.py [--checkpoint PATH] [--clicks N] [--browser]

Starts `python -m service` (the default configuration for this machine) with --checkpoint,
else EDGESAM_CHECKPOINT, else case A (../shared/reference, or the repository's own reference data). Prints medians; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import checkpoint, load_image  # noqa: E402
from tests.integration.browser_util import (  # noqa: E402
    chromium_browser,
    find_chromium,
    new_page,
    service_process,
)


def med(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def timed(fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def local_feeds(emb: np.ndarray, xy: tuple[int, int], w: int, h: int) -> dict:
    scale = 1024 / max(w, h)
    return {
        "image_embeddings": emb.astype(np.float32),
        "point_coords": np.array([[[xy[0] * scale, xy[1] * scale], [0, 0]]], np.float32),
        "point_labels": np.array([[1, -1]], np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array([h, w], np.float32),
    }


def browser_clicks(url: str, png: Path, clicks: int) -> dict[str, list[float]]:
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("--browser needs Chromium (apt-get install chromium)")
    out: dict[str, list[float]] = {}
    with chromium_browser(chromium) as browser, new_page(browser) as page:
        for mode in ("browser", "server"):
            page.goto(f"{url}?decode={mode}")
            page.wait_for_function("() => window.EdgeSamPage !== undefined")
            page.set_input_files("#file-input", str(png))
            page.wait_for_function(
                "() => { const s = EdgeSamPage.state(); return s.imageId && s.busy === 0; }",
                timeout=180_000,
            )
            box = page.locator("#ui").bounding_box()
            for i in range(clicks):
                n = len(page.evaluate("() => EdgeSamPage.state().clickTimes"))
                page.mouse.click(
                    box["x"] + box["width"] * (0.25 + 0.5 * i / clicks),
                    box["y"] + box["height"] * 0.4,
                )
                page.wait_for_function(
                    "(n) => { const s = EdgeSamPage.state(); "
                    "return s.clickTimes.length > n && s.busy === 0; }",
                    arg=n,
                    timeout=60_000,
                )
                page.keyboard.press("r")
            st = page.evaluate("() => EdgeSamPage.state()")
            out[mode] = [c["ms"] for c in st["clickTimes"] if c["mode"] == mode]
            if mode == "browser":
                out["embedding"] = [st["embeddingDownload"]["ms"]]
                out["decoder"] = [st["decoderDownload"]["ms"], st["decoderDownload"]["sessionMs"]]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--browser", action="store_true", help="also time the web page")
    args = parser.parse_args()
    ckpt = checkpoint(args.checkpoint)
    if ckpt is None:
        raise SystemExit("no checkpoint: --checkpoint or EDGESAM_CHECKPOINT")
    import onnxruntime as ort

    image = load_image()
    h, w = image.shape[:2]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "image.png"
        png.write_bytes(buf.getvalue())
        with service_process(ckpt, Path(tmp) / "service.log") as svc:
            url = svc.wait_ready(300)
            with httpx.Client(base_url=url, timeout=300) as c:
                r = c.post(
                    "v1/embed", content=buf.getvalue(), headers={"content-type": "image/png"}
                )
                image_id = r.json()["image_id"]
                first_dec, first_s = timed(lambda: c.get("v1/models/decoder.onnx"))
                dec_s = [timed(lambda: c.get("v1/models/decoder.onnx"))[1] for _ in range(5)]
                npys = [timed(lambda: c.get(f"v1/embeddings/{image_id}")) for _ in range(10)]
                npy = npys[0][0].content
                emb = np.load(io.BytesIO(npy))
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 1
                sess = ort.InferenceSession(
                    first_dec.content, opts, providers=["CPUExecutionProvider"]
                )
                rng = np.random.default_rng(0)
                pts = [
                    (int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(args.clicks)
                ]
                for xy in pts[:3]:  # warm-up
                    sess.run(None, local_feeds(emb, xy, w, h))
                    c.post("v1/segment", json={"image_id": image_id, "points": [xy], "labels": [1]})
                server = [
                    timed(
                        lambda xy=xy: c.post(
                            "v1/segment",
                            json={
                                "image_id": image_id,
                                "points": [xy],
                                "labels": [1],
                                "num_masks": 3,
                            },
                        )
                    )[1]
                    for xy in pts
                ]
                local = [
                    timed(lambda xy=xy: sess.run(None, local_feeds(emb, xy, w, h)))[1] for xy in pts
                ]
            print(f"image {w}x{h}, {args.clicks} clicks, checkpoint {ckpt.name}")
            print(
                f"embedding .npy          {len(npy):>10,} bytes  median {med([s for _, s in npys]):7.1f} ms (loopback)"
            )
            print(
                f"decoder.onnx            {len(first_dec.content):>10,} bytes  first {first_s * 1e3:7.1f} ms (export), then median {med(dec_s):.1f} ms"
            )
            print(f"server click            POST /v1/segment   median {med(server):7.1f} ms")
            print(f"local click             ONNX Runtime, 1 thread, median {med(local):7.1f} ms")
            if args.browser:
                got = browser_clicks(url, png, args.clicks)
                print(
                    f"page embedding download {got['embedding'][0]:7.1f} ms; decoder download {got['decoder'][0]:.1f} ms, session {got['decoder'][1]:.1f} ms"
                )
                for mode in ("browser", "server"):
                    ms = got[mode]
                    print(
                        f"page click -> overlay   {mode:<8} median {statistics.median(ms):7.1f} ms (min {min(ms):.1f}, n={len(ms)})"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
