"""Model internals: the fast paths equal the textbook ones, and training still works."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from engine.modeling import EdgeSam, transformer
from engine.modeling.transformer import Attention


def _random_model(seed: int = 0) -> EdgeSam:
    torch.manual_seed(seed)
    model = EdgeSam()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


def _textbook(model: EdgeSam) -> EdgeSam:
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, Attention):
            m.factorized = False
    ref.mask_decoder.fast_upscaling = False
    return ref


def test_fast_decoder_equals_textbook_decoder():
    model = _random_model().eval()
    ref = _textbook(model).eval()
    emb = torch.randn(1, 256, 64, 64)
    coords = torch.rand(5, 3, 2) * 1024
    labels = torch.tensor([[1, 0, -1]] * 5)
    mask = torch.randn(5, 1, 256, 256)
    with torch.inference_mode():
        for mi in (None, mask):
            a = model.decode(emb, coords, labels, mi)
            b = ref.decode(emb, coords, labels, mi)
            assert torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1], b[1], atol=1e-5)
        # the per-image cache: a second call on the same tensor gives the same answer
        again = model.decode(emb, coords[:1], labels[:1])
        first = ref.decode(emb, coords[:1], labels[:1])
        assert torch.allclose(again[0], first[0], atol=1e-4)


@pytest.mark.parametrize("num_points", [3, 20])  # 20: past the few-keys factoring
@pytest.mark.parametrize("textbook", [False, True])
def test_a_batch_on_one_shared_embedding_equals_each_prompt_alone(num_points, textbook):
    """The image side (batch 1) is broadcast to the prompt batch, never copied per prompt:
    each prompt's answer must not depend on the others in its batch."""
    model = _random_model(2).eval()
    model = _textbook(model).eval() if textbook else model
    emb = torch.randn(1, 256, 64, 64)
    coords = torch.rand(4, num_points, 2) * 1024
    labels = torch.randint(0, 2, (4, num_points))
    mask = torch.randn(4, 1, 256, 256)
    with torch.inference_mode():
        for mi in (None, mask):
            logits, iou = model.decode(emb, coords, labels, mi)
            for i in range(4):
                one = None if mi is None else mi[i : i + 1]
                alone = model.decode(emb.clone(), coords[i : i + 1], labels[i : i + 1], one)
                assert torch.allclose(logits[i : i + 1], alone[0], atol=1e-4)
                assert torch.allclose(iou[i : i + 1], alone[1], atol=1e-5)
            # the same embedding given once per prompt answers the same
            per_prompt = model.decode(emb.expand(4, -1, -1, -1).clone(), coords, labels, mi)
            assert torch.allclose(logits, per_prompt[0], atol=1e-4)


def test_attention_broadcasts_a_shared_side():
    torch.manual_seed(3)
    attn = Attention(256, 8, downsample_rate=2).eval()
    tokens = torch.randn(3, 7, 256)
    image = torch.randn(1, 4096, 256)
    with torch.inference_mode():
        for factorized in (True, False):
            attn.factorized = factorized
            # tokens -> shared image positions, and shared image positions -> tokens
            expanded = image.expand(3, -1, -1)
            assert torch.allclose(
                attn(tokens, image, image), attn(tokens, expanded, expanded), atol=1e-5
            )
            assert torch.allclose(
                attn(image, tokens, tokens, residual=image),
                attn(expanded, tokens, tokens, residual=expanded),
                atol=1e-5,
            )
        k, v = attn.k_proj(image), attn.v_proj(image)
        split = attn.attend(attn.q_proj(tokens), attn.split_heads(k), attn.split_heads(v))
        assert torch.allclose(split, attn.attend(attn.q_proj(tokens), k, v), atol=1e-6)
        with pytest.raises(ValueError, match="batch"):
            attn.attend(attn.q_proj(tokens), k.expand(2, -1, -1), v.expand(2, -1, -1))


def test_selected_mask_tokens_equal_the_slice_of_all_four():
    from engine.modeling import mask_slice

    model = _random_model(1).eval()
    emb = torch.randn(1, 256, 64, 64)
    coords = torch.rand(3, 4, 2) * 1024
    labels = torch.tensor([[1, 0, 2, 3], [1, -1, -1, -1], [0, 1, 1, -1]])
    mask = torch.randn(3, 1, 256, 256)
    with torch.inference_mode():
        for mi in (None, mask):
            full_logits, full_iou = model.decode(emb, coords, labels, mi)
            assert full_logits.shape == (3, 4, 256, 256)
            for n, k in ((1, 1), (3, 3), (4, 4)):
                logits, iou = model.decode(emb, coords, labels, mi, mask_slice(n))
                assert logits.shape == (3, k, 256, 256) and iou.shape == (3, k)
                sel = mask_slice(n)
                assert torch.allclose(logits, full_logits[:, sel], atol=1e-5)
                assert torch.allclose(iou, full_iou[:, sel], atol=1e-6)


def test_image_side_cache_follows_the_embedding():
    model = _random_model().eval()
    coords, labels = torch.tensor([[[100.0, 200.0], [0, 0]]]), torch.tensor([[1, -1]])
    with torch.inference_mode():
        e1, e2 = torch.randn(1, 256, 64, 64), torch.randn(1, 256, 64, 64)
        a1 = model.decode(e1, coords, labels)[0]
        a2 = model.decode(e2, coords, labels)[0]
        assert not torch.allclose(a1, a2)
        assert torch.equal(model.decode(e1, coords, labels)[0], a1)


def test_gradients_flow_through_the_decoder_in_training():
    model = _random_model().train()
    emb = torch.randn(2, 256, 64, 64, requires_grad=True)
    coords = torch.rand(2, 2, 2) * 1024
    labels = torch.tensor([[1, -1], [0, 1]])
    logits, iou = model.decode(emb, coords, labels)
    (logits.mean() + iou.mean()).backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    assert (
        model.mask_decoder.transformer.layers[1].cross_attn_image_to_token.q_proj.weight.grad
        is not None
    )


def test_sdpa_default_scale_is_the_one_we_pass():
    """Leaving `scale` out for an old exporter (sdpa_scale) changes no number."""
    torch.manual_seed(0)
    for head_dim in (16, 32):
        q, k, v = (torch.randn(2, 8, 7, head_dim) for _ in range(3))
        explicit = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(head_dim))
        assert torch.equal(F.scaled_dot_product_attention(q, k, v), explicit)


@pytest.mark.parametrize(
    "takes_float,exporting,expected",
    [
        (True, False, {"scale": 0.25}),
        (True, True, {"scale": 0.25}),
        (False, False, {"scale": 0.25}),
        (False, True, {}),  # torch < 2.5 exporting: the exporter's own default
    ],
)
def test_sdpa_scale_is_left_out_only_for_an_old_exporter(
    monkeypatch, takes_float, exporting, expected
):
    monkeypatch.setattr(transformer, "_EXPORTER_TAKES_FLOAT_SCALE", takes_float)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: exporting)
    assert transformer.sdpa_scale(0.25) == expected
