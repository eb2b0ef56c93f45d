"""`clients/python` builds the client alone: a wheel with the one import package
`edgesam_client` (the gRPC stubs inside it), whose install imports and runs without torch,
the engine or the server."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path


def test_wheel_holds_the_client_and_the_stubs_only(client_wheel: Path) -> None:
    names = zipfile.ZipFile(client_wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("edgesam_client-")}
    assert tops == {"edgesam_client"}
    assert "edgesam_client/_proto/edgesam/v1/segmentation_pb2_grpc.py" in names
    assert "edgesam_client/_proto/edgesam/v1/segmentation_pb2.pyi" in names
    assert "edgesam_client/cli.py" in names and not any("__pycache__" in n for n in names)
    assert not any(n.endswith(".proto") for n in names)  # the contract stays in proto/
    meta = zipfile.ZipFile(client_wheel).read(next(n for n in names if n.endswith("METADATA")))
    requires = [line for line in meta.decode().splitlines() if line.startswith("Requires-Dist:")]
    assert requires and not any(
        dep in line for line in requires for dep in ("torch", "fastapi", "onnx", "redis")
    )
    entry_points = zipfile.ZipFile(client_wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))
    )
    assert "edgesam = edgesam_client.cli:main" in entry_points.decode()


def test_installed_alone_it_imports_and_runs_without_the_server(
    client_wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "-q", "--disable-pip-version-check", "install"]
        + [str(client_wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    code = (
        "import sys, edgesam_client, edgesam_client.grpc_transport, edgesam_client.http_transport;"
        "from edgesam_client.grpc_stubs import segmentation_pb2;"
        "assert edgesam_client.__file__.startswith(sys.prefix), edgesam_client.__file__;"
        "import importlib.util as u;"
        "print([m for m in ('torch', 'engine', 'service', 'client', 'proto') if u.find_spec(m)])"
    )
    done = subprocess.run(
        [str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "[]"  # none of the server's packages, no client or proto
    cli = subprocess.run(
        [str(venv / "bin" / "edgesam"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 0 and "usage" in cli.stdout.lower(), cli.stdout + cli.stderr
