"""The whole EdgeSAM model: image encoder, prompt encoder, mask decoder."""

import torch
import torch.nn.functional as F
from torch import nn

from engine.modeling.image_encoder import RepViTEncoder, UpsampleMode
from engine.modeling.mask_decoder import MaskDecoder
from engine.modeling.prompt_encoder import PromptEncoder
from engine.modeling.transformer import TwoWayTransformer

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
IMAGE_SIZE = 1024
EMBED_DIM = 256
EMBED_SIZE = 64
LOW_RES_SIZE = 256


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
        self._dense_pe: torch.Tensor | None = None

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

    def train(self, mode: bool = True) -> "EdgeSam":
        self._dense_pe = None
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        self._dense_pe = None
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch of B prompts.

        image_embeddings: 1x256x64x64 shared by every prompt, or Bx256x64x64.
        point_coords BxNx2 (x, y in the 1024 frame, box corners included),
        point_labels BxN in {-1, 0, 1, 2, 3} (see `merge_prompts`),
        mask_input Bx1x256x256 low-res logits or None.
        Returns low-res logits Bx4x256x256 and IoU predictions Bx4 for all four mask tokens.
        """
        sparse = self.prompt_encoder.embed_labeled_points(point_coords, point_labels)
        pe = self.dense_pe()
        first_kv = None
        if mask_input is None:
            dense = self.prompt_encoder.no_mask_dense(1)
            if image_embeddings.shape[0] == 1:
                # Keys of the first token->image attention depend on the image only: project
                # them once for the whole batch of prompts.
                first_kv = self.mask_decoder.transformer.first_keys_kv(image_embeddings + dense, pe)
        else:
            dense = self.prompt_encoder.embed_masks(mask_input)
        return self.mask_decoder.predict_all(image_embeddings, pe, sparse, dense, first_kv)

    def forward(
        self,
        images: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one preprocessed image and decode prompts on it."""
        return self.decode(self.encode(images), point_coords, point_labels, mask_input)
