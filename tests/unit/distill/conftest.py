"""Session fixtures for the distillation tests (see distill_helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from distill_helpers import GRID, IMAGE_SIZE, tiny_teacher

from engine.distill.data import DistillDataset, collate, sa1b_records
from engine.distill.embeddings import EmbeddingWriter, compute_embeddings
from engine.distill.synthetic import make_sa1b, write_random_sam_checkpoint


@pytest.fixture(scope="session")
def distill_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distill")
    torch.set_num_threads(1)
    # 120x160 images: resized to 96x128 (long side 128) and padded at the bottom.
    make_sa1b(root / "data", num_images=4, height=120, width=160, shapes=3, seed=1)
    records = sa1b_records(root / "data", "train")
    loader = torch.utils.data.DataLoader(
        DistillDataset(records, IMAGE_SIZE), batch_size=2, collate_fn=collate
    )
    with EmbeddingWriter(root / "emb", (256, GRID, GRID), meta={"teacher": "vit_tiny"}) as w:
        compute_embeddings(tiny_teacher(), loader, w, torch.device("cpu"), progress=False)
    write_random_sam_checkpoint(root / "sam.pth", seed=3)
    return {"root": root, "data": root / "data", "emb": root / "emb", "sam": root / "sam.pth"}
