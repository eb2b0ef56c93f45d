"""Model construction by name (`engine.build_edge_sam`, as segment-anything's build_sam)."""

from pathlib import Path

import torch

from engine import build_edge_sam as from_package
from engine import edge_sam_model_registry
from engine.build_edge_sam import build_edge_sam
from engine.loader import build_edge_sam as from_loader


def test_the_registry_names_each_variant() -> None:
    assert edge_sam_model_registry["default"] is build_edge_sam
    assert edge_sam_model_registry["edge_sam"] is build_edge_sam
    assert from_package is build_edge_sam and from_loader is build_edge_sam
    bilinear = edge_sam_model_registry["edge_sam_bilinear"]()
    assert bilinear.image_encoder.fuse_stage3.upsample_mode == "bilinear"
    assert not bilinear.training


def test_a_builder_loads_the_checkpoint_it_is_given(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = build_edge_sam()
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), str(path))
    loaded = edge_sam_model_registry["edge_sam"](checkpoint=path)
    assert loaded.image_encoder.fuse_stage3.upsample_mode == "bicubic" and not loaded.training
    for (name, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
