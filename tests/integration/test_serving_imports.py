"""Training is not serving: `python -m service`, started as users start it, imports no module
of engine.distill (the trainer, its data loading and distributed set-up stay out).

torch.distributed and torch.utils.data are not checked: `import torch` loads both itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.priors import GranularityPriors
from tests.conftest import free_port


def _modules_after_start(repo_root: Path, tmp_path: Path, **env: str) -> list[str]:
    out = tmp_path / "modules.txt"
    full = {k: v for k, v in os.environ.items() if not k.startswith("EDGESAM_")}
    full.update(
        EDGESAM_WEIGHTS_DIR=str(tmp_path),
        EDGESAM_ALLOW_RANDOM_WEIGHTS="1",
        EDGESAM_HTTP_HOST="127.0.0.1",
        EDGESAM_HTTP_PORT=str(free_port()),
        EDGESAM_GRPC_PORT=str(free_port()),
        EDGESAM_DRAIN_SECONDS="0",
        EDGESAM_TORCH_THREADS="1",
        EDGESAM_LOG_LEVEL="warning",
        **env,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.modules_probe", str(out)],
        cwd=repo_root,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert out.is_file(), (
        f"the service never became ready (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    )
    return out.read_text().split()


@pytest.mark.parametrize("with_priors", [False, True], ids=["plain", "granularity-priors"])
def test_the_service_imports_no_training_module(
    repo_root: Path, tmp_path: Path, with_priors: bool
) -> None:
    env = {"EDGESAM_BACKEND": "torch"}
    if with_priors:  # the head's inference is served; its training code must stay out
        priors = tmp_path / "priors.pth"
        torch.save(GranularityPriors().state_dict(), str(priors))
        env["EDGESAM_PRIORS_CHECKPOINT"] = str(priors)
    modules = _modules_after_start(repo_root, tmp_path, **env)
    # the probe saw a started service: the engine, both transports and the core are loaded
    for loaded in ("engine.backends.registry", "service.core", "service.grpc_server"):
        assert loaded in modules
    assert [m for m in modules if m == "engine.distill" or m.startswith("engine.distill.")] == []
