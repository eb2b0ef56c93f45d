"""Inference-time re-parameterisation of the RepViT encoder.

Each Conv2d+BatchNorm pair becomes one biased convolution, and each RepVGGDW block
(3x3 depthwise + 1x1 depthwise + identity) becomes one 3x3 depthwise convolution. The
result computes the same function with fewer kernels and no BatchNorm passes.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from engine.modeling.image_encoder import Conv2dBN, RepVGGDW


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


def _fuse_children(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, Conv2dBN):
            setattr(module, name, fold_conv_bn(child.c, child.bn))
        elif isinstance(child, RepVGGDW):
            setattr(module, name, fold_repvgg_dw(child))
        else:
            _fuse_children(child)


def fuse_encoder(encoder: nn.Module) -> nn.Module:
    """A re-parameterised copy of a RepViT encoder (eval mode); the original is untouched."""
    fused = copy.deepcopy(encoder).eval()
    _fuse_children(fused)
    return fused
