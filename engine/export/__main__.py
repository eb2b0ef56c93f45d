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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from engine.backends.base import BackendError
from engine.backends.tensorrt_backend import build_engines_for, installed_version
from engine.backends.trt_logic import ProfileSpec, tensorrt_opset
from engine.build_edge_sam import build_edge_sam
from engine.export.to_onnx import export_onnx
from engine.export.verify import verify_onnx
from engine.onnx_format import DEFAULT_OPSET, split_decoder_paths
from engine.quantize import export_int8


def _print(msg: str) -> None:
    print(msg, flush=True)


def _opset_for_tensorrt(wanted: int) -> int:
    """`wanted`, lowered to what the installed TensorRT's ONNX parser reads."""
    version = installed_version()
    opset = tensorrt_opset(version, wanted)
    if opset != wanted:
        _print(f"TensorRT {version}: opset {opset} instead of {wanted}")
    return opset


def _cmd_onnx(args: argparse.Namespace) -> int:
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
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
