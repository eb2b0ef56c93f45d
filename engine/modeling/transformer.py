"""SAM's two-way transformer: prompt tokens and image positions attend to each other."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.modeling.common import MLPBlock

# torch < 2.5's ONNX exporter fails on a float `scale` given to scaled_dot_product_attention
# (pytorch#125158, fixed in 2.5); JetPack 5 has torch 2.1.
_EXPORTER_TAKES_FLOAT_SCALE = torch.__version__ >= (2, 5)


def sdpa_scale(scale: float) -> dict[str, float]:
    """scaled_dot_product_attention's `scale` argument for `scale` = 1/sqrt(head dim), SDPA's
    own default: left out only while an older exporter traces, which computes that default
    in the graph instead."""
    if _EXPORTER_TAKES_FLOAT_SCALE or not torch.onnx.is_in_onnx_export():
        return {"scale": scale}
    return {}


def _softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (a few prompt tokens): torch's kernel is slow for rows
    of length < 16, four flat passes are not."""
    x = (x - x.amax(dim=-1, keepdim=True)).exp()
    if x.requires_grad:  # autograd needs exp's output intact
        return x / x.sum(dim=-1, keepdim=True)
    return x.div_(x.sum(dim=-1, keepdim=True))


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """BxCxHxW -> contiguous BxHWxC (strided views make every later add and matmul slower)."""
    if x.ndim == 3:
        return x
    return x.flatten(2).transpose(1, 2).contiguous()


class Attention(nn.Module):
    """Multi-head attention with an optional down-projection of the internal width.

    `factorized` (default on) lets `forward` use the cheaper exact factorings below; turning
    it off gives the textbook computation (the unoptimised baseline in bench/model.py)."""

    factorized: bool = True

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim / downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention on already projected q (BxNqxinternal) and k, v (BxNkxinternal, or split
        into heads as BxheadsxNkxd by `split_heads`). Either side may have batch 1, shared by
        every prompt of the other."""
        qh = self._split(q)
        kh = k if k.ndim == 4 else self._split(k)
        vh = v if v.ndim == 4 else self._split(v)
        b, nq = max(qh.shape[0], kh.shape[0]), qh.shape[2]
        if min(qh.shape[0], kh.shape[0]) not in (1, b):
            raise ValueError("q and k/v batches must match or one of them be 1")
        shared_keys = kh.shape[0] == 1 and b > 1
        if shared_keys:
            # The prompts' queries become rows of one attention on the shared keys: no copy
            # of the keys per prompt (an Expand to the prompt batch in the ONNX graph).
            qh = qh.transpose(0, 1).reshape(1, self.num_heads, b * nq, -1)
        elif qh.shape[0] != b:
            qh = qh.expand(b, -1, -1, -1)  # shared image positions attending to each prompt
        scale = sdpa_scale(1.0 / math.sqrt(qh.shape[-1]))
        out = F.scaled_dot_product_attention(qh, kh, vh, **scale)
        if shared_keys:
            out = out.reshape(self.num_heads, b, nq, -1).transpose(0, 1)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, self.internal_dim))

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """BxNxinternal projections -> contiguous BxheadsxNxd, the layout `attend` reads."""
        return self._split(x).contiguous()

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q BxNqxC, k/v BxNkxC (k/v batch may be 1); returns `residual` + attention when a
        residual is given. Picks the cheaper of two exact factorings: when queries are few
        (tokens attending to 4096 image positions), the projections are moved to the query
        side instead of projecting every key; when keys are few (image positions attending
        to tokens), to the key side, where the residual add rides in the last product."""
        heads = self.num_heads
        if self.factorized:
            if q.shape[1] * heads < self.internal_dim and k.shape[1] > self.internal_dim:
                out = self._few_queries(q, k, v)
                return out if residual is None else residual + out
            if k.shape[1] * heads < self.internal_dim and q.shape[1] > self.internal_dim:
                return self._few_keys(q, k, v, residual)
        out = self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))
        return out if residual is None else residual + out

    def _head_weights(self, linear: nn.Linear) -> torch.Tensor:
        """internal x C weight of a q/k/v projection as heads x d x C."""
        return linear.weight.reshape(self.num_heads, -1, linear.weight.shape[1])

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # scores_h = (q Wq_h + bq_h)(k Wk_h + bk_h)^T; the bk term is constant along keys and
        # cancels in the softmax, so scores_h = ((q Wq_h + bq_h) Wk_h^T) k^T.
        b, nq, _ = q.shape
        h = self.num_heads
        qh = self._split(self.q_proj(q))  # B h Nq d
        scale = 1.0 / math.sqrt(qh.shape[-1])
        q_in_key_space = torch.einsum("bhnd,hdc->bhnc", qh, self._head_weights(self.k_proj))
        scores = (q_in_key_space.reshape(b, h * nq, -1) * scale) @ k.transpose(1, 2)
        attn = torch.softmax(scores.reshape(b, h, nq, -1), dim=-1)
        # attn rows sum to one, so attn (v Wv_h + bv_h) = (attn v) Wv_h + bv_h.
        ctx = (attn.reshape(b, h * nq, -1) @ v).reshape(b, h, nq, -1)
        wv = self._head_weights(self.v_proj)
        out = torch.einsum("bhnc,hdc->bhnd", ctx, wv) + self.v_proj.bias.reshape(h, 1, -1)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, -1))

    def _few_keys(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # scores_h = (q Wq_h + bq_h) kh^T = q (kh Wq_h)^T + bq_h kh^T, with kh = k Wk_h + bk_h.
        b, nk, _ = k.shape
        h = self.num_heads
        kh = self._split(self.k_proj(k))  # B h Nk d
        scale = 1.0 / math.sqrt(kh.shape[-1])
        wq = self._head_weights(self.q_proj)
        k_in_query_space = torch.einsum("bhtd,hdc->bhtc", kh * scale, wq).reshape(b, h * nk, -1)
        bias = torch.einsum("bhtd,hd->bht", kh * scale, self.q_proj.bias.reshape(h, -1))
        nq = q.shape[1]
        if q.shape[0] == b:
            scores = torch.baddbmm(bias.reshape(b, 1, h * nk), q, k_in_query_space.transpose(1, 2))
        else:  # image positions shared by the prompts: broadcast, never copied per prompt
            scores = torch.matmul(q, k_in_query_space.transpose(1, 2)) + bias.reshape(b, 1, -1)
        attn = _softmax_last(scores.reshape(b, nq * h, nk))
        # out = sum_h attn_h (v Wv_h + bv_h) Wo_h^T + bo, folded into one product.
        vh = self._split(self.v_proj(v))  # B h Nk d
        wo = self.out_proj.weight.reshape(-1, h, vh.shape[-1])  # C h d
        v_out = torch.einsum("bhtd,chd->bhtc", vh, wo).reshape(b, h * nk, -1)
        if residual is None:
            out_bias = self.out_proj.bias.reshape(1, 1, -1).expand(b, 1, -1)
            return torch.baddbmm(out_bias, attn.reshape(b, nq, h * nk), v_out)
        # Each head's attention row sums to one, so the rows of attn sum to h: adding bo / h
        # to every row of v_out adds bo once, and the residual rides in the same product.
        v_out = v_out + self.out_proj.bias / h
        return torch.baddbmm(residual, attn.reshape(b, nq, h * nk), v_out)  # residual broadcasts


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of tokens, token->image cross-attention, MLP, image->token cross-attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        token_to_image_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        keys_with_pe: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries BxNxC, keys BxHWxC (or 1xHWxC when shared by the batch).

        `token_to_image_kv` are precomputed k/v projections of `keys + key_pe` and `keys`,
        and `keys_with_pe` that sum, valid when the keys depend on the image only (first
        block, no mask input).
        """
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        attn = self.cross_attn_token_to_image
        # the keys do not change until the image->token step below
        k = keys + key_pe if keys_with_pe is None else keys_with_pe
        if token_to_image_kv is None:
            attn_out = attn(q, k, keys)
        else:
            attn_out = attn.attend(attn.q_proj(q), token_to_image_kv[0], token_to_image_kv[1])
        queries = self.norm2(queries + attn_out)
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        # k and keys may still be shared by the batch (1xHWxC): the attention broadcasts them
        keys = self.norm4(self.cross_attn_image_to_token(k, q, queries, residual=keys))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """`depth` two-way blocks and a final token->image attention."""

    def __init__(
        self,
        depth: int = 2,
        embedding_dim: int = 256,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                activation,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def first_keys_kv(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """k/v projections of the first block's token->image attention for one image, split
        into heads (1xheadsxHWxd), and the keys plus their positional encoding
        (1xCxHxW embedding with the no-mask dense prompt already added)."""
        keys = to_tokens(image_embedding)
        pe = to_tokens(image_pe)
        attn = self.layers[0].cross_attn_token_to_image
        keys_with_pe = keys + pe
        k, v = attn.k_proj(keys_with_pe), attn.v_proj(keys)
        return attn.split_heads(k), attn.split_heads(v), keys_with_pe

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        first_kv: tuple[torch.Tensor, ...] | None = None,
        num_queries_out: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding BxCxHxW (B may be 1 for a batch of prompts on one image),
        image_pe 1xCxHxW, point_embedding BxNxC -> (queries BxNxC, keys BxHWxC).
        `num_queries_out` keeps only the first queries through the final attention (each
        query attends there on its own), returning BxnxC."""
        keys = to_tokens(image_embedding)
        key_pe = to_tokens(image_pe)
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            if i == 0 and first_kv is not None:
                kv, with_pe = (first_kv[0], first_kv[1]), first_kv[2]
            else:
                kv, with_pe = None, None
            queries, keys = layer(queries, keys, point_embedding, key_pe, kv, with_pe)
        if num_queries_out is not None:
            queries = queries[:, :num_queries_out]
            point_embedding = point_embedding[:, :num_queries_out]
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
