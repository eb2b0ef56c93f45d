"""Encoder (and one-click) throughput per backend, against eager PyTorch fp32 in the same run.

    .venv/bin/python bench/encoder.py --backend onnxruntime torch --batch-sizes 1 2 --runs 5

For every backend and batch size: median latency and images/s of `backend.encode`; then, per
backend, `set_image` (preprocess a 512x512 photo + encode) and a one-point predict (decode +
masks at the original size), for the single mask and for SAM's three. Timed runs are
interleaved round-robin over the backends, so load from other processes on a shared machine
hits all of them alike; compare the ratios.
Baseline is `torch-eager`: the official implementation's path (unfused PyTorch fp32 encoder,
official two-step F.interpolate post-processing in predict).

Reduced precisions on the CPU, beside fp32 in the same run (docs/performance.md, "CPU reduced
precision (bf16, int8)"):

    .venv/bin/python bench/encoder.py --backend torch onnxruntime --precision bf16 int8 \
        --everything 8 --threads 1 --clock process

`--precision bf16` adds `torch-bf16` (bf16 encoder) and `torch-bf16-decoder` (the decoder in
bf16 too), `int8` adds `onnxruntime-int8` (quantised once) and `torch-int8` (PT2E, compiled
at load; needs torchao), both on the default synthetic calibration set; `--everything N` also times everything mode at NxN
points. `--clock process` times CPU seconds of this process instead of wall time: on a
machine other processes load, with one thread, it counts this work alone (with several
threads it also counts their spin-waits).

Against the official implementation in the same run (issue 18): `--official-venv DIR` (or
`--official-python PATH`) names a scratch environment holding the official code
(`bench/official.py --make-venv` makes one in .cache/reference-venv); its `set_image`,
predicts, encoder batches and everything mode then run in a subprocess, one timed call at a
time, in the same rounds as our backends (same image, prompt, weights, threads and clock), as
the row `official`, and every "vs official" ratio divides by those same-run medians. Without
it the ratios divide by stored figures (`OFFICIAL_MS`, a 2-core AVX2 machine, or
`--official-ms`), which the output says.

    .venv/bin/python bench/encoder.py --backend onnxruntime torch --precision bf16 \
        --everything 8 --threads 1 --clock process --batch-sizes 1 --official-venv \
        .cache/reference-venv
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.official import DEFAULT_VENV, OfficialProcess, venv_python  # noqa: E402
from engine.backends.base import Backend  # noqa: E402
from engine.core import decode, encode_images  # noqa: E402
from engine.loader import build_edge_sam  # noqa: E402
from engine.transforms import postprocess_masks_reference  # noqa: E402

CASE_A = ROOT.parent / "shared" / "reference" / "case_a" / "weights.safetensors"
OFFICIAL_MS = {"set_image": 785.0, "encoder": 706.0, "predict": 80.0}  # official, 512x512 photo


def make_backend(name: str, weights: Path | None, threads: int, device: str) -> Backend:
    if name == "torch-eager":
        from engine.backends.torch_backend import TorchBackend

        return TorchBackend(build_edge_sam(weights), device=device, optimize=False)
    if name == "torch":
        from engine.backends.torch_backend import TorchBackend

        return TorchBackend(build_edge_sam(weights), device=device, optimize=True)
    if name == "onnxruntime":
        from engine.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend.from_path(weights, device=device, intra_op_num_threads=threads)
    if name == "onnxruntime-torch-decoder":  # ONNX Runtime encoder, PyTorch decoder
        from engine.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend.from_path(
            weights, device=device, intra_op_num_threads=threads, decoder_runtime="torch"
        )
    if name == "torch-bf16":
        from engine.backends.torch_backend import TorchBackend

        return TorchBackend(build_edge_sam(weights), device=device, precision="bf16")
    if name == "torch-bf16-decoder":  # bf16 encoder and decoder (EDGESAM_DECODER_PRECISION)
        from engine.backends.torch_backend import TorchBackend

        return TorchBackend(
            build_edge_sam(weights), device=device, precision="bf16", decoder_precision="bf16"
        )
    if name == "torch-int8":  # PT2E int8 encoder compiled by inductor (engine/torch_int8.py)
        from engine.backends.torch_backend import TorchBackend

        return TorchBackend(build_edge_sam(weights), device=device, precision="int8")
    if name == "onnxruntime-int8":
        from engine.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend.from_path(
            weights, device=device, intra_op_num_threads=threads, precision="int8"
        )
    if name == "onnxruntime-official":
        from engine.backends.onnxruntime_backend import OnnxRuntimeBackend

        path = ROOT.parent / "shared" / "reference" / "case_a_onnx" / "edge_sam_case_a_encoder.onnx"
        return OnnxRuntimeBackend(path, device=device, intra_op_num_threads=threads)
    if name == "tensorrt":
        from engine.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend.from_path(weights, device=device, precision="fp16")
    raise SystemExit(f"unknown backend {name}")


CLOCK: Callable[[], float] = time.perf_counter
PRECISION_BACKENDS = {
    "bf16": ("torch-bf16", "torch-bf16-decoder"),
    "int8": ("onnxruntime-int8", "torch-int8"),
}


def timed(fn: Callable[[], object]) -> float:
    start = CLOCK()
    fn()
    return (CLOCK() - start) * 1e3


OFFICIAL = "official"  # the row of the official implementation timed in this run


def interleave(jobs: dict[str, Callable[[], float]], runs: int) -> dict[str, float]:
    """Median ms of each job over `runs` round-robin rounds, after one untimed warm call each.

    A job times itself (returns its ms): ours through `timed`, the official one in its own
    process with its own clock.
    """
    for job in jobs.values():
        job()  # warm this shape
    samples: dict[str, list[float]] = {n: [] for n in jobs}
    for _ in range(runs):
        for n, job in jobs.items():
            samples[n].append(job())
    return {n: statistics.median(s) for n, s in samples.items()}


def official_reference(
    label: str, same_run: dict[str, float] | None, stored: dict[str, float]
) -> tuple[float | None, str]:
    """What a measure's "vs official" divides by, and where it comes from: the official
    implementation's median in this run, else the stored figure (the encoder one stands for
    encode_b1), else nothing."""
    if same_run is not None and label in same_run:
        return same_run[label], "run"
    if label in stored:
        return stored[label], "stored"
    if label == "encode_b1" and "encoder" in stored:
        return stored["encoder"], "stored"
    return None, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backend",
        nargs="+",
        default=["onnxruntime", "torch"],
        help="torch, onnxruntime, onnxruntime-torch-decoder, onnxruntime-official, tensorrt, "
        "torch-bf16, torch-bf16-decoder, torch-int8, onnxruntime-int8",
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch / ORT intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", type=Path, default=CASE_A if CASE_A.is_file() else None)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        choices=("fp32", *PRECISION_BACKENDS),
        help="reduced CPU precisions to time beside fp32 (bf16: torch-bf16 and "
        "torch-bf16-decoder, int8: torch-int8 and "
        "onnxruntime-int8)",
    )
    parser.add_argument(
        "--everything", type=int, default=0, help="also time everything mode at NxN points"
    )
    parser.add_argument("--everything-runs", type=int, default=3)
    parser.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="wall time, or this process's CPU time (use with --threads 1 on a shared machine)",
    )
    official_env = parser.add_mutually_exclusive_group()
    official_env.add_argument(
        "--official-python",
        type=Path,
        help="the interpreter of a scratch venv holding the official implementation: time it "
        "in this run (bench/official.py)",
    )
    official_env.add_argument(
        "--official-venv",
        type=Path,
        help=f"that venv's folder instead (bench/official.py --make-venv makes "
        f"{DEFAULT_VENV.relative_to(ROOT)})",
    )
    parser.add_argument(
        "--official-ms",
        nargs="*",
        default=[],
        metavar="MEASURE=MS",
        help="the official implementation's figures on this machine (e.g. set_image=596 "
        "everything_8=...), replacing the stored ones from a 2-core AVX2 machine; used where "
        "the official implementation is not timed in this run",
    )
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    official_ms = dict(OFFICIAL_MS)
    for item in args.official_ms:
        key, _, value = item.partition("=")
        official_ms[key] = float(value)

    official_python = args.official_python or (
        venv_python(args.official_venv) if args.official_venv else None
    )
    if official_python is not None and args.weights is None:
        from bench._common import checkpoint

        args.weights = checkpoint(None)  # the same weights on both sides: case A
    torch.set_num_threads(args.threads)
    from engine.runtime import tune_allocator

    tune_allocator()  # as the service does; every backend in this process shares it
    wanted = [
        *args.backend,
        *(name for p in args.precision if p != "fp32" for name in PRECISION_BACKENDS[p]),
    ]
    names = ["torch-eager", *dict.fromkeys(b for b in wanted if b != "torch-eager")]
    print(
        f"torch {torch.__version__}, threads {args.threads}, device {args.device}, "
        f"weights {args.weights or 'random'}; median of {args.runs} interleaved runs, "
        f"{args.clock} clock",
        flush=True,
    )
    from engine.precision import cpu_units

    print(f"CPU reduced-precision units: {', '.join(cpu_units()) or 'none'}", flush=True)
    backends = {}
    for name in names:
        start = time.perf_counter()
        backends[name] = make_backend(name, args.weights, args.threads, args.device)
        backends[name].warmup()
        print(f"  loaded {name} in {time.perf_counter() - start:.1f}s", flush=True)

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    point = {"point_coords": np.array([[200.0, 300.0]]), "point_labels": np.array([1])}
    official = None
    if official_python is not None:
        start = time.perf_counter()
        official = OfficialProcess(
            official_python,
            image=photo,
            **point,
            threads=args.threads,
            clock=args.clock,
            weights=args.weights,
        )
        info = official.info
        print(
            f"  loaded {OFFICIAL} in {time.perf_counter() - start:.1f}s: {info.get('code')}, "
            f"torch {info.get('torch')}, threads {info.get('threads')}, {official_python}",
            flush=True,
        )
    try:
        results = run_measures(args, names, backends, photo, point, official)
    finally:
        if official is not None:
            official.close()
    report(args, names, results, official_ms, official)
    return 0


def run_measures(
    args: argparse.Namespace,
    names: list[str],
    backends: dict[str, Backend],
    photo: np.ndarray,
    point: dict[str, np.ndarray],
    official: OfficialProcess | None,
) -> dict[str, dict[str, float]]:
    rows = [*names, OFFICIAL] if official is not None else list(names)
    results: dict[str, dict[str, float]] = {n: {} for n in rows}
    everything_masks: dict[str, int] = {}

    def measure(
        label: str, make: Callable[[str, Backend], Callable[[], object]], runs: int = args.runs
    ) -> None:
        jobs: dict[str, Callable[[], float]] = {
            n: functools.partial(timed, make(n, b)) for n, b in backends.items()
        }
        if official is not None:
            jobs[OFFICIAL] = lambda: official.time(label)
        for n, ms in interleave(jobs, runs).items():
            results[n][label] = ms

    for bs in args.batch_sizes:
        images = torch.randn((bs, 3, 1024, 1024))
        measure(f"encode_b{bs}", lambda n, b, x=images: lambda: b.encode(x))
    measure("set_image", lambda n, b: lambda: encode_images(b, [photo]))
    embeddings = {n: encode_images(b, [photo])[0] for n, b in backends.items()}

    def predict_job(n: str, b: Backend, masks: int = 1) -> Callable[[], object]:
        if n != "torch-eager":
            return lambda: decode(b, embeddings[n], **point, num_multimask_outputs=masks).masks()

        # the official path: prompt decode, then F.interpolate to 1024, crop, resize
        def official_path() -> torch.Tensor:
            res = decode(b, embeddings[n], **point, num_multimask_outputs=masks)
            return (
                postprocess_masks_reference(res.low_res_logits, res.input_size, res.original_size)
                > 0
            )

        return official_path

    measure("predict", predict_job)
    # SAM's multimask answer (3 masks): backends that upscale only the masks asked for
    # (PyTorch, ONNX Runtime's split decoder) pay more here than for the single mask
    measure("predict_3", lambda n, b: predict_job(n, b, 3))
    if args.everything:
        from engine.amg import EdgeSamAutomaticMaskGenerator

        side = args.everything

        def everything_job(n: str, b: Backend) -> Callable[[], object]:
            amg = EdgeSamAutomaticMaskGenerator(b, points_per_side=side)

            def run() -> object:
                records = amg.generate(photo)
                everything_masks[n] = len(records)
                return records

            return run

        measure(f"everything_{side}", everything_job, args.everything_runs)
        if official is not None:
            everything_masks[OFFICIAL] = official.extra[f"everything_{side}"]["masks"]
        print(f"everything mode masks: {everything_masks}", flush=True)
    return results


def report(
    args: argparse.Namespace,
    names: list[str],
    results: dict[str, dict[str, float]],
    official_ms: dict[str, float],
    official: OfficialProcess | None,
) -> None:
    same_run = results.get(OFFICIAL)
    base = results["torch-eager"]
    print()
    if same_run is not None:
        print(
            f"vs official: the official implementation's medians in this run (row {OFFICIAL}); "
            "* marks a stored figure"
        )
    else:
        stored = ", ".join(f"{k}={v:g}" for k, v in official_ms.items())
        print(
            f"vs official: stored figures, not this run ({stored} ms); --official-venv times "
            "the official implementation here"
        )
    print(
        f"{'backend':22s} {'measure':12s} {'ms':>9s} {'img/s':>8s} {'vs eager':>9s} "
        f"{'vs official':>11s}"
    )
    ratios: dict[str, dict[str, float]] = {}
    for n in results:
        for label, ms in results[n].items():
            bs = int(label[len("encode_b") :]) if label.startswith("encode_b") else 1
            ref, source = official_reference(label, same_run, official_ms)
            if ref:
                ratios.setdefault(n, {})[label] = ms / ref
            mark = "*" if same_run is not None and source == "stored" else ""
            vs_off = f"{ms / ref:10.2f}x{mark}" if ref else f"{'':>11s}"
            print(
                f"{n:22s} {label:12s} {ms:9.1f} {bs * 1e3 / ms:8.2f} "
                f"{ms / base[label]:8.2f}x {vs_off}"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "threads": args.threads,
                    "runs": args.runs,
                    "clock": args.clock,
                    "weights": str(args.weights) if args.weights else None,
                    "official_ms": official_ms,  # the stored figures
                    "official_same_run_ms": same_run,  # also results_ms["official"]
                    "official_info": official.info if official is not None else None,
                    "official_extra": official.extra if official is not None else None,
                    "vs_official_source": "same run" if same_run is not None else "stored",
                    "vs_official": ratios,
                    "results_ms": results,
                },
                indent=2,
            )
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
