"""The reference data in tests/reference: size, seeded weights, and (where a checkout has one)
agreement with the shared copy made earlier by the same official code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.reference import weights as W
from tests.reference.materialize import DATA, ReferenceDataError, load_npz, materialize

# The budget for reference data in the repository.
MAX_BYTES = 25 * 1000 * 1000


def test_stored_reference_data_stays_under_budget() -> None:
    files = [p for p in DATA.rglob("*") if p.is_file()]
    assert {"golden.npz", "case.json", "golden_onnx.npz"} <= {p.name for p in files}
    assert sum(p.stat().st_size for p in files) < MAX_BYTES
    assert not any(p.suffix in (".safetensors", ".pth") for p in files), "weights are generated"


def test_seeded_weights_follow_the_official_layout() -> None:
    state = W.case_a_state_dict()
    manifest = W.edge_sam_manifest()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == [(k, s) for k, s, _ in manifest]
    # Every float tensor holds float16 values; the BN counters are int64 zeros.
    for key, t in state.items():
        if t.is_floating_point():
            assert torch.equal(t, t.half().float()), key
        else:
            assert t.dtype == torch.int64 and int(t) == 0, key
    # The residual-branch BatchNorms got the smaller scale, the others U(0.5, 1.5).
    bn = "image_encoder.features.{}.{}.bn.weight"
    assert state[bn.format(1, "token_mixer.0.conv")].max() <= 0.6
    assert state[bn.format(1, "channel_mixer.m.2")].max() <= 0.6
    assert state[bn.format(1, "channel_mixer.m.0")].max() > 0.6
    # Deterministic: a second draw is the same.
    assert W.state_dict_sha256(W.case_a_state_dict()) == W.state_dict_sha256(state)


def test_a_changed_weight_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = W.case_a_state_dict

    def tampered() -> dict[str, torch.Tensor]:
        state = real()
        state["mask_decoder.iou_token.weight"][0, 0] += 1
        return state

    monkeypatch.setattr(W, "case_a_state_dict", tampered)
    with pytest.raises(ReferenceDataError, match="case A weights"):
        materialize(tmp_path)


def test_derived_arrays_are_those_recorded(reference_dir: Path) -> None:
    """materialize() checked them; here the recipe's results are the recorded official ones."""
    case = json.loads((reference_dir / "case_a" / "case.json").read_text())
    golden = load_npz(reference_dir / "case_a" / "golden.npz")
    assert set(case["derived"]) - {"note"} <= set(golden)
    assert golden["input_tensor"].shape == (1, 3, 1024, 1024)
    assert np.array_equal(golden["p6_mask_input"][0], golden["p5_low_res_logits"][2])


# -- against ../shared/reference, where a checkout has it --------------------------------------


@pytest.mark.parametrize(
    "case, make", [("case_a", W.case_a_state_dict), ("sam_vit_tiny", W.sam_vit_tiny_state_dict)]
)
def test_seeded_weights_equal_the_shared_files(shared_reference_dir: Path, case: str, make) -> None:  # noqa: ANN001
    from safetensors.torch import load_file

    shared = load_file(str(shared_reference_dir / case / "weights.safetensors"))
    ours = make()
    assert set(ours) == set(shared)
    for key, t in ours.items():
        ref = shared[key].float() if shared[key].is_floating_point() else shared[key]
        assert torch.equal(t, ref), key


def _assert_agrees(name: str, ours: np.ndarray, ref: np.ndarray) -> None:
    """Within the reference README's run-to-run noise (threads, CPU kernels)."""
    if ours.shape != ref.shape:  # stored with fewer channels: compare those
        ref = (
            ref[:, : ours.shape[1]]
            if name.startswith("enc_") or name == "image_embedding"
            else ref[..., : ours.shape[-1]]
        )
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, name
    if ours.dtype == bool:
        assert int((ours != ref).sum()) <= 5, name
    elif ours.dtype.kind in "iu":
        assert np.abs(ours.astype(np.int64) - ref).max(initial=0) <= 2, name  # AMG areas
    elif ours.dtype == np.float16:
        a, b = ours.astype(np.float32), ref.astype(np.float32)
        assert np.abs(a - b).max(initial=0) <= 1e-3 * np.abs(b).max(initial=0) + 1e-3, name
    else:
        assert np.abs(ours - ref).max(initial=0) < 1e-4, name


@pytest.mark.parametrize(
    "sub, npz",
    [("case_a", "golden.npz"), ("case_a_onnx", "golden_onnx.npz"), ("sam_vit_tiny", "golden.npz")],
)
def test_outputs_agree_with_the_shared_copy(
    reference_dir: Path, shared_reference_dir: Path, sub: str, npz: str
) -> None:
    ours = load_npz(reference_dir / sub / npz)
    shared = load_npz(shared_reference_dir / sub / npz)
    common = set(ours) & set(shared)
    assert len(common) >= 0.5 * len(ours)
    for name in sorted(common):
        _assert_agrees(name, ours[name], shared[name])


def test_official_onnx_files_equal_the_shared_exports(
    reference_dir: Path, shared_reference_dir: Path
) -> None:
    import onnx
    from onnx import numpy_helper

    for part in ("encoder", "decoder"):
        name = f"case_a_onnx/edge_sam_case_a_{part}.onnx"
        ours, ref = (
            onnx.load(str(reference_dir / name)),
            onnx.load(str(shared_reference_dir / name)),
        )
        assert [n.op_type for n in ours.graph.node] == [n.op_type for n in ref.graph.node]
        a = {i.name: numpy_helper.to_array(i) for i in ours.graph.initializer}
        b = {i.name: numpy_helper.to_array(i) for i in ref.graph.initializer}
        assert a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a), part
