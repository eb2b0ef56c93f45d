"""One-shot GPU check of the PyTorch CUDA path (run once on a lent H100/H200; < 4 minutes).

    python bench/gpu_check.py [--weights case_a/weights.safetensors] [--budget-s 200]

Prints and (when $OUT is set) writes $OUT/gpu_check.json:
- environment: torch / CUDA / cuDNN versions, GPU name and compute capability, TensorRT presence;
- encoder images/s and latency at batch 1/8/32 for fp32, fp16 and bf16 (channels_last,
  re-parameterised), plus eager unfused fp32 at batch 1/8 as the baseline;
- max abs diff of fp16 and bf16 embeddings against fp32 on the same input, and the IoU of the
  resulting one-point masks;
- decoder latency for 1, 16 and 64 prompts on one embedding;
- CUDA-graph replay of the fp16 batch-1 encoder vs plain fp16 (is it worth it?).

It works with whatever torch the machine has: every section catches its own failure and records
it, and a machine without CUDA still gets a JSON saying so. Weights: --weights if given, else
case A's if found beside the repository, else random weights drawn with case A's scaled recipe
(so activations stay O(1) and half precision is tested on realistic magnitudes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
import types
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START = time.perf_counter()
REPORT: dict[str, object] = {"sections": {}, "errors": {}}


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", flush=True)


def write_report() -> None:
    REPORT["total_s"] = round(time.perf_counter() - START, 1)
    out = os.environ.get("OUT")
    text = json.dumps(REPORT, indent=2, default=str)
    if out:
        path = Path(out) / "gpu_check.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        log(f"wrote {path}")
    else:
        print(text)


def section(name: str, budget_s: float) -> Callable:
    """Run fn, record its result or its error; skip once the time budget is spent."""

    def wrap(fn: Callable[[], object]) -> None:
        if time.perf_counter() - START > budget_s:
            REPORT["errors"][name] = "skipped: time budget spent"  # type: ignore[index]
            log(f"{name}: skipped (time budget)")
            return
        log(f"{name} ...")
        try:
            REPORT["sections"][name] = fn()  # type: ignore[index]
        except Exception as exc:  # record and go on: one failure must not hide the rest
            REPORT["errors"][name] = f"{type(exc).__name__}: {exc}"  # type: ignore[index]
            log(f"{name} FAILED: {exc}\n{traceback.format_exc(limit=3)}")

    return wrap


def import_engine() -> None:
    """Import engine submodules without running engine/__init__ (which pulls PIL, numpy and
    the predictor; the GPU machine's Python may lack them). Only torch is needed here."""
    if "engine" not in sys.modules:
        pkg = types.ModuleType("engine")
        pkg.__path__ = [str(ROOT / "engine")]  # type: ignore[attr-defined]
        sys.modules["engine"] = pkg


def scaled_random_weights(model, seed: int = 1234) -> None:  # noqa: ANN001
    """Case A's recipe: conv/linear ~ N(0, 1/sqrt(fan_in)), small biases, BN weights U(0.5, 1.5)
    except residual-branch BNs U(0.3, 0.6), LayerNorm U(0.5, 1.5), embeddings N(0, 1), all
    rounded through float16."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen))

    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                w = m.weight
                if isinstance(m, nn.ConvTranspose2d):
                    fan_in = w.shape[0]
                else:
                    fan_in = w[0].numel()
                normal(w, fan_in**-0.5)
                if m.bias is not None:
                    normal(m.bias, 0.05)
            elif isinstance(m, nn.BatchNorm2d):
                residual = name.endswith((".conv.bn", ".conv1.bn", "channel_mixer.m.2.bn"))
                uniform(m.weight, *((0.3, 0.6) if residual else (0.5, 1.5)))
                normal(m.bias, 0.1)
                normal(m.running_mean, 0.1)
                uniform(m.running_var, 0.5, 1.5)
            elif type(m).__name__ in ("LayerNorm", "LayerNorm2d"):
                uniform(m.weight, 0.5, 1.5)
                normal(m.bias, 0.1)
            elif isinstance(m, nn.Embedding):
                normal(m.weight, 1.0)
        pe = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        normal(pe, 1.0)
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())


def build_model(weights: Path | None):  # noqa: ANN201
    import torch

    from engine.modeling import EdgeSam

    model = EdgeSam().eval()
    if weights is None:
        scaled_random_weights(model)
        REPORT["weights"] = "random, case A's scaled recipe (seed 1234)"
        return model
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    ref = model.state_dict()
    model.load_state_dict({k: v.to(ref[k].dtype) for k, v in state.items() if k in ref})
    REPORT["weights"] = str(weights)
    return model


def bench(fn: Callable[[], object], sync: Callable[[], None], warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=200.0,
        help="skip remaining sections after this many seconds",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--dry-run-cpu",
        action="store_true",
        help="exercise the script's plumbing on the CPU (fp32 only, batch 1; figures meaningless)",
    )
    args = parser.parse_args()
    case_a = ROOT.parent / "shared" / "reference" / "case_a" / "weights.safetensors"
    weights = args.weights or (case_a if case_a.is_file() else None)

    try:
        import torch
    except ImportError as exc:
        REPORT["errors"]["torch"] = str(exc)  # type: ignore[index]
        write_report()
        return 1
    import importlib.util

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "tensorrt_installed": importlib.util.find_spec("tensorrt") is not None,
        "onnxruntime_installed": importlib.util.find_spec("onnxruntime") is not None,
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        env["cudnn"] = torch.backends.cudnn.version()
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    REPORT["environment"] = env
    log(json.dumps(env))
    if not torch.cuda.is_available() and not args.dry_run_cpu:
        REPORT["errors"]["cuda"] = "torch sees no CUDA device: nothing to measure"  # type: ignore[index]
        write_report()
        return 1

    import_engine()
    torch.backends.cudnn.benchmark = True
    from engine.backends.torch_backend import TorchBackend

    model = build_model(weights)
    dev = "cpu" if args.dry_run_cpu else "cuda:0"
    sync = (lambda: None) if args.dry_run_cpu else torch.cuda.synchronize
    if args.dry_run_cpu:
        args.batch_sizes = [1]

    def reps(warmup: int, runs: int) -> tuple[int, int]:
        return (0, 1) if args.dry_run_cpu else (warmup, runs)

    run = lambda name: section(name, args.budget_s)  # noqa: E731
    precisions = ["fp32", "fp16"] + (["bf16"] if env.get("bf16_supported") else [])
    if args.dry_run_cpu:
        precisions = ["fp32"]
    backends: dict[str, TorchBackend] = {}

    @run("load")
    def _load() -> dict:
        times = {}
        for p in precisions:
            t = time.perf_counter()
            backends[p] = TorchBackend(model, device=dev, precision=p, optimize=True)
            times[p] = round(time.perf_counter() - t, 2)
        return {"seconds": times}

    torch.manual_seed(0)
    inputs = {bs: torch.randn((bs, 3, 1024, 1024), device=dev) for bs in args.batch_sizes}

    @run("encoder_throughput")
    def _throughput() -> dict:
        out: dict[str, dict] = {}
        for p, backend in backends.items():
            for bs, x in inputs.items():
                runs = 10 if bs == 1 else 5 if bs <= 8 else 3
                ms = bench(lambda b=backend, x=x: b.encode(x), sync, *reps(2, runs))
                out[f"{p}_b{bs}"] = {
                    "latency_ms": round(ms, 2),
                    "images_per_s": round(bs * 1e3 / ms, 1),
                }
                log(f"  {p} batch {bs}: {ms:.2f} ms, {bs * 1e3 / ms:.1f} img/s")
        return out

    @run("encoder_eager_fp32_baseline")
    def _eager() -> dict:
        eager = TorchBackend(model, device=dev, precision="fp32", optimize=False)
        out = {}
        for bs in [b for b in args.batch_sizes if b <= 8]:
            ms = bench(lambda x=inputs[bs]: eager.encode(x), sync, *reps(2, 5))
            out[f"eager_fp32_b{bs}"] = {
                "latency_ms": round(ms, 2),
                "images_per_s": round(bs * 1e3 / ms, 1),
            }
            log(f"  eager fp32 batch {bs}: {ms:.2f} ms")
        return out

    @run("half_precision_accuracy")
    def _accuracy() -> dict:
        x = inputs[min(inputs)][:1]
        ref = backends["fp32"].encode(x)
        coords = torch.tensor([[[400.0, 500.0], [0.0, 0.0]]])
        labels = torch.tensor([[1, -1]])
        ref_logits, _ = backends["fp32"].decode(ref, coords, labels)
        out = {"embedding_std_fp32": float(ref.std())}
        for p in precisions[1:]:
            emb = backends[p].encode(x)
            logits, _ = backends["fp32"].decode(emb, coords, labels)
            a, b = ref_logits > 0, logits > 0
            out[p] = {
                "embedding_max_abs_diff": float((emb - ref).abs().max()),
                "embedding_mean_abs_diff": float((emb - ref).abs().mean()),
                "lowres_mask_iou_vs_fp32": float((a & b).sum() / (a | b).sum().clamp(min=1)),
                "logits_max_abs_diff": float((logits - ref_logits).abs().max()),
            }
            log(f"  {p}: {out[p]}")
        return out

    @run("decoder_latency")
    def _decoder() -> dict:
        emb = backends["fp32"].encode(inputs[min(inputs)][:1])
        out = {}
        for n in (1, 16, 64):
            coords = torch.rand((n, 2, 2)) * 1024
            labels = torch.tensor([[1, -1]] * n)
            ms = bench(
                lambda c=coords, lb=labels: backends["fp32"].decode(emb, c, lb), sync, *reps(3, 10)
            )
            out[f"prompts_{n}"] = {"latency_ms": round(ms, 2)}
            log(f"  decode {n} prompts: {ms:.2f} ms")
        return out

    @run("cuda_graph_fp16_b1")
    def _graph() -> dict:
        if args.dry_run_cpu:
            return {"skipped": "dry run on the CPU"}
        backend = backends["fp16"]
        enc = backend._encoder
        static = inputs[min(inputs)][:1].half().contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            plain = bench(lambda: enc(static), sync, *reps(3, 20))
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    enc(static)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = enc(static)
            replay = bench(graph.replay, sync, *reps(3, 20))
            diff = float((static_out.float() - enc(static).float()).abs().max())
        log(f"  fp16 b1 device-only: eager {plain:.2f} ms, CUDA graph {replay:.2f} ms")
        return {
            "eager_ms": round(plain, 3),
            "graph_ms": round(replay, 3),
            "speedup": round(plain / replay, 2),
            "max_abs_diff": diff,
        }

    write_report()
    return 0 if not REPORT["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
