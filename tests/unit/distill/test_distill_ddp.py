"""Two-process torchrun (gloo on CPU): both ranks end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from distill_helpers import IMAGE_SIZE

from engine.checkpoint import read_state_dict
from engine.distill.phases import check_loadable


def test_two_process_torchrun_keeps_ranks_identical(distill_data: dict, tmp_path: Path) -> None:
    overrides = {
        "data.root": str(distill_data["data"]),
        "data.image_size": IMAGE_SIZE,
        "data.num_workers": 0,
        "data.max_prompts": 4,
        "embeddings": str(distill_data["emb"]),
        "batch_size": 1,
        "sam_checkpoint": str(distill_data["sam"]),
        "log_every": 1,
        "optim.lr_scale_batch": None,
        "optim.base_lr": 1e-3,
        "optim.warmup_epochs": 0,
        "max_steps": 2,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(Path(__file__).with_name("ddp_driver.py")),
        str(tmp_path),
        json.dumps(overrides),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in ("phase1", "phase2"):
        r0 = torch.load(str(tmp_path / f"{step}-rank0.pt"), weights_only=True)
        r1 = torch.load(str(tmp_path / f"{step}-rank1.pt"), weights_only=True)
        assert len(r0["keys"]) == len(r1["keys"]) == 2
        assert not set(r0["keys"]) & set(r1["keys"]), "ranks train on different images"
        assert r0["state"].keys() == r1["state"].keys()
        for k, v in r0["state"].items():
            assert torch.equal(v, r1["state"][k]), f"{step}: {k} differs between ranks"
    # Phase 2 started from the phase-1 export and moved away from it.
    start = read_state_dict(tmp_path / "phase1" / "edge_sam_phase1.pth")
    final = check_loadable(tmp_path / "phase2" / "edge_sam_phase2.pth").state_dict()
    moved = [
        k
        for k in start
        if k.startswith("image_encoder.")
        and start[k].is_floating_point()
        and not torch.equal(start[k], final[k])
    ]
    assert moved
