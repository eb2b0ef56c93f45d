"""Data layouts, preprocessing, prompt sampling, the sampler and the embedding store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from distill_helpers import GRID, IMAGE_SIZE

from engine.compat import zip_strict
from engine.distill.data import (
    OFFICIAL_TRAIN_TARS,
    DistillDataset,
    ShardedShuffleSampler,
    coco_records,
    collate,
    decode_segmentation,
    official_subset,
    preprocess_image,
    read_subset_list,
    sa1b_records,
)
from engine.distill.embeddings import EmbeddingStore, EmbeddingWriter, OfficialStore, open_store


def test_preprocess_resizes_long_side_normalises_and_pads() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (150, 100, 3)).astype(np.uint8)
    x, hw = preprocess_image(img, 128)
    assert hw == (128, int(100 * 128 / 150 + 0.5))  # short side rounded half up: 85
    assert x.shape == (3, 128, 128)
    assert (x[:, :, hw[1] :] == 0).all()
    ref = F.interpolate(
        torch.from_numpy(img).permute(2, 0, 1).float()[None],
        hw,
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0]
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    torch.testing.assert_close(x[:, :, : hw[1]], (ref - mean) / std)


def test_sa1b_records_sorted_and_skip_images_without_json(distill_data: dict) -> None:
    recs = sa1b_records(distill_data["data"], "train")
    assert [r.key for r in recs] == sorted(r.key for r in recs) and len(recs) == 4
    tmp = distill_data["root"] / "orphan"
    (tmp / "images" / "train").mkdir(parents=True)
    (tmp / "annotations" / "train").mkdir(parents=True)
    for r in recs[:2]:
        os.link(r.image_path, tmp / "images" / "train" / r.image_path.name)
    os.link(recs[0].ann_path, tmp / "annotations" / "train" / recs[0].ann_path.name)
    assert [r.key for r in sa1b_records(tmp, "train")] == [recs[0].key]


def test_prompts_are_scaled_into_the_input_frame(distill_data: dict) -> None:
    rec = sa1b_records(distill_data["data"], "train")[0]
    ds = DistillDataset([rec], IMAGE_SIZE, with_prompts=True, max_prompts=16)
    item = ds[0]
    anns = rec.annotations()
    assert item["input_hw"] == (96, 128) and item["orig_hw"] == (120, 160)
    scale = 128 / 160
    x, y, w, h = anns[0]["bbox"]
    torch.testing.assert_close(item["boxes"][0], torch.tensor([x, y, x + w, y + h]) * scale)
    for pt, ann in zip_strict(item["points"], anns):
        mask = decode_segmentation(ann["segmentation"], 120, 160)
        assert mask[int(pt[1] / scale), int(pt[0] / scale)], "prompt point lies inside its mask"


def test_more_annotations_than_max_are_drawn_with_replacement_per_epoch(distill_data: dict) -> None:
    rec = sa1b_records(distill_data["data"], "train")[0]
    n = len(rec.annotations())
    ds = DistillDataset([rec], IMAGE_SIZE, with_prompts=True, max_prompts=2 * n, seed=5)
    assert len(ds[0]["boxes"]) == n  # fewer than max: all, once
    ds.max_prompts = 2
    a, b = ds[0]["boxes"], ds[0]["boxes"]
    assert len(a) == 2 and torch.equal(a, b)  # deterministic for one epoch
    draws = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        draws.add(tuple(ds[0]["boxes"].flatten().tolist()))
    assert len(draws) > 1


def test_coco_format_records_and_mask_centre_points(distill_data: dict, tmp_path: Path) -> None:
    recs = sa1b_records(distill_data["data"], "train")[:2]
    images, anns = [], []
    for i, r in enumerate(recs):
        data = json.loads(r.ann_path.read_text())
        images.append({"id": i + 1, "file_name": r.image_path.name, "height": 120, "width": 160})
        for a in data["annotations"]:
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "bbox": a["bbox"],
                    "iscrowd": 0,
                    "segmentation": a["segmentation"],
                    "area": a["area"],
                    "category_id": 1,
                }
            )
    anns.append({**anns[0], "id": 999, "iscrowd": 1})
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    coco = coco_records(path, recs[0].image_path.parent)
    assert [r.key for r in coco] == [r.key for r in recs]
    assert len(coco[0].annotations()) == len(recs[0].annotations())  # crowd dropped
    item = DistillDataset(coco[:1], IMAGE_SIZE, with_prompts=True)[0]
    for pt, ann in zip_strict(item["points"], coco[0].annotations()):
        mask = decode_segmentation(ann["segmentation"], 120, 160)
        assert mask[int(pt[1] / 0.8), int(pt[0] / 0.8)]


def test_official_subset_list(tmp_path: Path) -> None:
    rows = ["file_name\tcdn_link"] + [f"sa_{i:06d}.tar\thttps://x/{i}" for i in range(0, 140)]
    path = tmp_path / "links.txt"
    path.write_text("\n".join(rows))
    links = read_subset_list(path)
    assert len(links) == 140
    train = official_subset(links, "train")
    assert [n for n, _ in train] == list(OFFICIAL_TRAIN_TARS) and len(train) == 10
    assert official_subset(links, "val") == [("sa_000130.tar", "https://x/130")]


def test_sampler_reshuffles_and_partitions() -> None:
    a = ShardedShuffleSampler(10, 0, 2, seed=1)
    b = ShardedShuffleSampler(10, 1, 2, seed=1)
    e0 = list(a) + list(b)
    assert sorted(e0) == list(range(10))
    a.set_epoch(1)
    assert list(a) != e0[:5]
    frozen = ShardedShuffleSampler(10, 0, 2, seed=1, reshuffle=False)
    first = list(frozen)
    frozen.set_epoch(3)
    assert list(frozen) == first  # the official behaviour, kept as an option
    frozen.set_epoch(3, skip=2)
    assert list(frozen) == first[2:] and len(frozen) == 3


def test_embedding_store_roundtrip_resume_and_workers(tmp_path: Path) -> None:
    shape = (4, 3, 3)
    embs = {f"k{i}": torch.randn(shape) for i in range(5)}
    with EmbeddingWriter(tmp_path, shape, shard_records=2) as w:
        for k in ("k0", "k1", "k2"):
            assert w.add(k, embs[k])
        assert not w.add("k0", embs["k0"])  # duplicates are skipped
    # A crash after writing data but before indexing it leaves unindexed bytes: cut on resume.
    with open(tmp_path / "rank0-shard0001.f16", "ab") as f:
        f.write(b"\x00" * 10)
    with EmbeddingWriter(tmp_path, shape, shard_records=2) as w:
        assert "k2" in w and "k3" not in w
        w.add("k3", embs["k3"])
    with EmbeddingWriter(tmp_path, shape, rank=1, shard_records=2) as w:
        assert not w.add("k1", embs["k1"])  # stored by rank 0 already
        w.add("k4", embs["k4"])
    store = open_store(tmp_path)
    assert isinstance(store, EmbeddingStore) and len(store) == 5
    for k, v in embs.items():
        got = store.get(k)
        assert got.dtype == torch.float16
        torch.testing.assert_close(got, v.half())
    assert (tmp_path / "rank0-shard0001.f16").stat().st_size == 2 * 36 * 2
    with pytest.raises(ValueError, match="shape"):
        EmbeddingWriter(tmp_path, (4, 3, 4))

    class Keys(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 5

        def __getitem__(self, i: int) -> torch.Tensor:
            return store.get(f"k{i}")

    loader = torch.utils.data.DataLoader(Keys(), batch_size=1, num_workers=2)
    got = [b[0] for b in loader]
    for i, g in enumerate(got):
        torch.testing.assert_close(g, embs[f"k{i}"].half())


def test_official_store_layout(tmp_path: Path) -> None:
    shape = (2, 2, 2)
    vals = [np.arange(8, dtype=np.float16) + 10 * i for i in range(3)]
    (tmp_path / "rank0-keys.txt").write_text("a\nb\nc\n")
    with open(tmp_path / "rank0-values.bin", "wb") as f:
        for v in vals:
            f.write(np.int32(7).tobytes() + v.tobytes())
    store = open_store(tmp_path)
    assert isinstance(store, OfficialStore)
    store = OfficialStore(tmp_path, shape)
    assert np.array_equal(store.get("b").numpy().ravel(), vals[1])


def test_teacher_embeddings_fixture_is_complete(distill_data: dict) -> None:
    store = open_store(distill_data["emb"])
    recs = sa1b_records(distill_data["data"], "train")
    assert sorted(store.keys()) == [r.key for r in recs]
    ds = DistillDataset(recs, IMAGE_SIZE, store, with_prompts=True)
    batch = collate([ds[0], ds[1]])
    assert batch["teacher"].shape == (2, 256, GRID, GRID)
    assert batch["image"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
