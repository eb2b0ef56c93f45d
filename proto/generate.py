"""Regenerate the Python stubs of every `.proto` under proto/ (committed in the client).

    python -m proto.generate            # rewrite clients/python/edgesam_client/_proto/...
    python -m proto.generate --check    # exit 1 when the committed stubs are stale

Run from a checkout (proto/ is in no wheel). The stubs go to the client package
(clients/python/edgesam_client/_proto/edgesam/v1/*_pb2*.py(i)), which the server depends on;
import them through `edgesam_client.grpc_stubs`.

The committed stubs come from grpcio-tools 1.70 (protobuf 5.29 gencode, `grpcio>=1.70`): the
newest that still runs on Python 3.8, whose stubs every runtime in pyproject.toml accepts
(protobuf 5.29 on 3.8, 7.x on 3.10+). Writing them therefore needs that generator (the
deploy/jetson/check-py38.sh venv has it). `--check` works with any grpcio-tools from 1.70 on:
it ignores the version stamps and the few lines newer generators only write differently.

The `.proto` files are compiled with proto/ as the include root, so their descriptor names
are the canonical `edgesam/v1/...` (what reflection shows and other languages import); the
one import the gRPC plugin writes (`from edgesam.v1 import ...`) is made relative so the stubs
import as `edgesam_client._proto.edgesam.v1` wherever the package is.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
# Where the committed stubs live: inside the client's import package, mirroring proto/.
STUB_ROOT = PROTO_ROOT.parent / "clients" / "python" / "edgesam_client" / "_proto"
PROTOS = ["edgesam/v1/segmentation.proto"]
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# The generator the committed stubs must come from (see the module docstring).
STUB_GENERATOR = (1, 70)
# Lines that only record which protoc/grpcio-tools wrote the file.
_STAMP = re.compile(
    r"^(# Protobuf Python Version: .*|GRPC_GENERATED_VERSION = .*|\s*_runtime_version\.\w+,"
    r"\s*\d+,\s*|\s*\d+,\s*)$"
)
# Lines that grpcio-tools 1.70 and newer ones write differently for the same .proto: the
# .pyi's typing imports (one line or two) are left out, the rest is mapped to one spelling:
# `class X(object):`, an f-prefix on a string without fields, proto3 bools typed Optional.
_TYPING_IMPORT = re.compile(r"^from (typing|collections\.abc) import ")
_SPELLING = (
    (re.compile(r"^class (\w+)\(object\):$"), r"class \1:"),
    (re.compile(r"\bf'([^'{}]*)'"), r"'\1'"),
    (re.compile(r": _Optional\[bool\] = \.\.\."), ": bool = ..."),
)


class GenerationError(RuntimeError):
    """protoc failed."""


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into `out_dir` (mirroring proto/), fix imports; returns the files."""
    from grpc_tools import protoc

    try:
        from importlib.resources import files

        well_known = str(files("grpc_tools") / "_proto")
    except (ImportError, TypeError):  # pragma: no cover
        well_known = ""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        *([f"-I{well_known}"] if well_known else []),
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise GenerationError(f"protoc failed: {' '.join(args)}")
    written = []
    for proto in PROTOS:
        stem = proto[: -len(".proto")]
        package = Path(proto).parent.as_posix().replace("/", ".")
        for suffix in SUFFIXES:
            path = out_dir / f"{stem}{suffix}"
            text = path.read_text()
            text = re.sub(
                rf"^from {re.escape(package)} import ", "from . import ", text, flags=re.M
            )
            path.write_text(text)
            written.append(path)
    return written


def normalise(text: str) -> str:
    """The file without the lines that only stamp the generator's version, in one spelling."""
    lines = []
    for line in text.splitlines():
        if _STAMP.match(line) or _TYPING_IMPORT.match(line):
            continue
        for pattern, replacement in _SPELLING:
            line = pattern.sub(replacement, line)
        lines.append(line)
    return "\n".join(lines)


def generator_version() -> tuple[int, ...]:
    from importlib.metadata import version

    return tuple(int(part) for part in version("grpcio-tools").split(".")[:2])


def stale_files() -> list[str]:
    """Committed stubs that differ from freshly generated ones (ignoring version stamps)."""
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for fresh in generate(Path(tmp)):
            rel = fresh.relative_to(tmp)
            committed = STUB_ROOT / rel
            if not committed.is_file() or normalise(committed.read_text()) != normalise(
                fresh.read_text()
            ):
                stale.append(rel.as_posix())
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proto.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for rel in stale:
            where = Path(os.path.relpath(STUB_ROOT / rel, PROTO_ROOT.parent)).as_posix()
            print(f"stale: {where} (run python -m proto.generate)", file=sys.stderr)
        return 1 if stale else 0
    found = generator_version()
    if found != STUB_GENERATOR:
        want = ".".join(map(str, STUB_GENERATOR))
        print(
            f"grpcio-tools {'.'.join(map(str, found))} is installed; the committed stubs come "
            f"from grpcio-tools {want}.* so that Python 3.8 (protobuf 5.29) can load them: "
            f"pip install 'grpcio-tools=={want}.*' in a separate venv and run this there",
            file=sys.stderr,
        )
        return 2
    for path in generate(STUB_ROOT):
        print(path.relative_to(PROTO_ROOT.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
