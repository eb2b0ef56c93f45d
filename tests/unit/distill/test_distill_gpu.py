"""GPU checks (skipped without CUDA): the teacher on the GPU, and both phases with mixed
precision at the real 1024 input size."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.distill.config import load_config
from engine.distill.data import DistillDataset, collate, sa1b_records
from engine.distill.embeddings import EmbeddingWriter, compute_embeddings
from engine.distill.evaluate import EvalSettings, evaluate_records, load_model
from engine.distill.phases import Phase1Task, Phase2Task, check_loadable
from engine.distill.synthetic import make_sa1b, write_random_sam_checkpoint
from engine.distill.trainer import DistEnv, train
from engine.distill.vit import build_sam_vit

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_vit_on_gpu_matches_cpu() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = build_sam_vit("vit_tiny").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                p.normal_(0.0, 0.5)
        x = torch.randn(1, 3, 1024, 1024)
        ref = model(x)
        out = model.cuda()(x.cuda()).cpu()
    assert (out - ref).abs().max().item() < 1e-4


def test_vit_h_teacher_speed_fp16() -> None:
    model = build_sam_vit("vit_h").cuda().eval()
    x = torch.randn(4, 3, 1024, 1024, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        for _ in range(2):
            model(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(3):
            out = model(x)
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / 3
    print(
        f"ViT-H fp16 batch 4: {dt * 1000:.0f} ms/batch, {4 / dt:.1f} img/s, "
        f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )
    assert out.shape == (4, 256, 64, 64) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_phases_with_mixed_precision_at_1024(tmp_path: Path, amp_dtype: str) -> None:
    make_sa1b(tmp_path / "data", num_images=4, height=480, width=640, seed=2)
    recs = sa1b_records(tmp_path / "data", "train")
    teacher = build_sam_vit("vit_b").cuda().eval()
    loader = torch.utils.data.DataLoader(DistillDataset(recs, 1024), 2, collate_fn=collate)
    with EmbeddingWriter(tmp_path / "emb", (256, 64, 64)) as w:
        compute_embeddings(teacher, loader, w, torch.device("cuda"), torch.float16, progress=False)
    write_random_sam_checkpoint(tmp_path / "sam.pth")
    common = {
        "data.root": str(tmp_path / "data"),
        "data.num_workers": 2,
        "embeddings": str(tmp_path / "emb"),
        "sam_checkpoint": str(tmp_path / "sam.pth"),
        "amp": True,
        "amp_dtype": amp_dtype,
        "log_every": 1,
        "batch_size": 2,
        "max_steps": 4,
    }
    env = DistEnv(device=torch.device("cuda"))
    sets = [
        f"{k}={json.dumps(v)}" for k, v in {**common, "output_dir": str(tmp_path / "p1")}.items()
    ]
    cfg = load_config("phase1", None, sets)
    t = time.perf_counter()
    p1 = train(cfg, Phase1Task(cfg, env), env, progress=False)
    t1 = time.perf_counter() - t
    sets = [
        f"{k}={json.dumps(v)}"
        for k, v in {
            **common,
            "output_dir": str(tmp_path / "p2"),
            "phase1_checkpoint": str(p1),
        }.items()
    ]
    cfg = load_config("phase2", None, sets)
    t = time.perf_counter()
    p2 = train(cfg, Phase2Task(cfg, env), env, progress=False)
    t2 = time.perf_counter() - t
    for path in (tmp_path / "p1/metrics.jsonl", tmp_path / "p2/metrics.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == 4 and all(np.isfinite(r["loss"]) for r in rows)
        print(amp_dtype, path.parent.name, [round(r["loss"], 4) for r in rows])
    print(f"{amp_dtype}: phase1 4 steps {t1:.1f}s, phase2 4 steps {t2:.1f}s (incl. start-up)")
    check_loadable(p2)
    res = evaluate_records(
        load_model(p2, 1024, "cuda"), recs[:2], 1024, EvalSettings("point", 1), "cuda"
    )
    assert all(0.0 <= v <= 100.0 for v in res["miou"])
