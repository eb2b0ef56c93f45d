"""Evaluation: a model scored against its own outputs gets 100 mIoU; another model does not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from distill_helpers import IMAGE_SIZE
from pycocotools import mask as mask_utils

from engine.checkpoint import read_state_dict
from engine.distill.__main__ import main
from engine.distill.data import load_rgb, preprocess_image, sa1b_records, scale_xy
from engine.distill.evaluate import EvalSettings, evaluate_records, load_model, postprocess
from engine.distill.model import build_student, decode_prompts
from engine.modeling import merge_prompts


@pytest.fixture(scope="module")
def model_file(distill_data: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_student(IMAGE_SIZE)
    model.load_state_dict(read_state_dict(distill_data["sam"]), strict=False)
    path = tmp_path_factory.mktemp("eval") / "model.pth"
    torch.save(model.state_dict(), str(path))
    return path


def _self_labelled(model: torch.nn.Module, d: dict, out: Path, prompt: str) -> Path:
    """Copy of the dataset whose GT masks are the model's own token-0 masks for each
    annotation's box (or point)."""
    (out / "images/train").mkdir(parents=True)
    (out / "annotations/train").mkdir(parents=True)
    for rec in sa1b_records(d["data"], "train"):
        os.link(rec.image_path, out / "images/train" / rec.image_path.name)
        data = json.loads(rec.ann_path.read_text())
        rgb = load_rgb(rec.image_path)
        x, hw = preprocess_image(rgb, IMAGE_SIZE)
        with torch.no_grad():
            emb = model.image_encoder(x[None])
            for ann in data["annotations"]:
                if prompt == "box":
                    bx, by, bw, bh = ann["bbox"]
                    box = scale_xy(np.array([[bx, by], [bx + bw, by + bh]]), rgb.shape[:2], hw)
                    coords, labels = merge_prompts(
                        None, torch.tensor(box, dtype=torch.float32).reshape(1, 4)
                    )
                else:
                    pt = scale_xy(np.array(ann["point_coords"][:1]), rgb.shape[:2], hw)
                    coords, labels = merge_prompts(
                        (torch.tensor(pt, dtype=torch.float32)[None], torch.ones(1, 1)), None
                    )
                logits, _ = decode_prompts(model, emb, coords, labels)
                mask = (postprocess(logits[:, :1], hw, rgb.shape[:2], IMAGE_SIZE)[0] > 0).numpy()
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                ann["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
        (out / "annotations/train" / rec.ann_path.name).write_text(json.dumps(data))
    return out


@pytest.mark.parametrize("prompt", ["box", "point"])
def test_model_against_its_own_outputs_scores_100(
    distill_data: dict, model_file: Path, tmp_path: Path, prompt: str
) -> None:
    model = load_model(model_file, IMAGE_SIZE)
    root = _self_labelled(model, distill_data, tmp_path / "gt", prompt)
    records = sa1b_records(root, "train")
    settings = EvalSettings(prompt=prompt, refine_iters=3, point_from="annotation")
    res = evaluate_records(model, records, IMAGE_SIZE, settings)
    n_anns = sum(len(r.annotations()) for r in records)
    assert res["num_prompts"] == n_anns
    assert res["miou"] == [100.0] * 4
    # A different model does not score 100, and correction points help it.
    other = load_model(model_file, IMAGE_SIZE)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.image_encoder.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    res = evaluate_records(other, records, IMAGE_SIZE, settings)
    assert res["miou"][0] < 99.0
    assert res["miou"][3] >= res["miou"][0] - 1.0


def test_evaluate_cli_mask_centre_points_and_json(
    distill_data: dict, model_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "res.json"
    rc = main(
        [
            "evaluate",
            "--model",
            str(model_file),
            "--data-root",
            str(distill_data["data"]),
            "--split",
            "train",
            "--image-size",
            str(IMAGE_SIZE),
            "--refine-iters",
            "1",
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert [r["prompt"] for r in res] == ["box", "point"]
    for r in res:
        assert len(r["miou"]) == 2 and all(0.0 <= v <= 100.0 for v in r["miou"])
