"""Granularity priors, the command line, and loading the result in the engine and service."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from distill_helpers import IMAGE_SIZE, tiny_teacher, train_overrides

from engine.checkpoint import load_into, read_state_dict
from engine.distill.__main__ import build_parser, main
from engine.distill.config import load_config
from engine.distill.data import sa1b_records
from engine.distill.embeddings import open_store
from engine.distill.evaluate import EvalSettings, evaluate_records, load_model
from engine.distill.phases import Phase1Task
from engine.distill.priors import (
    GranularityPriors,
    PriorsTask,
    encode_stages,
    load_priors,
    prior_boxes_for_points,
)
from engine.distill.trainer import DistEnv, param_groups, train
from engine.modeling import EdgeSam


def test_prior_box_choice_contains_point_nearest_then_best_score() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 140.0, 140.0],  # contains, centre farthest, best score
            [40.0, 40.0, 60.0, 60.0],  # contains, centre at the point
            [45.0, 45.0, 70.0, 70.0],  # contains, near
            [50.0, 0.0, 60.0, 10.0],  # does not contain (50, 50)
            [50.0, 50.0, 80.0, 80.0],  # point on its edge: not strictly inside
        ]
    )
    scores = torch.tensor([0.9, 0.3, 0.5, 0.99, 0.95])
    pts = torch.tensor([[50.0, 50.0], [200.0, 200.0]])
    best, found = prior_boxes_for_points(boxes, scores, pts, k=5)
    assert found.tolist() == [True, False]
    assert torch.equal(best[0], boxes[0])  # best score among the containing ones
    best, _ = prior_boxes_for_points(boxes, scores, pts, k=2)
    assert torch.equal(best[0], boxes[2])  # only the 2 nearest centres compete


def test_priors_head_learns_the_boxes(distill_data: dict, tmp_path: Path) -> None:
    cfg = load_config("priors", None, train_overrides(distill_data, tmp_path, max_boxes=8))
    task = PriorsTask(cfg, DistEnv())
    from engine.distill.data import DistillDataset, collate

    ds = DistillDataset(
        sa1b_records(distill_data["data"], "train"), IMAGE_SIZE, with_prompts=True, max_prompts=8
    )
    batch = collate([ds[0], ds[1]])
    head = task.module().train()
    opt = torch.optim.AdamW(param_groups(head, 1e-4), lr=3e-3)
    gen = torch.Generator()
    losses = []
    for _ in range(25):
        out = task.step(head, batch, gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0], losses
    # The top-scored proposal of image 0 overlaps one of its boxes.
    head.eval()
    with torch.no_grad():
        _, stages = encode_stages(task.model.image_encoder, batch["image"][:1])
        levels = head(stages, IMAGE_SIZE)
    scores = torch.cat([lg for lg, _ in levels], 1)[0]
    boxes = torch.cat([b for _, b in levels], 1)[0]
    top = boxes[scores.argmax()]
    gt = batch["boxes"][0]
    inter = (torch.min(top[2:], gt[:, 2:]) - torch.max(top[:2], gt[:, :2])).clamp(min=0).prod(1)
    assert inter.max() > 0


def test_priors_export_loads_as_plain_edgesam_and_in_evaluation(
    distill_data: dict, tmp_path: Path
) -> None:
    cfg = load_config("priors", None, train_overrides(distill_data, tmp_path, max_steps=1))
    path = train(cfg, PriorsTask(cfg, DistEnv()), DistEnv(), progress=False)
    state = read_state_dict(path)
    assert any(k.startswith("fpn.") for k in state) and any(
        k.startswith("rpn_head.") for k in state
    )
    load_into(EdgeSam(), state, str(path))  # engine skips fpn.*/rpn_head.* quietly
    priors = load_priors(path)
    assert isinstance(priors, GranularityPriors)
    model = load_model(path, IMAGE_SIZE)
    settings = EvalSettings(prompt="point", refine_iters=1)
    recs = sa1b_records(distill_data["data"], "train")[:2]
    res = evaluate_records(model, recs, IMAGE_SIZE, settings, priors=priors)
    assert res["num_prompts"] > 0 and all(0 <= v <= 100 for v in res["miou"])


def test_every_step_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for step in ("embed", "phase1", "phase2", "priors", "evaluate", "subset", "synth"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([step, "--help"])
        assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "prompt" in text and "teacher" in text


def test_print_config_shows_official_defaults_and_rejects_bad_values(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["phase2", "--print-config"]) == 0
    text = capsys.readouterr().out
    for line in (
        "base_lr: 0.0032",
        "clip_grad: 0.01",
        "decode_iters: 2",
        "batch_size: 2",
        "max_prompts: 16",
        "multimask_outputs: 4",
        "bce_weight: 5.0",
    ):
        assert line in text
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(text)
    from engine.distill.config import dump_config

    assert dump_config(load_config("phase2", cfg_file)) == text
    with pytest.raises(ValueError, match="image_size"):
        load_config("phase1", None, ["data.image_size=100"])
    with pytest.raises(ValueError, match="extra"):
        load_config("phase1", None, ["optim.learning_rate=1"])


def test_embed_cli_matches_the_stored_embeddings_and_resumes(
    distill_data: dict, tmp_path: Path
) -> None:
    teacher = tiny_teacher()
    ckpt = tmp_path / "sam_tiny.pth"
    torch.save({f"image_encoder.{k}": v for k, v in teacher.state_dict().items()}, str(ckpt))
    args = [
        "embed",
        "--data-root",
        str(distill_data["data"]),
        "--image-size",
        str(IMAGE_SIZE),
        "--sam-checkpoint",
        str(ckpt),
        "--set",
        "teacher=vit_tiny",
        "--output",
        str(tmp_path / "e"),
        "--batch-size",
        "2",
        "--set",
        "data.num_workers=0",
        "--set",
        "progress=false",
    ]
    assert main(args) == 0
    ours, ref = open_store(tmp_path / "e"), open_store(distill_data["emb"])
    assert sorted(ours.keys()) == sorted(ref.keys())
    for k in ref.keys():
        torch.testing.assert_close(ours.get(k).float(), ref.get(k).float(), atol=2e-3, rtol=0)
    size = (tmp_path / "e" / "rank0-shard0000.f16").stat().st_size
    assert main(args) == 0  # nothing left to do
    assert (tmp_path / "e" / "rank0-shard0000.f16").stat().st_size == size


def test_exported_model_is_served(distill_data: dict, tmp_path: Path) -> None:
    """The phase output is what `python -m service` serves: start it with the file as
    EDGESAM_CHECKPOINT, embed an image and segment a click over HTTP."""
    import io

    import httpx
    import numpy as np
    from PIL import Image

    from engine.loader import load_model
    from tests.integration.process_util import spawn

    cfg = load_config("phase1", None, train_overrides(distill_data, tmp_path, max_steps=1))
    path = train(cfg, Phase1Task(cfg, DistEnv()), DistEnv(), progress=False)
    assert load_model(path, device="cpu", backend="torch").info.name == "torch"
    server = spawn(
        str(tmp_path),
        module="service",
        EDGESAM_CHECKPOINT=str(path),
        EDGESAM_TORCH_THREADS="1",
        EDGESAM_WEIGHTS_DIR=str(tmp_path / "weights"),
    )
    try:
        server.wait_serving(timeout=180)
        assert httpx.get(f"{server.url}/readyz").json()["random_weights"] is False
        buf = io.BytesIO()
        Image.fromarray(np.full((64, 96, 3), 128, np.uint8)).save(buf, format="PNG")
        emb = httpx.post(
            f"{server.url}/v1/embed",
            content=buf.getvalue(),
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert emb.status_code == 200, emb.text
        seg = httpx.post(
            f"{server.url}/v1/segment",
            json={"image_id": emb.json()["image_id"], "points": [[40, 30]], "labels": [1]},
            timeout=60,
        )
        assert seg.status_code == 200, seg.text
        assert seg.json()["masks"][0]["rle"]["size"] == [64, 96]
    finally:
        server.stop()


def test_synth_and_subset_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--output", str(tmp_path / "s"), "--num-images", "2"]) == 0
    recs = sa1b_records(tmp_path / "s", "train")
    assert len(recs) == 2 and recs[0].annotations()
    links = tmp_path / "links.txt"
    links.write_text("file_name\tcdn_link\nsa_000130.tar\thttp://a\nsa_000131.tar\thttp://b\n")
    assert main(["subset", "--links", str(links), "--split", "val"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "sa_000130.tar\thttp://a"
