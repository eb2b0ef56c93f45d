"""Phase-2 (prompt-in-the-loop) training speed on a GPU with real-size models on synthetic
data: steps per second at batch 8, 1024x1024 inputs, mixed precision.

    python bench/distill_gpu.py [--batch-size 8] [--steps 12] [--amp-dtype bfloat16]

The teacher embeddings come from a randomly initialised ViT-B (speed only; the numbers the
student learns are meaningless). Prints the median seconds per step after the first steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.distill.config import load_config
from engine.distill.data import DistillDataset, collate, sa1b_records
from engine.distill.embeddings import EmbeddingWriter, compute_embeddings
from engine.distill.phases import Phase2Task
from engine.distill.synthetic import make_sa1b, write_random_sam_checkpoint
from engine.distill.trainer import DistEnv, train
from engine.distill.vit import build_sam_vit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--amp-dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    tmp = Path(tempfile.mkdtemp(prefix="distill-bench-"))
    n_images = args.batch_size * args.steps  # one epoch: sec_per_step is a per-epoch mean
    make_sa1b(tmp / "data", num_images=n_images, height=768, width=1024, seed=3)
    recs = sa1b_records(tmp / "data", "train")
    teacher = build_sam_vit("vit_b").cuda().eval()
    loader = torch.utils.data.DataLoader(DistillDataset(recs, 1024), 4, collate_fn=collate)
    with EmbeddingWriter(tmp / "emb", (256, 64, 64)) as writer:
        compute_embeddings(teacher, loader, writer, torch.device("cuda"), torch.float16, False)
    del teacher
    write_random_sam_checkpoint(tmp / "sam.pth")
    settings = {
        "data.root": str(tmp / "data"),
        "data.num_workers": 4,
        "embeddings": str(tmp / "emb"),
        "sam_checkpoint": str(tmp / "sam.pth"),
        "amp": True,
        "amp_dtype": args.amp_dtype,
        "log_every": 1,
        "batch_size": args.batch_size,
        "max_steps": args.steps,
        "output_dir": str(tmp / "p2"),
    }
    cfg = load_config("phase2", None, [f"{k}={json.dumps(v)}" for k, v in settings.items()])
    env = DistEnv(device=torch.device("cuda"))
    start = time.perf_counter()
    train(cfg, Phase2Task(cfg, env), env, progress=False)
    total = time.perf_counter() - start
    rows = [json.loads(line) for line in (tmp / "p2" / "metrics.jsonl").read_text().splitlines()]
    # sec_per_step is a running mean from the first step: difference successive totals.
    totals = [r["sec_per_step"] * (i + 1) for i, r in enumerate(rows)]
    per_step = [b - a for a, b in zip(totals, totals[1:])][2:]
    med = statistics.median(per_step) if per_step else float("nan")
    print(
        json.dumps(
            {
                "gpu": torch.cuda.get_device_name(0),
                "torch": torch.__version__,
                "batch_size": args.batch_size,
                "amp_dtype": args.amp_dtype,
                "steps": len(rows),
                "median_sec_per_step": round(med, 4),
                "steps_per_sec": round(1.0 / med, 2) if med == med else None,
                "images_per_sec": round(args.batch_size / med, 1) if med == med else None,
                "wall_s_including_startup": round(total, 1),
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
