"""Export EdgeSAM to ONNX and build TensorRT engines.

    python -m engine.export onnx --checkpoint edge_sam_3x.pth --out-dir models/
    python -m engine.export tensorrt --onnx models/edge_sam_3x_encoder.onnx --precision fp16
    python -m engine.export onnx --checkpoint edge_sam_3x.pth --out-dir models/ --int8 \
        [--calibration-images DIR]   # also models/edge_sam_int8_{encoder,decoder*}.onnx

The ONNX pair written here (our format, told apart from the official files by the
`edgesam.format` metadata entry):

- encoder `image` Bx3x1024x1024 (dynamic batch) -> `image_embeddings` Bx256x64x64, with the
  re-parameterised (BN-folded, RepVGG-merged) encoder and the model's own upsampling mode;
- decoder `image_embeddings` 1x or Bx256x64x64, `point_coords` BxNx2, `point_labels` BxN float
  (-1/0/1/2/3), `mask_input` Bx1x256x256, `has_mask_input` 1 -> `low_res_logits` Bx4x256x256,
  `iou_predictions` Bx4, `stability_scores` Bx4 (all four mask tokens; float sums only).

The legacy TorchScript exporter (`dynamo=False`) is used: torch 2.13's default exporter fails on
this model or writes graphs ONNX Runtime refuses. torch < 2.5 (JetPack 5's 2.1) has no
`dynamo` argument and only that exporter.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from engine.modeling import EdgeSam
from engine.modeling.transformer import to_tokens

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
        from engine.fusion import fuse_encoder

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


def split_decoder_paths(decoder_path: Path) -> tuple[Path, Path]:
    """`<name>_decoder.onnx` -> (`<name>_decoder_image.onnx`, `<name>_decoder_prompt.onnx`)."""
    stem = decoder_path.name[: -len(".onnx")]
    return (
        decoder_path.with_name(f"{stem}_image.onnx"),
        decoder_path.with_name(f"{stem}_prompt.onnx"),
    )


@dataclass(frozen=True)
class OnnxPair:
    encoder: Path
    decoder: Path
    fingerprint: str


def model_fingerprint(model: EdgeSam) -> str:
    """The fingerprint TorchBackend reports for this model (weights + upsampling mode)."""
    from engine.backends.torch_backend import weights_fingerprint

    return weights_fingerprint(model, model.image_encoder.fuse_stage3.upsample_mode)


def _add_metadata(path: Path, entries: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in sorted(entries.items()):
        item = proto.metadata_props.add()
        item.key, item.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


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
    _add_metadata(enc_path, {**meta, "edgesam.role": "encoder"})
    progress(
        f"  done in {time.perf_counter() - start:.1f}s ({enc_path.stat().st_size / 1e6:.1f} MB)"
    )
    start = time.perf_counter()
    progress(f"exporting decoder (dynamic prompts and points, mask input) -> {dec_path}")
    export_decoder(model, dec_path, opset)
    _add_metadata(dec_path, {**meta, "edgesam.role": "decoder"})
    progress(
        f"  done in {time.perf_counter() - start:.1f}s ({dec_path.stat().st_size / 1e6:.1f} MB)"
    )
    start = time.perf_counter()
    image_path, prompt_path = split_decoder_paths(dec_path)
    progress(f"exporting the split decoder (clicks without a mask) -> {image_path}, {prompt_path}")
    export_split_decoder(model, image_path, prompt_path, opset)
    _add_metadata(image_path, {**meta, "edgesam.role": "decoder_image"})
    _add_metadata(prompt_path, {**meta, "edgesam.role": "decoder_prompt"})
    progress(f"  done in {time.perf_counter() - start:.1f}s")
    return OnnxPair(enc_path, dec_path, fingerprint)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata entries of an ONNX file (empty for files not written by us)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def file_digest(path: str | os.PathLike[str], length: int = 16) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def verify_onnx(model: EdgeSam, pair: OnnxPair, progress: Progress = _quiet) -> dict[str, float]:
    """Run the exported pair in ONNX Runtime (CPU) on random inputs and report the largest
    difference from the PyTorch model."""
    from engine.backends.onnxruntime_backend import OnnxRuntimeBackend

    torch.manual_seed(0)
    images = torch.randn((1, 3, 1024, 1024))
    backend = OnnxRuntimeBackend(pair.encoder, pair.decoder, device="cpu")
    with torch.inference_mode():
        ref_emb = model.encode(images)
        coords = torch.tensor([[[300.0, 400.0], [0.0, 0.0]]])
        labels = torch.tensor([[1, -1]])
        ref_logits, ref_iou = model.decode(ref_emb, coords, labels)
    emb = backend.encode(images)
    logits, iou = backend.decode(ref_emb, coords, labels)
    diffs = {
        "embedding_max_abs": float((emb - ref_emb).abs().max()),
        "logits_max_abs": float((logits - ref_logits).abs().max()),
        "iou_max_abs": float((iou - ref_iou).abs().max()),
    }
    progress(
        "verified against PyTorch (ONNX Runtime CPU): "
        + ", ".join(f"{k}={v:.2e}" for k, v in diffs.items())
    )
    return diffs


def _print(msg: str) -> None:
    print(msg, flush=True)


def _opset_for_tensorrt(wanted: int) -> int:
    """`wanted`, lowered to what the installed TensorRT's ONNX parser reads."""
    from engine.backends.tensorrt_backend import _import_trt
    from engine.backends.trt_logic import tensorrt_opset

    version = str(_import_trt().__version__)
    opset = tensorrt_opset(version, wanted)
    if opset != wanted:
        _print(f"TensorRT {version}: opset {opset} instead of {wanted}")
    return opset


def _cmd_onnx(args: argparse.Namespace) -> int:
    from engine.loader import build_edge_sam

    source = args.checkpoint or "random weights"
    _print(f"[1/3] loading {source} (upsample_mode={args.upsample_mode})")
    if args.checkpoint is None:
        torch.manual_seed(args.seed)
    model = build_edge_sam(args.checkpoint, upsample_mode=args.upsample_mode)
    opset = _opset_for_tensorrt(args.opset) if args.for_tensorrt else args.opset
    _print("[2/3] exporting")
    pair = export_onnx(
        model,
        args.out_dir,
        args.name,
        opset,
        _print,
        source=Path(args.checkpoint).name if args.checkpoint else "random",
        upsample=args.upsample_export,
    )
    if args.verify:
        _print("[3/3] verifying with ONNX Runtime")
        verify_onnx(model, pair, _print)
    else:
        _print("[3/3] verification skipped (--no-verify)")
    _print(f"wrote {pair.encoder}")
    _print(f"wrote {pair.decoder}")
    for path in split_decoder_paths(pair.decoder):
        _print(f"wrote {path}")
    _print(f"fingerprint {pair.fingerprint}")
    if args.int8:  # the statically quantised encoder beside the fp32 pair
        from engine.quantize import export_int8

        export_int8(
            pair.encoder,
            pair.decoder,
            args.out_dir,
            args.name,
            args.calibration_images,
            args.calibration_limit,
            _print,
        )
    return 0


def _cmd_tensorrt(args: argparse.Namespace) -> int:
    from engine.backends.tensorrt_backend import build_engines_for
    from engine.backends.trt_logic import ProfileSpec

    spec = ProfileSpec(
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        max_prompts=args.max_prompts,
        max_points=args.max_points,
    )
    written = build_engines_for(
        args.onnx,
        decoder_path=args.decoder,
        precision=args.precision,
        profile=spec,
        cache_dir=args.cache_dir,
        device=args.device,
        workspace_gb=args.workspace_gb,
        force=args.force,
        progress=_print,
    )
    for path in written:
        _print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    onnx_p = sub.add_parser("onnx", help="export the encoder and decoder to ONNX")
    onnx_p.add_argument("--checkpoint", help=".pth or .safetensors; omitted: random weights")
    onnx_p.add_argument("--out-dir", default=".", help="folder to write into")
    onnx_p.add_argument("--name", default="edge_sam", help="file name stem")
    onnx_p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    onnx_p.add_argument(
        "--for-tensorrt",
        action="store_true",
        help="lower --opset to what this machine's TensorRT reads (16 before TensorRT 8.6)",
    )
    onnx_p.add_argument("--upsample-mode", choices=("bicubic", "bilinear"), default="bicubic")
    onnx_p.add_argument(
        "--upsample-export",
        choices=("matmul", "resize"),
        default="matmul",
        help="stage-3 upsampling as two MatMuls (fast) or an ONNX Resize node",
    )
    onnx_p.add_argument("--seed", type=int, default=0, help="seed for random weights")
    onnx_p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the ONNX Runtime vs PyTorch check",
    )
    onnx_p.add_argument(
        "--int8",
        action="store_true",
        help="also write <name>_int8_encoder.onnx, statically quantised for CPUs with VNNI",
    )
    onnx_p.add_argument(
        "--calibration-images", help="folder of images to calibrate --int8 on (default: synthetic)"
    )
    onnx_p.add_argument(
        "--calibration-limit", type=int, default=None, help="at most this many calibration images"
    )
    onnx_p.set_defaults(func=_cmd_onnx)

    trt_p = sub.add_parser("tensorrt", help="build TensorRT engines on this GPU")
    trt_p.add_argument("--onnx", required=True, help="<name>_encoder.onnx written by `onnx`")
    trt_p.add_argument("--decoder", help="decoder ONNX (default: <name>_decoder.onnx beside)")
    trt_p.add_argument("--precision", choices=("fp32", "fp16"), default="fp16")
    trt_p.add_argument("--max-batch", type=int, default=8, help="encoder profile max batch")
    trt_p.add_argument("--opt-batch", type=int, default=None, help="encoder profile opt batch")
    trt_p.add_argument("--max-prompts", type=int, default=64, help="decoder profile max prompts")
    trt_p.add_argument("--max-points", type=int, default=16, help="decoder profile max points")
    trt_p.add_argument("--cache-dir", default=None, help="engine cache folder")
    trt_p.add_argument("--device", default="cuda:0")
    trt_p.add_argument("--workspace-gb", type=float, default=2.0)
    trt_p.add_argument("--force", action="store_true", help="rebuild even when cached")
    trt_p.set_defaults(func=_cmd_tensorrt)
    return parser


def main(argv: list[str] | None = None) -> int:
    from engine.backends.base import BackendError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
