"""`clients/python` builds the client alone: a wheel with client/ and proto/ only, whose
install imports and runs without torch, the engine or the server."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("client-wheel")
    done = subprocess.run(
        [*PIP, "wheel", "--no-deps", str(REPO_ROOT / "clients" / "python"), "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("edgesam_client-*.whl")
    return path


def test_wheel_holds_the_client_and_the_stubs_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("edgesam_client-")}
    assert tops == {"client", "proto"}
    assert "proto/edgesam/v1/segmentation_pb2_grpc.py" in names
    assert "client/cli.py" in names and not any("__pycache__" in n for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and not any(
        dep in line for line in requires for dep in ("torch", "fastapi", "onnx", "redis")
    )


def test_installed_alone_it_imports_and_runs_without_the_server(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "-q", "--disable-pip-version-check", "install", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    code = (
        "import sys, client, client.grpc_transport, client.http_transport;"
        "from proto.edgesam.v1 import segmentation_pb2;"
        "assert client.__file__.startswith(sys.prefix), client.__file__;"
        "import importlib.util as u;"
        "print([m for m in ('torch', 'engine', 'service') if u.find_spec(m)])"
    )
    done = subprocess.run(
        [str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "[]"  # none of the server's packages are even installed
    cli = subprocess.run(
        [str(venv / "bin" / "edgesam"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 0 and "usage" in cli.stdout.lower(), cli.stdout + cli.stderr
