"""How far a reduced-precision backend's masks are from fp32's, on your weights and images.

    python -m engine.fidelity --checkpoint edge_sam_3x.pth --images photos/ --precision int8

For each image: the embedding's error against the fp32 embedding, then random prompts of each
kind (one foreground point, one box, a refinement click with the previous answer as mask
input) decoded for the single mask and for SAM's three, each backend end to end. Printed: per
prompt kind and mask count, the mean and worst IoU of the masks (at the image's size) against
fp32's. fp32 runs in the same backend as the candidate (int8: ONNX Runtime; bf16 on a CPU:
PyTorch; fp16: PyTorch on CUDA), so only the precision differs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.backends.base import Backend
from engine.core import DecodeResult, ImageEmbedding, decode, encode_images

PROMPT_KINDS = ("points", "boxes", "refinement")
MASK_COUNTS = (1, 3)
BACKEND_FOR = {"int8": "onnxruntime", "bf16": "torch", "fp16": "torch", "fp32": "torch"}


@dataclass
class IoUStats:
    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else float("nan")

    @property
    def worst(self) -> float:
        return float(np.min(self.values)) if self.values else float("nan")


@dataclass
class FidelityReport:
    """Embedding relative errors (||e - e_fp32|| / ||e_fp32||, per image) and mask IoUs
    against fp32 per (prompt kind, mask count)."""

    precision: str
    embedding_rel_errors: list[float] = field(default_factory=list)
    embedding_max_abs: float = 0.0
    ious: dict[tuple[str, int], IoUStats] = field(default_factory=dict)

    @property
    def embedding_rel_error(self) -> float:
        """The worst image's relative embedding error."""
        return max(self.embedding_rel_errors) if self.embedding_rel_errors else float("nan")

    def worst_iou(self) -> float:
        return min(s.worst for s in self.ious.values())

    def format(self) -> str:
        lines = [
            f"precision {self.precision} against fp32, {len(self.embedding_rel_errors)} image(s)",
            f"embedding relative error: mean {np.mean(self.embedding_rel_errors):.4f}, "
            f"worst {self.embedding_rel_error:.4f}; max abs diff {self.embedding_max_abs:.4f}",
            f"{'prompt':12s} {'masks':>5s} {'n':>5s} {'mean IoU':>9s} {'worst IoU':>10s}",
        ]
        for (kind, count), stats in self.ious.items():
            lines.append(
                f"{kind:12s} {count:5d} {len(stats.values):5d} {stats.mean:9.4f} "
                f"{stats.worst:10.4f}"
            )
        return "\n".join(lines)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two boolean masks; 1.0 when both are empty (they agree)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def random_prompts(
    rng: np.random.Generator, size: tuple[int, int], count: int
) -> list[dict[str, np.ndarray]]:
    """`count` prompts of each kind for an image of `size` (h, w), in original pixels."""
    h, w = size
    prompts: list[dict[str, np.ndarray]] = []
    for _ in range(count):
        point = rng.uniform((0, 0), (w, h), (1, 2))
        prompts.append({"kind": np.array("points"), "point_coords": point})
        x0, y0 = rng.uniform((0, 0), (0.8 * w, 0.8 * h))
        x1, y1 = rng.uniform((x0 + 0.1 * w, y0 + 0.1 * h), (w, h))
        prompts.append({"kind": np.array("boxes"), "boxes": np.array([[x0, y0, x1, y1]])})
        second = rng.uniform((0, 0), (w, h), (1, 2))
        prompts.append({"kind": np.array("refinement"), "point_coords": point, "second": second})
    return prompts


def _run(
    backend: Backend, image: ImageEmbedding, prompt: dict[str, np.ndarray], masks: int
) -> DecodeResult:
    kind = str(prompt["kind"])
    if kind == "boxes":
        return decode(backend, image, boxes=prompt["boxes"], num_multimask_outputs=masks)
    first = decode(backend, image, prompt["point_coords"], np.array([1]), num_multimask_outputs=1)
    if kind == "points":
        return (
            first
            if masks == 1
            else decode(
                backend, image, prompt["point_coords"], np.array([1]), num_multimask_outputs=masks
            )
        )
    # refinement: a second (foreground) click with this backend's own first answer as input
    coords = np.concatenate([prompt["point_coords"], prompt["second"]])
    return decode(
        backend,
        image,
        coords,
        np.array([1, 1]),
        mask_input=first.low_res_logits[:, 0:1],
        num_multimask_outputs=masks,
    )


def compare_backends(
    reference: Backend,
    candidate: Backend,
    images: Sequence[np.ndarray],
    precision: str,
    prompts_per_kind: int = 8,
    seed: int = 0,
) -> FidelityReport:
    """The candidate's embeddings and masks against the reference's (fp32) on `images`
    (uint8 HxWx3 RGB), with `prompts_per_kind` random prompts of each kind per image."""
    report = FidelityReport(precision)
    rng = np.random.default_rng(seed)
    for k in PROMPT_KINDS:
        for m in MASK_COUNTS:
            report.ious[(k, m)] = IoUStats()
    for image in images:
        (ref,) = encode_images(reference, [image])
        (cand,) = encode_images(candidate, [image])
        diff = cand.embedding - ref.embedding
        report.embedding_rel_errors.append(float(diff.norm() / ref.embedding.norm()))
        report.embedding_max_abs = max(report.embedding_max_abs, float(diff.abs().max()))
        for prompt in random_prompts(rng, ref.original_size, prompts_per_kind):
            for masks in MASK_COUNTS:
                a = _run(reference, ref, prompt, masks).masks()
                b = _run(candidate, cand, prompt, masks).masks()
                stats = report.ious[(str(prompt["kind"]), masks)]
                stats.values.extend(mask_iou(a[0, i], b[0, i]) for i in range(a.shape[1]))
    return report


def measure(
    checkpoint: str | os.PathLike[str] | None,
    images: Sequence[np.ndarray],
    precision: str,
    device: str = "cpu",
    prompts_per_kind: int = 8,
    seed: int = 0,
    decoder_precision: str = "fp32",
    backend: str | None = None,
) -> FidelityReport:
    """Build the fp32 and the `precision` backend for `checkpoint` and compare them
    (`decoder_precision` bf16: the candidate's decoder too, PyTorch on a CPU)."""
    from engine.loader import load_model

    if precision not in BACKEND_FOR:
        raise ValueError(f"precision must be one of {sorted(BACKEND_FOR)}")
    backend = backend or BACKEND_FOR[precision]
    if precision == "fp16" and device == "cpu":
        raise ValueError("fp16 runs on CUDA: pass --device cuda")
    reference = load_model(checkpoint, device=device, backend=backend, precision="fp32")
    options = {"decoder_precision": decoder_precision} if decoder_precision != "fp32" else {}
    if options and backend != "torch":
        raise ValueError("decoder_precision bf16 is PyTorch's (use --precision bf16)")
    candidate = load_model(
        checkpoint, device=device, backend=backend, precision=precision, **options
    )
    label = (
        f"{precision} ({backend})" if not options else f"{precision} (decoder {decoder_precision})"
    )
    return compare_backends(reference, candidate, images, label, prompts_per_kind, seed)


def main(argv: list[str] | None = None) -> int:
    from engine.quantize import read_images, synthetic_images

    parser = argparse.ArgumentParser(
        prog="python -m engine.fidelity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help=".pth / .safetensors (omitted: random weights)")
    parser.add_argument(
        "--images", help="folder of images (omitted: 4 synthetic ones, not the calibration set)"
    )
    parser.add_argument("--precision", required=True, choices=("int8", "bf16", "fp16"))
    parser.add_argument(
        "--decoder-precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="bf16: the decoder too (PyTorch on a CPU, with --precision bf16)",
    )
    parser.add_argument(
        "--backend",
        choices=("torch", "onnxruntime"),
        help="the backend of both sides (default: the precision's: bf16 torch, int8 "
        "onnxruntime; int8 torch is the PT2E encoder of engine.torch_int8)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--prompts", type=int, default=8, help="random prompts per kind per image")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    images = (
        read_images(args.images, args.limit)
        if args.images
        else synthetic_images(args.limit or 4, seed=1000 + args.seed)
    )
    report = measure(
        args.checkpoint,
        images,
        args.precision,
        args.device,
        args.prompts,
        args.seed,
        decoder_precision=args.decoder_precision,
        backend=args.backend,
    )
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
