"""Build the full reference folder the tests read from the data stored in the repository.

tests/reference/data/ holds only the official outputs (see generate.py). This writes, into a
folder of the caller's choosing, the layout the tests use:

    case_a/        weights.safetensors (seeded), golden.npz (with the derived arrays), case.json
    case_a_onnx/   edge_sam_case_a_encoder.onnx, edge_sam_case_a_decoder.onnx (the official
                   exports, their initializers refilled from the seeded weights), golden_onnx.npz
    sam_vit_tiny/  weights.safetensors (seeded), golden.npz, case.json
    edge_sam_state_dict_manifest.json, sam_vit_manifests.json

Every regenerated piece is checked against a digest recorded by generate.py (the weights, the
derived arrays, the two ONNX files), so a change in torch's random streams or in PIL fails here,
loudly, instead of as a puzzling golden mismatch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from tests.reference import weights as W

DATA = Path(__file__).resolve().parent / "data"
BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, as in the official Conv2d_BN


class ReferenceDataError(RuntimeError):
    """The regenerated data does not match what the official outputs were computed from."""


def sha256(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def derive_initializer(
    recipe: dict, state: dict[str, torch.Tensor], shape: list[int]
) -> torch.Tensor:
    """One ONNX initializer from the state dict, the way torch's ONNX exporter computed it."""
    op, key = recipe["op"], recipe["key"]
    if op == "copy":
        t = state[key]
    elif op == "transpose":
        t = state[key].t().contiguous()
    elif op in ("fold_weight", "fold_bias"):
        # Conv2d_BN folded in eval mode (torch/csrc/jit/passes/onnx/eval_peephole.cpp).
        bn = key + "bn."
        scale = state[bn + "weight"].div(state[bn + "running_var"].add(BN_EPS).sqrt())
        if op == "fold_weight":
            t = state[key + "c.weight"] * scale.reshape(-1, 1, 1, 1)
        else:
            t = state[bn + "bias"].sub(state[bn + "running_mean"].mul(scale))
    else:
        raise ValueError(f"unknown initializer recipe {recipe}")
    if t.numel() != int(np.prod(shape)):
        return torch.empty(0)
    return t.reshape(shape)


def _check(what: str, got: str, want: str) -> None:
    if got != want:
        raise ReferenceDataError(
            f"{what}: digest {got[:16]}... != {want[:16]}... recorded with the official outputs;"
            " regenerate with `python3 tests/reference/generate.py` (docs/development.md)"
        )


def _onnx_file(skeleton: Path, recipe: dict, state: dict[str, torch.Tensor]) -> bytes:
    import onnx

    model = onnx.load(str(skeleton))
    for init in model.graph.initializer:
        if init.name in recipe:
            r = recipe[init.name]
            init.raw_data = derive_initializer(r, state, r["shape"]).numpy().tobytes()
    return model.SerializeToString()


def materialize(dest: Path, data: Path = DATA) -> Path:
    """Write the reference folder into dest (created); returns dest."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("edge_sam_state_dict_manifest.json", "sam_vit_manifests.json"):
        shutil.copyfile(data / name, dest / name)

    # Case A: seeded weights, stored outputs, derived outputs.
    case = json.loads((data / "case_a" / "case.json").read_text())
    state = W.case_a_state_dict()
    _check("case A weights", W.state_dict_sha256(state), case["weights"]["state_dict_sha256"])
    out = dest / "case_a"
    out.mkdir(exist_ok=True)
    W.save(state, out / "weights.safetensors")
    shutil.copyfile(data / "case_a" / "case.json", out / "case.json")
    golden = load_npz(data / "case_a" / "golden.npz")
    golden.update(_derived_case_a(golden, case["derived"]))
    np.savez(out / "golden.npz", **golden)

    # The official ONNX pair.
    onnx_case = json.loads((data / "case_a_onnx" / "case_onnx.json").read_text())
    out = dest / "case_a_onnx"
    out.mkdir(exist_ok=True)
    for part in ("encoder", "decoder"):
        skeleton = data / "case_a_onnx" / f"edge_sam_case_a_{part}.skeleton.onnx"
        blob = _onnx_file(skeleton, onnx_case["initializers"][part], state)
        _check(
            f"official ONNX {part}",
            hashlib.sha256(blob).hexdigest(),
            onnx_case["file_sha256"][part],
        )
        (out / f"edge_sam_case_a_{part}.onnx").write_bytes(blob)
    shutil.copyfile(data / "case_a_onnx" / "case_onnx.json", out / "case_onnx.json")
    onnx_golden = load_npz(data / "case_a_onnx" / "golden_onnx.npz")
    onnx_golden["image"] = golden["image"]
    onnx_golden["input_tensor"] = golden["input_tensor"]
    np.savez(out / "golden_onnx.npz", **onnx_golden)

    # SAM's tiny ViT encoder.
    tiny_case = json.loads((data / "sam_vit_tiny" / "case.json").read_text())
    tiny = W.sam_vit_tiny_state_dict()
    _check(
        "sam_vit_tiny weights", W.state_dict_sha256(tiny), tiny_case["weights"]["state_dict_sha256"]
    )
    out = dest / "sam_vit_tiny"
    out.mkdir(exist_ok=True)
    W.save(tiny, out / "weights.safetensors")
    shutil.copyfile(data / "sam_vit_tiny" / "case.json", out / "case.json")
    shutil.copyfile(data / "sam_vit_tiny" / "golden.npz", out / "golden.npz")
    return dest


def _derived_case_a(golden: dict[str, np.ndarray], recorded: dict) -> dict[str, np.ndarray]:
    """The official arrays that are functions of stored ones, each checked by its digest."""
    from PIL import Image

    image = golden["image"]
    h, w = image.shape[:2]
    scale = 1024 / max(h, w)
    size = (int(w * scale + 0.5), int(h * scale + 0.5))
    pil = Image.fromarray(image, "RGB")
    resized = np.array(pil if pil.size == size else pil.resize(size, Image.BILINEAR))
    # Sam.preprocess: uint8 minus float32 buffers, then zero padding to 1024x1024.
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]
    mean = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    x = (x - mean) / std
    x = torch.nn.functional.pad(x, (0, 1024 - x.shape[-1], 0, 1024 - x.shape[-2]))
    p5 = golden["p5b_low_res_logits"][1:]
    derived = {
        "resized_image": resized,
        "input_tensor": x.numpy(),
        "p5_low_res_logits": p5,
        "p6_mask_input": p5[2][None],
    }
    for name, array in derived.items():
        _check(f"case A {name}", sha256(array), recorded[name]["sha256"])
    return derived
