"""`python -m engine.distill embed|phase1|phase2|priors|evaluate|subset|synth ...`

Train your own EdgeSAM from a SAM teacher. Run the steps in order:

  1. embed     run SAM's ViT encoder once over the images and store its embeddings (fp16)
  2. phase1    encoder-only distillation: the RepViT student regresses those embeddings
  3. phase2    prompt-in-the-loop distillation: student encoder + mask decoder learn the
               teacher's masks from box/point prompts and their own correction points
  4. evaluate  mIoU with box and point prompts (+ correction points) for any model file
  (optional) priors   train the granularity-priors box head used with point prompts

Every training step takes a YAML config (--config) whose defaults are the official values;
`--print-config` shows them, `--set key.sub=value` overrides single values. Multi-GPU:
`torchrun --nproc_per_node N -m engine.distill phase1 ...` (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from engine.distill.config import dump_config, load_config
from engine.distill.data import (
    DistillDataset,
    collate,
    make_records,
    official_subset,
    read_subset_list,
)
from engine.distill.embeddings import EmbeddingWriter, compute_embeddings
from engine.distill.evaluate import EvalSettings, evaluate_records, load_model
from engine.distill.phases import Phase1Task, Phase2Task
from engine.distill.priors import PriorsTask, load_priors
from engine.distill.synthetic import make_sa1b
from engine.distill.trainer import init_distributed, train
from engine.distill.vit import load_teacher

STEP_HELP = {
    "embed": (
        "Compute the teacher embeddings once",
        "Runs SAM's ViT image encoder (vit_h by default, loaded strictly from the official "
        "sam_vit_*.pth) over every image with the training preprocessing and stores the "
        "256x64x64 outputs as float16 shards plus an index in --output. Re-running resumes: "
        "images already stored are skipped. Under torchrun each rank takes every N-th image.",
    ),
    "phase1": (
        "Encoder-only distillation",
        "Trains the RepViT student encoder to reproduce the stored teacher embeddings (MSE "
        "over the unpadded part of the 64x64 map). Writes checkpoints (last.pt, resumable), "
        "metrics.csv / metrics.jsonl, and edge_sam_phase1.pth: a full EdgeSAM file in the "
        "official layout (prompt encoder and mask decoder from --sam-checkpoint).",
    ),
    "phase2": (
        "Prompt-in-the-loop distillation",
        "Starts from the phase-1 encoder and SAM's prompt encoder / mask decoder. Each batch "
        "uses box or point prompts from the annotations; the student and the frozen teacher "
        "decoder (on the stored embeddings) decode twice, the second time with a correction "
        "point drawn where the two masks disagree. Loss: BCE + Dice against the teacher's "
        "thresholded masks. Writes edge_sam_phase2.pth, loadable by engine.load_model and the "
        "service as it is.",
    ),
    "priors": (
        "Train the granularity-priors box head (optional)",
        "Trains a light class-agnostic box head on the frozen distilled encoder's multi-scale "
        "features, on the dataset's boxes. Writes edge_sam_priors.pth: the EdgeSAM weights plus "
        "fpn.*/rpn_head.* keys (a plain EdgeSAM loader ignores them).",
    ),
    "evaluate": (
        "mIoU as the paper reports it",
        "Box prompts and/or point prompts (the GT-mask centre), each followed by correction "
        "points drawn from the errors; mIoU x100 after 0..N points, on SA-1B- or COCO-format "
        "ground truth, for any model file the engine loads.",
    ),
    "subset": (
        "List the official 1%% SA-1B subset",
        "Reads the SA-1B links file (file_name<TAB>cdn_link) and prints the rows of the "
        "official training (sa_000020-29) or validation (sa_000130) subset.",
    ),
    "synth": (
        "Write a tiny synthetic SA-1B-format dataset",
        "Images with coloured shapes and exact masks, for a smoke run on a CPU.",
    ),
}


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file (defaults: the official values)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value, e.g. --set optim.base_lr=0.05 (repeatable)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--data-root", help="= data.root")
    p.add_argument("--image-size", type=int, help="= data.image_size")
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--sam-checkpoint", help="official SAM checkpoint (sam_vit_h_4b8939.pth)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.distill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="step", required=True)
    for name in ("embed", "phase1", "phase2", "priors"):
        short, long = STEP_HELP[name]
        p = sub.add_parser(name, help=short, description=long)
        _add_config_args(p)
        if name == "embed":
            p.add_argument("--output", help="embedding store directory")
            p.add_argument("--teacher", choices=["vit_b", "vit_l", "vit_h"])
        else:
            p.add_argument("--output-dir", help="checkpoints, logs and the exported model")
            p.add_argument("--epochs", type=int)
            if name != "priors":
                p.add_argument("--embeddings", help="teacher embedding store (from `embed`)")
        if name == "phase2":
            p.add_argument("--phase1-checkpoint", help="edge_sam_phase1.pth (or last.pt)")
        if name == "priors":
            p.add_argument("--model-checkpoint", help="distilled EdgeSAM file (frozen encoder)")

    short, long = STEP_HELP["evaluate"]
    p = sub.add_parser("evaluate", help=short, description=long)
    p.add_argument(
        "--model", required=True, help="model file (.pth / .safetensors, official layout)"
    )
    p.add_argument("--format", choices=["sa1b", "coco"], default="sa1b")
    p.add_argument("--data-root", required=True, help="SA-1B folder, or COCO image folder")
    p.add_argument("--split", default=None, help="SA-1B split folder (e.g. val)")
    p.add_argument("--ann-file", help="COCO instances json")
    p.add_argument("--limit", type=int, help="first N images (SA-1K: 1000 of sa_000130)")
    p.add_argument("--prompt", choices=["box", "point", "both"], default="both")
    p.add_argument("--refine-iters", type=int, default=3)
    p.add_argument("--point-from", choices=["mask-center", "annotation"], default="mask-center")
    p.add_argument("--max-prompts", type=int, default=64, help="per image (0: all)")
    p.add_argument(
        "--output",
        choices=["single", "score"],
        default="single",
        help="token 0, or the best-scored of the 3 multimask tokens",
    )
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--priors", help="checkpoint with fpn.*/rpn_head.* (point prompts get a box)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--json", help="also write the results here")

    short, long = STEP_HELP["subset"]
    p = sub.add_parser("subset", help=short, description=long)
    p.add_argument("--links", required=True, help="SA-1B links TSV")
    p.add_argument("--split", choices=["train", "val"], default="train")

    short, long = STEP_HELP["synth"]
    p = sub.add_parser("synth", help=short, description=long)
    p.add_argument("--output", required=True)
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--split", default="train")
    return parser


def _cuda() -> bool:
    return torch.cuda.is_available()


def resolve_config(args: argparse.Namespace) -> Any:
    sets = list(args.set)
    mapping = {
        "data_root": "data.root",
        "image_size": "data.image_size",
        "batch_size": "batch_size",
        "sam_checkpoint": "sam_checkpoint",
        "output": "output",
        "teacher": "teacher",
        "output_dir": "output_dir",
        "epochs": "epochs",
        "embeddings": "embeddings",
        "phase1_checkpoint": "phase1_checkpoint",
        "model_checkpoint": "model_checkpoint",
    }
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            sets.append(f"{key}={json.dumps(value)}")
    return load_config(args.step, args.config, sets)


def run_embed(cfg: Any) -> int:

    env = init_distributed()
    d = cfg.data
    records = make_records(d.format, d.root, d.split, d.ann_file, d.limit)[env.rank :: env.world]
    grid = d.image_size // 16
    meta = {"teacher": cfg.teacher, "image_size": d.image_size, "checkpoint": cfg.sam_checkpoint}
    with EmbeddingWriter(cfg.output, (256, grid, grid), env.rank, meta) as writer:
        todo = [r for r in records if r.key not in writer]
        logging.info("rank %d: %d of %d images to embed", env.rank, len(todo), len(records))
        if todo:
            teacher = load_teacher(cfg.sam_checkpoint, cfg.teacher, d.image_size, env.device)
            loader = DataLoader(
                DistillDataset(todo, d.image_size),
                cfg.batch_size,
                num_workers=d.num_workers,
                collate_fn=collate,
            )
            amp = torch.float16 if cfg.amp and env.device.type == "cuda" else None
            compute_embeddings(
                teacher, loader, writer, env.device, amp, cfg.progress and env.is_main, len(todo)
            )
    if env.world > 1:
        dist.barrier()
    return 0


def run_train(step: str, cfg: Any) -> int:
    env = init_distributed()
    tasks = {"phase1": Phase1Task, "phase2": Phase2Task, "priors": PriorsTask}
    path = train(cfg, tasks[step](cfg, env), env)
    if env.is_main:
        print(f"wrote {path}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.image_size, args.device)
    priors = None
    if args.priors:
        priors = load_priors(args.priors, device=args.device)
    root = args.data_root
    records = make_records(args.format, root, args.split, args.ann_file, args.limit)
    results = []
    for prompt in ["box", "point"] if args.prompt == "both" else [args.prompt]:
        settings = EvalSettings(
            prompt, args.refine_iters, args.point_from, args.max_prompts or None, args.output
        )
        res = evaluate_records(
            model,
            records,
            args.image_size,
            settings,
            args.device,
            priors if prompt == "point" else None,
            progress=True,
        )
        results.append(res)
        cells = "  ".join(f"+{i}: {v:.2f}" for i, v in enumerate(res["miou"]))
        print(
            f"{prompt:5s} mIoU  {cells}   ({res['num_prompts']} prompts, {res['num_images']} images)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.step in ("embed", "phase1", "phase2", "priors"):
        cfg = resolve_config(args)
        if args.print_config:
            print(dump_config(cfg), end="")
            return 0
        return run_embed(cfg) if args.step == "embed" else run_train(args.step, cfg)
    if args.step == "evaluate":
        return run_evaluate(args)
    if args.step == "subset":
        for name, link in official_subset(read_subset_list(args.links), args.split):
            print(f"{name}\t{link}")
        return 0
    if args.step == "synth":
        make_sa1b(args.output, args.num_images, split=args.split)
        print(f"wrote {args.num_images} images under {args.output}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
