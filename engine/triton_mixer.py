"""RepViT's channel mixer as one Triton kernel: y = x + W2 gelu(W1 x + b1) + b2, per pixel;
for stride-1 blocks, with the block's depthwise 3x3 token mixer (or squeeze-excite gate) in
front, so that one kernel runs the whole block.

Why: the fp16 channels_last encoder on a GPU is bound by memory traffic, not arithmetic. Run as
1x1 conv -> GELU -> 1x1 conv -> residual add, each channel mixer writes its 2C-wide hidden
activation, reads and rewrites it for GELU, reads it for the second conv, and reads and writes
again for the add: about 11 passes over a C-wide activation. Here a tile of pixels is loaded once,
the hidden activation lives in registers a slice at a time, and the output is stored once: 2
passes. At batch 32 the first stage's activation alone is 200 MB (fp16).

The kernel needs Triton >= 3.0 (shipped with CUDA builds of PyTorch >= 2.4); importing this
module without it raises ImportError. With TRITON_INTERPRET=1 set before the import, the same
kernel runs on the CPU through Triton's interpreter, which is how the tests check it without a
GPU.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch
import triton
import triton.language as tl
from torch import nn

from engine.fusion import InplaceGELU, InplaceResidual, InplaceSqueezeExcite
from engine.modeling.image_encoder import RepViTBlock

if int(triton.__version__.split(".")[0]) < 3:  # tl.dot(input_precision=), the CPU interpreter
    raise ImportError(f"the Triton kernels need Triton >= 3.0; this is {triton.__version__}")

# Stages whose channel count is at most this get the kernel. Wider mixers (384 channels) run on
# a 32x32 map where the GEMMs dominate and cuDNN does well; their fp32 accumulator tile
# (BLOCK_M x 512) would also spill registers.
DEFAULT_MAX_CHANNELS = 192
_SQRT_HALF = tl.constexpr(0.7071067811865476)  # a jit function reads constexpr globals only
# (BLOCK_M, BLOCK_H, num_warps, num_stages) tried by the autotuner on the first call per shape.
# ptxas (sm_90, fp16; bench/triton_registers.py) keeps the 48- and 96-channel kernels in
# registers at the 8-warp tiles up to 64 rows and the 192-channel one up to 32 rows; the
# tiles that spill are left for the autotuner to reject.
_CUDA_CONFIGS = (
    (16, 32, 4, 2),
    (32, 32, 4, 2),
    (32, 32, 8, 2),
    (32, 64, 8, 2),
    (64, 32, 4, 2),
    (64, 32, 8, 2),
    (64, 64, 8, 2),
    (128, 32, 8, 2),
)
# Read when the kernel below is decorated, as Triton reads it: it decides jit or interpreter.
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
# The interpreter (CPU) runs one fixed tile: it has no timer to tune with.
_INTERPRETER_CONFIG = {"BLOCK_M": 32, "BLOCK_H": 32}


@triton.jit
def _repvit_mixer_kernel(
    x_ptr,
    dw_w_ptr,
    dw_b_ptr,
    gate_ptr,
    w1_ptr,
    b1_ptr,
    w2_ptr,
    b2_ptr,
    y_ptr,
    M,
    H,
    W,
    C: tl.constexpr,
    HIDDEN: tl.constexpr,
    C_PAD: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DEPTHWISE: tl.constexpr,
    GATE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # x, y: [M, C] row-major, M = N*H*W pixels of an NHWC tensor. w1: [C, HIDDEN];
    # w2: [HIDDEN, C]; dw_w: [9, C] (3x3 taps, identity folded in); gate: [N, C].
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, C_PAD)  # C padded to a power of two; the pad is masked to zero
    row_ok = rows < M
    col_ok = cols < C
    tile_ok = row_ok[:, None] & col_ok[None, :]
    if DEPTHWISE:
        # The token mixer: 3x3 depthwise conv, zero padding. The nine shifted tiles overlap
        # this program's and its neighbours' pixels, so they come from cache, not memory.
        pix = rows % (H * W)
        hh = pix // W
        ww = pix % W
        mixed = tl.zeros((BLOCK_M, C_PAD), dtype=tl.float32)
        for tap in range(9):  # a loop, not unrolled: nine tiles in flight spill registers
            dy = tap // 3 - 1
            dx = tap % 3 - 1
            ok = row_ok & (hh + dy >= 0) & (hh + dy < H) & (ww + dx >= 0) & (ww + dx < W)
            src = rows + dy * W + dx
            v = tl.load(
                x_ptr + src[:, None] * C + cols[None, :],
                mask=ok[:, None] & col_ok[None, :],
                other=0.0,
            )
            tap_w = tl.load(dw_w_ptr + tap * C + cols, mask=col_ok, other=0.0)
            mixed += v.to(tl.float32) * tap_w.to(tl.float32)[None, :]
        mixed += tl.load(dw_b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        # Rounded to the storage dtype, as the unfused conv's output is.
        x = mixed.to(x_ptr.dtype.element_ty)
    else:
        x = tl.load(x_ptr + rows[:, None] * C + cols[None, :], mask=tile_ok, other=0.0)
    if GATE:
        # Squeeze-excite's per-image, per-channel gate, applied on load instead of in a pass.
        g = tl.load(
            gate_ptr + (rows // (H * W))[:, None] * C + cols[None, :], mask=tile_ok, other=0.0
        )
        x = (x.to(tl.float32) * g.to(tl.float32)).to(x_ptr.dtype.element_ty)
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
    key=["C", "HIDDEN", "DEPTHWISE", "GATE"],
)(_repvit_mixer_kernel)


def repvit_mixer_rows(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    dw_weight: Optional[torch.Tensor] = None,
    dw_bias: Optional[torch.Tensor] = None,
    gate: Optional[torch.Tensor] = None,
    height: int = 0,
    width: int = 0,
) -> torch.Tensor:
    """RepViT's channel mixer on the pixels of an NHWC tensor, x [M, C] with M = N*height*width:
    `t + gelu(t @ w1 + b1) @ w2 + b2`, with w1 [C, 2C] and w2 [2C, C], where t is x, or, given
    dw_weight [9, C] and dw_bias [C], x's 3x3 depthwise conv (the block's token mixer, zero
    padding, identity folded in), and then, given gate [N, C], scaled by it (squeeze-excite).

    Everything in one dtype; accumulates in fp32; fp32 inputs use IEEE products (no TF32)."""
    if x.dim() != 2 or not x.is_contiguous():
        raise ValueError("x must be a contiguous [pixels, channels] matrix")
    m, c = x.shape
    hidden = w1.shape[1]
    if w1.shape != (c, hidden) or w2.shape != (hidden, c) or b1.shape != (hidden,):
        raise ValueError(f"weights do not match {c} channels: {w1.shape}, {w2.shape}")
    if b2.shape != (c,):
        raise ValueError(f"b2 must have {c} entries, got {tuple(b2.shape)}")
    tensors = [x, w1, b1, w2, b2]
    depthwise, gated = dw_weight is not None, gate is not None
    if depthwise or gated:
        if height < 1 or width < 1 or m % (height * width):
            raise ValueError(f"{m} pixels are not whole {height}x{width} images")
    if depthwise:
        if dw_bias is None or dw_weight.shape != (9, c) or dw_bias.shape != (c,):  # type: ignore[union-attr]
            raise ValueError(f"dw_weight must be [9, {c}] and dw_bias [{c}]")
        tensors += [dw_weight, dw_bias]
    if gated:
        if gate.shape != (m // (height * width), c):  # type: ignore[union-attr]
            raise ValueError(f"gate must be [images, {c}], got {tuple(gate.shape)}")  # type: ignore[union-attr]
        tensors.append(gate)
    if len({t.dtype for t in tensors}) != 1:  # type: ignore[union-attr]
        raise ValueError("x and the weights must share one dtype")
    if not x.is_cuda and not INTERPRETER:
        raise ValueError("the Triton channel mixer runs on CUDA tensors (or TRITON_INTERPRET=1)")
    if x.numel() >= 2**31:
        raise ValueError("more than 2**31 elements: split the batch")  # int32 offsets
    y = torch.empty_like(x)
    if m == 0:
        return y
    unused = b2  # stands in for the pointers a constexpr flag switches off
    pointers = (
        x,
        unused if dw_weight is None else dw_weight.contiguous(),
        unused if dw_bias is None else dw_bias.contiguous(),
        unused if gate is None else gate.contiguous(),
        w1.contiguous(),
        b1.contiguous(),
        w2.contiguous(),
        b2.contiguous(),
        y,
    )
    args: dict[str, Any] = {
        "C": c,
        "HIDDEN": hidden,
        "C_PAD": max(16, triton.next_power_of_2(c)),
        "INPUT_PRECISION": "ieee" if x.dtype == torch.float32 else "tf32",
        "DEPTHWISE": depthwise,
        "GATE": gated,
    }
    sizes = (m, max(height, 1), max(width, 1))
    if not INTERPRETER:

        def grid(meta: dict[str, Any]) -> tuple[int]:
            return (triton.cdiv(m, meta["BLOCK_M"]),)

        _tuned_kernel[grid](*pointers, *sizes, **args)
    else:
        grid_fixed = (triton.cdiv(m, _INTERPRETER_CONFIG["BLOCK_M"]),)
        _repvit_mixer_kernel[grid_fixed](*pointers, *sizes, **args, **_INTERPRETER_CONFIG)
    return y


def compile_for_gpu(
    arch: int,
    dtype: str,
    channels: int,
    depthwise: bool,
    gate: bool,
    config: tuple[int, int, int, int],
) -> Any:
    """The kernel compiled ahead of time, to cubin, for one NVIDIA architecture (90: H100/H200,
    87: Jetson Orin, 80: A100), one dtype ("fp16", "bf16", "fp32"), one width, flags and tile
    (BLOCK_M, BLOCK_H, num_warps, num_stages): no GPU needed. Triton's compiler is stricter
    than its interpreter, so this is how a machine without a GPU checks the CUDA path. Returns
    Triton's compiled kernel (`.asm["ptx"]`, `.metadata.shared`)."""
    if INTERPRETER:
        raise RuntimeError("TRITON_INTERPRET=1 replaced the kernel by the interpreter's")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    block_m, block_h, warps, stages = config
    pointers = ("x", "dw_w", "dw_b", "gate", "w1", "b1", "w2", "b2", "y")
    signature: dict[str, str] = {f"{p}_ptr": f"*{dtype}" for p in pointers}
    signature.update(M="i32", H="i32", W="i32")
    constants: dict[str, Any] = {
        "C": channels,
        "HIDDEN": 2 * channels,
        "C_PAD": max(16, triton.next_power_of_2(channels)),
        "INPUT_PRECISION": "ieee" if dtype == "fp32" else "tf32",
        "DEPTHWISE": depthwise,
        "GATE": gate,
        "BLOCK_M": block_m,
        "BLOCK_H": block_h,
    }
    signature.update({k: "constexpr" for k in constants})
    return triton.compile(
        ASTSource(_repvit_mixer_kernel, signature, constants),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": warps, "num_stages": stages},
    )


def _register_op() -> Any:
    """An opaque custom op, so that torch.compile keeps the kernel as one call (PyTorch >= 2.4);
    the plain function elsewhere."""
    custom_op = getattr(getattr(torch, "library", None), "custom_op", None)
    if custom_op is None:
        return repvit_mixer_rows
    op = custom_op("edgesam::repvit_mixer_rows", mutates_args=())(repvit_mixer_rows)

    @op.register_fake
    def _(x, *args, **kwargs):  # type: ignore[no-untyped-def]
        return torch.empty_like(x)

    return op


_repvit_mixer_op = _register_op()


def _pixel_rows(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n * h * w, c).contiguous()  # a view when channels_last


def _as_nchw(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    n, c, h, w = like.shape
    return rows.view(n, h, w, c).permute(0, 3, 1, 2)  # channels_last NCHW view


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

    def mix(self, x: torch.Tensor, **extra: Any) -> torch.Tensor:
        out = _repvit_mixer_op(_pixel_rows(x), self.w1, self.b1, self.w2, self.b2, **extra)
        return _as_nchw(out, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x)


class TritonRepViTBlock(nn.Module):
    """A whole re-parameterised stride-1 RepViT block. Without squeeze-excite: one kernel
    (depthwise 3x3, then the channel mixer). With it: the depthwise conv and the gate's global
    mean run in PyTorch, and the kernel applies the gate as it loads."""

    def __init__(
        self,
        depthwise: nn.Conv2d,
        squeeze_excite: Optional[nn.Module],
        conv1: nn.Conv2d,
        conv2: nn.Conv2d,
    ) -> None:
        super().__init__()
        c = depthwise.in_channels
        self.mixer = TritonChannelMixer(conv1, conv2)
        self.squeeze_excite = squeeze_excite
        # Each path keeps only the depthwise form it runs: the conv (squeeze-excite needs its
        # output whole) or the kernel's [9, C] taps.
        in_kernel = squeeze_excite is None
        self.depthwise = None if in_kernel else depthwise
        with torch.no_grad():
            taps = depthwise.weight.reshape(c, 9).t().contiguous() if in_kernel else None
            self.register_buffer("dw_w", taps)
            self.register_buffer("dw_b", depthwise.bias.detach().clone() if in_kernel else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.depthwise is None:
            return self.mixer.mix(x, dw_weight=self.dw_w, dw_bias=self.dw_b, height=h, width=w)
        mixed = self.depthwise(x)
        se = self.squeeze_excite
        gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(mixed.mean((2, 3), keepdim=True)))))
        return self.mixer.mix(mixed, gate=gate.reshape(n, c), height=h, width=w)


def _fused_mixer_convs(module: nn.Module) -> Optional[tuple[nn.Conv2d, nn.Conv2d]]:
    if not isinstance(module, InplaceResidual) or not isinstance(module.m, nn.Sequential):
        return None
    parts = list(module.m)
    if (
        len(parts) == 3
        and isinstance(parts[0], nn.Conv2d)
        and isinstance(parts[1], InplaceGELU)
        and isinstance(parts[2], nn.Conv2d)
        and parts[0].kernel_size == (1, 1)
        and parts[2].kernel_size == (1, 1)
    ):
        return parts[0], parts[2]
    return None


def _stride1_depthwise(token_mixer: nn.Module) -> Optional[tuple[nn.Conv2d, nn.Module]]:
    parts = list(token_mixer) if isinstance(token_mixer, nn.Sequential) else []
    if len(parts) != 2 or not isinstance(parts[0], nn.Conv2d):
        return None
    dw = parts[0]
    if dw.kernel_size != (3, 3) or dw.stride != (1, 1) or dw.padding != (1, 1):
        return None
    if dw.groups != dw.in_channels or dw.in_channels != dw.out_channels or dw.bias is None:
        return None
    return dw, parts[1]


def use_triton_channel_mixers(
    fused_encoder: nn.Module,
    max_channels: int = DEFAULT_MAX_CHANNELS,
    whole_blocks: bool = True,
) -> dict[str, int]:
    """Swap, in place, the channel mixer of every block of a re-parameterised encoder
    (`fuse_encoder`'s output) with at most `max_channels` channels for the Triton kernel; with
    `whole_blocks`, stride-1 blocks bring their token mixer into it too. Returns the counts:
    mixers swapped, blocks whose depthwise conv went in, blocks whose squeeze-excite gate did."""
    counts = {"mixers": 0, "with_depthwise": 0, "with_gate": 0}
    features = fused_encoder.features
    for idx, block in enumerate(features):
        convs = _fused_mixer_convs(block.channel_mixer) if isinstance(block, RepViTBlock) else None
        if convs is None or convs[0].in_channels > max_channels:
            continue
        counts["mixers"] += 1
        dw = _stride1_depthwise(block.token_mixer) if whole_blocks else None
        if dw is not None and isinstance(dw[1], nn.Identity):
            features[idx] = TritonRepViTBlock(dw[0], None, *convs)
            counts["with_depthwise"] += 1
        elif dw is not None and isinstance(dw[1], InplaceSqueezeExcite):
            features[idx] = TritonRepViTBlock(dw[0], dw[1], *convs)
            counts["with_gate"] += 1
        else:
            block.channel_mixer = TritonChannelMixer(*convs)
    return counts
