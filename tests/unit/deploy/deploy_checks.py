"""Shared helpers for the static deployment checks (no Docker engine, no cluster).

Kustomize rendering uses ``kubectl kustomize`` when kubectl is on PATH (the project's
machine image ships it). Without it, ``render_lite`` renders the subset of kustomize that
deploy/k8s uses (resources, namespace, labels, images, inline JSON6902 patches); a test
keeps the two in agreement wherever kubectl exists.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("gpu", "cpu")

# Kinds that are cluster-scoped (not touched by `namespace:`), among those we use.
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding"}


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render_kubectl(path: Path) -> list[dict[str, Any]]:
    exe = kubectl()
    assert exe is not None
    result = subprocess.run(
        [exe, "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _json_pointer(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for raw in path.lstrip("/").split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        parts.append(int(token) if token.isdigit() else token)
    return parts


def apply_json6902(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _json_pointer(op["path"])
        node: Any = doc
        for key in parents:
            node = node[key]
        kind = op["op"]
        if kind == "remove":
            del node[last]
        elif kind == "replace":
            node[last]  # noqa: B018  (must exist)
            node[last] = copy.deepcopy(op["value"])
        elif kind == "add":
            if isinstance(node, list):
                index = len(node) if last == "-" else int(last)
                node.insert(index, copy.deepcopy(op["value"]))
            else:
                node[last] = copy.deepcopy(op["value"])
        elif kind == "test":
            if node[last] != op["value"]:
                raise ValueError(f"JSON6902 test failed at {op['path']}: {node[last]!r}")
        else:
            raise ValueError(f"unsupported JSON6902 op {kind!r}")
    return doc


def _matches(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {
        "group": group,
        "version": version,
        "kind": doc["kind"],
        "name": doc["metadata"]["name"],
        "namespace": doc["metadata"].get("namespace"),
    }
    return all(wanted[key] == value for key, value in target.items())


def _set_image(container: dict[str, Any], images: list[dict[str, Any]]) -> None:
    ref = container["image"].split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    name = (head + "/" if head else "") + last.split(":", 1)[0]
    for spec in images:
        if spec["name"] == name:
            new = spec.get("newName", name)
            tag = spec.get("newTag")
            container["image"] = f"{new}:{tag}" if tag else new


def render_lite(path: Path) -> list[dict[str, Any]]:
    """Render the kustomize features deploy/k8s uses. Anything else is an error."""
    kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
    supported = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
    unsupported = set(kustomization) - supported
    if unsupported:
        raise NotImplementedError(f"render_lite does not support {sorted(unsupported)}")
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        target = (path / resource).resolve()
        if target.is_dir():
            docs.extend(render_lite(target))
        else:
            docs.extend(d for d in yaml.safe_load_all(target.read_text()) if d)
    for patch in kustomization.get("patches", []):
        ops = yaml.safe_load(patch["patch"])
        hits = [i for i, d in enumerate(docs) if _matches(d, patch["target"])]
        if not hits:
            raise ValueError(f"patch target matched nothing: {patch['target']}")
        for i in hits:
            docs[i] = apply_json6902(docs[i], ops)
    namespace = kustomization.get("namespace")
    for doc in docs:
        meta = doc.setdefault("metadata", {})
        if namespace and doc["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        for entry in kustomization.get("labels", []):
            if entry.get("includeSelectors") or entry.get("includeTemplates"):
                raise NotImplementedError("render_lite labels apply to metadata only")
            meta.setdefault("labels", {}).update(entry["pairs"])
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec") if isinstance(spec, dict) else None
        if pod:
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                _set_image(container, kustomization.get("images", []))
    return docs


def render(path: Path) -> list[dict[str, Any]]:
    return render_kubectl(path) if kubectl() else render_lite(path)


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?([^}]*)\}")


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose-style ${VAR:-default} interpolation with an empty environment by default."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, op, arg = match.groups()
            if name in env and (env[name] or op != ":-"):
                return env[name]
            if op in (":-", "-"):
                return arg
            raise KeyError(f"${{{name}}} has no default")

        return _INTERPOLATION.sub(sub, value.replace("$$", "\0")).replace("\0", "$")
    return value


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return interpolate(raw, env)


def duration_seconds(text: str | int | float) -> float:
    """Compose/Docker durations: '30s', '20m', '1m30s', '500ms'."""
    if isinstance(text, (int, float)):
        return float(text)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(n) * units[u] for n, u in parts)
