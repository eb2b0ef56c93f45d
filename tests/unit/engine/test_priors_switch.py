"""The granularity-priors switch of EdgeSamPredictor (engine side of issue 8)."""

import numpy as np
import pytest
import torch

from engine import EdgeSamPredictor
from engine.priors import GranularityPriors


@pytest.fixture(scope="module")
def setup(case_a_model, golden):
    torch.manual_seed(0)
    priors = GranularityPriors().eval()
    with torch.no_grad():  # untrained head: make every location a confident, sizeable box
        priors.rpn_head.cls.bias.fill_(3.0)
        priors.rpn_head.reg.bias.fill_(1.0)
    with_priors = EdgeSamPredictor(case_a_model, priors=priors)
    with_priors.set_image(golden["image"])
    plain = EdgeSamPredictor(case_a_model)
    plain.set_image(golden["image"])
    return with_priors, plain


def test_point_prompt_gets_the_prior_box(setup, golden):
    with_priors, plain = setup
    point, label = golden["p1_point_coords"], golden["p1_point_labels"]
    point_1024 = torch.as_tensor(
        with_priors.transform.apply_coords(point, with_priors.original_size), dtype=torch.float32
    )
    box_1024 = with_priors.prior_box(point_1024[0])
    assert box_1024 is not None, "random priors found no proposal containing the point"
    assert box_1024[0, 0] < point_1024[0, 0] < box_1024[0, 2]
    assert box_1024[0, 1] < point_1024[0, 1] < box_1024[0, 3]
    # the same prompt given by hand: point + that box, in original pixels
    scale = with_priors.original_size[0] / with_priors.input_size[0]
    box = (box_1024[0] * scale).numpy().astype(np.float64)
    _, _, auto = with_priors.predict(point_coords=point, point_labels=label, multimask_output=False)
    _, _, manual = plain.predict(
        point_coords=point, point_labels=label, box=box, multimask_output=False
    )
    _, _, without = plain.predict(point_coords=point, point_labels=label, multimask_output=False)
    assert np.abs(auto - manual).max() < 1e-3
    assert np.abs(auto - without).max() > 1e-2  # the extra box changed the answer


def test_priors_can_be_turned_off_per_call(setup, golden):
    with_priors, plain = setup
    kw = {"point_coords": golden["p1_point_coords"], "point_labels": golden["p1_point_labels"]}
    _, _, off = with_priors.predict(**kw, multimask_output=False, use_priors=False)
    _, _, ref = plain.predict(**kw, multimask_output=False)
    assert np.abs(off - ref).max() < 1e-4


def test_priors_need_the_torch_backend():
    from engine.backends.base import Backend

    class Dummy(Backend):
        info = None

        def encode(self, images):
            raise NotImplementedError

        def decode(self, *args, **kwargs):
            raise NotImplementedError

    with pytest.raises(ValueError, match="PyTorch backend"):
        EdgeSamPredictor(Dummy(), priors=GranularityPriors())
