"""RepViT's channel mixer as one Triton kernel: y = x + W2 gelu(W1 x + b1) + b2, per pixel.

Why: the fp16 channels_last encoder on a GPU is bound by memory traffic, not arithmetic. Run as
1x1 conv -> GELU -> 1x1 conv -> residual add, each channel mixer writes its 2C-wide hidden
activation, reads and rewrites it for GELU, reads it for the second conv, and reads and writes
again for the add: about 11 passes over a C-wide activation. Here a tile of pixels is loaded once,
the hidden activation lives in registers a slice at a time, and the output is stored once: 2
passes. At batch 32 the first stage's activation alone is 200 MB (fp16).

The kernel needs Triton (shipped with CUDA builds of PyTorch); importing this module without it
raises ImportError. With TRITON_INTERPRET=1 set before the import, the same kernel runs on the
CPU through Triton's interpreter, which is how the tests check it without a GPU.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import triton
import triton.language as tl
from torch import nn

# Stages whose channel count is at most this get the kernel. Wider mixers (384 channels) run on
# a 32x32 map where the GEMMs dominate and cuDNN does well; their fp32 accumulator tile
# (BLOCK_M x 512) would also spill registers.
DEFAULT_MAX_CHANNELS = 192
_SQRT_HALF = 0.7071067811865476
# (BLOCK_M, BLOCK_H, num_warps, num_stages) tried by the autotuner on the first call per shape.
_CUDA_CONFIGS = (
    (32, 32, 4, 2),
    (64, 32, 4, 2),
    (64, 64, 4, 2),
    (64, 32, 8, 2),
    (64, 64, 8, 3),
    (128, 32, 8, 2),
    (128, 64, 8, 2),
    (128, 32, 4, 3),
)
# Read when the kernel below is decorated, as Triton reads it: it decides jit or interpreter.
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
# The interpreter (CPU) runs one fixed tile: it has no timer to tune with.
_INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_H": 32}


@triton.jit
def _channel_mixer_kernel(
    x_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    y_ptr,
    M,
    C: tl.constexpr,
    HIDDEN: tl.constexpr,
    C_PAD: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # x, y: [M, C] row-major (NHWC pixels); w1: [C, HIDDEN]; w2: [HIDDEN, C]; biases 1-D.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, C_PAD)  # C padded to a power of two; the pad is masked to zero
    row_ok = rows < M
    col_ok = cols < C
    tile_ok = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * C + cols[None, :], mask=tile_ok, other=0.0)
    acc = tl.zeros((BLOCK_M, C_PAD), dtype=tl.float32)
    hid = tl.arange(0, BLOCK_H)
    for h0 in range(0, HIDDEN, BLOCK_H):
        h_idx = h0 + hid
        h_ok = h_idx < HIDDEN
        w1 = tl.load(
            w1_ptr + cols[:, None] * HIDDEN + h_idx[None, :],
            mask=col_ok[:, None] & h_ok[None, :],
            other=0.0,
        )
        h = tl.dot(x, w1, input_precision=INPUT_PRECISION)
        h += tl.load(b1_ptr + h_idx, mask=h_ok, other=0.0).to(tl.float32)[None, :]
        h = 0.5 * h * (1.0 + tl.erf(h * _SQRT_HALF))  # exact GELU, as nn.GELU()
        w2 = tl.load(
            w2_ptr + h_idx[:, None] * C + cols[None, :],
            mask=h_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        # The hidden activation is rounded to the input dtype, as the unfused conv stores it.
        acc += tl.dot(h.to(w2.dtype), w2, input_precision=INPUT_PRECISION)
    acc += tl.load(b2_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc += x.to(tl.float32)
    tl.store(
        y_ptr + rows[:, None] * C + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=tile_ok
    )


_tuned_kernel = triton.autotune(
    configs=[
        triton.Config({"BLOCK_M": m, "BLOCK_H": h}, num_warps=w, num_stages=s)
        for m, h, w, s in _CUDA_CONFIGS
    ],
    key=["C", "HIDDEN"],
)(_channel_mixer_kernel)


def channel_mixer_rows(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    """x [M, C] + gelu(x @ w1 + b1) @ w2 + b2, with w1 [C, H] and w2 [H, C], all one dtype.

    Accumulates in fp32; fp32 inputs use IEEE products (no TF32)."""
    if x.dim() != 2 or not x.is_contiguous():
        raise ValueError("x must be a contiguous [pixels, channels] matrix")
    m, c = x.shape
    hidden = w1.shape[1]
    if w1.shape != (c, hidden) or w2.shape != (hidden, c) or b1.shape != (hidden,):
        raise ValueError(f"weights do not match {c} channels: {w1.shape}, {w2.shape}")
    if b2.shape != (c,):
        raise ValueError(f"b2 must have {c} entries, got {tuple(b2.shape)}")
    if len({t.dtype for t in (x, w1, b1, w2, b2)}) != 1:
        raise ValueError("x and the weights must share one dtype")
    if not x.is_cuda and not INTERPRETER:
        raise ValueError("the Triton channel mixer runs on CUDA tensors (or TRITON_INTERPRET=1)")
    y = torch.empty_like(x)
    if m == 0:
        return y
    args: dict[str, Any] = {
        "C": c,
        "HIDDEN": hidden,
        "C_PAD": max(16, triton.next_power_of_2(c)),
        "INPUT_PRECISION": "ieee" if x.dtype == torch.float32 else "tf32",
    }
    weights = (w1.contiguous(), b1.contiguous(), w2.contiguous(), b2.contiguous())
    if not INTERPRETER:

        def grid(meta: dict[str, Any]) -> tuple[int]:
            return (triton.cdiv(m, meta["BLOCK_M"]),)

        _tuned_kernel[grid](x, *weights, y, m, **args)
    else:
        grid_fixed = (triton.cdiv(m, _INTERPRETER_CONFIG["BLOCK_M"]),)
        _channel_mixer_kernel[grid_fixed](x, *weights, y, m, **args, **_INTERPRETER_CONFIG)
    return y


def _register_op() -> Any:
    """An opaque custom op, so that torch.compile keeps the kernel as one call (PyTorch >= 2.4);
    the plain function elsewhere."""
    custom_op = getattr(getattr(torch, "library", None), "custom_op", None)
    if custom_op is None:
        return channel_mixer_rows
    op = custom_op("edgesam::channel_mixer_rows", mutates_args=())(channel_mixer_rows)

    @op.register_fake
    def _(x, w1, b1, w2, b2):  # type: ignore[no-untyped-def]
        return torch.empty_like(x)

    return op


_channel_mixer_op = _register_op()


class TritonChannelMixer(nn.Module):
    """Drop-in for the re-parameterised channel mixer `x + conv2(gelu(conv1(x)))` (1x1 convs
    with bias). Works on NCHW-shaped tensors; channels_last input avoids a copy."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d) -> None:
        super().__init__()
        c, hidden = conv1.in_channels, conv1.out_channels
        if conv2.in_channels != hidden or conv2.out_channels != c:
            raise ValueError("conv2 must map the hidden width back to the input's channels")
        if conv1.bias is None or conv2.bias is None:
            raise ValueError("expects re-parameterised (biased) 1x1 convolutions")
        with torch.no_grad():
            self.register_buffer("w1", conv1.weight.reshape(hidden, c).t().contiguous())
            self.register_buffer("b1", conv1.bias.detach().clone())
            self.register_buffer("w2", conv2.weight.reshape(c, hidden).t().contiguous())
            self.register_buffer("b2", conv2.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view when channels_last
        out = _channel_mixer_op(rows.contiguous(), self.w1, self.b1, self.w2, self.b2)
        return out.view(n, h, w, c).permute(0, 3, 1, 2)  # channels_last NCHW view


def _is_fused_mixer(module: nn.Module) -> bool:
    from engine.fusion import InplaceGELU, InplaceResidual

    if not isinstance(module, InplaceResidual) or not isinstance(module.m, nn.Sequential):
        return False
    parts = list(module.m)
    return (
        len(parts) == 3
        and isinstance(parts[0], nn.Conv2d)
        and isinstance(parts[1], InplaceGELU)
        and isinstance(parts[2], nn.Conv2d)
        and parts[0].kernel_size == (1, 1)
        and parts[2].kernel_size == (1, 1)
    )


def use_triton_channel_mixers(
    fused_encoder: nn.Module, max_channels: int = DEFAULT_MAX_CHANNELS
) -> int:
    """Swap, in place, every channel mixer of a re-parameterised encoder (`fuse_encoder`'s
    output) with at most `max_channels` channels for a `TritonChannelMixer`; returns how many."""
    swapped = 0
    for module in list(fused_encoder.modules()):
        for name, child in list(module.named_children()):
            if _is_fused_mixer(child):
                conv1, _, conv2 = list(child.m)
                if conv1.in_channels <= max_channels:
                    setattr(module, name, TritonChannelMixer(conv1, conv2))
                    swapped += 1
    return swapped
