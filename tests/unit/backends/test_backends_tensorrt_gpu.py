"""TensorRT build-and-run on a real GPU. Skipped (with the reason) where TensorRT or CUDA is
missing; run on the target with `pytest -m tensorrt -rs tests/unit/backends`."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.tensorrt

_REASON = (
    "TensorRT is not installed"
    if importlib.util.find_spec("tensorrt") is None
    else "no CUDA GPU visible to torch"
    if not torch.cuda.is_available()
    else ""
)
needs_trt = pytest.mark.skipif(bool(_REASON), reason=f"TensorRT GPU test skipped: {_REASON}")

# fp16 tolerance: a placeholder until a GPU run measures it (docs/development.md, "What has
# been verified, and where"); the masks must still agree.
FP16_EMBED_TOL = 5e-2


@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_run_and_cache(precision: str, exported: dict, golden: dict, tmp_path: Path) -> None:
    from engine.backends.tensorrt_backend import TensorRTBackend, build_engines_for
    from engine.backends.trt_logic import ProfileSpec, StaleEngineError
    from engine.core import ImageEmbedding, decode

    spec = ProfileSpec(max_batch=2, max_prompts=4, max_points=4)
    written = build_engines_for(
        exported["encoder"], precision=precision, profile=spec, cache_dir=tmp_path, workspace_gb=1.0
    )
    backend = TensorRTBackend(written[0], "cuda:0")
    emb = backend.encode(torch.from_numpy(golden["input_tensor"]))
    diff = float(np.abs(emb.numpy() - golden["image_embedding"]).max())
    print(f"TensorRT {precision}: embedding max abs diff {diff:.3e}")
    assert diff < (1e-3 if precision == "fp32" else FP16_EMBED_TOL)
    image = ImageEmbedding(emb, (512, 512), (1024, 1024))
    res = decode(
        backend,
        image,
        point_coords=golden["p1_point_coords"],
        point_labels=golden["p1_point_labels"],
        num_multimask_outputs=1,
    )
    got, want = res.masks()[0, 0].numpy(), golden["p1_masks"][0]
    iou = np.logical_and(got, want).sum() / np.logical_or(got, want).sum()
    assert iou >= 0.99
    # a second build finds the cache; a different profile is a different file
    assert (
        build_engines_for(
            exported["encoder"], precision=precision, profile=spec, cache_dir=tmp_path
        )[0]
        == written[0]
    )
    other = build_engines_for(
        exported["encoder"],
        precision=precision,
        profile=ProfileSpec(max_batch=1, max_prompts=2, max_points=4),
        cache_dir=tmp_path,
    )
    assert other[0] != written[0]
    wrong = "fp16" if precision == "fp32" else "fp32"
    with pytest.raises(StaleEngineError, match="precision"):
        TensorRTBackend(written[0], "cuda:0", precision=wrong)
