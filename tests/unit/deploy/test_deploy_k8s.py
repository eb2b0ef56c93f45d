"""deploy/k8s: kustomize renders, every object validates against the Kubernetes schemas,
and the objects wire together the way the service's contract needs."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Dict, List
from urllib.parse import urlparse

import kubernetes_validate
import pytest
from deploy_checks import (
    K8S,
    OVERLAYS,
    apply_json6902,
    kubectl,
    render_kubectl,
    render_lite,
)

# Oldest release the manifests claim (preStop `sleep` is beta and on by default from 1.30)
# and a current one.
K8S_VERSIONS = ("1.30.0", "1.34.0")
Docs = List[Dict[str, Any]]


def find(docs: Docs, kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def env(deployment: dict[str, Any], configmaps: dict[str, dict[str, str]]) -> dict[str, str]:
    """Effective plain env of the first container (envFrom ConfigMaps, then env)."""
    c = container(deployment)
    out: dict[str, str] = {}
    for source in c.get("envFrom", []):
        out.update(configmaps[source["configMapRef"]["name"]])
    for item in c.get("env", []):
        if "value" in item:
            out[item["name"]] = item["value"]
    return out


def configmaps(docs: Docs) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- rendering and schemas


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_objects_validate_against_kubernetes_schema(
    overlay: tuple[str, Docs], version: str
) -> None:
    name, docs = overlay
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    for doc in docs:
        # strict: unknown fields are errors, as `kubectl apply --validate=strict` would say
        kubernetes_validate.validate(doc, version, strict=True)


def test_schema_validation_can_fail(gpu_docs: Docs) -> None:
    deployment = copy.deepcopy(find(gpu_docs, "Deployment", "edgesam-decoder"))
    container(deployment)["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    hpa = copy.deepcopy(find(gpu_docs, "HorizontalPodAutoscaler", "edgesam-decoder"))
    hpa["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, K8S_VERSIONS[-1], strict=True)


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


@pytest.mark.skipif(kubectl() is None, reason="kubectl not installed: nothing to compare with")
@pytest.mark.parametrize("name", OVERLAYS)
def test_lite_renderer_agrees_with_kubectl_kustomize(name: str) -> None:
    path = K8S / "overlays" / name
    real = {_key(d): d for d in render_kubectl(path)}
    lite = {_key(d): d for d in render_lite(path)}
    assert real.keys() == lite.keys()
    for key, doc in real.items():
        assert lite[key] == doc, f"{key} differs"


def test_json6902_test_op_guards_index_based_patches() -> None:
    doc = {"env": [{"name": "A", "value": "1"}]}
    with pytest.raises(ValueError):
        apply_json6902(doc, [{"op": "test", "path": "/env/0/name", "value": "B"}])
    patched = apply_json6902(doc, [{"op": "replace", "path": "/env/0/value", "value": "2"}])
    assert patched["env"][0]["value"] == "2" and doc["env"][0]["value"] == "1"


def test_every_kustomization_lists_existing_files() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        text = kustomization.read_text()
        for ref in re.findall(r"^\s*-\s+(\S+\.yaml|\.\./\S+)\s*$", text, re.M):
            assert (kustomization.parent / ref).exists(), f"{kustomization}: {ref}"
    base_files = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    listed = set(
        re.findall(r"^\s*-\s+(\S+\.yaml)", (K8S / "base/kustomization.yaml").read_text(), re.M)
    )
    assert base_files == listed, "a manifest in base/ is not listed (or vice versa)"


# ---------------------------------------------------------------- wiring


def test_all_namespaced_objects_share_one_namespace(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {"edgesam"}
    assert find(docs, "Namespace", "edgesam")


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_probes_are_wired_to_healthz_and_readyz(overlay: tuple[str, Docs], role: str) -> None:
    _, docs = overlay
    c = container(find(docs, "Deployment", f"edgesam-{role}"))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    cms = configmaps(docs)
    e = env(find(docs, "Deployment", f"edgesam-{role}"), cms)
    assert ports["http"] == int(e["EDGESAM_HTTP_PORT"])
    assert ports["grpc"] == int(e["EDGESAM_GRPC_PORT"])
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    # liveness must not kill a pod that is only unready (draining or engine building)
    assert c["livenessProbe"]["failureThreshold"] * c["livenessProbe"]["periodSeconds"] >= 20


@pytest.mark.parametrize("role", ["encoder", "decoder"])
def test_termination_grace_covers_prestop_and_drain(overlay: tuple[str, Docs], role: str) -> None:
    _, docs = overlay
    deployment = find(docs, "Deployment", f"edgesam-{role}")
    pod = deployment["spec"]["template"]["spec"]
    drain = float(env(deployment, configmaps(docs))["EDGESAM_DRAIN_SECONDS"])
    pre_stop = container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    assert env(deployment, configmaps(docs))["EDGESAM_ROLE"] == role


def test_encoder_pods_run_on_gpu_nodes(gpu_docs: Docs) -> None:
    encoder = find(gpu_docs, "Deployment", "edgesam-encoder")
    pod = encoder["spec"]["template"]["spec"]
    resources = container(encoder)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    e = env(encoder, configmaps(gpu_docs))
    assert e["EDGESAM_BACKEND"] == "tensorrt" and e["EDGESAM_DEVICE"] == "cuda"
    assert e["EDGESAM_PRECISION"] == "fp16"
    mounts = {m["mountPath"]: m for m in container(encoder)["volumeMounts"]}
    assert e["EDGESAM_ENGINE_CACHE_DIR"] in mounts
    assert not mounts[e["EDGESAM_ENGINE_CACHE_DIR"]].get("readOnly", False)
    # the first engine build must fit in the startup budget (>= 10 minutes)
    startup = container(encoder)["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600


def test_decoder_pods_stay_off_gpu_nodes_and_are_stateless(gpu_docs: Docs) -> None:
    decoder = find(gpu_docs, "Deployment", "edgesam-decoder")
    pod = decoder["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(container(decoder)["resources"])
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expr = terms["nodeSelectorTerms"][0]["matchExpressions"][0]
    assert expr == {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}
    # stateless: nothing but read-only weights and scratch /tmp
    for volume in pod["volumes"]:
        assert "emptyDir" in volume or volume["persistentVolumeClaim"].get("readOnly")
    assert env(decoder, configmaps(gpu_docs))["EDGESAM_DEVICE"] == "cpu"


def test_decoder_forwards_embed_to_the_encoder_pool_over_grpc(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    decoder = find(docs, "Deployment", "edgesam-decoder")
    target = env(decoder, configmaps(docs))["EDGESAM_ENCODER_GRPC_TARGET"]
    match = re.fullmatch(r"(?:dns:///)?([a-z0-9-]+):(\d+)", target)
    assert match, target
    service = find(docs, "Service", match.group(1))
    # headless: the gRPC client sees every encoder pod, not one virtual IP
    assert service["spec"]["clusterIP"] == "None"
    encoder = find(docs, "Deployment", "edgesam-encoder")
    assert selects(service["spec"]["selector"], encoder["spec"]["template"]["metadata"]["labels"])
    grpc = [p for p in service["spec"]["ports"] if p["port"] == int(match.group(2))]
    assert grpc and grpc[0]["targetPort"] == "grpc"


def test_hpa_scales_the_decoder_on_cpu(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    hpa = find(docs, "HorizontalPodAutoscaler", "edgesam-decoder")
    ref = hpa["spec"]["scaleTargetRef"]
    decoder = find(docs, ref["kind"], ref["name"])
    assert decoder["metadata"]["name"] == "edgesam-decoder"
    assert "replicas" not in decoder["spec"], "the HPA owns the decoder's replica count"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    metric = hpa["spec"]["metrics"][0]["resource"]
    assert metric["name"] == "cpu" and metric["target"]["type"] == "Utilization"
    # utilisation is a share of the request: the decoder must request CPU
    assert container(decoder)["resources"]["requests"]["cpu"]


def test_pdbs_and_services_select_real_pods(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert {p["metadata"]["name"] for p in pdbs} >= {"edgesam-encoder", "edgesam-decoder"}
    for pdb in pdbs:
        # IntOrString: the schema takes any string, the API server only N or N%
        budget = {k: v for k, v in pdb["spec"].items() if k in ("minAvailable", "maxUnavailable")}
        assert len(budget) == 1
        value = next(iter(budget.values()))
        assert isinstance(value, int) or re.fullmatch(r"\d+%", value), budget
        hits = [
            n
            for n, labels in pods.items()
            if selects(pdb["spec"]["selector"]["matchLabels"], labels)
        ]
        assert hits == [pdb["metadata"]["name"]]
    for svc in (d for d in docs if d["kind"] == "Service"):
        hits = [n for n, labels in pods.items() if selects(svc["spec"]["selector"], labels)]
        assert len(hits) == 1, svc["metadata"]["name"]
        deployment = find(docs, "Deployment", hits[0])
        named = {
            p["name"]
            for c in deployment["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in named
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        assert selects(
            deployment["spec"]["selector"]["matchLabels"],
            deployment["spec"]["template"]["metadata"]["labels"],
        )


def test_redis_is_a_bounded_lru_cache_without_persistence(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    redis = find(docs, "Deployment", "edgesam-redis")
    args = container(redis)["args"]
    assert len(args) % 2 == 0, args
    flags = dict(zip(args[::2], args[1::2]))
    assert flags["--maxmemory-policy"] == "allkeys-lru"
    assert flags["--save"] == "" and flags["--appendonly"] == "no"
    maxmemory_mib = int(re.fullmatch(r"(\d+)mb", flags["--maxmemory"]).group(1))
    limit = container(redis)["resources"]["limits"]["memory"]
    assert int(re.fullmatch(r"(\d+)Mi", limit).group(1)) > maxmemory_mib
    assert all(
        "persistentVolumeClaim" not in v for v in redis["spec"]["template"]["spec"]["volumes"]
    )
    # the service's Redis URL points at this Redis' Service
    url = urlparse(configmaps(docs)["edgesam-config"]["EDGESAM_REDIS_URL"])
    service = find(docs, "Service", url.hostname)
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    assert url.port in [p["port"] for p in service["spec"]["ports"]]


def test_pods_run_hardened_and_non_root(overlay: tuple[str, Docs]) -> None:
    _, docs = overlay
    dockerfile_uid = re.search(
        r"^ARG APP_UID=(\d+)$", (K8S.parents[1] / "Dockerfile").read_text(), re.M
    )
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert "memory" in c["resources"]["limits"]
        if deployment["metadata"]["name"] != "edgesam-redis":
            assert pod["securityContext"]["runAsUser"] == int(dockerfile_uid.group(1))
            # read-only root: /tmp must be a writable volume; weights read-only
            mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
            assert "/tmp" in mounts
            checkpoint = env(deployment, configmaps(docs))["EDGESAM_CHECKPOINT"]
            assert mounts[str(Path(checkpoint).parent)]["readOnly"] is True


def test_cpu_overlay_needs_no_gpu(cpu_docs: Docs) -> None:
    assert "nvidia.com/gpu" not in repr([d for d in cpu_docs if d["kind"] == "Deployment"]).replace(
        "nvidia.com/gpu.present", ""
    )
    encoder = find(cpu_docs, "Deployment", "edgesam-encoder")
    e = env(encoder, configmaps(cpu_docs))
    assert e["EDGESAM_DEVICE"] == "cpu" and e["EDGESAM_BACKEND"] != "tensorrt"
    # the service refuses anything but fp32 on the CPU
    assert e.get("EDGESAM_PRECISION", "fp32") == "fp32"
    assert "nodeSelector" not in encoder["spec"]["template"]["spec"]
    images = {
        c["image"]
        for d in cpu_docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] != "edgesam-redis"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"edgesam-serve:cpu"}


def test_gpu_overlay_uses_the_cuda_image(gpu_docs: Docs) -> None:
    images = {
        c["image"]
        for d in gpu_docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] != "edgesam-redis"
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"edgesam-serve:cuda"}
