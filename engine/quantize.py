"""A statically quantised (int8) encoder for ONNX Runtime on CPUs with integer dot products.

    python -m engine.export onnx --checkpoint edge_sam_3x.pth --int8 [--calibration-images DIR]

QDQ format: QuantizeLinear/DequantizeLinear pairs around Conv and MatMul, weights int8 per
output channel (symmetric), activations uint8 per tensor with ranges calibrated on images.
ONNX Runtime fuses each pair into an integer kernel (VNNI's u8s8 dot products on x86).
The decoder stays float: it is a small share of the work and its outputs, the masks, move
most under quantisation.

Without `--calibration-images` the calibration set is `synthetic_images`: procedural
pictures (gradients, overlapping shapes, blurred textures, hard edges) drawn from a fixed
seed, so every machine builds the same model and nothing is downloaded. Photographs of the
domain served calibrate better; pass a folder of them when you have one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.onnx_format import (
    META_FINGERPRINT,
    META_INT8_CALIBRATION,
    META_PRECISION,
    read_metadata,
    split_decoder_paths,
)
from engine.transforms import preprocess_image

DEFAULT_CALIBRATION_COUNT = 8
# bump when the synthetic set, the calibration or the quantised operators change: cached int8
# encoders are rebuilt
CALIBRATION_VERSION = "v4"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Only these operators are quantised: the convolutions and matrix products carry all but a
# sliver of the encoder's arithmetic; element-wise ops stay float (no gain, only error).
# Depthwise convolutions stay float too: with case A's weights, quantising them as well took the
# embedding error from 0.16 to 0.23 on a held-out image (docs/performance.md).
OP_TYPES = ("Conv", "MatMul")
# min-max keeps two numbers per tensor and image; the histogram methods (percentile, entropy)
# keep every intermediate tensor of every image (8 images at 1024: 8.7 GB, OOM-killed here)
DEFAULT_CALIBRATE_METHOD = "minmax"


def synthetic_images(
    count: int = DEFAULT_CALIBRATION_COUNT, size: int = 512, seed: int = 0
) -> list[np.ndarray]:
    """`count` deterministic uint8 HxWx3 RGB pictures with photo-like statistics: smooth
    shading, objects with edges, texture and noise (the ranges calibration needs to see)."""
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        h = size
        w = size if i % 3 else int(size * 0.75)  # some landscape-padded inputs too
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack(
            [
                rng.uniform(40, 200)
                + rng.uniform(-80, 80) * (xx / w)
                + rng.uniform(-60, 60) * (yy / h)
                for _ in range(3)
            ],
            axis=-1,
        )
        img = np.clip(base, 0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(6, 16))):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            kind = rng.integers(0, 3)
            if kind == 0:
                axes = (int(rng.integers(8, w // 3)), int(rng.integers(8, h // 3)))
                cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
            elif kind == 1:
                corner = (int(rng.integers(0, w)), int(rng.integers(0, h)))
                cv2.rectangle(img, centre, corner, colour, -1)
            else:
                pts = rng.integers(0, [w, h], (int(rng.integers(3, 7)), 2)).astype(np.int32)
                cv2.fillPoly(img, [pts], colour)
        # fine detail (small shapes, thin lines, stripes): photographs have plenty, and
        # without it the ranges calibrated here clip real images' activations
        for _ in range(int(rng.integers(30, 80))):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            if rng.integers(0, 2):
                cv2.circle(img, centre, int(rng.integers(2, 20)), colour, -1)
            else:
                end = (
                    centre[0] + int(rng.integers(-80, 80)),
                    centre[1] + int(rng.integers(-80, 80)),
                )
                cv2.line(img, centre, end, colour, int(rng.integers(1, 4)))
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        period = float(rng.uniform(3, 12))
        stripes = 127.5 + 127.5 * np.sin(2 * np.pi * (xx + yy * rng.uniform(-1, 1)) / period)
        patch = (slice(y0, y0 + h // 3), slice(x0, x0 + w // 3))
        img[patch] = (0.5 * img[patch] + 0.5 * stripes[patch][..., None]).astype(np.uint8)
        texture = np.zeros((h, w, 3), np.float32)
        for sigma in (0.7, 2.0, 6.0):
            noise = rng.normal(0, rng.uniform(4, 25), (h, w, 3)).astype(np.float32)
            texture += cv2.GaussianBlur(noise, (0, 0), sigma) * sigma**0.5
        img = np.clip(img.astype(np.float32) + texture, 0, 255).astype(np.uint8)
        images.append(np.ascontiguousarray(img))
    return images


def read_images(folder: str | os.PathLike[str], limit: int | None = None) -> list[np.ndarray]:
    """The images in `folder` (sorted by name; RGB uint8), at most `limit`."""
    from PIL import Image

    paths = sorted(
        p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    out = []
    for p in paths[:limit]:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB")).copy())
    return out


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over preprocessed images."""

    def __init__(self, images: Sequence[np.ndarray], input_name: str = "image") -> None:
        self._images = list(images)
        self._name = input_name
        self._it: Iterator[np.ndarray] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = iter(self._images)
        image = next(self._it, None)
        if image is None:
            return None
        x, _ = preprocess_image(image)
        return {self._name: x.numpy()}

    def rewind(self) -> None:
        self._it = None


def quantize_encoder(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    images: Sequence[np.ndarray] | None = None,
    calibrate_method: str = DEFAULT_CALIBRATE_METHOD,
    exclude_nodes: Sequence[str] = (),
    op_types: Sequence[str] = OP_TYPES,
    quantize_depthwise: bool = False,
) -> Path:
    """Write the int8 QDQ version of our fp32 encoder `fp32_path` to `out_path`, calibrated
    on `images` (uint8 HxWx3 RGB; default `synthetic_images()`). Metadata is kept, with
    `edgesam.precision` = int8 and the fingerprint suffixed `-int8` (different numbers: a
    cache shared with fp32 replicas must not mix their embeddings)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if calibrate_method not in methods:
        raise ValueError(f"calibrate_method must be one of {sorted(methods)}")
    images = synthetic_images() if images is None else list(images)
    if not images:
        raise ValueError("no calibration images")
    src, out = Path(fp32_path), Path(out_path)
    meta = read_metadata(src)
    work = Path(tempfile.mkdtemp(prefix="edgesam-int8-"))
    try:
        pre = work / "pre.onnx"
        # shape inference and graph clean-up first, as ONNX Runtime's tools recommend
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        exclude = list(exclude_nodes)
        if not quantize_depthwise:
            exclude += depthwise_convs(onnx.load(str(pre), load_external_data=False))
        tmp_out = work / "int8.onnx"
        quantize_static(
            str(pre),
            str(tmp_out),
            _Reader(images),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[calibrate_method],
            nodes_to_exclude=exclude,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        proto = onnx.load(str(tmp_out))
        del proto.metadata_props[:]
        meta.update(
            {
                META_PRECISION: "int8",
                META_FINGERPRINT: f"{meta.get(META_FINGERPRINT, 'onnx')}-int8",
                META_INT8_CALIBRATION: f"{len(images)} images, {calibrate_method}"
                + ("" if quantize_depthwise else ", depthwise float"),
            }
        )
        for key, value in sorted(meta.items()):
            item = proto.metadata_props.add()
            item.key, item.value = key, value
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def depthwise_convs(model: Any) -> list[str]:
    """Names of the grouped (depthwise) Conv nodes of an ONNX model."""
    out = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group > 1:
            out.append(node.name)
    return out


def write_int8_pair(
    fp32_encoder: Path, fp32_decoder: Path, out_dir: Path, name: str, **quantize: Any
) -> tuple[Path, Path]:
    """`<name>_encoder.onnx` quantised and the float decoder files copied beside it as
    `<name>_decoder*.onnx` (the backend finds the decoder by that name)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    enc = out_dir / f"{name}_encoder.onnx"
    dec = out_dir / f"{name}_decoder.onnx"
    quantize_encoder(fp32_encoder, enc, **quantize)
    if fp32_decoder.resolve() != dec.resolve():
        shutil.copyfile(fp32_decoder, dec)
        for src, dst in zip(split_decoder_paths(fp32_decoder), split_decoder_paths(dec)):
            if src.is_file():
                shutil.copyfile(src, dst)
    return enc, dec


def export_int8(
    fp32_encoder: str | os.PathLike[str],
    fp32_decoder: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    name: str,
    calibration_images: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    progress: Callable[[str], None] = print,
) -> tuple[Path, Path]:
    """`python -m engine.export onnx --int8 [--calibration-images DIR]`: `<name>_int8_*`
    files in `out_dir`, calibrated on the images in `calibration_images` (at most `limit`),
    or on `synthetic_images`."""
    if calibration_images:
        images = read_images(calibration_images, limit)
        what = f"{len(images)} images from {calibration_images}"
    else:
        images = synthetic_images(limit or DEFAULT_CALIBRATION_COUNT)
        what = f"{len(images)} synthetic images (engine.quantize.synthetic_images)"
    progress(f"[int8] calibrating on {what}; quantising Conv/MatMul (QDQ, per-channel weights)")
    start = time.perf_counter()
    enc, dec = write_int8_pair(
        Path(fp32_encoder), Path(fp32_decoder), Path(out_dir), f"{name}_int8", images=images
    )
    progress(f"  done in {time.perf_counter() - start:.1f}s ({enc.stat().st_size / 1e6:.1f} MB)")
    progress(f"wrote {enc} (float decoder files beside it: {dec.name}, ...)")
    progress("measure it on your images: python -m engine.fidelity --precision int8 ...")
    return enc, dec


def onnx_precision(path: str | os.PathLike[str]) -> str:
    """`edgesam.precision` of an encoder file: int8 for `quantize_encoder`'s, else fp32."""
    return read_metadata(path).get(META_PRECISION, "fp32")


def quantize_cached(fp32_encoder: Path, fp32_decoder: Path) -> tuple[Path, Path]:
    """The int8 pair for an exported fp32 pair, calibrated on `synthetic_images()`: written
    once into an `int8-<version>` folder beside it (what `OnnxRuntimeBackend.from_path` loads
    for precision int8 from a checkpoint)."""
    target = fp32_encoder.parent / f"int8-{CALIBRATION_VERSION}"
    enc, dec = target / fp32_encoder.name, target / fp32_decoder.name
    if enc.is_file() and dec.is_file():
        return enc, dec
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-int8-", dir=fp32_encoder.parent))
    try:
        name = fp32_encoder.name[: -len("_encoder.onnx")]
        write_int8_pair(fp32_encoder, fp32_decoder, tmp, name)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; use its files
            if not (enc.is_file() and dec.is_file()):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return enc, dec
