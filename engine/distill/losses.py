"""Distillation losses and the correction-point rule of prompt-in-the-loop training."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.distill.model import LABEL_DUMMY


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Phase-1 loss. student, teacher BxCxHxW; valid Bx1xHxW (bool or 0/1).

    Squared error averaged over channels, then over the valid positions of each image, then
    over the batch.
    """
    per_pos = (student.float() - teacher.float()).pow(2).mean(1, keepdim=True)
    valid = valid.to(per_pos.dtype)
    per_image = (per_pos * valid).sum((1, 2, 3)) / valid.sum((1, 2, 3)).clamp(min=1.0)
    return per_image.mean()


def bce_dice(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase-2 mask losses. logits, target PxKxHxW (target in {0, 1}); weight Px1xHxW, the
    fractional valid map.

    BCE: weighted, averaged per prompt over channels x pixels, then over prompts.
    Dice: per prompt and channel on valid-weighted values, 1 - (2 sum pt + 1) / (sum p + sum t + 1),
    averaged.
    """
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight
    bce = bce.flatten(1).mean(1).mean()
    p = torch.sigmoid(logits) * weight
    t = target * weight
    inter = (p * t).flatten(2).sum(-1)
    dice = 1.0 - (2.0 * inter + 1.0) / (p.flatten(2).sum(-1) + t.flatten(2).sum(-1) + 1.0)
    return bce, dice.mean()


@torch.no_grad()
def correction_points(
    student: torch.Tensor,
    teacher: torch.Tensor,
    valid: torch.Tensor,
    generator: torch.Generator | None = None,
    min_error_pixels: int = 10,
    stride: float = 4.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One correction point per prompt, drawn uniformly from the student/teacher disagreement.

    student, teacher: PxHxW boolean masks (already thresholded); valid PxHxW bool.
    A pixel the teacher has and the student misses gives a positive point (label 1), one the
    student has and the teacher does not a negative point (label 0). With fewer than
    `min_error_pixels` error pixels the point is the dummy (0, 0) with label -2.
    Returns coords Px1x2 (x = col * stride, y = row * stride) and labels Px1 (int64).
    """
    s = student.bool() & valid.bool()
    t = teacher.bool() & valid.bool()
    fn = t & ~s
    err = (fn | (s & ~t)).flatten(1)
    p, hw = err.shape
    w = student.shape[-1]
    count = err.sum(1)
    ok = count >= max(min_error_pixels, 1)
    weights = err.float()
    weights[~ok] = 1.0  # any row: the draw is discarded
    idx = torch.multinomial(weights.cpu(), 1, generator=generator).to(err.device)[:, 0]
    rows, cols = idx // w, idx % w
    label = fn.flatten(1).gather(1, idx[:, None])[:, 0].long()
    coords = torch.stack([cols.float() * stride, rows.float() * stride], -1)
    coords = torch.where(ok[:, None], coords, torch.zeros_like(coords))
    label = torch.where(ok, label, torch.full_like(label, LABEL_DUMMY))
    return coords[:, None, :], label[:, None]
