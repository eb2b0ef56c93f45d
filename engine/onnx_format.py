"""Our ONNX format: tensor names, format name and version, and the metadata entries each file
carries. Written by `engine.export`, read by the ONNX Runtime and TensorRT backends; this
module imports neither.

The files (told apart from the official ones by the `edgesam.format` metadata entry):

- encoder `image` Bx3x1024x1024 (dynamic batch) -> `image_embeddings` Bx256x64x64;
- decoder `image_embeddings` 1x or Bx256x64x64, `point_coords` BxNx2, `point_labels` BxN float
  (-1/0/1/2/3), `mask_input` Bx1x256x256, `has_mask_input` 1 -> `low_res_logits` Bx4x256x256,
  `iou_predictions` Bx4, `stability_scores` Bx4;
- the decoder split at the image/prompt boundary (`<name>_decoder_image.onnx`,
  `<name>_decoder_prompt.onnx`), for prompts without a mask input.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import onnx

FORMAT_NAME = "edgesam-serve"
# 3: adds the split decoder (<name>_decoder_image / _decoder_prompt); 4: the image half's k/v
# split into heads, the prompt half takes `mask_tokens` and upscales only those masks
FORMAT_VERSION = "4"
DEFAULT_OPSET = 17
ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
)
DECODER_OUTPUTS = ("low_res_logits", "iou_predictions", "stability_scores")
# The decoder split at the image/prompt boundary, for prompts without a mask input: the image
# half runs once per embedding (its outputs are cached), the prompt half once per click.
IMAGE_SIDE_INPUTS = ("image_embeddings",)
IMAGE_SIDE_OUTPUTS = ("image_tokens", "first_keys", "first_values", "keys_with_pe")
PROMPT_DECODER_INPUTS = (*IMAGE_SIDE_OUTPUTS, "point_coords", "point_labels", "mask_tokens")

# Metadata keys (values are strings); `edgesam.role` is one of ROLES.
META_FORMAT = "edgesam.format"
META_FORMAT_VERSION = "edgesam.format_version"
META_FINGERPRINT = "edgesam.fingerprint"
META_ROLE = "edgesam.role"
META_UPSAMPLE_MODE = "edgesam.upsample_mode"
# int8 on encoders `engine.quantize` wrote (absent: fp32), with how they were calibrated
META_PRECISION = "edgesam.precision"
META_INT8_CALIBRATION = "edgesam.int8_calibration"
ROLES = ("encoder", "decoder", "decoder_image", "decoder_prompt")


def split_decoder_paths(decoder_path: Path) -> tuple[Path, Path]:
    """`<name>_decoder.onnx` -> (`<name>_decoder_image.onnx`, `<name>_decoder_prompt.onnx`)."""
    stem = decoder_path.name[: -len(".onnx")]
    return (
        decoder_path.with_name(f"{stem}_image.onnx"),
        decoder_path.with_name(f"{stem}_prompt.onnx"),
    )


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata entries of an ONNX file (empty for files not written by us)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def write_metadata(path: Path, entries: dict[str, str]) -> None:
    """Replace the file's metadata entries with `entries` (the model is checked first)."""
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in sorted(entries.items()):
        item = proto.metadata_props.add()
        item.key, item.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def file_digest(path: str | os.PathLike[str], length: int = 16) -> str:
    """The first `length` hex digits of the file's sha256."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]
