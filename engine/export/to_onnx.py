"""The ONNX export library: EdgeSAM as our ONNX files (`engine.onnx_format` names them).

- the encoder, re-parameterised (BN-folded, RepVGG-merged) with the model's own upsampling
  mode, with a dynamic batch;
- the decoder for a batch of prompts with a mask input and its flag, all four mask tokens
  (float sums only);
- the decoder split at the image/prompt boundary, for clicks without a mask;
- `export_cached`: a checkpoint's files, exported once into the cache folder (the ONNX Runtime
  and TensorRT backends load checkpoints through it).

The legacy TorchScript exporter (`dynamo=False`) is used: torch 2.13's default exporter fails on
this model or writes graphs ONNX Runtime refuses. torch < 2.5 (JetPack 5's 2.1) has no
`dynamo` argument and only that exporter. The command line is `engine.export.__main__`.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from engine.build_edge_sam import build_edge_sam
from engine.checkpoint import weights_fingerprint
from engine.fusion import fuse_encoder
from engine.modeling import EdgeSam
from engine.modeling.transformer import to_tokens
from engine.onnx_format import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    DEFAULT_OPSET,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_SIDE_INPUTS,
    IMAGE_SIDE_OUTPUTS,
    PROMPT_DECODER_INPUTS,
    file_digest,
    split_decoder_paths,
    write_metadata,
)

log = logging.getLogger(__name__)

STABILITY_OFFSET = 1.0

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def stability_scores_float(logits: torch.Tensor, offset: float = STABILITY_OFFSET) -> torch.Tensor:
    """Stability score with float sums (exact up to 2**24 pixels; no int16/int64 reductions,
    which some runtimes refuse). logits ...xHxW -> ...; 0 where the loose mask is empty."""
    inter = (logits > offset).to(torch.float32).sum((-1, -2))
    union = (logits > -offset).to(torch.float32).sum((-1, -2))
    return torch.where(union > 0, inter / union.clamp(min=1.0), torch.zeros_like(union))


class EncoderForExport(nn.Module):
    """The re-parameterised image encoder: Bx3x1024x1024 -> Bx256x64x64.

    upsample="matmul" (default) writes the stage-3 upsampling as matrix products; "resize"
    keeps ONNX Resize (cubic, a=-0.75, half_pixel for bicubic)."""

    def __init__(self, model: EdgeSam, upsample: str = "matmul") -> None:
        super().__init__()
        if upsample not in ("matmul", "resize"):
            raise ValueError("upsample must be matmul or resize")
        self.encoder = fuse_encoder(model.image_encoder, matrix_upsample=upsample == "matmul")
        self.encoder.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)


class DecoderForExport(nn.Module):
    """Prompt encoder + mask decoder for a batch of B prompts on one (or B) embeddings.

    The optional mask is an input plus a flag (ONNX has no optional tensors that every runtime
    accepts): dense = has * embed(mask_input) + (1 - has) * no_mask_embed.
    """

    def __init__(self, model: EdgeSam) -> None:
        super().__init__()
        self.model = model.eval()
        self.register_buffer("dense_pe", model.prompt_encoder.get_dense_pe().detach(), False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pe = self.model.prompt_encoder
        sparse = pe.embed_labeled_points(point_coords, point_labels)
        has = has_mask_input.reshape(-1, 1, 1, 1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has * pe.embed_masks(mask_input) + (1.0 - has) * no_mask
        logits, iou = self.model.mask_decoder.predict_all(
            image_embeddings, self.dense_pe, sparse, dense, None
        )
        return logits, iou, stability_scores_float(logits)


class ImageSideForExport(nn.Module):
    """What the decoder computes from one embedding alone when no mask is given: key tokens
    (embedding + no-mask embedding), their sum with the positional encoding, and the first
    block's token->image k/v projections (`EdgeSam._image_side`)."""

    def __init__(self, model: EdgeSam) -> None:
        super().__init__()
        self.model = model.eval()
        pe = to_tokens(model.prompt_encoder.get_dense_pe().detach())
        self.register_buffer("pe_tokens", pe, False)

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        no_mask = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, 1, -1)
        tokens = to_tokens(image_embeddings) + no_mask
        keys, values, keys_with_pe = self.model.mask_decoder.transformer.first_keys_kv(
            tokens, self.pe_tokens
        )
        return tokens, keys, values, keys_with_pe


class PromptDecoderForExport(nn.Module):
    """The per-prompt half: a batch of B prompts on the image side of one embedding, for the
    mask tokens `mask_tokens` (int64 indices: [0] single mask, [1, 2, 3] multimask, all
    four), whose masks alone are upscaled."""

    def __init__(self, model: EdgeSam) -> None:
        super().__init__()
        self.model = model.eval()
        pe = to_tokens(model.prompt_encoder.get_dense_pe().detach())
        self.register_buffer("pe_tokens", pe, False)
        self.grid = model.prompt_encoder.image_embedding_size

    def forward(
        self,
        image_tokens: torch.Tensor,
        first_keys: torch.Tensor,
        first_values: torch.Tensor,
        keys_with_pe: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_tokens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self.model.prompt_encoder.embed_labeled_points(point_coords, point_labels)
        grid = image_tokens.new_zeros((1, 1, *self.grid))  # predict_all reads only its size
        logits, iou = self.model.mask_decoder.predict_all(
            grid,
            self.pe_tokens,
            sparse,
            None,
            (first_keys, first_values, keys_with_pe),
            src_tokens=image_tokens,
            mask_tokens=mask_tokens,
        )
        return logits, iou, stability_scores_float(logits)


@dataclass(frozen=True)
class OnnxPair:
    encoder: Path
    decoder: Path
    fingerprint: str


def model_fingerprint(model: EdgeSam) -> str:
    """The fingerprint TorchBackend reports for this model (weights + upsampling mode)."""
    return weights_fingerprint(model, model.image_encoder.fuse_stage3.upsample_mode)


def torchscript_exporter() -> dict[str, bool]:
    """The torch.onnx.export argument that selects the TorchScript exporter: `dynamo=False`
    where the argument exists (torch >= 2.5), nothing before (2.1 has only that exporter)."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def _export(
    module: nn.Module,
    args: tuple,
    path: Path,
    names: tuple,
    outs: tuple,
    dynamic_axes: dict,
    opset: int,
) -> None:
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent branches
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(names),
            output_names=list(outs),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            **torchscript_exporter(),
        )


def export_encoder(
    model: EdgeSam, path: Path, opset: int = DEFAULT_OPSET, upsample: str = "matmul"
) -> None:
    """Write the encoder with a dynamic batch axis (1024x1024 input: stage 3 is 32x32)."""
    module = EncoderForExport(model, upsample)
    example = torch.zeros((1, 3, 1024, 1024))
    _export(
        module,
        (example,),
        path,
        ENCODER_INPUTS,
        ENCODER_OUTPUTS,
        {"image": {0: "batch"}, "image_embeddings": {0: "batch"}},
        opset,
    )


def export_decoder(model: EdgeSam, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Write the decoder with dynamic prompt batch and number of points."""
    module = DecoderForExport(model)
    b, n = 2, 3
    example = (
        torch.randn((1, 256, 64, 64)),
        torch.rand((b, n, 2)) * 1024,
        torch.tensor([[1.0, 0.0, -1.0]] * b),
        torch.zeros((b, 1, 256, 256)),
        torch.zeros((1,)),
    )
    axes = {
        "image_embeddings": {0: "embedding_batch"},
        "point_coords": {0: "batch", 1: "num_points"},
        "point_labels": {0: "batch", 1: "num_points"},
        "mask_input": {0: "batch"},
        "low_res_logits": {0: "batch"},
        "iou_predictions": {0: "batch"},
        "stability_scores": {0: "batch"},
    }
    _export(module, example, path, DECODER_INPUTS, DECODER_OUTPUTS, axes, opset)


def export_split_decoder(
    model: EdgeSam, image_path: Path, prompt_path: Path, opset: int = DEFAULT_OPSET
) -> None:
    """Write the decoder's image half (batch 1) and prompt half (dynamic prompts, points)."""
    image_side = ImageSideForExport(model)
    example_emb = torch.randn((1, 256, 64, 64))
    _export(
        image_side, (example_emb,), image_path, IMAGE_SIDE_INPUTS, IMAGE_SIDE_OUTPUTS, {}, opset
    )
    with torch.no_grad():
        side = image_side(example_emb)
    b, n = 2, 3
    example = (
        *side,
        torch.rand((b, n, 2)) * 1024,
        torch.tensor([[1.0, 0.0, -1.0]] * b),
        torch.tensor([1, 2, 3]),
    )
    axes = {
        "point_coords": {0: "batch", 1: "num_points"},
        "point_labels": {0: "batch", 1: "num_points"},
        "mask_tokens": {0: "num_masks"},
        "low_res_logits": {0: "batch", 1: "num_masks"},
        "iou_predictions": {0: "batch", 1: "num_masks"},
        "stability_scores": {0: "batch", 1: "num_masks"},
    }
    module = PromptDecoderForExport(model)
    _export(module, example, prompt_path, PROMPT_DECODER_INPUTS, DECODER_OUTPUTS, axes, opset)


def export_onnx(
    model: EdgeSam,
    out_dir: str | os.PathLike[str],
    name: str = "edge_sam",
    opset: int = DEFAULT_OPSET,
    progress: Progress = _quiet,
    source: str = "",
    upsample: str = "matmul",
) -> OnnxPair:
    """Write `<name>_encoder.onnx` and `<name>_decoder.onnx` into out_dir (fp32).

    Both carry metadata: format, version, role, the weights fingerprint (as TorchBackend
    reports it) and the upsampling mode."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    fingerprint = model_fingerprint(model)
    meta = {
        "edgesam.format": FORMAT_NAME,
        "edgesam.format_version": FORMAT_VERSION,
        "edgesam.fingerprint": fingerprint,
        "edgesam.upsample_mode": model.image_encoder.fuse_stage3.upsample_mode,
        "edgesam.opset": str(opset),
        "edgesam.upsample_export": upsample,
        "edgesam.source": source,
        "edgesam.torch": torch.__version__,
    }
    enc_path, dec_path = out / f"{name}_encoder.onnx", out / f"{name}_decoder.onnx"
    start = time.perf_counter()
    progress(f"exporting encoder (opset {opset}, dynamic batch) -> {enc_path}")
    export_encoder(model, enc_path, opset, upsample)
    write_metadata(enc_path, {**meta, "edgesam.role": "encoder"})
    progress(
        f"  done in {time.perf_counter() - start:.1f}s ({enc_path.stat().st_size / 1e6:.1f} MB)"
    )
    start = time.perf_counter()
    progress(f"exporting decoder (dynamic prompts and points, mask input) -> {dec_path}")
    export_decoder(model, dec_path, opset)
    write_metadata(dec_path, {**meta, "edgesam.role": "decoder"})
    progress(
        f"  done in {time.perf_counter() - start:.1f}s ({dec_path.stat().st_size / 1e6:.1f} MB)"
    )
    start = time.perf_counter()
    image_path, prompt_path = split_decoder_paths(dec_path)
    progress(f"exporting the split decoder (clicks without a mask) -> {image_path}, {prompt_path}")
    export_split_decoder(model, image_path, prompt_path, opset)
    write_metadata(image_path, {**meta, "edgesam.role": "decoder_image"})
    write_metadata(prompt_path, {**meta, "edgesam.role": "decoder_prompt"})
    progress(f"  done in {time.perf_counter() - start:.1f}s")
    return OnnxPair(enc_path, dec_path, fingerprint)


def default_cache_dir() -> Path:
    """EDGESAM_CACHE_DIR, else ~/.cache/edgesam."""
    env = os.environ.get("EDGESAM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "edgesam"


def export_cached(
    checkpoint: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None = None,
    upsample_mode: str = "bicubic",
    opset: int | None = None,
) -> tuple[Path, Path]:
    """Our ONNX pair for a checkpoint, exported once per (file content, mode, opset, format);
    `opset` None is the exporter's default.

    None (random weights) exports into a fresh temporary folder, never cached."""
    opset = DEFAULT_OPSET if opset is None else opset
    if checkpoint is None:
        out = Path(tempfile.mkdtemp(prefix="edgesam-onnx-"))
        pair = export_onnx(build_edge_sam(None, upsample_mode), out, "random", opset)  # type: ignore[arg-type]
        return pair.encoder, pair.decoder
    ckpt = Path(checkpoint)
    key = f"{ckpt.stem}-{file_digest(ckpt, 12)}-{upsample_mode}-op{opset}-v{FORMAT_VERSION}"
    folder = Path(cache_dir) if cache_dir else default_cache_dir() / "onnx"
    target = folder / key
    enc, dec = target / "edge_sam_encoder.onnx", target / "edge_sam_decoder.onnx"
    if enc.is_file() and dec.is_file():
        return enc, dec
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        log.info("exporting %s to ONNX into %s (once)", ckpt.name, target)
        export_onnx(build_edge_sam(ckpt, upsample_mode), tmp, "edge_sam", opset, source=ckpt.name)  # type: ignore[arg-type]
        try:
            tmp.rename(target)
        except OSError:  # another process won the race; use its files
            if not (enc.is_file() and dec.is_file()):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return enc, dec
