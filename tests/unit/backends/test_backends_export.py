"""`python -m engine.export onnx`: what it writes, and the bicubic Resize it must get right."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from engine.export import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    FORMAT_NAME,
    model_fingerprint,
    read_metadata,
    stability_scores_float,
    torchscript_exporter,
)
from engine.export.__main__ import main
from engine.fusion import MatrixUpsample2x
from engine.transforms import stability_score


def test_torchscript_exporter_is_asked_for_only_where_torch_has_a_choice(monkeypatch) -> None:  # noqa: ANN001
    def export_2_1(model, args, f, export_params=True, opset_version=None):  # noqa: ANN001, ANN202
        """torch 2.1's signature, shortened: no `dynamo`."""

    def export_2_13(model, args=(), f=None, *, opset_version=None, dynamo=True):  # noqa: ANN001, ANN202
        """torch >= 2.5: `dynamo` picks the exporter."""

    monkeypatch.setattr(torch.onnx, "export", export_2_1)
    assert torchscript_exporter() == {}
    monkeypatch.setattr(torch.onnx, "export", export_2_13)
    assert torchscript_exporter() == {"dynamo": False}


def test_cli_writes_and_reports_both_files(exported: dict) -> None:
    assert exported["code"] == 0
    out = exported["stdout"]
    assert f"wrote {exported['encoder']}" in out
    assert f"wrote {exported['decoder']}" in out
    assert "[1/3]" in out and "[2/3]" in out  # progress lines
    assert Path(exported["encoder"]).stat().st_size > 1e6


def test_exported_io_names_and_dynamic_axes(exported: dict) -> None:
    enc = onnx.load(str(exported["encoder"]), load_external_data=False)
    dec = onnx.load(str(exported["decoder"]), load_external_data=False)
    assert [i.name for i in enc.graph.input] == ["image"]
    assert enc.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert tuple(i.name for i in dec.graph.input) == DECODER_INPUTS
    assert tuple(o.name for o in dec.graph.output) == DECODER_OUTPUTS
    coords = dec.graph.input[1].type.tensor_type.shape.dim
    assert coords[0].dim_param == "batch" and coords[1].dim_param == "num_points"


def test_metadata_carries_torch_fingerprint(exported: dict, case_a_model) -> None:
    meta = read_metadata(exported["encoder"])
    assert meta["edgesam.format"] == FORMAT_NAME
    assert meta["edgesam.role"] == "encoder"
    assert meta["edgesam.upsample_mode"] == "bicubic"
    assert meta["edgesam.fingerprint"] == model_fingerprint(case_a_model)
    assert read_metadata(exported["decoder"])["edgesam.role"] == "decoder"


def test_decoder_has_no_integer_reductions(exported: dict) -> None:
    """Stability is computed with float sums: no ReduceSum on int16/int64 data."""
    dec = onnx.shape_inference.infer_shapes(onnx.load(str(exported["decoder"])))
    types = {v.name: v.type.tensor_type.elem_type for v in dec.graph.value_info}
    for node in dec.graph.node:
        if node.op_type == "ReduceSum":
            assert types.get(node.input[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT


def test_encoder_upsampling_exports_as_matmuls(exported: dict) -> None:
    """Default export: the stage-3 x2 upsampling is two MatMuls, not a (slow) cubic Resize."""
    enc = onnx.load(str(exported["encoder"]), load_external_data=False)
    assert not [n for n in enc.graph.node if n.op_type == "Resize"]
    assert read_metadata(exported["encoder"])["edgesam.upsample_export"] == "matmul"


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_matrix_upsample_equals_interpolate(mode: str) -> None:
    conv = torch.nn.Identity()
    up = MatrixUpsample2x(conv, 32, mode)
    x = torch.randn(2, 8, 32, 32) * 3
    want = F.interpolate(x, scale_factor=2.0, mode=mode, align_corners=False)
    assert torch.allclose(up(x), want, atol=1e-5)


class Up(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bicubic", align_corners=False)


def test_onnx_cubic_resize_matches_torch_bicubic(tmp_path: Path) -> None:
    """The `--upsample-export resize` path: attributes and numbers, borders included."""
    x = torch.randn(2, 8, 32, 32) * 3
    path = tmp_path / "up.onnx"
    torch.onnx.export(
        Up(), (x,), str(path), input_names=["x"], opset_version=17, **torchscript_exporter()
    )
    resizes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Resize"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in resizes[0].attribute}
    assert attrs["mode"] == b"cubic"
    assert attrs["coordinate_transformation_mode"] == b"half_pixel"
    assert attrs["cubic_coeff_a"] == pytest.approx(-0.75)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    want = Up()(x).numpy()
    assert got.shape == (2, 8, 64, 64)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(got[..., 0, :] - want[..., 0, :]).max() < 1e-5
    assert np.abs(got[..., :, -1] - want[..., :, -1]).max() < 1e-5


def test_graph_stability_equals_engine_stability(ort_ours, ours_embedding) -> None:
    coords = torch.tensor([[[300.0, 200.0], [0.0, 0.0]], [[600.0, 700.0], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, -1.0], [1.0, -1.0]], dtype=torch.float32)
    logits, iou, stab = ort_ours._dec.run(
        None,
        {
            "image_embeddings": ours_embedding.numpy(),
            "point_coords": coords.numpy(),
            "point_labels": labels.numpy(),
            "mask_input": np.zeros((2, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros((1,), np.float32),
        },
    )
    want = stability_score(torch.from_numpy(logits), 0.0, 1.0)
    assert torch.allclose(torch.from_numpy(stab), want.float(), atol=1e-6)
    assert torch.allclose(stability_scores_float(torch.from_numpy(logits)), want.float())


def test_tensorrt_subcommand_without_tensorrt_fails_clearly(exported: dict, capsys) -> None:
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        code = main(["tensorrt", "--onnx", str(exported["encoder"])])
        assert code == 2
        assert "TensorRT is not installed" in capsys.readouterr().err
    else:  # pragma: no cover - machines with TensorRT run tests/unit/backends/test_*_gpu.py
        pytest.skip("TensorRT is installed here")


def test_module_entry_point_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine.export", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.returncode == 0
    assert "onnx" in done.stdout and "tensorrt" in done.stdout
