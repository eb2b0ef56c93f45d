"""Registers and spills of the Triton RepViT kernel (engine/triton_mixer.py) per width and
tile, from Triton's own compiler and its bundled ptxas: no GPU needed.

    python bench/triton_registers.py [--arch 90] [--dtype fp16]

A tile that spills moves its hidden activation through local memory, which is what the kernel
exists to avoid; the autotuner's tiles (`_CUDA_CONFIGS`) are chosen from this table.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.pop("TRITON_INTERPRET", None)  # compile the CUDA path, not the interpreter's


def ptxas_report(ptx: str, arch: int) -> tuple[str, str]:
    """(registers, spill-store bytes) from the ptxas builds Triton ships (the newest PTX needs
    the newest one, so each is tried)."""
    import triton

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    candidates = sorted(glob.glob(os.path.join(bin_dir, "ptxas*")), reverse=True)
    suffix = "a" if arch == 90 else ""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        for ptxas in candidates:
            proc = subprocess.run(
                [ptxas, "-v", f"--gpu-name=sm_{arch}{suffix}", str(src), "-o", f"{tmp}/k.cubin"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if proc.returncode == 0:
                regs = re.search(r"Used (\d+) registers", proc.stderr)
                spills = re.search(r"(\d+) bytes spill stores", proc.stderr)
                return (regs.group(1) if regs else "?"), (spills.group(1) if spills else "?")
    return "?", "no ptxas here accepted the PTX"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", type=int, default=90, help="80 A100, 87 Orin, 90 H100/H200")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    args = parser.parse_args()
    from engine import triton_mixer as tm

    print(
        f"sm_{args.arch} {args.dtype}: width, kind, (BLOCK_M, BLOCK_H, warps, stages) -> regs, spill bytes"
    )
    kinds = {"block": (True, False), "gated": (False, True), "mixer": (False, False)}
    for c in (48, 96, 192, 384):
        for kind, (depthwise, gate) in kinds.items():
            for config in tm._CUDA_CONFIGS:
                kernel = tm.compile_for_gpu(args.arch, args.dtype, c, depthwise, gate, config)
                ptx = kernel.asm["ptx"]
                regs, spills = ptxas_report(ptx, args.arch)
                print(f"{c:4d} {kind:6s} {config!s:18s} regs {regs:>4s} spills {spills:>6s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
