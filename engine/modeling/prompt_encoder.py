"""SAM's prompt encoder: points, box corners and a low-res mask to embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.modeling.common import LayerNorm2d

# Point labels understood by the prompt encoder (SAM and the official ONNX decoder).
LABEL_PADDING = -1
LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1
LABEL_BOX_TOP_LEFT = 2
LABEL_BOX_BOTTOM_RIGHT = 3


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates."""

    def __init__(self, num_pos_feats: int = 128, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0.0 else scale
        self.register_buffer(
            "positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats))
        )

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """coords in [0, 1], shape ...x2 -> ...x(2*num_pos_feats)."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense grid encoding, CxHxW."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)

    def forward_with_coords(
        self, coords_input: torch.Tensor, image_size: tuple[int, int]
    ) -> torch.Tensor:
        """Pixel coordinates BxNx2 (x, y) in an image of `image_size` (h, w) -> BxNxC."""
        coords = coords_input.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords.to(torch.float))


class PromptEncoder(nn.Module):
    """Sparse (points, box corners) and dense (mask) prompt embeddings."""

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # foreground, background, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the 64x64 embedding grid, 1xCx64x64."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_labeled_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Points BxNx2 in the 1024 frame with labels BxN in {-1, 0, 1, 2, 3} -> BxNxC.

        Box corners are points labelled 2 and 3; label -1 is the padding point, whose
        position encoding is replaced by `not_a_point_embed`.
        """
        emb = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)
        labels = labels.unsqueeze(-1)
        emb = torch.where(labels == LABEL_PADDING, torch.zeros_like(emb), emb)
        emb = emb + self.not_a_point_embed.weight * (labels == LABEL_PADDING)
        for label, table in enumerate(self.point_embeddings):
            emb = emb + table.weight * (labels == label)
        return emb

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Low-res mask logits Bx1x256x256 -> Bx256x64x64."""
        return self.mask_downscaling(masks)

    def no_mask_dense(self, batch: int) -> torch.Tensor:
        h, w = self.image_embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's signature: returns sparse BxNxC and dense BxCx64x64 embeddings."""
        coords, labels = merge_prompts(points, boxes)
        sparse = self.embed_labeled_points(coords, labels)
        dense = (
            self.embed_masks(masks) if masks is not None else self.no_mask_dense(sparse.shape[0])
        )
        return sparse, dense


def merge_prompts(
    points: tuple[torch.Tensor, torch.Tensor] | None, boxes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (BxNx2, BxN) and boxes (Bx4 XYXY), both in the 1024 frame, as one labelled point
    set: points first, then box corners (labels 2, 3). Point-only prompts get SAM's padding
    point (0, 0) with label -1, which the model was trained with."""
    parts_xy: list[torch.Tensor] = []
    parts_lb: list[torch.Tensor] = []
    if points is None and boxes is None:
        raise ValueError("a prompt needs points, a box, or both")
    if points is not None:
        coords, labels = points
        parts_xy.append(coords.to(torch.float32))
        parts_lb.append(labels.to(torch.int64))
        if boxes is None:
            b = coords.shape[0]
            parts_xy.append(torch.zeros((b, 1, 2), dtype=torch.float32, device=coords.device))
            parts_lb.append(
                torch.full((b, 1), LABEL_PADDING, dtype=torch.int64, device=coords.device)
            )
    if boxes is not None:
        b = boxes.shape[0]
        parts_xy.append(boxes.to(torch.float32).reshape(b, 2, 2))
        corner_labels = torch.tensor(
            [LABEL_BOX_TOP_LEFT, LABEL_BOX_BOTTOM_RIGHT], dtype=torch.int64, device=boxes.device
        )
        parts_lb.append(corner_labels.expand(b, 2))
    if points is not None and boxes is not None and parts_xy[0].shape[0] != boxes.shape[0]:
        # One point set shared by several boxes.
        n = boxes.shape[0]
        parts_xy[0] = parts_xy[0].expand(n, -1, -1)
        parts_lb[0] = parts_lb[0].expand(n, -1)
    return torch.cat(parts_xy, dim=1), torch.cat(parts_lb, dim=1)
