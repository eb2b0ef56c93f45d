"""Validated YAML configuration for every step; the defaults are the official values.

`load_config(step, path, overrides)` reads an optional YAML file, applies `a.b=value`
overrides (values parsed as YAML) and validates the result: unknown keys, wrong types and
out-of-range values raise with the offending field named.
"""

# No `from __future__ import annotations`: pydantic evaluates these annotations at run time;
# typing's Optional/List/Tuple keep them valid on Python 3.8 (JetPack 5).
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    """Where the images and annotations are, and how they are prepared."""

    format: Literal["sa1b", "coco"] = "sa1b"
    root: str = "datasets/SA-1B"
    split: Optional[str] = "train"
    ann_file: Optional[str] = None  # COCO instances json
    limit: Optional[int] = Field(None, ge=1, description="use only the first N images (sorted)")
    image_size: int = Field(1024, ge=64, description="long side after resize; multiple of 32")
    num_workers: int = Field(8, ge=0)
    max_prompts: int = Field(16, ge=1, description="annotations per image, drawn with replacement")

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.image_size % 32:
            raise ValueError("data.image_size must be a multiple of 32")
        if self.format == "coco" and not self.ann_file:
            raise ValueError("data.ann_file is required for COCO-format data")
        return self


class OptimConfig(Strict):
    """AdamW with a per-iteration cosine schedule (timm 0.4.12 semantics by default)."""

    base_lr: float = Field(gt=0)
    min_lr: float = Field(ge=0)
    warmup_lr: float = Field(ge=0)
    warmup_epochs: float = Field(ge=0)
    weight_decay: float = Field(ge=0)
    clip_grad: Optional[float] = Field(5.0, gt=0)
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_scale_batch: Optional[int] = Field(
        512, ge=1, description="multiply every LR by total batch / this; null disables"
    )
    warmup_prefix: bool = Field(
        False,
        description="official (false): the cosine is measured from step 0, so the LR drops "
        "at the end of warmup; true: the cosine spans only the steps after warmup",
    )


class RunConfig(Strict):
    """Common to both training phases."""

    output_dir: str = "output/distill"
    embeddings: str = "teacher_embed/sa-1b"
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1, description="per process")
    seed: int = 0
    amp: bool = Field(False, description="mixed precision on GPUs (off in the official runs)")
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    reshuffle: bool = Field(
        True, description="new shuffle order every epoch (the official order never changes)"
    )
    resume: bool = True
    log_every: int = Field(10, ge=1)
    save_every_steps: Optional[int] = Field(None, ge=1, description="extra mid-epoch checkpoints")
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many steps (tests)")
    upsample_mode: Literal["bicubic", "bilinear"] = "bicubic"
    sam_checkpoint: Optional[str] = Field(
        None, description="official SAM checkpoint: prompt encoder + mask decoder source"
    )


def _phase1_optim() -> OptimConfig:
    return OptimConfig(
        base_lr=1.0e-1,
        min_lr=5e-6,
        warmup_lr=5e-7,
        warmup_epochs=5,
        weight_decay=0.01,
        clip_grad=5.0,
    )


def _phase2_optim() -> OptimConfig:
    return OptimConfig(
        base_lr=3.2e-3,
        min_lr=3.2e-4,
        warmup_lr=3.2e-5,
        warmup_epochs=0,
        weight_decay=0.05,
        clip_grad=0.01,
    )


class Phase1Config(RunConfig):
    """Encoder-only distillation (rep_vit_m1_fuse_sa_distill.yaml)."""

    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=_phase1_optim)
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(8, ge=1)
    init_checkpoint: Optional[str] = Field(
        None, description="student encoder start (official: repvit_m1_distill_300.pth)"
    )
    sync_bn: bool = Field(True, description="SyncBatchNorm on multi-GPU runs")


class Phase2Config(RunConfig):
    """Prompt-in-the-loop distillation (rep_vit_m1_fuse_enc_dec_4m_ft_bp_iter2b_sa_distill.yaml)."""

    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=_phase2_optim)
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(2, ge=1)
    phase1_checkpoint: Optional[str] = Field(None, description="encoder from phase 1")
    box_prob: float = Field(0.5, ge=0, le=1, description="P(box prompts) per batch")
    decode_iters: int = Field(2, ge=1)
    multimask_outputs: Literal[1, 3, 4] = 4
    multimask_on_box: bool = False
    iter_on_box: bool = True
    points_per_refine: int = Field(1, ge=1)
    min_error_pixels: int = Field(10, ge=1)
    bce_weight: float = Field(5.0, ge=0)
    dice_weight: float = Field(5.0, ge=0)
    freeze_prompt_encoder: bool = True


class EmbedConfig(Strict):
    """Teacher-embedding precompute (configs/teacher/sam_vit_huge_sa1b.yaml)."""

    data: DataConfig = Field(default_factory=DataConfig)
    teacher: Literal["vit_b", "vit_l", "vit_h", "vit_tiny"] = "vit_h"  # vit_tiny: tests
    sam_checkpoint: str = "weights/sam_vit_h_4b8939.pth"
    output: str = "teacher_embed/sa-1b"
    batch_size: int = Field(8, ge=1)
    amp: bool = Field(
        True, description="fp16 autocast on GPUs (the official run most likely used it)"
    )
    progress: bool = True


class PriorsConfig(RunConfig):
    """Granularity-priors box head trained on the dataset's boxes (encoder frozen)."""

    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(
        default_factory=lambda: OptimConfig(
            base_lr=1e-3,
            min_lr=1e-5,
            warmup_lr=1e-6,
            warmup_epochs=0,
            weight_decay=1e-4,
            clip_grad=10.0,
            lr_scale_batch=None,
        )
    )
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(8, ge=1)
    model_checkpoint: Optional[str] = Field(None, description="distilled EdgeSAM (frozen encoder)")
    embeddings: str = ""
    channels: int = Field(96, ge=8)
    max_boxes: int = Field(100, ge=1)


CONFIGS: Dict[str, Type[Strict]] = {
    "embed": EmbedConfig,
    "phase1": Phase1Config,
    "phase2": Phase2Config,
    "priors": PriorsConfig,
}


def _merge(base: Dict[str, Any], new: Dict[str, Any]) -> None:
    """Deep-merge `new` into `base` (sections merge, values replace)."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def set_dotted(d: Dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ValueError(f"cannot set {dotted}: {p} is not a section")
    d[parts[-1]] = value


def load_config(
    step: str, path: Union[str, Path, None] = None, overrides: Optional[List[str]] = None
) -> Any:
    """Build the validated config of `step` from defaults, an optional YAML file and
    `key.sub=value` overrides."""
    raw: Dict[str, Any] = CONFIGS[step]().model_dump(mode="json")
    if path:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
        _merge(raw, loaded)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        set_dotted(raw, key.strip(), yaml.safe_load(value))
    return CONFIGS[step].model_validate(raw)


def dump_config(cfg: BaseModel) -> str:
    """YAML text of a config (round-trips through `load_config`)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
