"""Losses and the correction-point rule."""

from __future__ import annotations

import torch

from engine.distill.losses import bce_dice, correction_points, masked_mse
from engine.distill.model import LABEL_DUMMY


def test_masked_mse_ignores_padding() -> None:
    s, t = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    valid = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    valid[:, :, :2] = True
    t[:, :, 2:] = 100.0  # only in the padded rows
    assert masked_mse(s, t, valid).item() == 0.0
    t[0, :, 0, 0] = 3.0  # one valid position of image 0 off by 3 in every channel
    # image 0: 9 / 8 valid positions; image 1: 0; batch mean
    assert abs(masked_mse(s, t, valid).item() - 9 / 8 / 2) < 1e-6


def test_bce_dice_small_for_matching_and_large_for_inverted() -> None:
    target = (torch.rand(3, 4, 16, 16) > 0.5).float()
    weight = torch.ones(3, 1, 16, 16)
    good = bce_dice((target * 2 - 1) * 20, target, weight)
    bad = bce_dice((1 - target * 2) * 20, target, weight)
    assert good[0] < 1e-6 and good[1] < 1e-3
    assert bad[0] > 10 and bad[1] > 0.99
    # Padding (weight 0) does not count.
    weight[..., 8:] = 0
    logits = (target * 2 - 1) * 20
    logits[..., 8:] *= -1
    bce, dice = bce_dice(logits, target, weight)
    assert bce < 1e-6 and dice < 1e-3


def test_correction_points_lie_in_the_disagreement_with_the_right_label() -> None:
    gen = torch.Generator().manual_seed(0)
    p, h, w = 64, 32, 32
    student = torch.rand(p, h, w, generator=gen) > 0.6
    teacher = torch.rand(p, h, w, generator=gen) > 0.4
    valid = torch.ones(p, h, w, dtype=torch.bool)
    valid[:, 24:] = False
    for _ in range(5):
        coords, labels = correction_points(student, teacher, valid, gen, 10, stride=4.0)
        assert coords.shape == (p, 1, 2) and labels.shape == (p, 1)
        cols = (coords[:, 0, 0] / 4).long()
        rows = (coords[:, 0, 1] / 4).long()
        assert torch.equal(coords[:, 0, 0], cols.float() * 4)
        i = torch.arange(p)
        s, t = student[i, rows, cols], teacher[i, rows, cols]
        assert valid[i, rows, cols].all(), "never in the padding"
        assert (s != t).all(), "every point is a disagreement pixel"
        fn = t & ~s
        assert torch.equal(labels[:, 0], fn.long()), "missed by the student -> 1, extra -> 0"
    # Both kinds occur, roughly in proportion to their areas.
    coords, labels = correction_points(student, teacher, valid, gen)
    assert 0 < labels.sum() < p


def test_correction_point_is_the_dummy_when_the_disagreement_is_tiny() -> None:
    student = torch.zeros(3, 16, 16, dtype=torch.bool)
    teacher = torch.zeros(3, 16, 16, dtype=torch.bool)
    valid = torch.ones(3, 16, 16, dtype=torch.bool)
    teacher[0, :3, :3] = True  # 9 error pixels: below 10
    teacher[1, :4, :3] = True  # 12 error pixels
    teacher[2, 10:, 10:] = True
    valid[2] = False  # errors only in the padding do not count
    coords, labels = correction_points(student, teacher, valid, None, min_error_pixels=10)
    assert labels[:, 0].tolist() == [LABEL_DUMMY, 1, LABEL_DUMMY]
    assert coords[0].abs().sum() == 0 and coords[2].abs().sum() == 0
    assert coords[1, 0, 0] < 3 * 4 and coords[1, 0, 1] < 4 * 4
