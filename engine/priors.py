"""Granularity priors: a light class-agnostic box head on the encoder's multi-scale features.
This module is the head and its use at inference; `engine.distill.priors` trains it.

The official release has no trained head (its RPN was trained outside the repo with mmdet and
the recipe is lost), so this is our own, simpler design: a 3-level FPN on RepViT stages 1-3
(strides 8/16/32) and an FCOS-style head (objectness + left/top/right/bottom distances),
trained with focal + GIoU losses on the dataset's boxes while the distilled encoder stays
frozen. Keys live under `fpn.*` and `rpn_head.*`, the prefixes the official `*_rpn.pth`
files use and that `engine.checkpoint.load_into` skips, so a merged file still loads
unchanged as a plain EdgeSAM.

Use at inference (point prompts only, as in the paper): proposals scoring above 0.1, no NMS;
keep those that strictly contain the point; among the 5 whose centres are nearest the point
take the best-scored one (the official code sums tied scores, a quirk we drop) and add it as
a box prompt beside the point.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoint import read_state_dict
from engine.compat import zip_strict

STAGES = ("stage1", "stage2", "stage3")
STAGE_CHANNELS = (96, 192, 384)


class PriorFPN(nn.Module):
    """Top-down feature pyramid over three backbone stages -> three maps of `channels`."""

    def __init__(self, in_channels: tuple[int, ...] = STAGE_CHANNELS, channels: int = 96) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels
        )

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        lat = [conv(f) for conv, f in zip_strict(self.lateral, feats)]
        for i in range(len(lat) - 2, -1, -1):
            lat[i] = lat[i] + F.interpolate(lat[i + 1], size=lat[i].shape[-2:], mode="nearest")
        return [conv(x) for conv, x in zip_strict(self.output, lat)]


class PriorHead(nn.Module):
    """Shared conv tower; per location an objectness logit and 4 box distances."""

    def __init__(self, channels: int = 96, levels: int = 3) -> None:
        super().__init__()
        self.tower = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.ReLU(),
        )
        self.cls = nn.Conv2d(channels, 1, 3, padding=1)
        self.reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(levels))
        nn.init.constant_(self.cls.bias, -4.6)  # prior objectness 1%

    def forward(self, feats: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for i, f in enumerate(feats):
            t = self.tower(f)
            out.append((self.cls(t)[:, 0], F.relu(self.reg(t) * self.scales[i]).exp()))
        return out


class GranularityPriors(nn.Module):
    """FPN + head; `forward(stages, image_size)` -> per level (logits BxN, boxes BxNx4 xyxy in
    the input frame)."""

    def __init__(self, channels: int = 96) -> None:
        super().__init__()
        self.fpn = PriorFPN(STAGE_CHANNELS, channels)
        self.rpn_head = PriorHead(channels, len(STAGES))

    def forward(
        self, stages: dict[str, torch.Tensor], image_size: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        feats = self.fpn([stages[k] for k in STAGES])
        out = []
        for (logit, dist), f in zip_strict(self.rpn_head(feats), feats):
            stride = image_size / f.shape[-1]
            centers = grid_centers(f.shape[-2], f.shape[-1], stride, f.device)  # Nx2
            d = dist.flatten(2).transpose(1, 2) * stride  # BxNx4 (l, t, r, b)
            boxes = torch.cat([centers - d[..., :2], centers + d[..., 2:]], -1)
            out.append((logit.flatten(1), boxes))
        return out


def grid_centers(h: int, w: int, stride: float, device: torch.device) -> torch.Tensor:
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], -1)


def encode_stages(
    encoder: nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RepViTEncoder -> (embedding Bx256xExE, stage maps), in one backbone pass."""
    stages = encoder.forward_stages(images)
    emb = encoder.neck(
        encoder.fuse_stage2(stages["stage2"]) + encoder.fuse_stage3(stages["stage3"])
    )
    return emb, stages


@torch.no_grad()
def encode_with_priors(
    model: nn.Module, priors: GranularityPriors, images: torch.Tensor, score_thresh: float = 0.1
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Embedding and, per image, proposals (boxes Nx4, scores N) scoring above `score_thresh`."""
    emb, stages = encode_stages(model.image_encoder, images)
    levels = priors(stages, images.shape[-1])
    logits = torch.cat([lg for lg, _ in levels], 1)
    boxes = torch.cat([b for _, b in levels], 1)
    scores = logits.sigmoid()
    out = []
    for b in range(images.shape[0]):
        keep = scores[b] > score_thresh
        out.append((boxes[b][keep], scores[b][keep]))
    return emb, out


def prior_boxes_for_points(
    boxes: torch.Tensor, scores: torch.Tensor, points: torch.Tensor, k: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each point (Px2) the best-scored of the `k` proposals (Nx4, N) strictly containing it
    whose centres are nearest; returns boxes Px4 and a Px bool 'found' mask."""
    p = points.shape[0]
    if boxes.numel() == 0:
        return points.new_zeros(p, 4), torch.zeros(p, dtype=torch.bool, device=points.device)
    px, py = points[:, 0:1], points[:, 1:2]
    inside = (
        (boxes[None, :, 0] < px)
        & (px < boxes[None, :, 2])
        & (boxes[None, :, 1] < py)
        & (py < boxes[None, :, 3])
    )
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    dist = torch.cdist(points.float(), centers.float())
    dist = torch.where(inside, dist, torch.full_like(dist, float("inf")))
    kk = min(k, boxes.shape[0])
    near_d, near = dist.topk(kk, dim=1, largest=False)
    cand = torch.where(torch.isfinite(near_d), scores[near], torch.full_like(near_d, -1.0))
    best = near.gather(1, cand.argmax(1, keepdim=True))[:, 0]
    return boxes[best], inside.any(1)


def load_priors(path: str | Path, channels: int = 96, device: str = "cpu") -> GranularityPriors:
    """The `fpn.*`/`rpn_head.*` part of a merged checkpoint."""
    state = {k: v for k, v in read_state_dict(path).items() if k.startswith(("fpn.", "rpn_head."))}
    if not state:
        raise ValueError(f"{path} has no granularity-priors weights (fpn.* / rpn_head.*)")
    priors = GranularityPriors(channels)
    priors.load_state_dict(state, strict=True)
    return priors.to(device).eval()
