"""EdgeSAM modules, split as segment-anything's `modeling/`."""

from engine.modeling.edge_sam import EdgeSam
from engine.modeling.image_encoder import RepViTEncoder
from engine.modeling.mask_decoder import MaskDecoder, mask_slice
from engine.modeling.prompt_encoder import PromptEncoder, merge_prompts
from engine.modeling.transformer import TwoWayTransformer

__all__ = [
    "EdgeSam",
    "MaskDecoder",
    "PromptEncoder",
    "RepViTEncoder",
    "TwoWayTransformer",
    "mask_slice",
    "merge_prompts",
]
