"""Packages that coexist: the two wheels this repository builds claim no top-level import
name but their own (`proto` is proto-plus's, which every google-cloud library depends on;
`client` is anyone's), and both install beside proto-plus into one virtual environment.

The server wheel goes in with `--no-deps` plus only what its entry point and its gRPC
message translation import (pydantic): its full dependencies (torch, ONNX Runtime, OpenCV)
would take minutes and say nothing about import names. The client wheel gets its own
dependencies (grpcio, protobuf, httpx, numpy), resolved together with proto-plus's."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli before 3.11
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.slow


def top_level_names(wheel: Path) -> set[str]:
    """What installing `wheel` puts at the top of site-packages, from its RECORD (the list
    pip installs and uninstalls by), checked against the archive itself."""
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    record = archive.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    recorded = [row[0] for row in csv.reader(io.StringIO(record)) if row]
    assert sorted(recorded) == sorted(names)
    return {name.split("/")[0] for name in recorded if ".dist-info/" not in name}


def metadata(wheel: Path) -> list[str]:
    archive = zipfile.ZipFile(wheel)
    name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    return archive.read(name).decode().splitlines()


def test_each_wheel_claims_only_its_own_import_names(
    client_wheel: Path, server_wheel: Path
) -> None:
    assert top_level_names(client_wheel) == {"edgesam_client"}
    assert top_level_names(server_wheel) == {"engine", "service"}


def test_the_server_depends_on_the_client_of_the_same_version(
    client_wheel: Path, server_wheel: Path
) -> None:
    client = tomllib.loads((REPO_ROOT / "clients/python/pyproject.toml").read_text())["project"]
    server = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert client["version"] == server["version"]
    assert f"Requires-Dist: edgesam-client=={client['version']}" in metadata(server_wheel)
    # one owner of the `edgesam` command: two wheels writing one script would clash
    assert "scripts" not in server and client["scripts"] == {"edgesam": "edgesam_client.cli:main"}


def test_both_wheels_install_beside_proto_plus(
    client_wheel: Path, server_wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "-q", "--disable-pip-version-check", "install"]
    for extra in (
        ["proto-plus>=1.22,<2", str(client_wheel), "pydantic>=2.6,<3", "pydantic-settings>=2.7,<3"],
        ["--no-deps", str(server_wheel)],
    ):
        done = subprocess.run(pip + extra, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    code = """
import importlib.metadata as md, importlib.util, sys
import proto
owner = {str(f).split("/")[0] for f in md.distribution("proto-plus").files}
assert "proto" in owner and proto.__file__.startswith(sys.prefix), proto.__file__
class Point(proto.Message):
    x = proto.Field(proto.INT32, number=1)
assert Point(x=3).x == 3 and proto.Message.__module__ == "proto.message"
import edgesam_client, edgesam_client.grpc_transport, edgesam_client.http_transport
from edgesam_client.grpc_stubs import segmentation_pb2 as pb
assert pb.DESCRIPTOR.name == "edgesam/v1/segmentation.proto"
assert pb.SegmentRequest(image_id="a").image_id == "a"
import service.grpc_convert, service.__main__
assert callable(service.__main__.main)
for name in ("edgesam_client", "service"):
    assert sys.modules[name].__file__.startswith(sys.prefix), sys.modules[name].__file__
print("client" if importlib.util.find_spec("client") else "ok")
"""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),  # no downloaded checkpoint found
    }
    done = subprocess.run(
        [python, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "ok"
    # The server's entry point starts and stops at its first check (no weights given), before
    # torch, which this environment lacks on purpose.
    serve = subprocess.run(
        [python, "-m", "service"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert serve.returncode == 2, serve.stdout + serve.stderr
    assert "no checkpoint" in serve.stderr and "Traceback" not in serve.stderr
    edgesam = subprocess.run(
        [str(venv / "bin" / "edgesam"), "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert edgesam.returncode == 0 and "usage" in edgesam.stdout.lower(), edgesam.stderr
