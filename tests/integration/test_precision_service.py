"""A bf16 CPU encoder behind the real app: /readyz and /metrics say which precision runs, and
the cache keeps its embeddings in float16 (EDGESAM_CACHE_DTYPE=auto)."""

from __future__ import annotations

from engine.backends.torch_backend import TorchBackend
from engine.loader import build_edge_sam


def test_readyz_and_metrics_name_the_precision(start_service) -> None:
    backend = TorchBackend(build_edge_sam(None), precision="bf16", num_threads=2)
    svc = start_service(backend=backend)
    ready = svc.client.get("/readyz").json()
    assert ready["backend"]["precision"] == "bf16"
    assert ready["backend"]["name"] == "torch" and ready["backend"]["device"] == "cpu"
    metrics = svc.client.get("/metrics").text
    assert 'edgesam_backend_info{backend="torch",device="cpu",precision="bf16"} 1.0' in metrics
    assert svc.service.cache.dtype == "float16"
