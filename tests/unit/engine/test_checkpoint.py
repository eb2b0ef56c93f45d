"""Checkpoint loading: official .pth and .safetensors, strictness, clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine import CheckpointError, build_edge_sam, convert_to_safetensors, load_model
from engine.checkpoint import read_state_dict


@pytest.fixture(scope="module")
def state(case_a_weights: Path) -> dict[str, torch.Tensor]:
    return {
        k: v.float() if v.is_floating_point() else v
        for k, v in load_file(str(case_a_weights)).items()
    }


@pytest.fixture(scope="module")
def pth(state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "edge_sam.pth"
    torch.save(state, path)
    return path


def test_pth_and_safetensors_load_to_the_same_weights(pth, case_a_weights):
    a = build_edge_sam(pth).state_dict()
    b = build_edge_sam(case_a_weights).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert b["image_encoder.neck.0.weight"].dtype == torch.float32  # fp16 file cast up


def test_manifest_layout(case_a_model, reference_dir):
    import json

    manifest = reference_dir / "edge_sam_state_dict_manifest.json"
    entries = json.loads(manifest.read_text())["state_dict"]
    ours = {k: tuple(v.shape) for k, v in case_a_model.state_dict().items()}
    assert ours == {e["key"]: tuple(e["shape"]) for e in entries}


def test_wrapped_checkpoint(state, tmp_path):
    path = tmp_path / "train.pth"
    torch.save({"model": state}, path)
    assert len(read_state_dict(path)) == len(state)


def test_truncated_file(pth, tmp_path):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        build_edge_sam(bad)


def test_truncated_safetensors(case_a_weights, tmp_path):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(case_a_weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="safetensors"):
        build_edge_sam(bad)


def test_missing_key_is_named(state, tmp_path):
    broken = dict(state)
    del broken["mask_decoder.iou_token.weight"]
    path = tmp_path / "missing.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match="mask_decoder.iou_token.weight"):
        build_edge_sam(path)


def test_wrong_shape_is_named(state, tmp_path):
    broken = dict(state)
    broken["image_encoder.neck.0.weight"] = torch.zeros(128, 256, 1, 1)
    path = tmp_path / "shape.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match=r"image_encoder\.neck\.0\.weight.*128"):
        build_edge_sam(path)


def test_unexpected_keys_warn_and_rpn_keys_are_skipped(state, tmp_path, caplog):
    extra = dict(state)
    extra["fpn.lateral.weight"] = torch.zeros(2)
    extra["rpn_head.cls.weight"] = torch.zeros(2)
    extra["something_else.weight"] = torch.zeros(2)
    path = tmp_path / "edge_sam_rpn.pth"
    torch.save(extra, path)
    with caplog.at_level(logging.WARNING):
        build_edge_sam(path)
    text = caplog.text
    assert "something_else.weight" in text
    assert "fpn.lateral.weight" not in text and "rpn_head" not in text


class NotATensor:
    """A picklable non-tensor: weights_only loading must refuse it."""


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": NotATensor()}, path)
    with pytest.raises(CheckpointError):
        build_edge_sam(path)


def test_cuda_saved_checkpoint_maps_to_cpu(state, tmp_path, monkeypatch):
    """Official files hold CUDA tensors; loading must map them to the CPU."""
    path = tmp_path / "cuda.pth"
    torch.save(state, path)
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    read_state_dict(path)
    assert seen["map_location"] == "cpu" and seen["weights_only"] is True


def test_converter_round_trip(pth, tmp_path, state):
    out = convert_to_safetensors(pth, tmp_path / "edge_sam.safetensors")
    loaded = load_file(str(out))
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_load_model_returns_backend(case_a_weights):
    backend = load_model(case_a_weights)
    assert backend.info.name == "torch" and len(backend.info.fingerprint) == 16
    assert backend.health().ok


def test_missing_file():
    with pytest.raises(CheckpointError, match="not found"):
        build_edge_sam("/nonexistent/edge_sam.pth")
