"""Student and teacher containers in EdgeSAM's official layout, at any input size."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from engine.checkpoint import load_into, read_state_dict
from engine.modeling import EdgeSam, MaskDecoder, PromptEncoder, TwoWayTransformer
from engine.modeling.edge_sam import EMBED_DIM

LABEL_DUMMY = -2  # official "no correction point" label: its token is all zeros


def build_student(image_size: int = 1024, upsample_mode: str = "bicubic") -> EdgeSam:
    """An EdgeSam whose prompt encoder works in an `image_size` frame (embedding grid
    image_size/16). Parameter names and shapes do not depend on the size, so its state dict
    always loads into `EdgeSam()`."""
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
    model = EdgeSam(upsample_mode=upsample_mode)  # type: ignore[arg-type]
    if image_size != 1024:
        grid = image_size // 16
        model.prompt_encoder = make_prompt_encoder(image_size)
        assert model.prompt_encoder.image_embedding_size == (grid, grid)
    return model


def make_prompt_encoder(image_size: int = 1024) -> PromptEncoder:
    grid = image_size // 16
    return PromptEncoder(EMBED_DIM, (grid, grid), (image_size, image_size), mask_in_chans=16)


def make_mask_decoder() -> MaskDecoder:
    transformer = TwoWayTransformer(depth=2, embedding_dim=EMBED_DIM, num_heads=8, mlp_dim=2048)
    return MaskDecoder(EMBED_DIM, transformer, 3, 3, 256)


class PromptDecoder(nn.Module):
    """SAM's prompt encoder + mask decoder without an image encoder (the teacher's decoding
    half, run on stored embeddings). Keys `prompt_encoder.*`, `mask_decoder.*`."""

    def __init__(self, image_size: int = 1024) -> None:
        super().__init__()
        self.prompt_encoder = make_prompt_encoder(image_size)
        self.mask_decoder = make_mask_decoder()


def decode_prompts(
    model: nn.Module,
    image_embeddings: torch.Tensor,
    point_coords: torch.Tensor,
    point_labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All four mask tokens for P prompts, no mask input.

    model: anything with `.prompt_encoder` and `.mask_decoder` (EdgeSam, PromptDecoder).
    image_embeddings Px256xExE (or 1x256xExE shared), point_coords PxNx2 in the input frame,
    point_labels PxN in {-2, -1, 0, 1, 2, 3}; label -2 (the official dummy correction point)
    becomes an all-zero token. Returns logits Px4x(4E)x(4E) and IoU predictions Px4.
    """
    pe_mod = model.prompt_encoder
    sparse = pe_mod.embed_labeled_points(point_coords, point_labels)
    sparse = torch.where((point_labels == LABEL_DUMMY)[..., None], 0.0, sparse)
    dense = pe_mod.no_mask_dense(1)
    return model.mask_decoder.predict_all(image_embeddings, pe_mod.get_dense_pe(), sparse, dense)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_partial(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load the entries of `state` that `model` has and leave every other one as it is, which
    `load_state_dict(state, strict=False)` does not on torch 2.1 (JetPack 5): that resets each
    BatchNorm's num_batches_tracked missing from `state` to 0 (torch 2.13 keeps it)."""
    current = model.state_dict()
    model.load_state_dict({**current, **{k: v for k, v in state.items() if k in current}})


def load_encoder_weights(model: EdgeSam, path: str | Path) -> None:
    """Image-encoder weights from a full EdgeSAM checkpoint, a training checkpoint of ours, or a
    bare encoder state dict; strict (every encoder key must be there with its shape)."""
    state = read_training_or_flat(path)
    enc = strip_prefix(state, "image_encoder.") or dict(state)
    load_into(model.image_encoder, enc, str(path))


def read_training_or_flat(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat state dict, from either a model file or one of our training checkpoints."""
    path = Path(path)
    if path.suffix == ".pt":
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(obj, Mapping) and "model" in obj:
            return dict(obj["model"])
    return read_state_dict(path)


def official_state_dict(
    student: EdgeSam,
    sam_state: Mapping[str, torch.Tensor] | None = None,
    encoder_only: bool = False,
) -> dict[str, torch.Tensor]:
    """The flat EdgeSAM checkpoint layout (what the official convert_weights.py writes).

    `encoder_only`: take only `image_encoder.*` from the student and the prompt encoder and
    mask decoder from `sam_state` (SAM ViT-H's), as after phase 1.
    """
    state = {
        k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
        for k, v in student.state_dict().items()
    }
    if encoder_only and sam_state is not None:
        for k, v in sam_state.items():
            if k.startswith(("prompt_encoder.", "mask_decoder.")) and k in state:
                state[k] = v.detach().float().cpu().clone()
    return state
