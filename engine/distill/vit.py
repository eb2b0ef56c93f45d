"""SAM's ViT image encoder (the distillation teacher), with the official parameter layout.

Written from the architecture description in SAM's paper and the reference manifests:
16x16 patch embedding, absolute position embedding, pre-norm transformer blocks with windowed
or global attention and decomposed relative position biases, then a conv/LayerNorm2d neck.
Tokens inside the blocks are BxHxWxC; the output is Bx256x(S/16)x(S/16).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoint import read_state_dict
from engine.modeling.common import LayerNorm2d, MLPBlock

ENCODER_PREFIX = "image_encoder."


@dataclass(frozen=True)
class ViTConfig:
    """Constructor arguments of SAM's ImageEncoderViT."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    mlp_ratio: float = 4.0
    out_chans: int = 256
    window_size: int = 14
    qkv_bias: bool = True
    norm_eps: float = 1e-6

    def replace(self, **kwargs: object) -> ViTConfig:
        d = asdict(self)
        d.update(kwargs)
        return ViTConfig(**d)


VIT_CONFIGS: dict[str, ViTConfig] = {
    "vit_b": ViTConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": ViTConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": ViTConfig(1280, 32, 16, (7, 15, 23, 31)),
    # The reference tiny configuration (sam_vit_tiny/): every code path of the real sizes.
    "vit_tiny": ViTConfig(64, 4, 2, (1, 3)),
}


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """BxHxWxC -> (B*nW)xwindowxwindowxC, zero-padding H and W up to multiples of `window`.

    Returns the windows and the padded size (Hp, Wp).
    """
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `window_partition`: (B*nW)xwindowxwindowxC -> BxHxWxC (padding dropped)."""
    hp, wp = padded
    h, w = size
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous()


def relative_position_table(q_len: int, k_len: int, table: torch.Tensor) -> torch.Tensor:
    """Gather a (2*L-1)xC table into q_len x k_len x C relative-offset embeddings.

    Offsets are (q - k) scaled to the longer axis; a table of another length is linearly
    resized first (as SAM does when the token grid differs from the one it was built for).
    """
    span = 2 * max(q_len, k_len) - 1
    if table.shape[0] != span:
        table = F.interpolate(table.T.unsqueeze(0), size=span, mode="linear").squeeze(0).T
    q_scale = max(k_len / q_len, 1.0)
    k_scale = max(q_len / k_len, 1.0)
    q_pos = torch.arange(q_len, device=table.device)[:, None] * q_scale
    k_pos = torch.arange(k_len, device=table.device)[None, :] * k_scale
    offsets = (q_pos - k_pos) + (k_len - 1) * k_scale
    return table[offsets.long()]


class ViTAttention(nn.Module):
    """Multi-head self-attention over a BxHxWxC token grid with decomposed relative positions."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, grid: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B x heads x N x d
        d = q.shape[-1]
        # Decomposed relative position bias, computed from the *unscaled* queries.
        rh = relative_position_table(h, h, self.rel_pos_h).to(q.dtype)  # h x h x d
        rw = relative_position_table(w, w, self.rel_pos_w).to(q.dtype)  # w x w x d
        q_grid = q.reshape(b, self.num_heads, h, w, d)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, rh)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, rw)
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


class ViTBlock(nn.Module):
    """Pre-norm transformer block; window_size 0 means global attention."""

    def __init__(self, cfg: ViTConfig, window_size: int) -> None:
        super().__init__()
        grid = cfg.img_size // cfg.patch_size
        attn_grid = (window_size, window_size) if window_size else (grid, grid)
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = ViTAttention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias, attn_grid)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = MLPBlock(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio), nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size:
            size = (x.shape[1], x.shape[2])
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: Bx3xSxS -> Bx(S/p)x(S/p)xC (channels last)."""

    def __init__(self, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class SamViTEncoder(nn.Module):
    """SAM's ImageEncoderViT: preprocessed Bx3xSxS -> Bx256x(S/16)x(S/16) embeddings.

    Its state dict has exactly the keys of the `image_encoder.*` part of an official SAM
    checkpoint (with the prefix stripped).
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(cfg, 0 if i in cfg.global_attn_indexes else cfg.window_size)
            for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, 1, bias=False),
            LayerNorm2d(cfg.out_chans, eps=cfg.norm_eps),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, 3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans, eps=cfg.norm_eps),
        )

    def forward_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Patch tokens (before pos_embed) and every block output, each BxHxWxC."""
        x = self.patch_embed(x)
        outs = [x]
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


def build_sam_vit(
    variant: str = "vit_h", img_size: int = 1024, device: str | torch.device | None = None
) -> SamViTEncoder:
    """Build a SAM ViT encoder ('vit_b', 'vit_l', 'vit_h', 'vit_tiny'); device='meta' allocates
    nothing (for shape checks)."""
    if variant not in VIT_CONFIGS:
        raise ValueError(f"unknown SAM ViT variant {variant!r}; choose from {sorted(VIT_CONFIGS)}")
    cfg = VIT_CONFIGS[variant].replace(img_size=img_size)
    if device is None:
        return SamViTEncoder(cfg)
    with torch.device(device):
        return SamViTEncoder(cfg)


def encoder_state_from_sam(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`image_encoder.*` entries of a full SAM checkpoint with the prefix stripped (a bare
    encoder state dict is returned as is)."""
    if any(k.startswith(ENCODER_PREFIX) for k in state):
        return {
            k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)
        }
    return dict(state)


def prompt_decoder_state_from_sam(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The `prompt_encoder.*` and `mask_decoder.*` entries of a SAM (or EdgeSAM) checkpoint,
    keys kept as they are (they match EdgeSAM's layout)."""
    out = {k: v for k, v in state.items() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    if not out:
        raise ValueError("checkpoint has no prompt_encoder.* / mask_decoder.* entries")
    return out


def infer_variant(state: Mapping[str, torch.Tensor]) -> str:
    """Guess 'vit_b'/'vit_l'/'vit_h' from the patch-embedding width and block count."""
    enc = encoder_state_from_sam(state)
    width = enc["patch_embed.proj.weight"].shape[0]
    depth = 1 + max(int(k.split(".")[1]) for k in enc if k.startswith("blocks."))
    for name, cfg in VIT_CONFIGS.items():
        if cfg.embed_dim == width and cfg.depth == depth:
            return name
    raise ValueError(f"no SAM ViT configuration has width {width} and depth {depth}")


def load_teacher(
    path: str | Path,
    variant: str | None = None,
    img_size: int = 1024,
    device: str | torch.device = "cpu",
) -> SamViTEncoder:
    """Load a SAM ViT encoder from an official SAM checkpoint (or a bare encoder state dict),
    strictly: a missing, unexpected or mis-shaped key raises."""
    state = encoder_state_from_sam(read_state_dict(path))
    variant = variant or infer_variant(state)
    model = build_sam_vit(variant, img_size, device="meta")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return model.to(device).eval()


def read_manifest(path: str | Path, variant: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every entry of an official SAM checkpoint, from sam_vit_manifests.json."""
    data = json.loads(Path(path).read_text())
    return [(e["key"], tuple(e["shape"])) for e in data["variants"][variant]["state_dict"]]
