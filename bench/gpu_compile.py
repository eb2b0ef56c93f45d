"""Which torch.compile options make the fp16 encoder fastest on one GPU (issue 3 asks for
3,000 images/s at batch 32 on an H100). One run on a lent machine, inside a time budget.

    python bench/gpu_compile.py [--batch 32] [--budget-s 400] [--triton-mixer]

Every variant is the torch backend's own encoder (`TorchBackend(..., compile=True,
compile_options=...)`), timed on device-resident fp16 channels_last input, beside the eager
unfused fp16 encoder in the same run. Prints as it goes and, when $OUT is set, writes
$OUT/gpu_compile.json: per variant the compile time, ms per batch, images/s, the ratio to eager
and the max abs diff against the eager re-parameterised encoder; then the top CUDA kernels of
the fastest variant and `TorchBackend.encode` end to end (host fp32 in, host fp32 out).
`--triton-mixer` first times the Triton RepViT kernels (engine/triton_mixer.py): whole
stride-1 blocks, channel mixers alone, all widths, and under torch.compile (with `--only`'s
options when given).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import build_model, import_engine, log  # noqa: E402

REPORT: dict[str, Any] = {"variants": {}, "errors": {}}

# Tried in this order; the later ones build on the best earlier set (see main).
BASE_VARIANTS: dict[str, dict[str, Any]] = {
    "inductor_default": {},
    "conv1x1_as_mm": {"conv_1x1_as_mm": True},
    "freezing": {"freezing": True},
    "freezing_conv1x1_as_mm": {"freezing": True, "conv_1x1_as_mm": True},
}


def write_report() -> None:
    out = os.environ.get("OUT")
    text = json.dumps(REPORT, indent=2, default=str)
    if out:
        (Path(out) / "gpu_compile.json").write_text(text)
    else:
        print(text)


RUNS = {"runs": 10, "repeats": 5, "warmup": 3}


def time_batches(fn: Any, sync: Any, runs: int = 0, repeats: int = 0) -> float:
    """Median over `repeats` of the mean ms of `runs` back-to-back calls (after warm-ups)."""
    runs, repeats = runs or RUNS["runs"], repeats or RUNS["repeats"]
    if RUNS["runs"] == 1:
        runs = repeats = 1
    for _ in range(RUNS["warmup"]):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(runs):
            fn()
        sync()
        samples.append((time.perf_counter() - start) / runs * 1e3)
    return statistics.median(samples)


def top_kernels(key: str, fn: Any, count: int = 18) -> None:
    """Profile one call of `fn`; REPORT[key] gets its `count` costliest kernels (device time)."""
    import torch

    cuda = torch.cuda.is_available()
    acts = [torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=acts) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    rows = []
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
    for evt in sorted(events, key=lambda e: -e.device_time_total)[:count]:
        ms = round(getattr(evt, "device_time_total", 0) / 1e3, 3)
        rows.append({"kernel": evt.key[:90], "calls": evt.count, "ms": ms})
    REPORT[key] = rows
    log(key)
    for r in rows:
        log(f"  {r['ms']:8.3f} ms  x{r['calls']:3d}  {r['kernel']}")
    write_report()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--image-size", type=int, default=1024, help="smaller only for --dry-run-cpu plumbing"
    )
    parser.add_argument("--budget-s", type=float, default=400.0)
    parser.add_argument("--no-autotune", action="store_true")
    parser.add_argument(
        "--only",
        type=json.loads,
        default=None,
        help="time just this inductor option set (JSON), e.g. '{\"max_autotune\": true}'",
    )
    parser.add_argument(
        "--tanh-gelu", action="store_true", help="also time GELU's tanh form (default options)"
    )
    parser.add_argument(
        "--triton-mixer",
        action="store_true",
        help="also time the fused Triton channel mixer, eager and compiled (first)",
    )
    parser.add_argument(
        "--dry-run-cpu", action="store_true", help="exercise the plumbing on the CPU (fp32)"
    )
    args = parser.parse_args()
    start_all = time.perf_counter()

    def left() -> float:
        return args.budget_s - (time.perf_counter() - start_all)

    import torch

    import_engine()
    from engine.backends.torch_backend import TorchBackend

    if args.dry_run_cpu:
        dev, prec, dtype = "cpu", "fp32", torch.float32
        RUNS.update(runs=1, repeats=1, warmup=0)

        def sync() -> None:
            pass

    elif torch.cuda.is_available():
        dev, prec, dtype = "cuda", "fp16", torch.float16
        sync = torch.cuda.synchronize
    else:
        log("no CUDA device")
        return 1
    REPORT["env"] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu (dry run)",
        "batch": args.batch,
    }
    log(str(REPORT["env"]))
    model = build_model(None)
    b = args.batch

    def record(name: str, ms: float, extra: dict[str, Any] | None = None) -> None:
        row = {"ms_per_batch": round(ms, 3), "img_per_s": round(b / ms * 1e3, 1)}
        if "eager_unfused" in REPORT["variants"]:
            row["vs_eager_unfused"] = round(
                ms / REPORT["variants"]["eager_unfused"]["ms_per_batch"], 3
            )
        row.update(extra or {})
        REPORT["variants"][name] = row
        log(f"{name:34s} {row}")
        write_report()

    with torch.inference_mode():
        # Inference tensors, as TorchBackend.encode makes them: dynamo guards on the difference.
        size = args.image_size
        x = torch.randn(b, 3, size, size, device=dev, dtype=dtype)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = False
        eager = TorchBackend(model, dev, prec, optimize=False, fingerprint="bench")
        record("eager_unfused", time_batches(lambda: eager._encoder(x), sync))
        fused = TorchBackend(model, dev, prec, optimize=True, fingerprint="bench")
        record("fused_cl_eager", time_batches(lambda: fused._encoder(x_cl), sync))
        torch.backends.cudnn.benchmark = True
        record("fused_cl_eager_cudnn_bench", time_batches(lambda: fused._encoder(x_cl), sync))
        reference = fused._encoder(x_cl).float()

        best: tuple[float, str, dict[str, Any]] = (float("inf"), "", {})

        def try_variant(
            name: str,
            options: dict[str, Any] | None,
            min_left: float,
            tanh_gelu: bool = False,
            mixer_channels: int = 0,
            whole_blocks: bool = True,
        ) -> None:
            """options None: no torch.compile. mixer_channels > 0: the Triton kernel for every
            block with at most that many channels (engine/triton_mixer.py), on whole stride-1
            blocks with `whole_blocks`."""
            nonlocal best
            if left() < min_left:
                REPORT["errors"][name] = f"skipped: {left():.0f} s of budget left"
                log(f"{name}: skipped (budget)")
                return
            torch._dynamo.reset()
            try:
                backend = TorchBackend(
                    model,
                    dev,
                    prec,
                    fingerprint="bench",
                    compile=options is not None and not mixer_channels,
                    compile_options=options,
                )
                if mixer_channels:
                    from engine.triton_mixer import use_triton_channel_mixers

                    swapped = use_triton_channel_mixers(
                        backend._encoder, mixer_channels, whole_blocks
                    )
                    log(f"{name}: Triton kernels {swapped}")
                    run = backend._encoder
                    if options is not None:
                        run = torch.compile(
                            backend._encoder, dynamic=False, options=options or None
                        )
                    backend._compiled = run
                if tanh_gelu:  # would half precision hide GELU's tanh form? (|diff| < 3e-4)
                    for mod in backend._encoder.modules():
                        for child_name, child in mod.named_children():
                            if type(child).__name__ == "InplaceGELU":
                                setattr(mod, child_name, torch.nn.GELU(approximate="tanh"))
                    backend._compiled = torch.compile(
                        backend._encoder, dynamic=False, options=options or None
                    )
                t0 = time.perf_counter()
                out = backend._compiled(x_cl)
                sync()
                compile_s = time.perf_counter() - t0
                diff = (out.float() - reference).abs().max().item()
                ms = time_batches(lambda: backend._compiled(x_cl), sync)
                if mixer_channels and options is not None and left() > 30:
                    top_kernels(f"top_kernels_{name}", lambda: backend._compiled(x_cl))
            except Exception as exc:  # one failing option set must not hide the others
                REPORT["errors"][name] = f"{type(exc).__name__}: {str(exc)[:400]}"
                log(f"{name} FAILED: {type(exc).__name__}: {str(exc)[:400]}")
                return
            record(
                name,
                ms,
                {
                    "options": options,
                    "triton_mixer_max_channels": mixer_channels,
                    "triton_whole_blocks": whole_blocks,
                    "compile_s": round(compile_s, 1),
                    "max_abs_diff_vs_eager": diff,
                },
            )
            if ms < best[0] and options is not None and not mixer_channels:
                best = (ms, name, options)

        if args.only is not None:
            try_variant("only", args.only, min_left=0)
        if args.triton_mixer:
            # The first call autotunes the kernel per width (8 tiles each): part of compile_s.
            try_variant("triton_blocks_eager", None, min_left=0, mixer_channels=192)
            try_variant(
                "triton_mixers_only_eager",
                None,
                min_left=30,
                mixer_channels=192,
                whole_blocks=False,
            )
            # Stages 1-2 only: at 192 channels each tile re-reads ~300 KB of weights from L2,
            # 12x its own activations at 32 rows; this row says whether stage 3 gains anyway.
            try_variant("triton_blocks_96_eager", None, min_left=30, mixer_channels=96)
            try_variant("triton_blocks_all_eager", None, min_left=30, mixer_channels=384)
            try_variant("triton_blocks+inductor", args.only or {}, min_left=60, mixer_channels=192)
            try_variant(
                "triton_blocks_96+inductor", args.only or {}, min_left=60, mixer_channels=96
            )
        if args.tanh_gelu:
            try_variant("inductor_default_tanh_gelu", {}, min_left=0, tanh_gelu=True)
        for name, options in ({} if args.only is not None else BASE_VARIANTS).items():
            try_variant(name, options, min_left=60)
        best_opts = dict(best[2])
        if args.only is None:
            try_variant("best+cudagraphs", {**best_opts, "triton.cudagraphs": True}, min_left=60)
        if not args.no_autotune and args.only is None:
            try_variant(
                "best+max_autotune",
                {**best_opts, "max_autotune": True, "triton.cudagraphs": False},
                min_left=150,
            )
            if best[1] == "best+max_autotune":
                try_variant(
                    "best+max_autotune+cudagraphs",
                    {**best[2], "triton.cudagraphs": True},
                    min_left=90,
                )
        REPORT["best"] = {"name": best[1], "options": best[2], "ms_per_batch": best[0]}
        log(f"best: {REPORT['best']}")
        write_report()

        if best[1] and left() > 40:
            torch._dynamo.reset()
            backend = TorchBackend(
                model, dev, prec, fingerprint="bench", compile=True, compile_options=best[2]
            )
            host = torch.randn(b, 3, size, size)
            t0 = time.perf_counter()
            backend.encode(host)
            log(f"backend.encode first call {time.perf_counter() - t0:.1f} s")
            ms = time_batches(lambda: backend.encode(host), sync, runs=3, repeats=3)
            record("backend.encode_host_to_host", ms, {"options": best[2]})

            def fp32_both_ways() -> torch.Tensor:  # what encode did before: fp32 over the bus
                xx = host.to(dev, dtype).contiguous(memory_format=torch.channels_last)
                return backend._compiled(xx).float().contiguous().cpu()

            ms = time_batches(fp32_both_ways, sync, runs=3, repeats=3)
            record("host_to_host_fp32_transfers", ms, {"options": best[2]})

            if size == 1024:  # the service's padded input size
                # The service's path: uint8 pixels up, normalised on the device (encode_pixels).
                from engine.transforms import normalize_pixels

                pixels = torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8)
                sizes = [(size, size - 8 * i) for i in range(b)]
                via_pixels = backend.encode_pixels(pixels, sizes)
                via_floats = backend.encode(normalize_pixels(pixels, sizes))
                diff = (via_pixels - via_floats).abs().max().item()
                ms = time_batches(
                    lambda: backend.encode_pixels(pixels, sizes), sync, runs=3, repeats=3
                )
                record("backend.encode_pixels_host_to_host", ms, {"max_abs_diff_vs_encode": diff})
            if left() > 20:
                top_kernels("top_kernels_best", lambda: backend._compiled(x_cl))
    REPORT["total_s"] = round(time.perf_counter() - start_all, 1)
    write_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
