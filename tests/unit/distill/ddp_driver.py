"""Run by torchrun in test_distill_ddp: phase 1 then phase 2 for two steps each, then every
rank saves its weights and the image keys it trained on."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from engine.distill.config import load_config
from engine.distill.phases import Phase1Task, Phase2Task
from engine.distill.trainer import init_distributed, train


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    overrides = json.loads(sys.argv[2])
    env = init_distributed()
    for step, task_cls in (("phase1", Phase1Task), ("phase2", Phase2Task)):
        sets = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
        sets.append(f"output_dir={json.dumps(str(out / step))}")
        if step == "phase2":
            sets.append(
                f"phase1_checkpoint={json.dumps(str(out / 'phase1' / 'edge_sam_phase1.pth'))}"
            )
        cfg = load_config(step, None, sets)
        task = task_cls(cfg, env)
        seen: list[str] = []
        inner = task.step

        def step_fn(model, batch, gen, inner=inner, seen=seen):  # noqa: ANN001, ANN202
            seen.extend(batch["key"])
            return inner(model, batch, gen)

        task.step = step_fn  # type: ignore[method-assign]
        train(cfg, task, env, progress=False)
        torch.save(
            {"state": task.model_state(), "keys": seen}, str(out / f"{step}-rank{env.rank}.pt")
        )


if __name__ == "__main__":
    main()
