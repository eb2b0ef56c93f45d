"""Python 3.8, the system Python of the JetPack 5 image: everything that runs there must at
least compile with it. The full 3.8 run (torch 2.1, the tests) is deploy/jetson/check-py38.sh.

The interpreter: EDGESAM_PYTHON38, else python3.8 on PATH, else pyenv's 3.8.x; the test is
skipped, saying so, where none exists."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy_checks import REPO

# What runs inside the JetPack 5 image: the packages, the benchmark that build-engine.sh
# starts, and the image's helper scripts.
SOURCES = ("engine", "service", "clients/python", "proto", "bench", "deploy/docker")


def _is_python38(exe: str) -> bool:
    probe = subprocess.run(
        [exe, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return probe.stdout.strip() == "True"


def python38() -> str | None:
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [os.environ.get("EDGESAM_PYTHON38"), shutil.which("python3.8")]
    candidates += [str(p / "bin" / "python") for p in sorted(pyenv.glob("3.8*"))]
    for exe in candidates:
        if exe and os.access(exe, os.X_OK) and _is_python38(exe):
            return exe
    return None


@pytest.fixture(scope="module")
def py38() -> str:
    exe = python38()
    if exe is None:
        pytest.skip(
            "no Python 3.8 interpreter (set EDGESAM_PYTHON38, or put python3.8 on PATH or "
            "under pyenv): the JetPack 5 compile check did not run"
        )
    return exe


def compileall(py38: str, cache: Path, *paths: Path) -> subprocess.CompletedProcess[str]:
    """`python3.8 -m compileall` with every .pyc under `cache`, none in the repository."""
    return subprocess.run(
        [py38, "-m", "compileall", "-q", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPYCACHEPREFIX": str(cache)},
    )


def test_runtime_code_compiles_on_python_3_8(py38: str, tmp_path: Path) -> None:
    result = compileall(py38, tmp_path / "pyc", *(REPO / s for s in SOURCES))
    assert result.returncode == 0, result.stdout + result.stderr
    written = list((tmp_path / "pyc").rglob("*.cpython-38.pyc"))
    assert len(written) >= 50, "compileall compiled next to nothing"


def test_the_check_catches_newer_syntax(py38: str, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "new.py").write_text("with (open('a') as a, open('b') as b):\n    pass\n")
    result = compileall(py38, tmp_path / "pyc", source)
    assert result.returncode != 0 and "new.py" in result.stdout
