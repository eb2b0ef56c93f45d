"""EdgeSAM's image encoder: a RepViT-m1 backbone whose last two stages are fused into a
64x64 map, followed by SAM's neck. Parameter names follow the official checkpoint layout.

Input  Bx3x1024x1024 (normalised, padded) -> output Bx256x64x64.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from engine.modeling.common import LayerNorm2d

UpsampleMode = Literal["bicubic", "bilinear"]

# One row per block after the stem: (output channels, squeeze-excite, stride).
# Expansion is always 2x and both activation flavours of RepViT are GELU here.
REPVIT_M1_BLOCKS: tuple[tuple[int, bool, int], ...] = (
    (48, True, 1), (48, False, 1), (48, False, 1),
    (96, False, 2), (96, True, 1), (96, False, 1), (96, False, 1),
    (192, False, 2),
    *(((192, True, 1), (192, False, 1)) * 7),
    (192, False, 1),
    (384, False, 2), (384, True, 1), (384, False, 1),
)  # fmt: skip
# Indices into features[1:] whose outputs end a stage (48, 96, 192, 384 channels).
REPVIT_M1_STAGE_ENDS: tuple[int, ...] = (2, 6, 22, 25)


def make_divisible(value: float, divisor: int = 8) -> int:
    """timm's rounding of reduced channel counts (round_limit=0: never bumps up)."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class Conv2dBN(nn.Sequential):
    """Conv (no bias) followed by BatchNorm; keys `c.*` and `bn.*`."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 1,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_ch, out_ch, kernel, stride, pad, groups=groups, bias=False)
        )
        self.add_module("bn", nn.BatchNorm2d(out_ch))


class Residual(nn.Module):
    """x + m(x); keys `m.*`."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


class RepVGGDW(nn.Module):
    """Depthwise 3x3 + depthwise 1x1 + identity (structural re-parameterisation target)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2dBN(channels, channels, 3, 1, 1, groups=channels)
        self.conv1 = Conv2dBN(channels, channels, 1, 1, 0, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x) + x


class SqueezeExcite(nn.Module):
    """timm's SEModule: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid gate."""

    def __init__(self, channels: int, ratio: float = 0.25) -> None:
        super().__init__()
        reduced = make_divisible(channels * ratio, 8)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class RepViTBlock(nn.Module):
    """Token mixer (spatial, depthwise) then channel mixer (pointwise MLP with a residual)."""

    def __init__(self, in_ch: int, out_ch: int, use_se: bool, stride: int) -> None:
        super().__init__()
        se: nn.Module = SqueezeExcite(in_ch) if use_se else nn.Identity()
        if stride == 2:
            self.token_mixer = nn.Sequential(
                Conv2dBN(in_ch, in_ch, 3, 2, 1, groups=in_ch), se, Conv2dBN(in_ch, out_ch, 1)
            )
        elif in_ch == out_ch:
            self.token_mixer = nn.Sequential(RepVGGDW(in_ch), se)
        else:
            raise ValueError("a stride-1 RepViT block keeps its channel count")
        self.channel_mixer = Residual(
            nn.Sequential(Conv2dBN(out_ch, 2 * out_ch), nn.GELU(), Conv2dBN(2 * out_ch, out_ch))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


class FuseStage3(nn.Module):
    """1x1 conv 384->256 then x2 upsampling (bicubic in PyTorch, bilinear in official exports)."""

    def __init__(self, in_ch: int, out_ch: int, upsample_mode: UpsampleMode) -> None:
        super().__init__()
        self.op_list = nn.ModuleList([nn.Conv2d(in_ch, out_ch, 1, bias=False)])
        self.upsample_mode = upsample_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.op_list[0](x)
        return F.interpolate(x, scale_factor=2.0, mode=self.upsample_mode, align_corners=False)


class RepViTEncoder(nn.Module):
    """RepViT-m1 + stage-2/3 fusion + SAM neck: Bx3x1024x1024 -> Bx256x64x64."""

    def __init__(self, out_chans: int = 256, upsample_mode: UpsampleMode = "bicubic") -> None:
        super().__init__()
        first = REPVIT_M1_BLOCKS[0][0]
        stem = nn.Sequential(
            Conv2dBN(3, first // 2, 3, 2, 1), nn.GELU(), Conv2dBN(first // 2, first, 3, 2, 1)
        )
        layers: list[nn.Module] = [stem]
        in_ch = first
        for out_ch, use_se, stride in REPVIT_M1_BLOCKS:
            layers.append(RepViTBlock(in_ch, out_ch, use_se, stride))
            in_ch = out_ch
        self.features = nn.ModuleList(layers)
        self.stage_ends = REPVIT_M1_STAGE_ENDS
        stage2_ch = REPVIT_M1_BLOCKS[REPVIT_M1_STAGE_ENDS[2]][0]
        stage3_ch = REPVIT_M1_BLOCKS[REPVIT_M1_STAGE_ENDS[3]][0]
        self.fuse_stage2 = nn.Conv2d(stage2_ch, out_chans, 1, bias=False)
        self.fuse_stage3 = FuseStage3(stage3_ch, out_chans, upsample_mode)
        self.neck = nn.Sequential(
            nn.Conv2d(out_chans, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the backbone; returns the stem output and the four stage outputs."""
        x = self.features[0](x)
        out = {"stem": x}
        for idx, block in enumerate(self.features[1:]):
            x = block(x)
            if idx in self.stage_ends:
                out[f"stage{self.stage_ends.index(idx)}"] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Stage 3 ends the backbone; stage 2 ends 3 blocks earlier.
        x = self.features[0](x)
        stage2_idx, stage3_idx = self.stage_ends[2], self.stage_ends[3]
        stage2 = x
        for idx, block in enumerate(self.features[1:]):
            x = block(x)
            if idx == stage2_idx:
                stage2 = x
            if idx == stage3_idx:
                break
        fused = self.fuse_stage2(stage2) + self.fuse_stage3(x)
        return self.neck(fused)
