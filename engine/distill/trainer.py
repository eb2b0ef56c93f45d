"""The training loop shared by phase 1, phase 2 and the granularity-priors head.

One process per device; under torchrun it runs DDP (NCCL on GPUs, gloo on CPUs). Checkpoints
hold everything needed to resume mid-run; metrics go to `metrics.csv` and `metrics.jsonl`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from engine.distill.config import dump_config
from engine.distill.data import DistillDataset, ShardedShuffleSampler, collate, make_records
from engine.distill.embeddings import open_store

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- distributed


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistEnv:
    """Join the torchrun group if WORLD_SIZE > 1 (NCCL with CUDA, else gloo); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return DistEnv(rank, world, local, device)


def average_buffers(module: nn.Module, env: DistEnv) -> None:
    """Average floating buffers (BatchNorm statistics) over ranks so every rank holds, and
    every checkpoint stores, the same model."""
    if env.world == 1:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(env.world)


# --------------------------------------------------------------------------- schedule


def lr_at(
    step: int,
    total: int,
    warmup: int,
    base: float,
    warmup_lr: float,
    min_lr: float,
    warmup_prefix: bool = False,
) -> float:
    """Per-iteration LR: linear warmup from `warmup_lr`, then cosine down to `min_lr`.

    With `warmup_prefix=False` (timm 0.4.12, the official runs) the cosine is measured from step
    0, so the LR falls from its peak to the cosine value at once when warmup ends.
    """
    if warmup and step < warmup:
        return warmup_lr + (base - warmup_lr) * step / warmup
    t, span = (step - warmup, total - warmup) if warmup_prefix else (step, total)
    if span <= 0 or t >= span:
        return min_lr
    return min_lr + 0.5 * (base - min_lr) * (1.0 + math.cos(math.pi * t / span))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters; 1-D tensors and biases get no weight decay."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# --------------------------------------------------------------------------- logging


class MetricLogger:
    """Appends records to metrics.jsonl (all fields) and metrics.csv (fixed columns)."""

    def __init__(self, out_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.jsonl = out_dir / "metrics.jsonl"
        self.csv = out_dir / "metrics.csv"
        self.columns: list[str] | None = None
        if enabled and self.csv.is_file():
            with open(self.csv) as f:
                header = f.readline().strip()
            self.columns = header.split(",") if header else None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.columns is None:
            self.columns = list(record)
            with open(self.csv, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerow([record.get(c, "") for c in self.columns])


# --------------------------------------------------------------------------- task protocol


class Task:
    """What a phase plugs into `train`: the module to optimise and how one batch is run."""

    name = "task"
    needs_embeddings = True
    with_prompts = False

    def module(self) -> nn.Module:
        """The module that holds every trainable parameter (what DDP wraps)."""
        raise NotImplementedError

    def wrap(self, env: DistEnv) -> nn.Module:
        mod = self.module()
        if env.world == 1:
            return mod
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(mod, device_ids=ids)

    def step(
        self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Forward one batch; must return 'loss' (with grad) and any scalar stats."""
        raise NotImplementedError

    def model_state(self) -> dict[str, torch.Tensor]:
        """Weights saved in training checkpoints (and restored on resume)."""
        raise NotImplementedError

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def export(self, out_dir: Path) -> Path:
        """Write the final model file; returns its path."""
        raise NotImplementedError


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = dict(batch)
    for k in ("image", "teacher"):
        if k in out:
            out[k] = out[k].to(device, non_blocking=True)
    return out


def build_loader(
    cfg: Any, task: Task, env: DistEnv
) -> tuple[DataLoader, DistillDataset, ShardedShuffleSampler]:
    d = cfg.data
    records = make_records(d.format, d.root, d.split, d.ann_file, d.limit)
    store = None
    if task.needs_embeddings:
        store = open_store(cfg.embeddings)
        grid = d.image_size // 16
        if tuple(store.shape[1:]) != (grid, grid):
            raise ValueError(
                f"{cfg.embeddings} holds {tuple(store.shape)} embeddings; data.image_size "
                f"{d.image_size} needs 256x{grid}x{grid} (embed at the same image size)"
            )
        missing = [r.key for r in records if r.key not in store.index]
        if missing:
            log.warning(
                "%d image(s) have no teacher embedding and are skipped, e.g. %s",
                len(missing),
                missing[:3],
            )
            records = [r for r in records if r.key in store.index]
    if not records:
        raise RuntimeError(f"no training images found under {d.root}")
    dataset = DistillDataset(
        records, d.image_size, store, task.with_prompts, d.max_prompts, cfg.seed
    )
    sampler = ShardedShuffleSampler(
        len(dataset), env.rank, env.world, cfg.seed, True, cfg.reshuffle
    )
    loader = DataLoader(
        dataset,
        cfg.batch_size,
        sampler=sampler,
        num_workers=d.num_workers,
        collate_fn=collate,
        drop_last=True,
        pin_memory=env.device.type == "cuda",
    )
    if len(loader) == 0:
        raise RuntimeError(
            f"{len(dataset)} image(s) over {env.world} process(es) give no full batch of {cfg.batch_size}"
        )
    return loader, dataset, sampler


# --------------------------------------------------------------------------- training


def grad_scaler(enabled: bool) -> torch.amp.GradScaler:
    """A CUDA GradScaler: torch.amp's (torch >= 2.3; newer torch deprecates the other), else
    torch.cuda.amp's (torch 2.1 on JetPack 5)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def train(cfg: Any, task: Task, env: DistEnv | None = None, progress: bool = True) -> Path:
    """Run (or resume) a training phase; returns the exported model file."""
    env = env or init_distributed()
    out_dir = Path(cfg.output_dir)
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(_yaml(cfg))
    torch.manual_seed(cfg.seed)
    loader, dataset, sampler = build_loader(cfg, task, env)
    model = task.wrap(env)
    o = cfg.optim
    optimizer = torch.optim.AdamW(
        param_groups(task.module(), o.weight_decay), lr=o.base_lr, betas=tuple(o.betas), eps=o.eps
    )
    scale = cfg.batch_size * env.world / o.lr_scale_batch if o.lr_scale_batch else 1.0
    iters = len(loader)
    total, warmup = cfg.epochs * iters, int(round(o.warmup_epochs * iters))
    use_amp = cfg.amp and env.device.type == "cuda"
    amp_dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
    scaler = grad_scaler(enabled=use_amp and amp_dtype == torch.float16)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + env.rank)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    start_epoch, step, skip = 0, 0, 0
    last = out_dir / "last.pt"
    if cfg.resume and last.is_file():
        ck = torch.load(str(last), map_location="cpu", weights_only=True)
        task.load_model_state(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        start_epoch, step, skip = ck["epoch"], ck["step"], ck["step_in_epoch"]
        generator.set_state(ck["generators"][env.rank % len(ck["generators"])])
        if env.is_main:
            log.info("resumed from %s at epoch %d step %d", last, start_epoch, step)

    logger = MetricLogger(out_dir, env.is_main)
    stop = False
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch, skip * cfg.batch_size)
        dataset.set_epoch(epoch)
        model.train()
        t0 = time.time()
        i = skip - 1
        for i, batch in enumerate(_progress(loader, progress and env.is_main, epoch), start=skip):
            lr_base = lr_at(step, total, warmup, o.base_lr, o.warmup_lr, o.min_lr, o.warmup_prefix)
            for g in optimizer.param_groups:
                g["lr"] = lr_base * scale
            batch = to_device(batch, env.device)
            with torch.autocast(env.device.type, dtype=amp_dtype, enabled=use_amp):
                stats = task.step(model, batch, generator)
            loss = stats["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, o.clip_grad or float("inf"))
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if step % cfg.log_every == 0 or i + 1 == iters:
                rec = {
                    "step": step,
                    "epoch": epoch,
                    "iter": i + 1,
                    "lr": lr_base * scale,
                    "grad_norm": float(grad_norm),
                    **{k: float(v.detach()) for k, v in stats.items() if v.numel() == 1},
                    "sec_per_step": (time.time() - t0) / (i + 1 - skip),
                }
                logger.write(rec)
            if cfg.save_every_steps and step % cfg.save_every_steps == 0 and i + 1 < iters:
                _save(task, optimizer, scaler, generator, env, out_dir, epoch, step, i + 1, cfg)
            if cfg.max_steps and step >= cfg.max_steps:
                stop = True
                break
        done_epoch = not stop or (i + 1 == iters)
        average_buffers(task.module(), env)
        if done_epoch:
            _save(
                task,
                optimizer,
                scaler,
                generator,
                env,
                out_dir,
                epoch + 1,
                step,
                0,
                cfg,
                tag=f"epoch{epoch}",
            )
        else:
            _save(task, optimizer, scaler, generator, env, out_dir, epoch, step, i + 1, cfg)
        skip = 0
        if stop:
            break
    result = out_dir / f"edge_sam_{task.name}.pth"
    if env.is_main:
        result = task.export(out_dir)
    if env.world > 1:
        dist.barrier()
    return result


def _save(
    task: Task,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
    env: DistEnv,
    out_dir: Path,
    epoch: int,
    step: int,
    step_in_epoch: int,
    cfg: Any,
    tag: str | None = None,
) -> None:
    gens = [generator.get_state()]
    if env.world > 1:
        gathered: list[Any] = [None] * env.world
        dist.all_gather_object(gathered, gens[0])
        gens = gathered
    if not env.is_main:
        return
    ck = {
        "model": task.model_state(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "step_in_epoch": step_in_epoch,
        "generators": gens,
        "config": cfg.model_dump(mode="json"),
    }
    tmp = out_dir / "last.pt.tmp"
    torch.save(ck, str(tmp))
    tmp.replace(out_dir / "last.pt")
    if tag:
        torch.save(ck, str(out_dir / f"checkpoint_{tag}.pt"))


def _progress(loader: DataLoader, enabled: bool, epoch: int) -> Iterator[dict[str, Any]]:
    if not enabled:
        yield from loader
        return

    yield from tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False)


def _yaml(cfg: Any) -> str:
    return dump_config(cfg)
