"""Shared helpers: a small synthetic SA-1B-format dataset at a reduced input size (128: 8x8
embeddings, 32x32 low-res masks), a tiny SAM ViT teacher, its stored embeddings and a
SAM-shaped prompt encoder / mask decoder checkpoint with random weights."""

from __future__ import annotations

from pathlib import Path

import torch

from engine.distill.vit import build_sam_vit

IMAGE_SIZE = 128
GRID = IMAGE_SIZE // 16


def tiny_teacher(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    teacher = build_sam_vit("vit_tiny", IMAGE_SIZE)
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0.0, 0.1)
    return teacher.eval()


def train_overrides(d: dict[str, Path], out: Path, **extra: object) -> list[str]:
    """Config overrides for a fast run on the synthetic data."""
    sets = {
        "data.root": str(d["data"]),
        "data.image_size": IMAGE_SIZE,
        "data.num_workers": 0,
        "data.max_prompts": 4,
        "embeddings": str(d["emb"]),
        "output_dir": str(out),
        "batch_size": 2,
        "sam_checkpoint": str(d["sam"]),
        "log_every": 1,
        "optim.lr_scale_batch": None,
        "optim.base_lr": 1e-3,
        "optim.warmup_epochs": 0,
        **extra,
    }
    import json

    return [f"{k}={json.dumps(v)}" for k, v in sets.items()]
