"""Export EdgeSAM to ONNX (the library); `python -m engine.export` is its command line
(`engine/export/__main__.py`), which also builds TensorRT engines.

The format's names and metadata live in `engine.onnx_format`; they are re-exported here for
the callers that import them from `engine.export`.
"""

from engine.export.to_onnx import (
    DecoderForExport,
    EncoderForExport,
    ImageSideForExport,
    OnnxPair,
    PromptDecoderForExport,
    default_cache_dir,
    export_cached,
    export_decoder,
    export_encoder,
    export_onnx,
    export_split_decoder,
    model_fingerprint,
    stability_scores_float,
    torchscript_exporter,
)
from engine.onnx_format import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    DEFAULT_OPSET,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_SIDE_INPUTS,
    IMAGE_SIDE_OUTPUTS,
    PROMPT_DECODER_INPUTS,
    file_digest,
    read_metadata,
    split_decoder_paths,
    write_metadata,
)

__all__ = [
    "DECODER_INPUTS",
    "DECODER_OUTPUTS",
    "DEFAULT_OPSET",
    "ENCODER_INPUTS",
    "ENCODER_OUTPUTS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "IMAGE_SIDE_INPUTS",
    "IMAGE_SIDE_OUTPUTS",
    "PROMPT_DECODER_INPUTS",
    "DecoderForExport",
    "EncoderForExport",
    "ImageSideForExport",
    "OnnxPair",
    "PromptDecoderForExport",
    "default_cache_dir",
    "export_cached",
    "export_decoder",
    "export_encoder",
    "export_onnx",
    "export_split_decoder",
    "file_digest",
    "model_fingerprint",
    "read_metadata",
    "split_decoder_paths",
    "stability_scores_float",
    "torchscript_exporter",
    "write_metadata",
]
