"""Does torch.compile pay for the encoder on this GPU? Eager (fused, channels_last) against
torch.compile of the same module, fp16, one batch size; prints compile time and img/s.

    python bench/gpu_compile.py [--batch 32] [--mode default]
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
    parser.add_argument("--mode", default="default")
    args = parser.parse_args()
    enc = fuse_encoder(EdgeSam().eval().image_encoder).cuda().half()
    enc = enc.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, 1024, 1024, device="cuda", dtype=torch.half)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        eager_ms = timed(lambda: enc(x))
        print(f"eager    {eager_ms:7.2f} ms  {args.batch / eager_ms * 1e3:7.1f} img/s", flush=True)
        start = time.perf_counter()
        compiled = torch.compile(enc, mode=args.mode)
        ref = enc(x)
        out = compiled(x)
        torch.cuda.synchronize()
        print(f"compile  {time.perf_counter() - start:.1f} s", flush=True)
        ms = timed(lambda: compiled(x))
        diff = (out.float() - ref.float()).abs().max().item()
        print(f"compiled {ms:7.2f} ms  {args.batch / ms * 1e3:7.1f} img/s  max|diff| {diff:.3g}")


if __name__ == "__main__":
    main()
