"""A tiny synthetic dataset in the SA-1B layout (images with known masks), for tests and for
a smoke run of the whole pipeline on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from engine.distill.data import mask_center
from engine.distill.model import PromptDecoder


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def make_sa1b(
    root: str | Path,
    num_images: int = 4,
    height: int = 192,
    width: int = 256,
    shapes: int = 3,
    split: str = "train",
    seed: int = 0,
) -> Path:
    """Write `num_images` images with `shapes` coloured rectangles/ellipses each, and SA-1B
    jsons (COCO RLE masks, xywh boxes, one point per mask) under root/images|annotations/split.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    for n in range(num_images):
        image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
        anns = []
        for s in range(shapes):
            h = int(rng.integers(height // 5, height // 2))
            w = int(rng.integers(width // 5, width // 2))
            y0 = int(rng.integers(0, height - h))
            x0 = int(rng.integers(0, width - w))
            if s % 2 == 0:
                mask = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
            else:
                cy, cx = y0 + h / 2, x0 + w / 2
                mask = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1.0
            image[mask] = rng.integers(80, 255, 3).astype(np.uint8)
            anns.append(mask)
        # Later shapes paint over earlier ones: keep the visible part of each.
        visible = []
        covered = np.zeros((height, width), bool)
        for mask in reversed(anns):
            visible.append(mask & ~covered)
            covered |= mask
        records = []
        for i, mask in enumerate(reversed(visible)):
            if mask.sum() < 16:
                continue
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            bw, bh = int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1

            px, py = mask_center(mask)
            records.append(
                {
                    "id": n * 100 + i,
                    "segmentation": _rle(mask),
                    "bbox": [x0, y0, bw, bh],
                    "area": int(mask.sum()),
                    "predicted_iou": 1.0,
                    "stability_score": 1.0,
                    "crop_box": [0, 0, width, height],
                    "point_coords": [[px, py]],
                }
            )
        stem = f"sa_{n + 1:06d}"
        Image.fromarray(image).save(img_dir / f"{stem}.jpg", quality=95)
        info = {"image_id": n + 1, "width": width, "height": height, "file_name": f"{stem}.jpg"}
        (ann_dir / f"{stem}.json").write_text(json.dumps({"image": info, "annotations": records}))
    return root


def write_random_sam_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """A SAM-shaped prompt encoder + mask decoder with random weights (no image encoder), as
    a stand-in for the `prompt_encoder.*`/`mask_decoder.*` part of an official SAM file."""

    torch.manual_seed(seed)
    model = PromptDecoder()
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, str(path))
    return Path(path)
