"""The two wheels this repository builds, built once per run: `edgesam-client`
(clients/python) and `edgesam-serve` (the repository root)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


def build_wheel(source: Path, out: Path, pattern: str) -> Path:
    """`pip wheel --no-deps` (hatchling in pip's isolated build environment)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "wheel", "--no-deps"]
        + [str(source), "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob(pattern)
    return path


@pytest.fixture(scope="session")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("client-wheel")
    return build_wheel(REPO_ROOT / "clients" / "python", out, "edgesam_client-*.whl")


@pytest.fixture(scope="session")
def server_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("server-wheel")
    return build_wheel(REPO_ROOT, out, "edgesam_serve-*.whl")
