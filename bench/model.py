"""Model latency on the CPU: our optimised path beside an unoptimised eager build of our own
model, in the same run, plus the ratio to the official implementation's figures measured on
this kind of machine (2 cores, 2 threads).

    python bench/model.py [--checkpoint PATH] [--threads 2] [--runs 7] [--skip-everything]

Prints one table: median latency of each operation, optimised and baseline, and ratios.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench._common import reference_dir
from engine import EdgeSamPredictor, build_edge_sam
from engine.backends.torch_backend import TorchBackend
from engine.modeling import EdgeSam
from engine.modeling.transformer import Attention
from engine.runtime import tune_allocator
from engine.transforms import postprocess_masks_reference, preprocess_image

# The official implementation on this 2-core machine with 2 threads (issue 2).
OFFICIAL_MS = {
    "set_image": 785.0,
    "predict_point": 80.0,
    "predict_box": 80.0,
    "everything_16": 58000.0,
}


def paired_ms(
    ours: Callable[[], object], base: Callable[[], object], runs: int
) -> tuple[float, float]:
    """Median ms of each, timed alternately so that load from elsewhere on a shared machine
    falls on both alike."""
    ours()
    base()
    a: list[float] = []
    b: list[float] = []
    for _ in range(runs):
        for fn, out in ((ours, a), (base, b)):
            start = time.perf_counter()
            fn()
            out.append((time.perf_counter() - start) * 1e3)
    return statistics.median(a), statistics.median(b)


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


class EagerBaseline:
    """The official pipeline's shape, in our modules: unfused encoder, textbook attention, every
    candidate upsampled at 1024x1024 then cropped and resized."""

    def __init__(self, model: EdgeSam) -> None:
        self.model = copy.deepcopy(model).eval()
        for module in self.model.modules():
            if isinstance(module, Attention):
                module.factorized = False
        self.model.mask_decoder.fast_upscaling = False
        self.backend = TorchBackend(self.model, optimize=False)

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        x, self.input_size = preprocess_image(image)
        self.original_size = image.shape[:2]
        self.features = self.model.image_encoder(x)

    @torch.inference_mode()
    def predict(self, point_coords=None, point_labels=None, box=None, num_outputs=1):
        from engine.transforms import apply_boxes, apply_coords

        points = boxes = None
        if point_coords is not None:
            c = apply_coords(point_coords, self.original_size).astype(np.float32)
            points = (torch.from_numpy(c)[None], torch.as_tensor(point_labels)[None])
        if box is not None:
            boxes = torch.from_numpy(apply_boxes(box, self.original_size).astype(np.float32))
        sparse, dense = self.model.prompt_encoder(points, boxes, None)
        low_res, iou = self.model.mask_decoder(
            self.features, self.model.prompt_encoder.get_dense_pe(), sparse, dense, num_outputs
        )
        masks = postprocess_masks_reference(low_res, self.input_size, self.original_size) > 0
        return masks[0].numpy(), iou[0].numpy(), low_res[0].numpy()


def main() -> None:
    reference = reference_dir() / "case_a"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(reference / "weights.safetensors"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--everything-runs", type=int, default=3)
    parser.add_argument("--skip-everything", action="store_true")
    parser.add_argument(
        "--no-tune-allocator", action="store_true", help="keep glibc's default malloc settings"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.no_tune_allocator:
        tune_allocator()  # both arms run in this process, so the ratio stays like for like

    ckpt = Path(args.checkpoint)
    model = build_edge_sam(ckpt if ckpt.is_file() else None)
    if (reference / "golden.npz").is_file():
        image = np.load(reference / "golden.npz")["image"]  # 512x512 photo
    else:
        image = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    point = np.array([[225.0, 110.0]])
    label = np.array([1])
    box = np.array([30.0, 15.0, 370.0, 511.0])

    ours = EdgeSamPredictor(model)
    base = EagerBaseline(model)
    rows: list[tuple[str, float, float | None]] = []

    rows.append(
        (
            "set_image (preprocess + encoder), 512x512",
            *paired_ms(lambda: ours.set_image(image), lambda: base.set_image(image), args.runs),
        )
    )
    x1024, _ = preprocess_image(np.ascontiguousarray(np.tile(image, (2, 2, 1))))
    rows.append(
        (
            "encoder alone, 1024x1024",
            *paired_ms(
                lambda: ours.model.encode(x1024), lambda: base.backend.encode(x1024), args.runs
            ),
        )
    )
    ours.set_image(image)
    base.set_image(image)
    rows.append(
        (
            "predict one point, 1 mask, to original size",
            *paired_ms(
                lambda: ours.predict(
                    point_coords=point, point_labels=label, multimask_output=False
                ),
                lambda: base.predict(point, label),
                args.runs * 3,
            ),
        )
    )
    rows.append(
        (
            "predict one box, 1 mask, to original size",
            *paired_ms(
                lambda: ours.predict(box=box, multimask_output=False),
                lambda: base.predict(box=box),
                args.runs * 3,
            ),
        )
    )
    if not args.skip_everything:
        from engine import EdgeSamAutomaticMaskGenerator

        amg = EdgeSamAutomaticMaskGenerator(model, points_per_side=16)
        base_ms = None
        try:
            naive = EdgeSamAutomaticMaskGenerator(base.backend, points_per_side=16, naive=True)
            base_ms = median_ms(lambda: naive.generate(image), args.everything_runs, warmup=0)
        except TypeError:
            pass  # no naive mode in this build
        rows.append(
            (
                "everything mode, 16x16 points, 512x512",
                median_ms(lambda: amg.generate(image), args.everything_runs),
                base_ms,
            )
        )

    official = {
        "set_image": rows[0][1],
        "predict_point": rows[2][1],
        "predict_box": rows[3][1],
    }
    if not args.skip_everything:
        official["everything_16"] = rows[4][1]
    print(
        f"torch {torch.__version__}, {args.threads} threads, checkpoint {ckpt.name}, "
        f"allocator tuned: {not args.no_tune_allocator}"
    )
    print(f"{'operation':46s} {'ours ms':>10s} {'eager ms':>10s} {'ours/eager':>10s}")
    for name, ms, base_ms in rows:
        ratio = f"{ms / base_ms:10.2f}" if base_ms else f"{'-':>10s}"
        base_txt = f"{base_ms:10.1f}" if base_ms else f"{'-':>10s}"
        print(f"{name:46s} {ms:10.1f} {base_txt} {ratio}")
    print("\nagainst the official implementation measured on this machine kind:")
    for key, ms in official.items():
        print(
            f"  {key:16s} ours {ms:9.1f} ms / official {OFFICIAL_MS[key]:8.0f} ms = {ms / OFFICIAL_MS[key]:.2f}x"
        )


if __name__ == "__main__":
    main()
