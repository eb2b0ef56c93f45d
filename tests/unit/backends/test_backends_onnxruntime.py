"""ONNX Runtime backend: parity with case A (our export) and with the official-format pair."""

from pathlib import Path

import numpy as np
import pytest
import torch
from backends_util import CASE_A_CALLS, decode_kwargs, mask_iou

from engine.backends.base import BackendError, BackendUnavailable, UnsupportedPrompt
from engine.backends.onnxruntime_backend import (
    CPU_EP,
    CUDA_EP,
    TRT_EP,
    OnnxRuntimeBackend,
    check_providers,
    detect_format,
    export_cached,
    plan_providers,
    resolve_decoder_path,
)
from engine.compat import zip_strict
from engine.core import ImageEmbedding, decode
from engine.loader import load_model

EMBED_TOL = 1e-4  # fp32, measured 1.9e-5 (ONNX Runtime vs the official PyTorch run)
LOGIT_TOL = 1e-4


# -- our export vs the PyTorch golden case ----------------------------------------------------


def test_ours_embedding_matches_golden(ours_embedding, golden) -> None:
    assert ours_embedding.shape == (1, 256, 64, 64)
    assert np.abs(ours_embedding.numpy() - golden["image_embedding"]).max() < EMBED_TOL


@pytest.mark.parametrize("call", sorted(CASE_A_CALLS))
def test_ours_decode_matches_golden(call: str, ort_ours, ours_embedding, golden) -> None:
    """Prompts -> masks through engine.core on ONNX Runtime's own embedding."""
    image = ImageEmbedding(ours_embedding, (512, 512), (1024, 1024))
    res = decode(ort_ours, image, **decode_kwargs(golden, call))
    want_logits = golden[f"{call}_low_res_logits"]
    got_logits = res.low_res_logits[0].numpy()
    assert got_logits.shape == want_logits.shape
    assert np.abs(got_logits - want_logits).max() < 5 * LOGIT_TOL
    assert np.abs(res.iou_predictions[0].numpy() - golden[f"{call}_iou_head"]).max() < 1e-4
    masks = res.masks()[0].numpy()
    for got, want in zip_strict(masks, golden[f"{call}_masks"]):
        assert mask_iou(got, want) >= 0.99


def test_ours_batch_of_boxes_matches_golden(ort_ours, ours_embedding, golden) -> None:
    image = ImageEmbedding(ours_embedding, (512, 512), (1024, 1024))
    res = decode(ort_ours, image, boxes=golden["p7_boxes"], num_multimask_outputs=1)
    assert res.low_res_logits.shape == (3, 1, 256, 256)
    assert np.abs(res.low_res_logits.numpy() - golden["p7_low_res_logits"]).max() < 5 * LOGIT_TOL
    assert np.abs(res.stability_scores.numpy() - golden["p7_iou"]).max() < 1e-3
    for got, want in zip_strict(res.masks().numpy(), golden["p7_masks"]):
        assert mask_iou(got[0], want[0]) >= 0.99


def test_ours_dynamic_batch_equals_single(ort_ours, golden) -> None:
    x = torch.from_numpy(golden["input_tensor"])
    pair = torch.cat([x, torch.flip(x, dims=[-1])])
    both = ort_ours.encode(pair)
    assert both.shape == (2, 256, 64, 64)
    assert np.abs(both[0].numpy() - golden["image_embedding"][0]).max() < EMBED_TOL
    assert not torch.allclose(both[0], both[1])


def test_ours_decode_with_per_prompt_embeddings(ort_ours, ours_embedding) -> None:
    coords = torch.tensor([[[300.0, 200.0], [0.0, 0.0]], [[600.0, 700.0], [0.0, 0.0]]])
    labels = torch.tensor([[1, -1], [1, -1]])
    shared, iou_shared = ort_ours.decode(ours_embedding, coords, labels)
    per, iou_per = ort_ours.decode(ours_embedding.expand(2, -1, -1, -1), coords, labels)
    assert shared.shape == (2, 4, 256, 256) and iou_shared.shape == (2, 4)
    assert torch.allclose(shared, per, atol=1e-5)


def test_cpu_decodes_many_prompts_in_bounded_chunks(ort_ours, ours_embedding) -> None:
    """More prompts than CPU_DECODE_CHUNK are decoded a chunk at a time (bounded transient
    memory, no new arena high-water mark per batch size) with the answers of single calls."""
    from engine.backends.base import CPU_DECODE_CHUNK

    n = 2 * CPU_DECODE_CHUNK + 1
    gen = torch.Generator().manual_seed(3)
    coords = torch.rand((n, 2, 2), generator=gen) * 1000
    labels = torch.tensor([[1, 0]] * n)
    masks = torch.randn((n, 1, 256, 256), generator=gen)
    calls: list[int] = []
    run = ort_ours._decode

    def counting(emb, c, *rest):  # noqa: ANN001, ANN002, ANN202
        calls.append(c.shape[0])
        return run(emb, c, *rest)

    ort_ours._decode = counting
    try:
        for mask in (None, masks):
            calls.clear()
            logits, iou = ort_ours.decode(ours_embedding, coords, labels, mask, 3)
            assert calls == [CPU_DECODE_CHUNK, CPU_DECODE_CHUNK, 1]
            assert logits.shape == (n, 3, 256, 256) and iou.shape == (n, 3)
            for i in (0, n - 1):
                one, one_iou = run(
                    ours_embedding, coords[i : i + 1], labels[i : i + 1],
                    None if mask is None else mask[i : i + 1], 3,
                )  # fmt: skip
                assert torch.allclose(logits[i], one[0], atol=1e-4)
                assert torch.allclose(iou[i], one_iou[0], atol=1e-5)
    finally:
        ort_ours._decode = run


def test_cpu_sessions_plan_no_memory_pattern(ort_ours) -> None:
    """A memory pattern per input shape stays in the arena for good (265 MB for the
    encoder's batch 2 on case A) for no measured speed: off on a CPU."""
    assert not ort_ours._enc.get_session_options().enable_mem_pattern
    assert not ort_ours._dec.get_session_options().enable_mem_pattern


def test_ours_info(ort_ours, case_a_model) -> None:
    from engine.export import model_fingerprint

    info = ort_ours.info
    assert info.name == "onnxruntime" and info.device == "cpu" and info.precision == "fp32"
    assert info.supports_mask_input
    assert info.fingerprint == model_fingerprint(case_a_model)
    assert info.details["intra_op_num_threads"] == "2"
    assert info.details["providers"] == CPU_EP
    assert ort_ours.health().ok


# -- the official-format pair vs golden_onnx ---------------------------------------------------


def test_official_embedding_matches(ort_official, golden_onnx) -> None:
    emb = ort_official.encode(torch.from_numpy(golden_onnx["input_tensor"]))
    assert np.abs(emb.numpy() - golden_onnx["image_embedding"]).max() < 1e-4


@pytest.mark.parametrize("call", ["q1", "q2", "q3_box"])
def test_official_decode_matches(call: str, ort_official, golden_onnx) -> None:
    coords = torch.from_numpy(golden_onnx[f"{call}_coords_1024"])
    n_given = golden_onnx[f"{call}_point_labels"].shape[0]
    labels = np.asarray(golden_onnx[f"{call}_point_labels"], np.int64)
    if coords.shape[1] > n_given:  # the padding point appended for point-only prompts
        labels = np.concatenate([labels, [-1]])
    logits, scores = ort_official.decode(
        torch.from_numpy(golden_onnx["image_embedding"]), coords, torch.from_numpy(labels[None])
    )
    assert np.abs(logits.numpy() - golden_onnx[f"{call}_low_res_logits"]).max() < 1e-5
    assert np.abs(scores.numpy() - golden_onnx[f"{call}_scores"]).max() < 1e-5


def test_official_through_core_prompts(ort_official, golden_onnx) -> None:
    """engine.core maps original-pixel prompts and adds the padding point like the golden run."""
    image = ImageEmbedding(
        torch.from_numpy(golden_onnx["image_embedding"]), (512, 512), (1024, 1024)
    )
    res = decode(
        ort_official,
        image,
        point_coords=golden_onnx["q2_point_coords"],
        point_labels=golden_onnx["q2_point_labels"],
        num_multimask_outputs=4,
    )
    assert np.abs(res.low_res_logits.numpy() - golden_onnx["q2_low_res_logits"]).max() < 1e-5
    box = golden_onnx["q3_box_point_coords"].reshape(1, 4)
    res = decode(ort_official, image, boxes=box, num_multimask_outputs=4)
    assert np.abs(res.low_res_logits.numpy() - golden_onnx["q3_box_low_res_logits"]).max() < 1e-5


def test_official_batches_are_looped(ort_official, golden_onnx) -> None:
    image = ImageEmbedding(
        torch.from_numpy(golden_onnx["image_embedding"]), (512, 512), (1024, 1024)
    )
    boxes = np.array([[128.0, 128.0, 281.6, 307.2], [10.0, 20.0, 400.0, 500.0]])
    both = decode(ort_official, image, boxes=boxes, num_multimask_outputs=3)
    one = decode(ort_official, image, boxes=boxes[1:], num_multimask_outputs=3)
    assert both.low_res_logits.shape == (2, 3, 256, 256)
    assert (
        np.abs(both.low_res_logits[0].numpy() - golden_onnx["q3_box_low_res_logits"][0, 1:]).max()
        < 1e-5
    )
    assert torch.allclose(both.low_res_logits[1], one.low_res_logits[0])
    x = torch.from_numpy(golden_onnx["input_tensor"])
    assert ort_official.encode(torch.cat([x, x])).shape == (2, 256, 64, 64)


def test_official_refuses_mask_input(ort_official, golden_onnx) -> None:
    assert ort_official.info.supports_mask_input is False
    assert ort_official.info.details["format"] == "official"
    image = ImageEmbedding(
        torch.from_numpy(golden_onnx["image_embedding"]), (512, 512), (1024, 1024)
    )
    with pytest.raises(UnsupportedPrompt, match="mask_input"):
        decode(
            ort_official,
            image,
            point_coords=np.array([[10.0, 10.0]]),
            point_labels=np.array([1]),
            mask_input=np.zeros((1, 256, 256), np.float32),
        )
    with pytest.raises(UnsupportedPrompt):
        ort_official.decode(
            image.embedding, torch.zeros(1, 2, 2), torch.zeros(1, 2), torch.zeros(1, 1, 256, 256)
        )


def test_predictor_on_official_pair(case_a_onnx_dir: Path, golden_onnx) -> None:
    """engine.load_model on `<name>_encoder.onnx` finds the decoder and the predictor works."""
    from engine.predictor import EdgeSamPredictor

    backend = load_model(case_a_onnx_dir / "edge_sam_case_a_encoder.onnx", intra_op_num_threads=2)
    assert backend.info.name == "onnxruntime"
    predictor = EdgeSamPredictor(backend)
    predictor.set_image(golden_onnx["image"])
    assert (
        np.abs(predictor.get_image_embedding().numpy() - golden_onnx["image_embedding"]).max()
        < 1e-4
    )
    masks, scores, logits = predictor.predict(
        point_coords=golden_onnx["q1_point_coords"],
        point_labels=golden_onnx["q1_point_labels"],
        num_multimask_outputs=4,
    )
    assert masks.shape == (4, 512, 512) and scores.shape == (4,)
    assert np.abs(logits - golden_onnx["q1_low_res_logits"][0]).max() < 1e-4
    masks1, _, _ = predictor.predict(
        box=np.array([128.0, 128.0, 281.6, 307.2]), num_multimask_outputs=1
    )
    assert masks1.shape == (1, 512, 512)
    masks3, _, _ = predictor.predict(
        point_coords=golden_onnx["q1_point_coords"],
        point_labels=golden_onnx["q1_point_labels"],
        num_multimask_outputs=3,
    )
    assert masks3.shape == (3, 512, 512)
    with pytest.raises(UnsupportedPrompt):
        predictor.predict(
            point_coords=golden_onnx["q1_point_coords"],
            point_labels=golden_onnx["q1_point_labels"],
            mask_input=np.zeros((1, 256, 256), np.float32),
        )


def test_load_model_with_explicit_decoder_path(case_a_onnx_dir: Path, tmp_path: Path) -> None:
    enc = tmp_path / "renamed.onnx"
    enc.symlink_to(case_a_onnx_dir / "edge_sam_case_a_encoder.onnx")
    with pytest.raises(BackendError, match="decoder_path"):
        load_model(enc)
    backend = load_model(enc, decoder_path=case_a_onnx_dir / "edge_sam_case_a_decoder.onnx")
    assert backend.info.details["decoder"] == "edge_sam_case_a_decoder.onnx"


def test_missing_decoder_is_a_clear_error(case_a_onnx_dir: Path, tmp_path: Path) -> None:
    enc = tmp_path / "x_encoder.onnx"
    enc.symlink_to(case_a_onnx_dir / "edge_sam_case_a_encoder.onnx")
    with pytest.raises(BackendError, match="x_decoder.onnx"):
        OnnxRuntimeBackend(enc)


# -- pure helpers -------------------------------------------------------------------------------


def test_resolve_decoder_path() -> None:
    assert resolve_decoder_path("/m/edge_sam_3x_encoder.onnx") == Path(
        "/m/edge_sam_3x_decoder.onnx"
    )
    assert resolve_decoder_path("/m/a.onnx", "/n/b.onnx") == Path("/n/b.onnx")


def test_provider_plans() -> None:
    assert plan_providers("cpu") == [(CPU_EP, {})]
    cuda = plan_providers("cuda:1")
    assert [p for p, _ in cuda] == [CUDA_EP, CPU_EP] and cuda[0][1]["device_id"] == "1"
    trt = plan_providers("cuda", "fp16", use_tensorrt=True, trt_cache_dir="/c")
    assert [p for p, _ in trt] == [TRT_EP, CUDA_EP, CPU_EP]
    assert trt[0][1]["trt_fp16_enable"] == "True" and trt[0][1]["trt_engine_cache_path"] == "/c"
    with pytest.raises(ValueError, match="fp32"):
        plan_providers("cpu", "fp16")
    with pytest.raises(ValueError, match="tensorrt"):
        plan_providers("cuda", "fp16")
    with pytest.raises(ValueError):
        plan_providers("mps")


def test_provider_checks_refuse_silent_cpu_fallback() -> None:
    check_providers([CPU_EP], [CPU_EP], [CPU_EP])
    check_providers([CUDA_EP, CPU_EP], [CUDA_EP, CPU_EP], [CUDA_EP, CPU_EP])
    with pytest.raises(BackendUnavailable, match="not available"):
        check_providers([CUDA_EP, CPU_EP], [CPU_EP], [CPU_EP])
    with pytest.raises(BackendUnavailable, match="session runs on"):
        check_providers([CUDA_EP, CPU_EP], [CUDA_EP, CPU_EP], [CPU_EP])


def test_cuda_request_without_cuda_provider(case_a_onnx_dir: Path) -> None:
    import onnxruntime as ort

    if CUDA_EP in ort.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        OnnxRuntimeBackend(case_a_onnx_dir / "edge_sam_case_a_encoder.onnx", device="cuda")


def test_detect_format() -> None:
    from engine.export import DECODER_INPUTS, DECODER_OUTPUTS

    assert detect_format(["image"], DECODER_INPUTS, DECODER_OUTPUTS) == "edgesam"
    assert (
        detect_format(
            ["image"], ["image_embeddings", "point_coords", "point_labels"], ["scores", "masks"]
        )
        == "official"
    )
    with pytest.raises(BackendError, match="unrecognised decoder"):
        detect_format(["image"], ["x"], ["y"])
    with pytest.raises(BackendError, match="encoder inputs"):
        detect_format(["input"], DECODER_INPUTS, DECODER_OUTPUTS)


def test_checkpoint_export_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.export.to_onnx

    calls = []

    def fake_export(model, out_dir, name="edge_sam", *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append(out_dir)
        for role in ("encoder", "decoder"):
            (Path(out_dir) / f"{name}_{role}.onnx").write_bytes(b"x")

    monkeypatch.setattr(engine.export.to_onnx, "export_onnx", fake_export)
    monkeypatch.setattr(engine.export.to_onnx, "build_edge_sam", lambda *a, **k: None)
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"weights-1")
    first = export_cached(ckpt, tmp_path / "cache")
    second = export_cached(ckpt, tmp_path / "cache")
    assert first == second and len(calls) == 1
    assert first[0].is_file() and first[1].name == "edge_sam_decoder.onnx"
    ckpt.write_bytes(b"weights-2")  # new content -> new export
    third = export_cached(ckpt, tmp_path / "cache")
    assert third != first and len(calls) == 2


def test_random_weights_leave_no_export_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random weights are exported afresh on every start (nothing to key a cache on): the
    throwaway folder goes once the sessions hold the model, so restarts do not fill /tmp."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    backend = load_model(None, backend="onnxruntime")
    assert backend.info.name == "onnxruntime"
    assert list(tmp_path.glob("edgesam-onnx-*")) == []
    emb = backend.encode(torch.zeros(1, 3, 1024, 1024))
    assert emb.shape == (1, 256, 64, 64)


def test_torch_decoder_with_onnxruntime_encoder(
    exported, case_a_dir: Path, golden, monkeypatch: pytest.MonkeyPatch
) -> None:
    """decoder_runtime="torch": ONNX Runtime encodes, the PyTorch model decodes; answers still
    match the official outputs. `auto` on a CPU keeps both halves in ONNX Runtime."""
    import engine.backends.onnxruntime_backend as ort_module
    from engine import load_model
    from engine.core import decode, encode_images

    pair = (exported["encoder"], exported["decoder"])
    monkeypatch.setattr(ort_module, "export_cached", lambda *a, **k: pair)
    monkeypatch.setattr("engine.backends.registry._has_module", lambda name: name == "onnxruntime")
    auto = load_model(case_a_dir / "weights.safetensors", backend="auto")
    assert auto.info.name == "onnxruntime" and "decode_runtime" not in auto.info.details
    assert auto.info.details["split_decoder"] == "true"
    backend = load_model(
        case_a_dir / "weights.safetensors", backend="onnxruntime", decoder_runtime="torch"
    )
    assert backend.info.name == "onnxruntime" and backend.info.details["decode_runtime"] == "torch"
    emb = encode_images(backend, [golden["image"]])[0]
    assert np.abs(emb.embedding.numpy() - golden["image_embedding"]).max() < 1e-4
    res = decode(
        backend,
        emb,
        point_coords=golden["p6_point_coords"],
        point_labels=golden["p6_point_labels"],
        mask_input=golden["p6_mask_input"],
    )
    assert np.abs(res.low_res_logits.numpy() - golden["p6_low_res_logits"]).max() < 1e-3
    plain = OnnxRuntimeBackend.from_path(case_a_dir / "weights.safetensors")
    assert "decode_runtime" not in plain.info.details


# -- the split decoder (image half once per embedding, prompt half per click) ----------------


def test_export_writes_the_split_decoder(exported) -> None:
    from engine.export import read_metadata, split_decoder_paths

    image_path, prompt_path = split_decoder_paths(exported["decoder"])
    assert image_path.name == "case_a_decoder_image.onnx"
    assert prompt_path.name == "case_a_decoder_prompt.onnx"
    assert f"wrote {prompt_path}" in exported["stdout"]
    want = read_metadata(exported["decoder"])["edgesam.fingerprint"]
    assert read_metadata(image_path)["edgesam.role"] == "decoder_image"
    assert read_metadata(prompt_path)["edgesam.fingerprint"] == want


def test_split_decoder_equals_the_full_graph(exported, ort_ours, ours_embedding) -> None:
    full = OnnxRuntimeBackend(exported["encoder"], intra_op_num_threads=2, split_decoder=False)
    assert ort_ours.info.details["split_decoder"] == "true"
    assert full.info.details["split_decoder"] == "false"
    torch.manual_seed(3)
    coords = torch.rand(3, 4, 2) * 1024
    labels = torch.tensor([[1, 0, 2, 3], [1, -1, -1, -1], [0, 1, 1, -1]])
    for n in (None, 1, 3, 4):
        a_logits, a_iou = ort_ours.decode(ours_embedding, coords, labels, None, n)
        b_logits, b_iou = full.decode(ours_embedding, coords, labels, None, n)
        assert a_logits.shape == b_logits.shape
        assert torch.allclose(a_logits, b_logits, atol=1e-4)
        assert torch.allclose(a_iou, b_iou, atol=1e-5)
    mask = torch.randn(3, 1, 256, 256)  # with a mask the full graph answers: same result
    a_logits, _ = ort_ours.decode(ours_embedding, coords, labels, mask)
    b_logits, _ = full.decode(ours_embedding, coords, labels, mask)
    assert torch.equal(a_logits, b_logits)
    full.close()


def test_split_decoder_upscales_only_the_requested_masks(ort_ours, ours_embedding) -> None:
    from engine.export import IMAGE_SIDE_OUTPUTS

    side = ort_ours._image_side(ours_embedding, ours_embedding.numpy())
    feeds = dict(zip(IMAGE_SIDE_OUTPUTS, side))
    feeds["point_coords"] = np.array([[[300.0, 200.0]], [[10.0, 900.0]]], np.float32)
    feeds["point_labels"] = np.ones((2, 1), np.float32)
    every = ort_ours._prompt_sess.run(None, {**feeds, "mask_tokens": np.arange(4)})
    for tokens in ([0], [1, 2, 3], [2]):
        some = ort_ours._prompt_sess.run(None, {**feeds, "mask_tokens": np.array(tokens)})
        assert [o.shape[:2] for o in some] == [(2, len(tokens))] * 3
        for got, whole in zip(some, every):
            np.testing.assert_allclose(got, whole[:, tokens], atol=1e-5)


def test_split_decoder_runs_the_image_half_once_per_embedding(exported) -> None:
    backend = OnnxRuntimeBackend(exported["encoder"], intra_op_num_threads=2)
    calls = []
    inner = backend._image_side_sess

    class Counting:
        def run(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            calls.append(1)
            return inner.run(*args, **kwargs)

    backend._image_side_sess = Counting()
    coords, labels = torch.tensor([[[100.0, 200.0], [0.0, 0.0]]]), torch.tensor([[1, -1]])
    e1, e2 = torch.randn(1, 256, 64, 64), torch.randn(1, 256, 64, 64)
    first = backend.decode(e1, coords, labels)[0]
    assert torch.equal(backend.decode(e1, coords, labels)[0], first)
    assert len(calls) == 1
    other = backend.decode(e2, coords, labels)[0]
    assert len(calls) == 2 and not torch.allclose(other, first)
    backend.close()


@pytest.mark.parametrize(
    "stale", [{"edgesam.fingerprint": "0" * 16}, {"edgesam.format_version": "3"}]
)
def test_split_files_from_another_export_are_ignored(exported, tmp_path: Path, stale) -> None:
    import shutil

    from engine.onnx_format import read_metadata, split_decoder_paths, write_metadata

    for path in (
        exported["encoder"],
        exported["decoder"],
        *split_decoder_paths(exported["decoder"]),
    ):
        shutil.copy(path, tmp_path / path.name)
    image_path, _ = split_decoder_paths(tmp_path / exported["decoder"].name)
    meta = read_metadata(image_path)
    write_metadata(image_path, {**meta, **stale})
    backend = OnnxRuntimeBackend(tmp_path / exported["encoder"].name, intra_op_num_threads=2)
    assert backend.info.details["split_decoder"] == "false"
    backend.close()


def test_zero_mask_inputs_share_one_bounded_buffer(ort_ours) -> None:
    sizes = [3, 1, 7, 2, 7, 5]
    largest = max(ort_ours._zeros.shape[0], *sizes)  # the fixture may have decoded before
    masks = [ort_ours._zero_masks(b) for b in sizes]
    assert [m.shape for m in masks] == [(b, 1, 256, 256) for b in sizes]
    assert all(not m.any() and not m.flags.writeable and m.flags.c_contiguous for m in masks)
    # one buffer, the size of the largest batch seen: not one array per batch size
    assert ort_ours._zeros.shape[0] == largest
    assert all(np.shares_memory(m, ort_ours._zeros) for m in masks[2:])
