"""mIoU evaluation as the EdgeSAM paper reports it: box prompts, or point prompts, each
followed by correction points, on SA-1B- or COCO-format ground truth, for any model file the
engine loads.

Protocol (evaluation/eval_mIoU.py): box = the GT box; point = the GT-mask pixel farthest from
the background; token 0 (or the best IoU-head score of the 3 multimask tokens); logits
upsampled to the input size, cropped, resized to the original size, thresholded at 0; mIoU
over prompts (NaN dropped) x100, reported after 0..N correction points.

Deliberate differences, both measured on a model evaluated against its own outputs (which must
score 100): correction points are drawn from the errors at the *original* resolution (the
official code compares against a bilinearly downsampled, hence dilated, GT and keeps adding
points to a perfect mask), and a prompt whose mask has fewer than `min_error_pixels` errors keeps
its mask instead of being re-decoded with a dummy point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from engine.checkpoint import load_into, read_state_dict
from engine.distill.data import (
    ImageRecord,
    decode_segmentation,
    load_rgb,
    mask_center,
    preprocess_image,
    scale_xy,
)
from engine.distill.model import LABEL_DUMMY, build_student, decode_prompts
from engine.modeling import merge_prompts
from engine.priors import encode_with_priors, prior_boxes_for_points


@dataclass
class EvalSettings:
    prompt: Literal["box", "point"] = "box"
    refine_iters: int = 3
    point_from: Literal["mask-center", "annotation"] = "mask-center"
    max_prompts: int | None = 64  # per image, drawn with replacement (seeded by image index)
    output: Literal["single", "score"] = "single"
    min_error_pixels: int = 10
    seed: int = 0


def load_model(path: str | Path, image_size: int = 1024, device: str = "cpu") -> nn.Module:
    """A model file in the official layout, loaded strictly by engine.checkpoint."""
    model = build_student(image_size)
    load_into(model, read_state_dict(path), str(path))
    return model.to(device).eval()


def postprocess(
    logits: torch.Tensor, input_hw: tuple[int, int], orig_hw: tuple[int, int], image_size: int
) -> torch.Tensor:
    """Low-res logits Px1xLxL -> logits at the original size PxHxW."""
    x = F.interpolate(logits, (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_hw[0], : input_hw[1]]
    return F.interpolate(x, orig_hw, mode="bilinear", align_corners=False)[:, 0]


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """PxHxW bool pairs -> P IoUs (NaN where both are empty)."""
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))


def _pick(logits: torch.Tensor, iou: torch.Tensor, output: str) -> torch.Tensor:
    if output == "single":
        return logits[:, :1]
    best = iou[:, 1:4].argmax(1) + 1
    return logits[torch.arange(len(best)), best][:, None]


def _masks(
    model: nn.Module,
    emb: torch.Tensor,
    pts: torch.Tensor,
    lbs: torch.Tensor,
    boxes: torch.Tensor | None,
    has: torch.Tensor | None,
    idx: torch.Tensor,
    s: EvalSettings,
    frame: tuple[tuple[int, int], tuple[int, int], int],
) -> torch.Tensor:
    """Masks at the original size (bool) for the prompts `idx`: points pts/lbs (PxNx2, PxN),
    boxes Px4 or None; `has` marks point prompts whose prior box exists."""
    bx = boxes[idx] if boxes is not None else None
    if has is not None:
        coords, labels = merge_prompts((pts[idx], lbs[idx]), bx)
        labels = labels.clone()
        labels[~has[idx], -2:] = -1  # no proposal holds the point: the box slots are padding
    else:
        coords, labels = merge_prompts((pts[idx], lbs[idx]) if pts.shape[1] else None, bx)
    device = emb.device
    logits, iou = decode_prompts(model, emb, coords.to(device), labels.to(device))
    input_hw, orig_hw, image_size = frame
    return postprocess(_pick(logits, iou, s.output), input_hw, orig_hw, image_size).cpu() > 0


@torch.no_grad()
def evaluate_records(
    model: nn.Module,
    records: list[ImageRecord],
    image_size: int = 1024,
    settings: EvalSettings | None = None,
    device: str | torch.device = "cpu",
    priors: nn.Module | None = None,
    progress: bool = False,
) -> dict[str, object]:
    """mIoU after 0..refine_iters correction points. `model` has .image_encoder,
    .prompt_encoder, .mask_decoder (EdgeSam or `build_student`); `priors` an optional
    GranularityPriors head used for point prompts."""
    s = settings or EvalSettings()
    device = torch.device(device)
    ious: list[list[float]] = [[] for _ in range(s.refine_iters + 1)]
    rng = np.random.default_rng(s.seed)
    for n, rec in enumerate(tqdm(records, disable=not progress, desc="evaluate", unit="img")):
        rgb = load_rgb(rec.image_path)
        orig_hw = rgb.shape[:2]
        x, input_hw = preprocess_image(rgb, image_size)
        anns = [a for a in rec.annotations() if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        if not anns:
            continue
        if s.max_prompts and len(anns) > s.max_prompts:
            gen = torch.Generator().manual_seed(n)
            anns = [anns[i] for i in torch.randint(len(anns), (s.max_prompts,), generator=gen)]
        gts = torch.from_numpy(
            np.stack([decode_segmentation(a["segmentation"], *orig_hw) for a in anns])
        )
        if priors is not None:
            emb, proposals = encode_with_priors(model, priors, x[None].to(device))
            proposals = proposals[0]
        else:
            emb, proposals = model.image_encoder(x[None].to(device)), None
        boxes, has = None, None
        if s.prompt == "box":
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float64)
            xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
            boxes = torch.from_numpy(
                scale_xy(xyxy.reshape(-1, 2, 2), orig_hw, input_hw).reshape(-1, 4)
            ).float()
            pts = torch.zeros(len(anns), 0, 2)
            lbs = torch.zeros(len(anns), 0, dtype=torch.long)
        else:
            if s.point_from == "annotation":
                first = [a["point_coords"][0] for a in anns]
            else:
                first = [mask_center(g.numpy()) for g in gts]
            pts = torch.from_numpy(
                scale_xy(np.array(first, dtype=np.float64), orig_hw, input_hw)
            ).float()[:, None]
            lbs = torch.ones(len(anns), 1, dtype=torch.long)
            if proposals is not None:
                boxes, has = prior_boxes_for_points(*proposals, pts[:, 0].to(device))
                boxes = boxes.cpu()
                has = has.cpu()

        has = has if (s.prompt == "point" and boxes is not None) else None

        frame = (input_hw, orig_hw, image_size)
        pred = _masks(model, emb, pts, lbs, boxes, has, torch.arange(len(anns)), s, frame)
        ious[0].extend(mask_iou(pred, gts).tolist())
        for it in range(1, s.refine_iters + 1):
            new_xy, new_lb, redo = [], [], []
            for i in range(len(anns)):
                fn = gts[i] & ~pred[i]
                err = (fn | (pred[i] & ~gts[i])).flatten().nonzero()[:, 0]
                if len(err) < s.min_error_pixels:  # (almost) right already: keep this mask
                    new_xy.append((0.0, 0.0))
                    new_lb.append(LABEL_DUMMY)
                    continue
                j = int(err[rng.integers(len(err))])
                r, c = divmod(j, orig_hw[1])
                new_xy.append(
                    tuple(scale_xy(np.array([c, r], dtype=np.float64), orig_hw, input_hw))
                )
                new_lb.append(int(fn.flatten()[j]))
                redo.append(i)
            pts = torch.cat([pts, torch.tensor(new_xy, dtype=torch.float32)[:, None]], 1)
            lbs = torch.cat([lbs, torch.tensor(new_lb)[:, None]], 1)
            if redo:
                idx = torch.tensor(redo)
                pred = pred.clone()
                pred[idx] = _masks(model, emb, pts, lbs, boxes, has, idx, s, frame)
            ious[it].extend(mask_iou(pred, gts).tolist())
    miou = [
        float(np.nanmean(v) * 100) if v and not np.all(np.isnan(v)) else float("nan") for v in ious
    ]
    return {
        "prompt": s.prompt,
        "miou": miou,
        "num_prompts": len(ious[0]),
        "num_images": len(records),
    }
