"""Training the granularity priors' box head (`engine.priors` holds the head and its use at
inference): focal + GIoU losses with FCOS-style assignment, while the distilled encoder stays
frozen. `PriorsTask.export` writes the EdgeSAM weights and `fpn.*`/`rpn_head.*` in one file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.compat import zip_strict
from engine.distill.evaluate import load_model
from engine.distill.model import build_student
from engine.distill.trainer import DistEnv, Task
from engine.priors import (
    STAGE_CHANNELS,
    STAGES,
    GranularityPriors,
    PriorFPN,
    PriorHead,
    encode_stages,
    encode_with_priors,
    grid_centers,
    load_priors,
    prior_boxes_for_points,
)

# The head and its inference, importable from here as before.
__all__ = [
    "STAGES",
    "STAGE_CHANNELS",
    "GranularityPriors",
    "PriorFPN",
    "PriorHead",
    "PriorsTask",
    "assign_targets",
    "encode_stages",
    "encode_with_priors",
    "giou_loss",
    "grid_centers",
    "load_priors",
    "prior_boxes_for_points",
    "priors_loss",
    "sigmoid_focal",
]


def sigmoid_focal(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    w = alpha * target + (1 - alpha) * (1 - target)
    return (w * (1 - pt) ** gamma * ce).sum()


def giou_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Sum of 1 - GIoU over matched Nx4 xyxy pairs."""
    lt = torch.max(pred[:, :2], gt[:, :2])
    rb = torch.min(pred[:, 2:], gt[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(1)
    area_g = (gt[:, 2:] - gt[:, :2]).clamp(min=0).prod(1)
    union = area_p + area_g - inter
    iou = inter / union.clamp(min=1e-6)
    hull = (
        (torch.max(pred[:, 2:], gt[:, 2:]) - torch.min(pred[:, :2], gt[:, :2])).clamp(min=0).prod(1)
    )
    return (1 - iou + (hull - union) / hull.clamp(min=1e-6)).sum()


def assign_targets(
    centers: torch.Tensor, gt: torch.Tensor, lo: float, hi: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FCOS assignment at one level: a location is positive for the smallest GT box (Gx4) that
    contains it and whose largest side distance lies in (lo, hi]. Returns pos N and box idx N."""
    if gt.numel() == 0:
        n = centers.shape[0]
        return torch.zeros(n, dtype=torch.bool, device=centers.device), torch.zeros(
            n, dtype=torch.long, device=centers.device
        )
    x, y = centers[:, 0:1], centers[:, 1:2]
    ltrb = torch.stack(
        [x - gt[None, :, 0], y - gt[None, :, 1], gt[None, :, 2] - x, gt[None, :, 3] - y], -1
    )
    inside = ltrb.min(-1).values > 0
    reach = ltrb.max(-1).values
    ok = inside & (reach > lo) & (reach <= hi)
    area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None].expand_as(ok)
    area = torch.where(ok, area, torch.full_like(area, float("inf")))
    best_area, idx = area.min(1)
    return torch.isfinite(best_area), idx


def priors_loss(
    levels: list[tuple[torch.Tensor, torch.Tensor]],
    gt_boxes: list[torch.Tensor],
    image_size: int,
    strides: list[float],
) -> dict[str, torch.Tensor]:
    """Focal objectness loss + GIoU box loss, normalised by the number of positives."""
    scale = image_size / 1024
    ranges = [(0.0, 64 * scale), (64 * scale, 128 * scale), (128 * scale, float("inf"))]
    cls_sum, reg_sum = levels[0][0].new_zeros(()), levels[0][0].new_zeros(())
    npos = 0
    for (logits, boxes), stride, (lo, hi) in zip_strict(levels, strides, ranges):
        side = int(round(logits.shape[1] ** 0.5))
        centers = grid_centers(side, side, stride, logits.device)
        for b, gt in enumerate(gt_boxes):
            pos, idx = assign_targets(centers, gt.to(logits.device), lo, hi)
            cls_sum = cls_sum + sigmoid_focal(logits[b], pos.float())
            if pos.any():
                reg_sum = reg_sum + giou_loss(boxes[b][pos], gt.to(logits.device)[idx[pos]])
                npos += int(pos.sum())
    norm = max(npos, 1)
    cls, reg = cls_sum / norm, reg_sum / norm
    return {"loss": cls + reg, "cls": cls.detach(), "giou": reg.detach()}


class PriorsTask(Task):
    """Train the box head on the dataset's boxes with the distilled encoder frozen."""

    name = "priors"
    needs_embeddings = False
    with_prompts = True

    def __init__(self, cfg: Any, env: DistEnv) -> None:
        self.cfg = cfg
        size = cfg.data.image_size
        if cfg.model_checkpoint:
            self.model = load_model(cfg.model_checkpoint, size)
        else:
            self.model = build_student(size).eval()
        self.model.requires_grad_(False).to(env.device)
        self.priors = GranularityPriors(cfg.channels).to(env.device)
        cfg.data.max_prompts = cfg.max_boxes

    def module(self) -> nn.Module:
        return self.priors

    def step(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        images = batch["image"]
        with torch.no_grad():
            _, stages = encode_stages(self.model.image_encoder, images)
        levels = model(stages, images.shape[-1])
        strides = [images.shape[-1] / stages[k].shape[-1] for k in STAGES]
        return priors_loss(levels, batch["boxes"], images.shape[-1], strides)

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.priors.state_dict().items()}

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.priors.load_state_dict(state, strict=True)

    def export(self, out_dir: Path) -> Path:
        """The EdgeSAM weights plus `fpn.*`/`rpn_head.*` in one flat file."""
        state = {k: v.detach().float().cpu() for k, v in self.model.state_dict().items()}
        state.update({k: v.detach().cpu() for k, v in self.priors.state_dict().items()})
        path = out_dir / "edge_sam_priors.pth"
        torch.save(state, str(path))
        return path
