"""SAM's mask decoder with EdgeSAM's choice of 1, 3 or 4 output masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.modeling.common import MLP, LayerNorm2d
from engine.modeling.transformer import TwoWayTransformer


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, in place when autograd does not need the input (saves a 2-8 MB pass)."""
    return F.gelu(x) if x.requires_grad else torch.ops.aten.gelu_(x)


def mask_slice(num_multimask_outputs: int) -> slice:
    """1 -> token 0 (single mask); 3 -> tokens 1..3 (SAM's multimask); 4 -> all four."""
    if num_multimask_outputs == 1:
        return slice(0, 1)
    if num_multimask_outputs == 3:
        return slice(1, 4)
    if num_multimask_outputs == 4:
        return slice(0, 4)
    raise ValueError(f"num_multimask_outputs must be 1, 3 or 4, got {num_multimask_outputs!r}")


class MaskDecoder(nn.Module):
    """Tokens + image embedding -> four low-res mask logits and their predicted IoU.

    `fast_upscaling` (default on) runs the two stride-2, kernel-2 transposed convolutions as
    matrix products on channels-last tokens and applies the pixel shuffle once, to the final
    masks only; turning it off gives the textbook path (the baseline in bench/model.py)."""

    fast_upscaling: bool = True

    def __init__(
        self,
        transformer_dim: int = 256,
        transformer: TwoWayTransformer | None = None,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer if transformer is not None else TwoWayTransformer()
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def predict_all(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor | None,
        first_kv: tuple[torch.Tensor, ...] | None = None,
        src_tokens: torch.Tensor | None = None,
        mask_tokens: slice | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All four mask tokens, or just `mask_tokens`: a `mask_slice`, or the token indices
        as an int64 tensor (data, so that one exported graph serves every selection).

        image_embeddings 1xCx64x64 (shared by the batch) or BxCx64x64; image_pe 1xCx64x64;
        sparse BxNxC; dense BxCx64x64 or 1xCx64x64 (no-mask broadcast).
        `src_tokens` (1xHWxC, embedding + dense already added) and `first_kv` may be given
        precomputed for one image (see EdgeSam._image_side); image_pe may be 1xHWxC tokens.
        Returns low-res logits BxKx256x256 and IoU predictions BxK, K = 4 or the selection's.
        """
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            (output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings), dim=1
        )
        src = image_embeddings + dense_prompt_embeddings if src_tokens is None else src_tokens
        index = mask_tokens if isinstance(mask_tokens, torch.Tensor) else None
        if mask_tokens is None or index is not None:
            selected = slice(0, self.num_mask_tokens)
        else:
            selected = mask_tokens
        # Tokens past the last selected mask token only matter until the final attention,
        # whose queries are independent: it runs on [iou, mask tokens ..selected.stop] alone.
        hs, keys = self.transformer(src, image_pe, tokens, first_kv, 1 + selected.stop)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 + selected.start : 1 + selected.stop, :]

        c, (h, w) = self.transformer_dim, image_embeddings.shape[-2:]
        mlps = self.output_hypernetworks_mlps[selected]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(mlps)],
            dim=1,
        )
        if index is not None:  # only the chosen tokens' masks are upscaled
            hyper_in = hyper_in.index_select(1, index)
        if self.fast_upscaling:
            masks = self._upscale_tokens(keys, hyper_in, h, w)
        else:
            upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
            b, c, h, w = upscaled.shape
            masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        iou = self.iou_prediction_head(iou_token_out)[:, selected]
        return masks, iou if index is None else iou.index_select(1, index)

    def _upscale_tokens(
        self, keys: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int
    ) -> torch.Tensor:
        """`output_upscaling` and the hypernetwork product on BxHWxC tokens -> BxTx4hx4w.

        A transposed conv with kernel = stride = 2 maps each input pixel to its own 2x2 block,
        so it is one matmul per pixel; LayerNorm2d and GELU act per pixel too. The block
        offsets (a, b) of the first and (c, d) of the second conv stay as extra axes until the
        masks, which are then laid out as row 4i+2a+c, column 4j+2b+d."""
        convt1, norm, _, convt2, _ = self.output_upscaling
        b = keys.shape[0]
        mid, out = convt1.out_channels, convt2.out_channels
        w1 = convt1.weight.permute(0, 2, 3, 1).reshape(convt1.in_channels, 4 * mid)
        x = torch.addmm(convt1.bias.repeat(4), keys.reshape(-1, keys.shape[-1]), w1)
        x = F.layer_norm(x.reshape(-1, mid), (mid,), norm.weight, norm.bias, norm.eps)
        x = _gelu(x)
        w2 = convt2.weight.permute(0, 2, 3, 1).reshape(mid, 4 * out)
        x = _gelu(torch.addmm(convt2.bias.repeat(4), x, w2))
        masks = x.reshape(b, -1, out) @ hyper_in.transpose(1, 2)  # B x (h w a b c d) x T
        t = hyper_in.shape[1]
        masks = masks.reshape(b, h, w, 2, 2, 2, 2, t).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, t, 4 * h, 4 * w)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        num_multimask_outputs: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """EdgeSAM's signature: masks and IoU of the selected tokens (see `mask_slice`)."""
        selected = mask_slice(num_multimask_outputs)
        masks, iou = self.predict_all(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return masks[:, selected], iou[:, selected]
