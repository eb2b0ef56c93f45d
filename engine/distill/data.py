"""Training and evaluation data: SA-1B layout, COCO-format datasets, official subset lists,
and the official training preprocessing.

Preprocessing (teacher embeddings, both phases, evaluation): RGB as float, torch bilinear resize
with antialiasing so the long side is `image_size` (short side int(s * scale + 0.5), kept as
float), SAM normalisation, zero padding bottom/right to `image_size` squared.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset, Sampler

from engine.modeling.edge_sam import PIXEL_MEAN, PIXEL_STD

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
# The official 1% SA-1B subset (sa_train_subset.txt / sa_val_subset.txt of the EdgeSAM repo).
OFFICIAL_TRAIN_TARS: tuple[str, ...] = tuple(f"sa_{i:06d}.tar" for i in range(20, 30))
OFFICIAL_VAL_TARS: tuple[str, ...] = ("sa_000130.tar",)


# --------------------------------------------------------------------------- preprocessing


def resized_hw(h: int, w: int, long_side: int) -> tuple[int, int]:
    """Size after scaling the long side to `long_side` (short side rounded half up)."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def preprocess_image(
    image: np.ndarray, image_size: int = 1024
) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 RGB HxWx3 -> (normalised, zero-padded 3xSxS float32, (h, w) before padding)."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float()[None]
    h, w = resized_hw(x.shape[-2], x.shape[-1], image_size)
    if (h, w) != tuple(x.shape[-2:]):
        x = F.interpolate(x, (h, w), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    x = F.pad(x, (0, image_size - w, 0, image_size - h))
    return x[0], (h, w)


def valid_map(input_hw: Sequence[Sequence[int]], image_size: int, size: int) -> torch.Tensor:
    """Fraction of each cell of a `size`x`size` grid covered by the unpadded image: Bx1xsizexsize.

    Built at `image_size` and bilinearly downsampled, as the official code does.
    """
    full = torch.zeros(len(input_hw), 1, image_size, image_size)
    for i, (h, w) in enumerate(input_hw):
        full[i, :, : int(h), : int(w)] = 1.0
    return F.interpolate(full, (size, size), mode="bilinear", align_corners=False)


def scale_xy(coords: np.ndarray, orig_hw: tuple[int, int], new_hw: tuple[int, int]) -> np.ndarray:
    """x,y pairs (...x2) from the original frame to the resized frame."""
    out = np.asarray(coords, dtype=np.float64).copy()
    out[..., 0] *= new_hw[1] / orig_hw[1]
    out[..., 1] *= new_hw[0] / orig_hw[0]
    return out


def mask_center(mask: np.ndarray) -> tuple[float, float]:
    """The mask pixel farthest from the background (x, y) (distance-transform argmax)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)


def decode_segmentation(seg: Any, h: int, w: int) -> np.ndarray:
    """COCO RLE (compressed or not) or polygon list -> HxW bool mask."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


# --------------------------------------------------------------------------- indexes


@dataclass
class ImageRecord:
    """One image and its annotations (loaded lazily from `ann_path`, or given inline)."""

    key: str
    image_path: Path
    ann_path: Path | None = None
    anns: list[dict] | None = None
    height: int | None = None
    width: int | None = None

    def annotations(self) -> list[dict]:
        """Annotation dicts with 'bbox' (xywh), optional 'point_coords', 'segmentation'."""
        if self.anns is not None:
            return self.anns
        if self.ann_path is None:
            return []
        data = json.loads(self.ann_path.read_text())
        img = data.get("image", {})
        self.height = self.height or img.get("height")
        self.width = self.width or img.get("width")
        return list(data.get("annotations", []))


def sa1b_records(
    root: str | Path, split: str | None = None, limit: int | None = None
) -> list[ImageRecord]:
    """Images of an SA-1B-layout folder, sorted by stem (the official glob is unsorted).

    Accepts `root/images/<split>/*.jpg` with `root/annotations/<split>/*.json` (the official
    layout), or `.jpg` and `.json` side by side as extracted from the SA-1B tars. Images without
    a json are skipped.
    """
    root = Path(root)
    img_dir = root / "images" / split if split else root / "images"
    ann_dir = root / "annotations" / split if split else root / "annotations"
    if not img_dir.is_dir():
        img_dir = ann_dir = root / split if split else root
    if not img_dir.is_dir():
        raise FileNotFoundError(f"no SA-1B image folder under {root} (split {split!r})")
    records = []
    for path in sorted(img_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTS:
            continue
        ann = ann_dir / f"{path.stem}.json"
        if ann.is_file():
            records.append(ImageRecord(path.stem, path, ann))
        if limit is not None and len(records) >= limit:
            break
    return records


def coco_records(
    ann_file: str | Path, image_dir: str | Path, limit: int | None = None
) -> list[ImageRecord]:
    """Images of a COCO-format instances json that have at least one non-crowd annotation."""
    data = json.loads(Path(ann_file).read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    records = []
    for img in sorted(data["images"], key=lambda i: i["id"]):
        anns = by_image.get(img["id"])
        if not anns:
            continue
        path = Path(image_dir) / img["file_name"]
        records.append(
            ImageRecord(Path(img["file_name"]).stem, path, None, anns, img["height"], img["width"])
        )
        if limit is not None and len(records) >= limit:
            break
    return records


def make_records(
    fmt: str,
    root: str | Path,
    split: str | None = None,
    ann_file: str | Path | None = None,
    limit: int | None = None,
) -> list[ImageRecord]:
    """Records of an 'sa1b' folder or a 'coco' dataset (`ann_file` + image folder `root`)."""
    if fmt == "sa1b":
        return sa1b_records(root, split, limit)
    if fmt == "coco":
        if ann_file is None:
            raise ValueError("COCO-format data needs an annotation file")
        return coco_records(ann_file, root, limit)
    raise ValueError(f"unknown dataset format {fmt!r} (sa1b or coco)")


def read_subset_list(path: str | Path) -> list[tuple[str, str]]:
    """(file_name, cdn_link) rows of an SA-1B links TSV such as the official sa_*_subset.txt.

    A header row 'file_name<TAB>cdn_link' is skipped.
    """
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = line.strip().split("\t")
        if not parts or not parts[0] or parts[0] == "file_name":
            continue
        rows.append((parts[0], parts[1] if len(parts) > 1 else ""))
    return rows


def official_subset(links: list[tuple[str, str]], split: str = "train") -> list[tuple[str, str]]:
    """Rows of the full SA-1B links list that belong to the official 1% subset."""
    wanted = set(OFFICIAL_TRAIN_TARS if split == "train" else OFFICIAL_VAL_TARS)
    return [row for row in links if row[0] in wanted]


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# --------------------------------------------------------------------------- datasets


class DistillDataset(Dataset):
    """Preprocessed images with optional teacher embeddings and prompts.

    Items: key, image 3xSxS, input_hw (h, w), orig_hw, and when asked
    teacher (CxExE float16), boxes Kx4 (xyxy, input frame), points Kx2 (input frame).
    Images with more than `max_prompts` annotations get `max_prompts` drawn with replacement,
    from a generator seeded by (seed, epoch, index) so every worker and rank is reproducible.
    """

    def __init__(
        self,
        records: list[ImageRecord],
        image_size: int = 1024,
        embeddings: Any = None,
        with_prompts: bool = False,
        max_prompts: int = 16,
        seed: int = 0,
    ) -> None:
        self.records = records
        self.image_size = image_size
        self.embeddings = embeddings
        self.with_prompts = with_prompts
        self.max_prompts = max_prompts
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        rgb = load_rgb(rec.image_path)
        image, input_hw = preprocess_image(rgb, self.image_size)
        item: dict[str, Any] = {
            "key": rec.key,
            "image": image,
            "input_hw": input_hw,
            "orig_hw": rgb.shape[:2],
        }
        if self.embeddings is not None:
            item["teacher"] = self.embeddings.get(rec.key)
        if self.with_prompts:
            boxes, points = self._prompts(rec, index, rgb.shape[:2], input_hw)
            item["boxes"], item["points"] = boxes, points
        return item

    def _prompts(
        self, rec: ImageRecord, index: int, orig_hw: tuple[int, int], input_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        anns = [a for a in rec.annotations() if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        if not anns:
            return torch.zeros(0, 4), torch.zeros(0, 2)
        if len(anns) > self.max_prompts:
            seed = ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % (2**63)
            gen = torch.Generator().manual_seed(seed)
            pick = torch.randint(len(anns), (self.max_prompts,), generator=gen).tolist()
            anns = [anns[i] for i in pick]
        boxes = np.array(
            [
                [
                    a["bbox"][0],
                    a["bbox"][1],
                    a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                ]
                for a in anns
            ],
            dtype=np.float64,
        )
        points = np.array([self._point(a, orig_hw) for a in anns], dtype=np.float64)
        boxes = scale_xy(boxes.reshape(-1, 2, 2), orig_hw, input_hw).reshape(-1, 4)
        points = scale_xy(points, orig_hw, input_hw)
        return torch.from_numpy(boxes).float(), torch.from_numpy(points).float()

    @staticmethod
    def _point(ann: dict, orig_hw: tuple[int, int]) -> tuple[float, float]:
        pts = ann.get("point_coords")
        if pts:
            return float(pts[0][0]), float(pts[0][1])
        # COCO has no prompt points: use the mask centre (the evaluation's rule).
        mask = decode_segmentation(ann["segmentation"], *orig_hw)
        if not mask.any():
            x, y, w, h = ann["bbox"]
            return x + w / 2, y + h / 2
        return mask_center(mask)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images (and teacher embeddings); keep per-image prompt tensors as lists."""
    out: dict[str, Any] = {
        "key": [it["key"] for it in items],
        "image": torch.stack([it["image"] for it in items]),
        "input_hw": [tuple(it["input_hw"]) for it in items],
        "orig_hw": [tuple(it["orig_hw"]) for it in items],
    }
    if "teacher" in items[0]:
        out["teacher"] = torch.stack([it["teacher"] for it in items])
    if "boxes" in items[0]:
        out["boxes"] = [it["boxes"] for it in items]
        out["points"] = [it["points"] for it in items]
    return out


class ShardedShuffleSampler(Sampler[int]):
    """Each rank's share of a (re)shuffled index list, padded to equal length.

    `reshuffle=True` draws a new order every epoch; `reshuffle=False` keeps the epoch-0 order,
    which is what the official pipeline ends up doing (its sampler epoch is never advanced).
    """

    def __init__(
        self,
        size: int,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        reshuffle: bool = True,
    ) -> None:
        self.size, self.rank, self.world = size, rank, world
        self.seed, self.shuffle, self.reshuffle = seed, shuffle, reshuffle
        self.epoch = 0
        self.per_rank = math.ceil(size / world)
        self.skip = 0  # samples of this epoch already consumed (mid-epoch resume)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.per_rank - self.skip

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + (self.epoch if self.reshuffle else 0))
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        total = self.per_rank * self.world
        order = (order * math.ceil(total / max(len(order), 1)))[:total]
        return iter(order[self.rank : total : self.world][self.skip :])
