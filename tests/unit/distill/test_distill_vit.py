"""The SAM ViT teacher: golden tiny reference and the official checkpoint layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.distill.model import make_mask_decoder, make_prompt_encoder
from engine.distill.vit import (
    VIT_CONFIGS,
    build_sam_vit,
    encoder_state_from_sam,
    infer_variant,
    load_teacher,
    read_manifest,
)


def _tiny_weights(ref: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {
        k: v.float() for k, v in load_file(str(ref / "sam_vit_tiny/weights.safetensors")).items()
    }


def test_tiny_vit_reproduces_golden_within_1e4(tmp_path: Path, reference_dir: Path) -> None:
    case = json.loads((reference_dir / "sam_vit_tiny/case.json").read_text())
    kwargs = case["config"]["kwargs"]
    cfg = VIT_CONFIGS["vit_tiny"]
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.window_size) == (
        kwargs["embed_dim"],
        kwargs["depth"],
        kwargs["num_heads"],
        kwargs["window_size"],
    )
    assert list(cfg.global_attn_indexes) == kwargs["global_attn_indexes"]
    # Loaded through the teacher loader from a full-SAM-style file (image_encoder.* prefix).
    path = tmp_path / "sam_tiny.pth"
    torch.save(
        {f"image_encoder.{k}": v for k, v in _tiny_weights(reference_dir).items()}, str(path)
    )
    model = load_teacher(path, "vit_tiny")
    golden = np.load(reference_dir / "sam_vit_tiny/golden.npz")
    x = torch.from_numpy(np.load(reference_dir / "case_a/golden.npz")["input_tensor"])
    with torch.no_grad():
        out = model(x)
        tokens = model.forward_tokens(x)
    ref = torch.from_numpy(golden["image_embedding"])
    assert out.shape == (1, 256, 64, 64)
    # The reference keeps the first channels only (the neck mixes all of them; case.json).
    assert ref.shape[1] >= 64
    assert (out[:, : ref.shape[1]] - ref).abs().max().item() < 1e-4
    # Intermediates are stored as fp16 (channels last, the first ones): compare after rounding
    # ours the same way.
    for name, i in (("patch_embed", 0), ("block0_out", 1), ("block1_out", 2), ("block3_out", 4)):
        theirs = torch.from_numpy(golden[name]).float()
        ours = tokens[i][..., : theirs.shape[-1]].half().float()
        torch.testing.assert_close(ours, theirs, rtol=2e-3, atol=5e-3)


class _SamShell(nn.Module):
    """SAM's three parts under their official names (layout check only)."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.image_encoder = build_sam_vit(variant)
        self.prompt_encoder = make_prompt_encoder(1024)
        self.mask_decoder = make_mask_decoder()


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_official_sam_layout_loads_strictly_on_meta(variant: str, reference_dir: Path) -> None:
    manifest = read_manifest(reference_dir / "sam_vit_manifests.json", variant)
    info = json.loads((reference_dir / "sam_vit_manifests.json").read_text())["variants"][variant]
    with torch.device("meta"):
        model = _SamShell(variant)
        state = {k: torch.empty(shape) for k, shape in manifest}
    # strict: any missing, unexpected or mis-shaped key raises
    model.load_state_dict(state, strict=True, assign=True)
    enc_numel = sum(p.numel() for p in model.image_encoder.parameters())
    assert enc_numel == info["numel"]["image_encoder"]
    assert sum(p.numel() for p in model.parameters()) + 2 * 128 == info["numel"]["total"]
    # The teacher's encoder alone, from the prefix-stripped part.
    enc_state = encoder_state_from_sam(state)
    assert len(enc_state) == info["num_image_encoder_entries"]
    assert infer_variant(state) == variant
    enc = build_sam_vit(variant, device="meta")
    enc.load_state_dict(enc_state, strict=True, assign=True)
    # A wrongly shaped entry is refused.
    key, shape = manifest[0]
    bad = dict(state)
    bad[key] = torch.empty(*shape[:-1], shape[-1] + 1, device="meta")
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(bad, strict=True, assign=True)


def test_teacher_loader_rejects_missing_keys(tmp_path: Path) -> None:
    model = build_sam_vit("vit_tiny", 128)
    state = {f"image_encoder.{k}": v for k, v in model.state_dict().items()}
    state.pop("image_encoder.blocks.0.attn.rel_pos_h")
    path = tmp_path / "broken.pth"
    torch.save(state, str(path))
    with pytest.raises(RuntimeError, match="rel_pos_h"):
        load_teacher(path, "vit_tiny", img_size=128)


def test_reduced_input_size_runs() -> None:
    model = build_sam_vit("vit_tiny", 128).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 256, 8, 8)
    assert torch.isfinite(out).all()
