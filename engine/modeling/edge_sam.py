"""The whole EdgeSAM model: image encoder, prompt encoder, mask decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.modeling.image_encoder import RepViTEncoder, UpsampleMode
from engine.modeling.mask_decoder import MaskDecoder
from engine.modeling.prompt_encoder import PromptEncoder
from engine.modeling.transformer import TwoWayTransformer, to_tokens
from engine.tensor_cache import PerTensorCache

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
IMAGE_SIZE = 1024
EMBED_DIM = 256
EMBED_SIZE = 64
LOW_RES_SIZE = 256
# Image-side decoder tensors (~12 MB each) kept for the most recent embeddings.
IMAGE_SIDE_CACHE_SIZE = 4


class EdgeSam(nn.Module):
    """EdgeSAM with the official parameter layout (`image_encoder.*`, `prompt_encoder.*`,
    `mask_decoder.*`). `encode` and `decode` are the two halves the service runs apart."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, upsample_mode: UpsampleMode = "bicubic") -> None:
        super().__init__()
        self.image_encoder = RepViTEncoder(EMBED_DIM, upsample_mode)
        self.prompt_encoder = PromptEncoder(
            EMBED_DIM, (EMBED_SIZE, EMBED_SIZE), (IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=16
        )
        self.mask_decoder = MaskDecoder(
            EMBED_DIM,
            TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, num_heads=8, mlp_dim=2048),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)
        self._clear_caches()

    def _clear_caches(self) -> None:
        self._dense_pe: torch.Tensor | None = None
        self._pe_tokens_cache: torch.Tensor | None = None
        self._image_side_cache: PerTensorCache[tuple] = PerTensorCache(IMAGE_SIDE_CACHE_SIZE)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Resized RGB Bx3xhxw (0..255) -> normalised, zero-padded Bx3x1024x1024."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, IMAGE_SIZE - w, 0, IMAGE_SIZE - h))

    def dense_pe(self) -> torch.Tensor:
        """1x256x64x64 positional encoding of the embedding grid (cached; weights are fixed
        in inference, `train()` or `load_state_dict` clears it)."""
        if self._dense_pe is None or self.training:
            pe = self.prompt_encoder.get_dense_pe()
            if self.training:
                return pe
            self._dense_pe = pe
        return self._dense_pe

    def train(self, mode: bool = True) -> EdgeSam:
        self._clear_caches()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        self._clear_caches()  # device or dtype moves invalidate derived tensors
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self._clear_caches()
        super()._load_from_state_dict(*args, **kwargs)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed Bx3x1024x1024 -> image embeddings Bx256x64x64."""
        return self.image_encoder(images)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        mask_tokens: slice | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch of B prompts.

        image_embeddings: 1x256x64x64 shared by every prompt, or Bx256x64x64.
        point_coords BxNx2 (x, y in the 1024 frame, box corners included),
        point_labels BxN in {-1, 0, 1, 2, 3} (see `merge_prompts`),
        mask_input Bx1x256x256 low-res logits or None.
        Returns low-res logits Bx4x256x256 and IoU predictions Bx4 for all four mask tokens,
        or BxK for the K tokens of `mask_tokens` (a `mask_slice`), computed alone.
        compute_dtype: bfloat16 runs the two-way transformer and the upscaling under CPU
        autocast; the prompt encoder (Fourier features of the coordinates, which lose their
        meaning in half precision) and the cached image side stay float32.
        """
        sparse = self.prompt_encoder.embed_labeled_points(point_coords, point_labels)
        if compute_dtype is not None and compute_dtype != torch.float32:
            with torch.autocast(self.device.type, dtype=compute_dtype):
                logits, iou = self._decode_sparse(image_embeddings, sparse, mask_input, mask_tokens)
            return logits.float(), iou.float()
        return self._decode_sparse(image_embeddings, sparse, mask_input, mask_tokens)

    def _decode_sparse(
        self,
        image_embeddings: torch.Tensor,
        sparse: torch.Tensor,
        mask_input: torch.Tensor | None,
        mask_tokens: slice | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if mask_input is None and image_embeddings.shape[0] == 1 and not self.training:
            src, first_kv = self._image_side(image_embeddings)
            return self.mask_decoder.predict_all(
                image_embeddings,
                self._pe_tokens(),
                sparse,
                None,
                first_kv,
                src_tokens=src,
                mask_tokens=mask_tokens,
            )
        pe = self.dense_pe()
        if mask_input is None:
            dense = self.prompt_encoder.no_mask_dense(1)
        else:
            dense = self.prompt_encoder.embed_masks(mask_input)
        return self.mask_decoder.predict_all(
            image_embeddings, pe, sparse, dense, mask_tokens=mask_tokens
        )

    def _pe_tokens(self) -> torch.Tensor:
        if self._pe_tokens_cache is None:
            self._pe_tokens_cache = to_tokens(self.dense_pe())
        return self._pe_tokens_cache

    def _image_side(
        self, image_embeddings: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """What the decoder computes from the image alone when no mask is given: the key
        tokens (embedding + no-mask embedding) and their first-block k/v projections. Kept
        for the last few embeddings seen, so repeated clicks on one image skip that work."""
        hit = self._image_side_cache.get(image_embeddings)
        if hit is not None:
            return hit
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, 1, -1)
        src = to_tokens(image_embeddings) + dense
        first_kv = self.mask_decoder.transformer.first_keys_kv(src, self._pe_tokens())
        self._image_side_cache.put(image_embeddings, (src, first_kv))
        return src, first_kv

    def forward(
        self,
        images: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one preprocessed image and decode prompts on it."""
        return self.decode(self.encode(images), point_coords, point_labels, mask_input)
