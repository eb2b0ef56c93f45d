"""Loading official EdgeSAM checkpoints (.pth, .safetensors) strictly, and converting them."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from engine.modeling import EdgeSam

log = logging.getLogger(__name__)

# Keys of the optional RPN ("granularity priors") that `*_rpn.pth` files carry.
OPTIONAL_PREFIXES = ("fpn.", "rpn_head.")
# Wrappers seen around state dicts in training checkpoints.
WRAPPER_KEYS = ("model", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded into the model; the message says why."""


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a flat key->tensor dict from .pth (weights_only, mapped to CPU) or .safetensors.

    Floating tensors are returned as stored; `load_into` casts them to the model's dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return dict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"{path} could not be read as a PyTorch checkpoint (truncated, corrupt, or holding "
            f"objects other than tensors): {exc}"
        ) from exc
    if isinstance(obj, Mapping):
        for wrapper in WRAPPER_KEYS:
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return dict(obj)


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "") -> None:
    """Strict load: missing or mis-shaped keys raise `CheckpointError` naming them; keys of the
    optional RPN are skipped quietly; other unexpected keys are named in a warning."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state_dict)
    wrong_shape = sorted(
        f"{k}: file {tuple(state_dict[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    )
    extra = sorted(k for k in state_dict if k not in expected)
    unexpected = [k for k in extra if not k.startswith(OPTIONAL_PREFIXES)]
    where = f" in {source}" if source else ""
    if missing or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:20])}")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} mis-shaped key(s): {'; '.join(wrong_shape[:20])}")
        raise CheckpointError(f"checkpoint does not fit EdgeSAM{where}: " + " | ".join(parts))
    if unexpected:
        log.warning(
            "ignoring %d unexpected key(s)%s: %s",
            len(unexpected),
            where,
            ", ".join(unexpected[:20]),
        )
    converted = {}
    for key, ref in expected.items():
        value = state_dict[key]
        converted[key] = value.to(ref.dtype) if value.is_floating_point() else value
    model.load_state_dict(converted, strict=True)


def convert_to_safetensors(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], half: bool = False
) -> Path:
    """Write an official .pth as .safetensors (checked against the model layout first)."""
    state = read_state_dict(src)
    load_into(EdgeSam(), state, str(src))  # validates keys and shapes
    out = {}
    for k, v in state.items():
        if k.startswith(OPTIONAL_PREFIXES):
            out[k] = v.contiguous()
        elif v.is_floating_point():
            out[k] = (v.half() if half else v.float()).contiguous()
        else:
            out[k] = v.contiguous()
    dst = Path(dst)
    save_file(out, str(dst))
    return dst


def weights_fingerprint(model: torch.nn.Module, extra: str = "") -> str:
    """sha256 over the state dict (names, shapes, fp32 bytes) plus `extra`, first 16 hex."""
    digest = hashlib.sha256(extra.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        value = tensor.detach().cpu()
        value = value.float() if value.is_floating_point() else value
        digest.update(value.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
