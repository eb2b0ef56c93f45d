"""`edgesam`: the command line over a running server.

    edgesam embed photo.jpg
    edgesam segment photo.jpg --point 320,240 --negative 100,80 --box 200,100,500,400 -o out.png
    edgesam everything photo.jpg -o all.png
    edgesam embed-dir photos/ --concurrency 4 --results ids.jsonl

--server (or EDGESAM_SERVER): http://host:8000 for HTTP, grpc://host:50051 for gRPC
(default http://localhost:8000); --api-key (or EDGESAM_API_KEY). Prints a JSON summary;
segment and everything also write a PNG overlay of the masks on the image.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_client import EdgeSamError, Mask, connect

PALETTE = np.array(
    [
        [30, 144, 255],
        [255, 99, 71],
        [50, 205, 50],
        [255, 215, 0],
        [186, 85, 211],
        [0, 206, 209],
        [255, 140, 0],
        [199, 21, 133],
    ],
    dtype=np.float32,
)


def _pair(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected x,y, got {text!r}") from exc
    return (x, y)


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1, got {text!r}") from exc
    return (x0, y0, x1, y1)


def load_rgb(path: Path) -> np.ndarray:
    """The image as the server sees it (EXIF orientation applied), uint8 HxWx3."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image) or image
        if upright.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            # 16-bit grey: its high byte, as the server reads it (convert("RGB") clips to white).
            wide = np.asarray(upright).astype(np.int64)
            return np.repeat((np.clip(wide, 0, 65535) >> 8).astype(np.uint8)[..., None], 3, -1)
        return np.asarray(upright.convert("RGB"))


def overlay(
    image: np.ndarray,
    masks: list[Mask],
    points: Sequence[tuple[float, float, int]] = (),
    boxes: Sequence[tuple[float, float, float, float]] = (),
    alpha: float = 0.5,
) -> np.ndarray:
    """The image with each mask tinted in its own colour, prompts drawn on top."""
    from PIL import Image, ImageDraw

    out = image.astype(np.float32)
    for i, mask in enumerate(masks):
        m = mask.array
        if m.shape != image.shape[:2]:
            raise ValueError(f"mask {m.shape} does not match the image {image.shape[:2]}")
        out[m] = out[m] * (1 - alpha) + PALETTE[i % len(PALETTE)] * alpha
    canvas = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    r = max(3, round(max(image.shape[:2]) / 150))
    for x, y, label in points:
        fill = (0, 255, 0) if label == 1 else (255, 0, 0)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=(255, 255, 255))
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0, y0, x1, y1), outline=(255, 255, 0), width=max(1, r // 2))
    return np.asarray(canvas)


def _summary(mask: Mask) -> dict[str, Any]:
    out = {
        "score": round(mask.score, 4),
        "stability_score": round(mask.stability_score, 4),
        "bbox": list(mask.bbox),
        "area": mask.area,
    }
    if mask.point is not None:
        out["point"] = list(mask.point)
    return out


def _save(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgesam", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--server", default=os.environ.get("EDGESAM_SERVER", "http://localhost:8000")
    )
    parser.add_argument("--api-key", default=os.environ.get("EDGESAM_API_KEY"))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed an image; prints its image_id")
    embed.add_argument("image", type=Path)

    seg = sub.add_parser("segment", help="masks for points and boxes, as a PNG overlay")
    seg.add_argument("image", type=Path)
    seg.add_argument("--point", type=_pair, action="append", default=[], help="x,y (foreground)")
    seg.add_argument("--negative", type=_pair, action="append", default=[], help="x,y (background)")
    seg.add_argument("--box", type=_box, action="append", default=[], help="x0,y0,x1,y1")
    seg.add_argument("--num-masks", type=int, choices=(1, 3, 4), default=1)
    seg.add_argument("-o", "--output", type=Path, default=None, help="overlay PNG path")

    many = sub.add_parser(
        "embed-dir",
        help="embed every image under a directory (skips what the server's cache holds)",
    )
    many.add_argument("directory", type=Path)
    many.add_argument("--concurrency", type=int, default=4, help="requests in flight (1-64)")
    many.add_argument("--no-recursive", action="store_true", help="only the top directory")
    many.add_argument(
        "--results", type=Path, default=None, help="append one JSON line per image here"
    )
    many.add_argument("--quiet", action="store_true", help="no progress bar")

    every = sub.add_parser("everything", help="every object, as a PNG overlay")
    every.add_argument("image", type=Path)
    every.add_argument("--points-per-side", type=int, default=None)
    every.add_argument("--pred-iou-thresh", type=float, default=None)
    every.add_argument("--stability-score-thresh", type=float, default=None)
    every.add_argument("--max-masks", type=int, default=None)
    every.add_argument("-o", "--output", type=Path, default=None, help="overlay PNG path")
    return parser


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})


def find_images(directory: Path, recursive: bool = True) -> list[Path]:
    """The JPEG, PNG and WebP files under `directory`, in a stable (sorted) order."""
    if not directory.is_dir():
        raise FileNotFoundError(f"no such directory: {directory}")
    found = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def embed_one(client: Any, path: Path) -> dict[str, Any]:
    """One image: skipped when the server already holds its embedding (HEAD by the sha256
    of the bytes), embedded otherwise; the outcome as a JSON-able record."""
    try:
        data = path.read_bytes()
        image_id = hashlib.sha256(data).hexdigest()
        if client.has_embedding(image_id):
            return {"path": str(path), "image_id": image_id, "status": "cached"}
        res = client.embed(data)
        status = "cached" if res.cached else "embedded"
        return {"path": str(path), "image_id": res.image_id, "status": status}
    except EdgeSamError as exc:
        return {"path": str(path), "status": "failed", "code": exc.code, "error": exc.message}
    except OSError as exc:
        return {"path": str(path), "status": "failed", "code": "unreadable", "error": str(exc)}


def bounded_map(fn: Any, items: Sequence[Any], concurrency: int) -> Iterator[Any]:
    """fn over items on `concurrency` threads, at most that many in flight (never the whole
    list queued); results in completion order."""
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="embed-dir") as pool:
        pending: set[Future] = set()
        queue = iter(items)
        for item in queue:
            pending.add(pool.submit(fn, item))
            if len(pending) >= concurrency:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        for future in pending:
            yield future.result()


class Progress:
    """A one-line progress bar on stderr (no dependency), redrawn at most 10 times a second."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.counts = {"cached": 0, "embedded": 0, "failed": 0}
        self.start = time.monotonic()
        self._drawn = 0.0
        self._lock = threading.Lock()

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def add(self, status: str) -> None:
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            now = time.monotonic()
            if self.enabled and (now - self._drawn > 0.1 or self.done == self.total):
                self._drawn = now
                self.draw()

    def draw(self) -> None:
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        rate = self.done / max(time.monotonic() - self.start, 1e-9)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"cached {self.counts['cached']} embedded {self.counts['embedded']} "
            f"failed {self.counts['failed']} {rate:.1f} img/s"
        )
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def embed_dir(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    """`edgesam embed-dir`: every image under the directory, `--concurrency` at a time.
    Resumable: a re-run skips every image whose embedding the server still holds."""
    if not 1 <= args.concurrency <= 64:
        raise ValueError("--concurrency must be between 1 and 64")
    paths = find_images(args.directory, recursive=not args.no_recursive)
    progress = Progress(len(paths), enabled=not args.quiet and len(paths) > 0)
    failures: list[dict[str, Any]] = []
    sink = args.results.open("a", encoding="utf-8") if args.results else None
    try:
        for record in bounded_map(lambda p: embed_one(client, p), paths, args.concurrency):
            progress.add(record["status"])
            if record["status"] == "failed":
                failures.append(record)
            if sink is not None:
                sink.write(json.dumps(record) + "\n")
                sink.flush()  # a crash keeps every line written so far
    finally:
        if sink is not None:
            sink.close()
    seconds = time.monotonic() - progress.start
    return {
        "images": len(paths),
        "cached": progress.counts["cached"],
        "embedded": progress.counts["embedded"],
        "failed": progress.counts["failed"],
        "seconds": round(seconds, 3),
        "images_per_second": round(len(paths) / seconds, 2) if seconds > 0 else 0.0,
        "failures": failures[:20],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "embed-dir":
        with connect(args.server, api_key=args.api_key, timeout=args.timeout) as es:
            return embed_dir(es, args)
    image_path: Path = args.image
    if not image_path.is_file():
        raise FileNotFoundError(f"no such image: {image_path}")
    with connect(args.server, api_key=args.api_key, timeout=args.timeout) as es:
        if args.command == "embed":
            res = es.embed(image_path)
            return {
                "image_id": res.image_id,
                "width": res.width,
                "height": res.height,
                "cached": res.cached,
                "expires_in": res.expires_in,
            }
        image_id = es.embed(image_path).image_id
        if args.command == "segment":
            if not (args.point or args.negative or args.box):
                raise ValueError("give at least one --point, --negative or --box")
            points = [(x, y, 1) for x, y in args.point] + [(x, y, 0) for x, y in args.negative]
            boxes = list(args.box)
            result = es.segment(
                image_id,
                points=[(x, y) for x, y, _ in points] or None,
                labels=[label for *_, label in points] or None,
                box=boxes[0] if len(boxes) == 1 else None,
                boxes=boxes if len(boxes) > 1 else None,
                num_masks=args.num_masks,
            )
            masks = result.masks
            output = args.output or Path(f"{image_path.stem}_segment.png")
            _save(output, overlay(load_rgb(image_path), masks, points, boxes))
            return {
                "image_id": image_id,
                "masks": [_summary(m) for m in masks],
                "mask_input_id": result.mask_input_id,
                "overlay": str(output),
            }
        params = {
            name: getattr(args, name)
            for name in (
                "points_per_side",
                "pred_iou_thresh",
                "stability_score_thresh",
                "max_masks",
            )
            if getattr(args, name) is not None
        }
        every = es.everything(image_id, **params)
        output = args.output or Path(f"{image_path.stem}_everything.png")
        _save(output, overlay(load_rgb(image_path), every.masks))
        return {
            "image_id": image_id,
            "masks": [_summary(m) for m in every.masks],
            "overlay": str(output),
        }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except EdgeSamError as exc:
        print(f"edgesam: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"edgesam: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 1 if summary.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
