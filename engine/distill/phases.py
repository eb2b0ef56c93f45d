"""Phase 1 (encoder-only distillation) and phase 2 (prompt-in-the-loop distillation)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.checkpoint import load_into, read_state_dict
from engine.distill.config import Phase1Config, Phase2Config
from engine.distill.data import valid_map
from engine.distill.loop import LoopSettings, Phase2Net
from engine.distill.losses import masked_mse
from engine.distill.model import (
    PromptDecoder,
    build_student,
    load_encoder_weights,
    load_partial,
    official_state_dict,
)
from engine.distill.trainer import DistEnv, Task
from engine.distill.vit import prompt_decoder_state_from_sam
from engine.modeling import EdgeSam

log = logging.getLogger(__name__)


def load_sam_prompt_decoder(path: str | Path) -> dict[str, torch.Tensor]:
    """`prompt_encoder.*` + `mask_decoder.*` of an official SAM (or EdgeSAM) checkpoint."""
    return {k: v.float() for k, v in prompt_decoder_state_from_sam(read_state_dict(path)).items()}


class Phase1Task(Task):
    """Student encoder regresses the stored teacher embedding (masked MSE)."""

    name = "phase1"

    def __init__(self, cfg: Phase1Config, env: DistEnv) -> None:
        self.cfg = cfg
        self.student = build_student(cfg.data.image_size, cfg.upsample_mode)
        if cfg.init_checkpoint:
            load_encoder_weights(self.student, cfg.init_checkpoint)
        self.sam_state = load_sam_prompt_decoder(cfg.sam_checkpoint) if cfg.sam_checkpoint else None
        if self.sam_state is not None:
            load_partial(self.student, self.sam_state)
        enc: nn.Module = self.student.image_encoder
        if cfg.sync_bn and env.world > 1:
            if env.device.type == "cuda":
                enc = nn.SyncBatchNorm.convert_sync_batchnorm(enc)
            else:
                log.warning("SyncBatchNorm needs GPUs; BatchNorm statistics are averaged per epoch")
        self.student.image_encoder = enc
        self.student.to(env.device)

    def module(self) -> nn.Module:
        return self.student.image_encoder

    def step(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        emb = model(batch["image"])
        size = batch["image"].shape[-1]
        valid = valid_map(batch["input_hw"], size, emb.shape[-1]).to(emb.device) > 0.5
        return {"loss": masked_mse(emb, batch["teacher"], valid)}

    def model_state(self) -> dict[str, torch.Tensor]:
        return official_state_dict(self.student)

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.student.load_state_dict(state, strict=True)

    def export(self, out_dir: Path) -> Path:
        if self.sam_state is None:
            log.warning("no sam_checkpoint: the exported prompt encoder / mask decoder are random")
        path = out_dir / "edge_sam_phase1.pth"
        torch.save(official_state_dict(self.student, self.sam_state, encoder_only=True), str(path))
        return path


class Phase2Task(Task):
    """Student encoder + mask decoder trained through two decoding passes against the frozen
    teacher decoder run on the stored teacher embeddings."""

    name = "phase2"
    with_prompts = True

    def __init__(self, cfg: Phase2Config, env: DistEnv) -> None:
        if not cfg.sam_checkpoint:
            raise ValueError(
                "phase 2 needs sam_checkpoint (the teacher's prompt encoder and mask decoder)"
            )
        self.cfg = cfg
        size = cfg.data.image_size
        student = build_student(size, cfg.upsample_mode)
        if cfg.phase1_checkpoint:
            load_encoder_weights(student, cfg.phase1_checkpoint)
        else:
            log.warning("no phase1_checkpoint: the student encoder starts from random weights")
        sam = load_sam_prompt_decoder(cfg.sam_checkpoint)
        missing = (
            set(student.state_dict())
            - set(sam)
            - {k for k in student.state_dict() if k.startswith("image_encoder.")}
        )
        if missing:
            raise ValueError(f"{cfg.sam_checkpoint} lacks {sorted(missing)[:5]}")
        load_partial(student, sam)
        teacher = PromptDecoder(size)
        teacher.load_state_dict(sam, strict=True)
        teacher.requires_grad_(False).eval()
        if cfg.freeze_prompt_encoder:
            student.prompt_encoder.requires_grad_(False)
        # No loss reaches the IoU head (the official run leaves it at SAM's weights).
        student.mask_decoder.iou_prediction_head.requires_grad_(False)
        self.student = student.to(env.device)
        self.teacher = teacher.to(env.device)
        settings = LoopSettings(
            decode_iters=cfg.decode_iters,
            multimask_outputs=cfg.multimask_outputs,
            multimask_on_box=cfg.multimask_on_box,
            iter_on_box=cfg.iter_on_box,
            points_per_refine=cfg.points_per_refine,
            min_error_pixels=cfg.min_error_pixels,
            bce_weight=cfg.bce_weight,
            dice_weight=cfg.dice_weight,
        )
        self.net = Phase2Net(self.student, self.teacher, settings)

    def module(self) -> nn.Module:
        return self.net

    def step(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        use_box = bool(torch.rand((), generator=generator) < self.cfg.box_prob)
        out = model(
            batch["image"],
            batch["teacher"],
            batch["boxes"],
            batch["points"],
            batch["input_hw"],
            use_box,
            generator,
        )
        stats = {k: v for k, v in out.items() if k in ("loss", "bce", "dice")}
        stats["box"] = torch.tensor(float(use_box))
        return stats

    def model_state(self) -> dict[str, torch.Tensor]:
        return official_state_dict(self.student)

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.student.load_state_dict(state, strict=True)

    def export(self, out_dir: Path) -> Path:
        path = out_dir / "edge_sam_phase2.pth"
        torch.save(official_state_dict(self.student), str(path))
        return path


def check_loadable(path: str | Path) -> EdgeSam:
    """Load an exported file the way the engine does (strict, official layout)."""
    model = EdgeSam()
    load_into(model, read_state_dict(path), str(path))
    return model
