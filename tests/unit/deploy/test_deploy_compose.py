"""docker-compose.yml: valid against the compose-spec schema, and shaped as the issue asks."""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
from deploy_checks import REPO, duration_seconds, interpolate, load_compose

EDGESAM_SERVICES = ("edgesam", "edgesam-cpu")


def compose_schema() -> dict[str, Any]:
    # The compose-spec schema as vendored by check-jsonschema (a dev dependency).
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def schema_errors(doc: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def test_compose_file_is_valid_against_compose_spec(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["services"]["redis"].__setitem__("restart_policy", "always"),
        lambda c: c["services"]["edgesam"].__setitem__("ports", {"http": 8000}),
        lambda c: c["services"]["edgesam"]["depends_on"]["redis"].__setitem__(
            "condition", "service_ready"
        ),
        lambda c: c.__setitem__("version", 3),
    ],
    ids=["unknown-key", "wrong-type", "bad-enum", "top-level-version-number"],
)
def test_schema_check_rejects_broken_files(compose: dict[str, Any], mutate: Any) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert schema_errors(broken), "the schema check must be able to fail"


def test_every_variable_has_a_default_so_it_runs_without_env_file() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    variables = re.findall(r"\$\{[^}]*\}", text)
    assert variables, "expected configurable values"
    assert [v for v in variables if ":-" not in v] == []


def test_interpolation_overrides_apply() -> None:
    compose = load_compose({"EDGESAM_REDIS_MAXMEMORY": "2gb", "EDGESAM_JETSON_TAG": "jp5"})
    assert "2gb" in compose["services"]["redis"]["command"]
    assert compose["services"]["edgesam"]["image"].endswith(":jp5")
    assert interpolate("$${NOT_INTERPOLATED}") == "${NOT_INTERPOLATED}"


def _flag(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def test_redis_is_a_bounded_lru_cache_without_persistence(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert _flag(command, "--maxmemory-policy") == "allkeys-lru"
    maxmemory = _flag(command, "--maxmemory")
    assert re.fullmatch(r"\d+(mb|gb)", maxmemory)
    assert _flag(command, "--save") == ""
    assert _flag(command, "--appendonly") == "no"
    # no disk: no volumes, and the image's VOLUME /data is shadowed by a tmpfs
    assert "volumes" not in redis
    assert any(t.startswith("/data") for t in redis["tmpfs"])
    # container limit leaves room above maxmemory
    limit = redis["deploy"]["resources"]["limits"]["memory"]

    def mib(v: str) -> float:
        n, unit = re.fullmatch(r"(\d+)([mg])b?", v.lower()).groups()
        return float(n) * (1024 if unit == "g" else 1)

    assert mib(limit) > mib(maxmemory)
    assert redis["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]
    assert redis["restart"] in ("always", "unless-stopped")
    assert "ports" not in redis, "Redis has no password: keep it off the host network"


@pytest.mark.parametrize("name", EDGESAM_SERVICES)
def test_service_waits_for_healthy_redis_and_is_health_checked(
    compose: dict[str, Any], name: str
) -> None:
    svc = compose["services"][name]
    assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD" and "/readyz" in test
    assert (REPO / "deploy/docker/healthcheck.py").is_file()
    assert svc["restart"] in ("always", "unless-stopped", "on-failure")
    limits = svc["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and limits["memory"]
    env = svc["environment"]
    assert urlparse(env["EDGESAM_REDIS_URL"]).hostname == "redis"
    assert env["EDGESAM_ROLE"] == "all"
    # SIGTERM drain must fit inside the stop grace period
    assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert duration_seconds(svc["stop_grace_period"]) > float(env["EDGESAM_DRAIN_SECONDS"])
    assert svc["read_only"] is True and any(t.startswith("/tmp") for t in svc["tmpfs"])
    assert svc["cap_drop"] == ["ALL"]


@pytest.mark.parametrize("name", EDGESAM_SERVICES)
def test_weights_are_mounted_read_only_not_baked(compose: dict[str, Any], name: str) -> None:
    svc = compose["services"][name]
    checkpoint = svc["environment"]["EDGESAM_CHECKPOINT"]
    mounts = [m for m in svc["volumes"] if checkpoint.startswith(m["target"].rstrip("/") + "/")]
    assert len(mounts) == 1, f"{checkpoint} must live on exactly one mount"
    assert mounts[0]["type"] == "bind" and mounts[0]["read_only"] is True


def test_profiles_split_jetson_and_cpu(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "profiles" not in services["redis"], "Redis serves every profile"
    assert services["edgesam"]["profiles"] == ["jetson"]
    assert services["edgesam-cpu"]["profiles"] == ["cpu"]
    # both publish the same host port: the profiles are alternatives, not a pair
    assert services["edgesam"]["ports"] == services["edgesam-cpu"]["ports"]
    assert "8000:8000" in services["edgesam"]["ports"]


def test_jetson_service_uses_nvidia_runtime_and_tensorrt(compose: dict[str, Any]) -> None:
    svc = compose["services"]["edgesam"]
    assert svc["runtime"] == "nvidia"
    env = svc["environment"]
    assert env["EDGESAM_BACKEND"] == "tensorrt"
    assert env["EDGESAM_DEVICE"] == "cuda"
    assert env["EDGESAM_PRECISION"] == "fp16"
    assert svc["build"]["args"]["TARGET"] == "jetson"
    # long first start: the engine is built on the device
    assert duration_seconds(svc["healthcheck"]["start_period"]) >= 600


def test_engine_cache_is_a_named_volume_at_the_configured_dir(compose: dict[str, Any]) -> None:
    svc = compose["services"]["edgesam"]
    cache_dir = svc["environment"]["EDGESAM_ENGINE_CACHE_DIR"]
    mounts = [m for m in svc["volumes"] if m["target"] == cache_dir]
    assert len(mounts) == 1
    assert mounts[0]["type"] == "volume" and not mounts[0].get("read_only", False)
    assert mounts[0]["source"] in compose["volumes"]
    # the image ships the same default, so `docker run` without compose agrees
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"EDGESAM_ENGINE_CACHE_DIR={cache_dir}" in dockerfile


def test_cpu_profile_runs_anywhere(compose: dict[str, Any]) -> None:
    svc = compose["services"]["edgesam-cpu"]
    assert "runtime" not in svc
    assert "devices" not in svc and "reservations" not in svc["deploy"]["resources"]
    assert svc["environment"]["EDGESAM_DEVICE"] == "cpu"
    assert svc["environment"]["EDGESAM_BACKEND"] != "tensorrt"
    assert svc["environment"].get("EDGESAM_PRECISION", "fp32") == "fp32"
    assert svc["build"]["args"]["TARGET"] == "cpu"
    assert not any("NVIDIA" in key for key in svc["environment"])


def test_jetson_base_image_default_matches_dockerfile(compose: dict[str, Any]) -> None:
    default = compose["services"]["edgesam"]["build"]["args"]["L4T_BASE"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"ARG L4T_BASE={default}\n" in dockerfile
