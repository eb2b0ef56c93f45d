"""Inference-time re-parameterisation of the RepViT encoder.

Each Conv2d+BatchNorm pair becomes one biased convolution, and each RepVGGDW block
(3x3 depthwise + 1x1 depthwise + identity) becomes one 3x3 depthwise convolution; GELU,
residual adds and squeeze-excite gates work in place. The result computes the same function
with fewer kernels, no BatchNorm passes and far fewer large allocations. Inference only.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from engine.modeling.image_encoder import Conv2dBN, RepVGGDW, Residual, SqueezeExcite


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Conv (any bias) followed by eval-mode BN -> one conv with bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    )
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return fused.to(conv.weight.device)


def fold_repvgg_dw(block: RepVGGDW) -> nn.Conv2d:
    """3x3 dw conv-BN + 1x1 dw conv-BN + identity -> one 3x3 depthwise conv."""
    k3 = fold_conv_bn(block.conv.c, block.conv.bn)
    k1 = fold_conv_bn(block.conv1.c, block.conv1.bn)
    with torch.no_grad():
        weight = k3.weight + F.pad(k1.weight, (1, 1, 1, 1))
        weight[:, 0, 1, 1] += 1.0  # identity branch
        k3.weight.copy_(weight)
        k3.bias.add_(k1.bias)
    return k3


class InplaceGELU(nn.Module):
    """Exact (erf) GELU written into its input: in inference every activation here is a fresh
    conv output, and not allocating a second multi-MB buffer per block saves page faults."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.gelu_(x)


class InplaceResidual(nn.Module):
    """x + m(x), accumulated into m's fresh output."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x).add_(x)


class InplaceSqueezeExcite(nn.Module):
    """SqueezeExcite gating its (fresh) input in place."""

    def __init__(self, se: SqueezeExcite) -> None:
        super().__init__()
        self.fc1, self.fc2 = se.fc1, se.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x.mul_(torch.sigmoid(gate))


def _fuse_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, Conv2dBN):
            setattr(module, name, fold_conv_bn(child.c, child.bn))
        elif isinstance(child, RepVGGDW):
            setattr(module, name, fold_repvgg_dw(child))
        elif isinstance(child, nn.GELU) and child.approximate == "none":
            setattr(module, name, InplaceGELU())
        elif isinstance(child, Residual):
            _fuse_children(child)
            setattr(module, name, InplaceResidual(child.m))
        elif isinstance(child, SqueezeExcite):
            setattr(module, name, InplaceSqueezeExcite(child))
        else:
            _fuse_children(child)


class MatrixUpsample2x(nn.Module):
    """FuseStage3 (1x1 conv, then x2 upsampling) with the upsampling as two matrix products.

    Bilinear and bicubic resizing with align_corners=False are separable and linear, so
    `R @ x @ R.T`, with R the 1-D resize of an identity, equals F.interpolate to float
    rounding (border clamping included). The interpolation kernels are slow: ~15% of the
    encoder in ONNX Runtime on a CPU, and two thirds of it on an H200 in channels_last."""

    def __init__(self, conv: nn.Module, size: int, mode: str) -> None:
        super().__init__()
        self.conv = conv
        self.size = size
        self.mode = mode
        eye = torch.eye(size, dtype=torch.float64)[None, None]
        resize = F.interpolate(eye, size=(2 * size, size), mode=mode, align_corners=False)[0, 0]
        self.register_buffer("rows", resize.float(), False)
        self.register_buffer("cols", resize.T.contiguous().float(), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if x.shape[-2:] != (self.size, self.size):  # not the 1024 input: no matrices for it
            return F.interpolate(x, scale_factor=2.0, mode=self.mode, align_corners=False)
        return self.rows.to(x.dtype) @ x.contiguous() @ self.cols.to(x.dtype)


def fuse_encoder(encoder: nn.Module, matrix_upsample: bool = True) -> nn.Module:
    """A re-parameterised copy of a RepViT encoder (eval mode); the original is untouched.
    `matrix_upsample` replaces the stage-3 interpolation by `MatrixUpsample2x` (for 1024
    inputs, whose stage-3 map is 32x32)."""
    fused = copy.deepcopy(encoder).eval()
    _fuse_children(fused)
    if matrix_upsample:
        stage3 = fused.fuse_stage3
        fused.fuse_stage3 = MatrixUpsample2x(stage3.op_list[0], 32, stage3.upsample_mode)
    return fused
