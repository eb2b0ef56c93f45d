"""Phase 1 and phase 2 on the synthetic dataset: overfitting, frozen parts, gradient paths,
checkpoints, resume and the exported file."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from distill_helpers import IMAGE_SIZE, train_overrides

from engine.checkpoint import load_into, read_state_dict
from engine.distill.config import load_config
from engine.distill.data import DistillDataset, collate, sa1b_records
from engine.distill.embeddings import open_store
from engine.distill.model import load_partial
from engine.distill.phases import Phase1Task, Phase2Task, check_loadable
from engine.distill.trainer import DistEnv, grad_scaler, param_groups, train
from engine.modeling import EdgeSam


def _fixed_batch(d: dict) -> dict:
    recs = sa1b_records(d["data"], "train")
    ds = DistillDataset(recs, IMAGE_SIZE, open_store(d["emb"]), with_prompts=True, max_prompts=4)
    return collate([ds[0], ds[1]])


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_phase1_overfits_a_fixed_batch(distill_data: dict, tmp_path: Path) -> None:
    cfg = load_config("phase1", None, train_overrides(distill_data, tmp_path))
    task = Phase1Task(cfg, DistEnv())
    batch = _fixed_batch(distill_data)
    enc = task.module().train()
    opt = torch.optim.AdamW(param_groups(enc, 0.01), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(8):
        loss = task.step(enc, batch, gen)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_phase2_overfits_keeps_frozen_parts_and_trains_the_rest(
    distill_data: dict, tmp_path: Path
) -> None:
    cfg = load_config("phase2", None, train_overrides(distill_data, tmp_path, box_prob=0.5))
    task = Phase2Task(cfg, DistEnv())
    student, teacher = task.student, task.teacher
    frozen = {
        "prompt_encoder": _snapshot(student.prompt_encoder),
        "iou_head": _snapshot(student.mask_decoder.iou_prediction_head),
        "teacher": _snapshot(teacher),
    }
    trained_before = _snapshot(student.mask_decoder.output_upscaling)
    batch = _fixed_batch(distill_data)
    net = task.module().train()
    opt = torch.optim.AdamW(param_groups(net, 0.05), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = {True: [], False: []}
    for i in range(14):
        use_box = i % 2 == 0  # both prompt kinds, alternating
        out = net(
            batch["image"],
            batch["teacher"],
            batch["boxes"],
            batch["points"],
            batch["input_hw"],
            use_box,
            gen,
        )
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses[use_box].append(out["loss"].item())
    for kind, seq in losses.items():
        assert seq[-1] < 0.5 * seq[0], (kind, seq)
    for name, snap in frozen.items():
        now = _snapshot(
            {
                "prompt_encoder": student.prompt_encoder,
                "teacher": teacher,
                "iou_head": student.mask_decoder.iou_prediction_head,
            }[name]
        )
        for k, v in snap.items():
            assert torch.equal(now[k], v), f"{name}.{k} changed"
    changed = [
        k
        for k, v in _snapshot(student.mask_decoder.output_upscaling).items()
        if not torch.equal(v, trained_before[k])
    ]
    assert changed, "the mask decoder is trained"


@pytest.mark.parametrize("use_box", [True, False])
def test_phase2_gradients_reach_the_encoder_through_both_passes(
    distill_data: dict, tmp_path: Path, use_box: bool
) -> None:
    cfg = load_config("phase2", None, train_overrides(distill_data, tmp_path, min_error_pixels=1))
    task = Phase2Task(cfg, DistEnv())
    batch = _fixed_batch(distill_data)
    net = task.module().train()
    out = net(
        batch["image"],
        batch["teacher"],
        batch["boxes"],
        batch["points"],
        batch["input_hw"],
        use_box,
        torch.Generator().manual_seed(1),
    )
    n_prompts = sum(len(b) for b in batch["boxes"])
    assert out["points"].shape == (n_prompts, 1, 2)  # one correction point per prompt
    assert set(out["labels"].flatten().tolist()) <= {0, 1, -2}
    enc_params = [p for p in task.student.image_encoder.parameters() if p.requires_grad]
    for name in ("loss_pass0", "loss_pass1"):
        grads = torch.autograd.grad(out[name], enc_params, retain_graph=True, allow_unused=True)
        total = sum(g.abs().sum().item() for g in grads if g is not None)
        assert total > 0, f"no encoder gradient from {name}"
    torch.testing.assert_close(out["loss"], out["loss_pass0"] + out["loss_pass1"])


def test_phase1_then_phase2_write_official_checkpoints_and_resume(
    distill_data: dict, tmp_path: Path
) -> None:
    sam = read_state_dict(distill_data["sam"])
    # Phase 1: two steps, then resume for one more (one epoch is 2 steps of batch 2).
    out1 = tmp_path / "p1"
    cfg = load_config("phase1", None, train_overrides(distill_data, out1, max_steps=1, epochs=2))
    train(cfg, Phase1Task(cfg, DistEnv()), DistEnv(), progress=False)
    cfg = load_config("phase1", None, train_overrides(distill_data, out1, max_steps=3, epochs=2))
    path1 = train(cfg, Phase1Task(cfg, DistEnv()), DistEnv(), progress=False)
    with open(out1 / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]  # resumed, not restarted
    assert [int(r["epoch"]) for r in rows] == [0, 0, 1]
    assert (out1 / "metrics.jsonl").read_text().count("\n") == 3
    assert (out1 / "checkpoint_epoch0.pt").is_file()
    model = EdgeSam()
    load_into(model, read_state_dict(path1), str(path1))  # the engine's strict loader
    state = read_state_dict(path1)
    for k, v in sam.items():
        assert torch.equal(state[k], v.float()), f"{k} should come from the SAM checkpoint"
    last = torch.load(str(out1 / "last.pt"), weights_only=True)["model"]
    for k, v in state.items():
        if k.startswith("image_encoder."):
            assert torch.equal(v, last[k])

    # Phase 2 from the phase-1 file.
    out2 = tmp_path / "p2"
    cfg = load_config(
        "phase2",
        None,
        train_overrides(distill_data, out2, max_steps=2, phase1_checkpoint=str(path1)),
    )
    task = Phase2Task(cfg, DistEnv())
    enc_start = {k: v.clone() for k, v in task.student.image_encoder.state_dict().items()}
    for k, v in enc_start.items():
        assert torch.equal(v, state[f"image_encoder.{k}"])
    path2 = train(cfg, task, DistEnv(), progress=False)
    assert path2.name == "edge_sam_phase2.pth"
    model = check_loadable(path2)
    exported = read_state_dict(path2)
    for k, v in sam.items():
        if k.startswith("prompt_encoder.") or ".iou_prediction_head." in k:
            assert torch.equal(exported[k], v.float()), f"{k} is frozen"
    assert any(
        not torch.equal(exported[k], v.float())
        for k, v in sam.items()
        if k.startswith("mask_decoder.output_hypernetworks")
    )
    assert set(exported) == set(model.state_dict())


class _Scaler:
    def __init__(self, *args: object, **kwargs: object) -> None:
        self.args, self.kwargs = args, kwargs


def test_grad_scaler_is_torch_amps_where_torch_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.amp, "GradScaler", _Scaler, raising=False)
    scaler = grad_scaler(enabled=True)
    assert isinstance(scaler, _Scaler) and scaler.args == ("cuda",)
    assert scaler.kwargs == {"enabled": True}


def test_grad_scaler_falls_back_to_torch_cuda_amp(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.1 (JetPack 5) has no torch.amp.GradScaler."""
    monkeypatch.delattr(torch.amp, "GradScaler", raising=False)
    monkeypatch.setattr(torch.cuda.amp, "GradScaler", _Scaler)
    scaler = grad_scaler(enabled=False)
    assert isinstance(scaler, _Scaler) and scaler.args == () and scaler.kwargs == {"enabled": False}


def test_load_partial_leaves_what_the_state_lacks() -> None:
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2), torch.nn.Linear(2, 2))
    model[0].num_batches_tracked.fill_(5)
    model[0].running_mean.fill_(0.5)
    weight = torch.randn(2, 2)
    load_partial(model, {"1.weight": weight, "9.not_in_model": torch.zeros(1)})
    assert torch.equal(model[1].weight, weight)
    assert int(model[0].num_batches_tracked) == 5
    assert torch.equal(model[0].running_mean, torch.full((2,), 0.5))
