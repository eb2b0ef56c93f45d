"""Reduced precisions on the CPU against fp32 on case A, with measured tolerances.

bf16 (PyTorch, autocast over the re-parameterised channels_last encoder) and int8 (ONNX
Runtime, the QDQ encoder of `engine.quantize`, here calibrated on two synthetic images to stay
fast). Each bound sits a margin beyond the figure measured when it was set (in the comment):
they fail when a change makes the reduced path drift further from fp32. Case A's weights are
random, which makes masks more sensitive than trained weights do (docs/performance.md, "CPU
reduced precision (bf16, int8)").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engine.backends.base import BackendError
from engine.backends.onnxruntime_backend import OnnxRuntimeBackend
from engine.backends.torch_backend import TorchBackend
from engine.fidelity import FidelityReport, compare_backends, mask_iou
from engine.modeling import EdgeSam
from engine.quantize import onnx_precision, synthetic_images, write_int8_pair

PROMPTS_PER_KIND = 2
# measured on case A (1 image, 2 prompts of each kind, seed 0): embedding relative error
# 0.0148, mean mask IoU >= 0.990 per kind, worst 0.985
BF16_EMBED_REL = 0.03
BF16_MEAN_IOU = 0.98
BF16_WORST_IOU = 0.96
# the decoder in bf16 too (EDGESAM_DECODER_PRECISION=bf16), measured on case A as above:
# mean mask IoU >= 0.986 per kind, worst 0.972
BF16_DEC_MEAN_IOU = 0.97
BF16_DEC_WORST_IOU = 0.94
# measured with this two-image calibration: embedding relative error 0.50, mean IoU
# 0.65-0.85 per kind, worst 0.62. Far from fp32 on these random weights (the 8-image default
# does better, and trained weights are expected to; docs/performance.md): why int8 is never
# chosen by `auto`. These bounds catch a quantisation that gets worse, or breaks.
INT8_EMBED_REL = 0.60
INT8_MEAN_IOU = 0.55
INT8_WORST_IOU = 0.50
# int8 in PyTorch (torchao PT2E, x86 inductor quantiser, every conv quantised), same two
# calibration images: embedding relative error 0.515, mean IoU 0.64-0.86 per kind, worst 0.616
TORCH_INT8_EMBED_REL = 0.65
TORCH_INT8_MEAN_IOU = 0.55
TORCH_INT8_WORST_IOU = 0.50


def assert_within(report: FidelityReport, rel: float, mean: float, worst: float) -> None:
    """Embedding relative error in (0, rel) (0 would mean the reduced path did not run) and
    every prompt kind's mean and worst mask IoU at least `mean` and `worst`."""
    print(report.format())
    assert 0 < report.embedding_rel_error < rel
    for (kind, masks), stats in report.ious.items():
        assert stats.mean >= mean, (kind, masks, stats.mean)
        assert stats.worst >= worst, (kind, masks, stats.worst)


@pytest.fixture(scope="module")
def image(golden: dict[str, np.ndarray]) -> np.ndarray:
    return golden["image"]


@pytest.fixture(scope="module")
def torch_fp32(case_a_model: EdgeSam) -> TorchBackend:
    return TorchBackend(case_a_model, precision="fp32", num_threads=2)


def test_bf16_on_the_cpu_stays_within_its_measured_tolerances(
    case_a_model: EdgeSam, torch_fp32: TorchBackend, image: np.ndarray
) -> None:
    bf16 = TorchBackend(case_a_model, precision="bf16")
    assert bf16.info.precision == "bf16"
    report = compare_backends(torch_fp32, bf16, [image], "bf16", PROMPTS_PER_KIND)
    # > 0: bf16 really ran
    assert_within(report, BF16_EMBED_REL, BF16_MEAN_IOU, BF16_WORST_IOU)


def test_bf16_decoder_stays_within_its_measured_tolerances(
    case_a_model: EdgeSam, torch_fp32: TorchBackend, image: np.ndarray
) -> None:
    both = TorchBackend(case_a_model, precision="bf16", decoder_precision="bf16")
    assert both.info.details["decoder_precision"] == "bf16"
    report = compare_backends(torch_fp32, both, [image], "bf16+dec", PROMPTS_PER_KIND)
    assert_within(report, BF16_EMBED_REL, BF16_DEC_MEAN_IOU, BF16_DEC_WORST_IOU)
    # the decoder really ran in bf16: its logits differ from the fp32 decoder's on the same
    # embedding, and come back as float32
    emb = torch_fp32.encode(torch.zeros((1, 3, 1024, 1024)))
    coords = torch.tensor([[[500.0, 400.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, -1]])
    ref, _ = torch_fp32.decode(emb, coords, labels, None, 1)
    got, iou = both.decode(emb, coords, labels, None, 1)
    assert got.dtype == torch.float32 and iou.dtype == torch.float32
    assert 0 < (got - ref).abs().max() < 0.5 * ref.abs().max()


def test_bf16_decoder_is_a_cpu_option(case_a_model: EdgeSam) -> None:
    with pytest.raises(ValueError, match="fp32 or bf16"):
        TorchBackend(case_a_model, decoder_precision="fp16")


def test_bf16_encoder_output_is_float32(case_a_model: EdgeSam) -> None:
    out = TorchBackend(case_a_model, precision="bf16").encode(torch.zeros((1, 3, 1024, 1024)))
    assert out.dtype == torch.float32 and out.shape == (1, 256, 64, 64)
    assert torch.isfinite(out).all()


def test_fp16_is_refused_on_the_cpu(case_a_model: EdgeSam) -> None:
    with pytest.raises(ValueError, match="fp32 or bf16"):
        TorchBackend(case_a_model, precision="fp16")


@pytest.fixture(scope="module")
def int8_pair(exported: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> tuple:
    out = tmp_path_factory.mktemp("int8")
    images = synthetic_images(2, size=512)
    # two images at 512 keep the test fast (the default calibrates on eight; figures for it
    # in docs/performance.md); min-max, the default method
    return write_int8_pair(
        exported["encoder"],
        exported["decoder"],
        out,
        "case_a_int8",
        images=images,
        calibrate_method="minmax",
    )


def test_int8_on_onnx_runtime_stays_within_its_measured_tolerances(
    exported: dict[str, object], int8_pair: tuple, image: np.ndarray
) -> None:
    enc, dec = int8_pair
    assert onnx_precision(enc) == "int8" and onnx_precision(exported["encoder"]) == "fp32"
    fp32 = OnnxRuntimeBackend(exported["encoder"], intra_op_num_threads=2)
    int8 = OnnxRuntimeBackend(enc, precision="int8", intra_op_num_threads=2)
    assert int8.decoder_path == dec and int8.info.precision == "int8"
    # quantised numbers must not share cache entries with fp32 ones
    assert int8.fingerprint == f"{fp32.fingerprint}-int8"
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(enc)).graph.node}
    report = compare_backends(fp32, int8, [image], "int8", PROMPTS_PER_KIND)
    assert_within(report, INT8_EMBED_REL, INT8_MEAN_IOU, INT8_WORST_IOU)


def test_int8_in_pytorch_stays_within_its_measured_tolerances(
    case_a_model: EdgeSam, torch_fp32: TorchBackend, image: np.ndarray
) -> None:
    """The PT2E encoder of engine.torch_int8 (compiled by inductor: about a minute here)."""
    pytest.importorskip("torchao", reason="int8 in PyTorch needs torchao (the dev extra)")
    int8 = TorchBackend(
        case_a_model, precision="int8", calibration_images=synthetic_images(2, size=512)
    )
    assert int8.info.precision == "int8" and "PT2E" in int8.info.details["int8"]
    assert int8.fingerprint == f"{torch_fp32.fingerprint}-int8pt2e"
    report = compare_backends(torch_fp32, int8, [image], "int8 torch", PROMPTS_PER_KIND)
    assert_within(report, TORCH_INT8_EMBED_REL, TORCH_INT8_MEAN_IOU, TORCH_INT8_WORST_IOU)
    batch = int8.encode(torch.zeros((2, 3, 1024, 1024)))  # a batch runs image by image
    assert batch.shape == (2, 256, 64, 64) and torch.equal(batch[0], batch[1])
    with pytest.raises(ValueError, match="CPU's compiled PT2E"):
        TorchBackend(case_a_model, precision="int8", compile=True)


def test_int8_files_and_precision_must_agree(exported: dict[str, object], int8_pair: tuple) -> None:
    with pytest.raises(BackendError, match="int8 encoder but precision 'fp32'"):
        OnnxRuntimeBackend(int8_pair[0], precision="fp32")
    with pytest.raises(BackendError, match="fp32 encoder but precision 'int8'"):
        OnnxRuntimeBackend(exported["encoder"], precision="int8")
    with pytest.raises(ValueError, match="CPU execution provider"):
        OnnxRuntimeBackend(int8_pair[0], precision="int8", device="cuda")


def test_synthetic_calibration_set_is_deterministic() -> None:
    a, b = synthetic_images(3, size=128), synthetic_images(3, size=128)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert all(x.dtype == np.uint8 and x.shape[2] == 3 for x in a)
    # varied content, not flat fields: what calibration needs to see
    assert all(x.std() > 10 for x in a)
    assert not np.array_equal(a[0], synthetic_images(1, size=128, seed=1)[0])


def test_mask_iou() -> None:
    a = torch.zeros((4, 4), dtype=torch.bool)
    assert mask_iou(a, a) == 1.0
    b = a.clone()
    b[0, :2] = True
    assert mask_iou(a, b) == 0.0
    c = b.clone()
    c[1, :2] = True
    assert mask_iou(b, c) == 0.5


def test_quantise_reads_a_calibration_folder(tmp_path: Path) -> None:
    from PIL import Image

    from engine.quantize import read_images

    for i, img in enumerate(synthetic_images(2, size=64)):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    images = read_images(tmp_path)
    assert len(images) == 2 and images[0].shape == (64, 48, 3)  # the first is landscape
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        read_images(empty)


def test_export_int8_writes_a_servable_pair(exported: dict[str, object], tmp_path: Path) -> None:
    """What `python -m engine.export onnx --int8 --calibration-images DIR` runs after the fp32
    export: <name>_int8_encoder.onnx plus the float decoder files beside it."""
    from PIL import Image

    from engine.export import split_decoder_paths
    from engine.quantize import export_int8

    folder = tmp_path / "calibration"
    folder.mkdir()
    Image.fromarray(synthetic_images(1, size=320)[0]).save(folder / "a.png")
    said: list[str] = []
    enc, dec = export_int8(
        exported["encoder"], exported["decoder"], tmp_path, "m", folder, progress=said.append
    )
    assert "1 images from" in said[0]
    assert (enc, dec) == (tmp_path / "m_int8_encoder.onnx", tmp_path / "m_int8_decoder.onnx")
    assert onnx_precision(enc) == "int8"
    assert all(p.is_file() for p in split_decoder_paths(dec))
    backend = OnnxRuntimeBackend(enc, precision="int8", intra_op_num_threads=1)
    assert backend.info.details["split_decoder"] == "true"
    assert backend.info.details["int8_calibration"].startswith("1 images, minmax")
