"""Where the encoder's GPU time goes: throughput of memory-format / fusion variants at one
batch size, and the top CUDA kernels of the first variant (torch profiler).

    python bench/gpu_profile.py [--batch 32] [--dtype fp16] [--compile]

--compile adds torch.compile of the fused channels_last encoder (compile time printed).
"""

from __future__ import annotations

import argparse
import time

import torch

from engine.fusion import fuse_encoder
from engine.modeling import EdgeSam


def timed(fn, runs: int = 10) -> float:  # noqa: ANN001
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / runs * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    torch.backends.cudnn.benchmark = True
    model = EdgeSam().eval()
    x = torch.randn(args.batch, 3, 1024, 1024, device="cuda", dtype=dtype)
    plain = fuse_encoder(model.image_encoder)
    for mod in plain.modules():
        for name, child in mod.named_children():
            if type(child).__name__ == "InplaceGELU":
                setattr(mod, name, torch.nn.GELU())
    variants = {
        "fused_contiguous": fuse_encoder(model.image_encoder).cuda().to(dtype),
        "fused_plain_gelu": plain.cuda().to(dtype),
        "fused_interp_upsample": fuse_encoder(model.image_encoder, matrix_upsample=False)
        .cuda()
        .to(dtype),
        "fused_channels_last": fuse_encoder(model.image_encoder)
        .cuda()
        .to(dtype)
        .to(memory_format=torch.channels_last),
        "eager_contiguous": model.image_encoder.cuda().to(dtype),
    }
    results: list[str] = []
    with torch.inference_mode():
        for name, enc in variants.items():
            xx = x.contiguous(memory_format=torch.channels_last) if "last" in name else x
            ms = timed(lambda enc=enc, xx=xx: enc(xx))
            results.append(
                f"{name:22s} batch {args.batch} {args.dtype}: {ms:8.2f} ms, "
                f"{args.batch / ms * 1e3:8.1f} img/s"
            )
        if args.compile:
            enc = variants["fused_channels_last"]
            xx = x.contiguous(memory_format=torch.channels_last)
            start = time.perf_counter()
            compiled = torch.compile(enc, dynamic=False)
            diff = (compiled(xx).float() - enc(xx).float()).abs().max().item()
            results.append(f"compile time {time.perf_counter() - start:.1f} s")
            ms = timed(lambda: compiled(xx))
            results.append(
                f"{'compiled_channels_last':22s} batch {args.batch} {args.dtype}: {ms:8.2f} ms, "
                f"{args.batch / ms * 1e3:8.1f} img/s, max|diff| vs eager {diff:.3g}"
            )
        enc = variants["fused_contiguous"]
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
            enc(x)
            torch.cuda.synchronize()
        table = prof.key_averages(group_by_input_shape=True).table(
            sort_by="cuda_time_total",
            row_limit=14,
            max_name_column_width=28,
            max_shapes_column_width=60,
        )
        print(table)
        print("\n".join(results))


if __name__ == "__main__":
    main()
