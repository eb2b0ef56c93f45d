"""Teacher embeddings computed once and stored as float16 shards with an index.

Layout of a store directory:

- `meta.json`: shape [C, H, W], dtype float16, teacher name, image size.
- `rank{r}-shard{s:04d}.f16`: fixed-size records, C*H*W float16 values each, C-order.
- `rank{r}-index.jsonl`: one line per stored record, {"key", "shard", "row"}; a line is only
  written after its record is flushed, so a crash never indexes a partial record.

Writing is resumable (keys already in any index are skipped, trailing unindexed bytes are
cut off) and every rank writes its own files. Reading memory-maps shards lazily, per process,
so many DataLoader workers can share one store. The official layout (`rank{r}-keys.txt` +
`rank{r}-values.bin`, an int32 seed before each record) is readable with `OfficialStore`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

SHARD_RECORDS = 1024


class EmbeddingStore:
    """Read-only access to a store directory: `get(key)` -> CxHxW float16 tensor."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} missing: not an embedding store")
        self.meta = json.loads(meta_path.read_text())
        self.shape = tuple(self.meta["shape"])
        self.record = int(np.prod(self.shape))
        self.index: dict[str, tuple[int, int, int]] = {}
        for rank, entries in _read_indexes(self.root).items():
            for e in entries:
                self.index.setdefault(e["key"], (rank, e["shard"], e["row"]))
        self._maps: dict[tuple[int, int], np.memmap] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def keys(self) -> list[str]:
        return list(self.index)

    def _map(self, rank: int, shard: int) -> np.memmap:
        if self._pid != os.getpid():  # forked into a DataLoader worker: reopen there
            self._maps, self._pid = {}, os.getpid()
        m = self._maps.get((rank, shard))
        if m is None:
            path = self.root / f"rank{rank}-shard{shard:04d}.f16"
            m = np.memmap(path, dtype=np.float16, mode="r")
            self._maps[(rank, shard)] = m
        return m

    def get(self, key: str) -> torch.Tensor:
        """The stored embedding of `key`, CxHxW float16 (a copy)."""
        try:
            rank, shard, row = self.index[key]
        except KeyError:
            raise KeyError(f"no teacher embedding for {key!r} in {self.root}") from None
        m = self._map(rank, shard)
        flat = np.array(m[row * self.record : (row + 1) * self.record])
        return torch.from_numpy(flat).view(*self.shape)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


class EmbeddingWriter:
    """Append-only writer for one rank; skips keys that any rank already stored."""

    def __init__(
        self,
        root: str | Path,
        shape: tuple[int, int, int],
        rank: int = 0,
        meta: dict | None = None,
        shard_records: int = SHARD_RECORDS,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shape = tuple(int(s) for s in shape)
        self.record_bytes = int(np.prod(self.shape)) * 2
        self.rank = rank
        self.shard_records = shard_records
        meta_path = self.root / "meta.json"
        info = {"shape": list(self.shape), "dtype": "float16", **(meta or {})}
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            if list(old["shape"]) != list(self.shape):
                raise ValueError(
                    f"{self.root} holds embeddings of shape {old['shape']}, not {self.shape}"
                )
        elif rank == 0:
            tmp = meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=1))
            tmp.replace(meta_path)
        indexes = _read_indexes(self.root)
        self.done = {e["key"] for entries in indexes.values() for e in entries}
        mine = indexes.get(rank, [])
        self.count = len(mine)
        self._truncate_unindexed(mine)
        self._index = open(self.root / f"rank{rank}-index.jsonl", "a")  # noqa: SIM115
        self._shard_file = None
        self._shard_id = -1

    def _truncate_unindexed(self, mine: list[dict]) -> None:
        rows_in_shard: dict[int, int] = {}
        for e in mine:
            rows_in_shard[e["shard"]] = max(rows_in_shard.get(e["shard"], 0), e["row"] + 1)
        for path in self.root.glob(f"rank{self.rank}-shard*.f16"):
            shard = int(path.stem.split("shard")[1])
            keep = rows_in_shard.get(shard, 0) * self.record_bytes
            if path.stat().st_size > keep:
                with open(path, "r+b") as f:
                    f.truncate(keep)

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def add(self, key: str, embedding: torch.Tensor) -> bool:
        """Store one CxHxW embedding (cast to float16); False if the key was already stored."""
        if key in self.done:
            return False
        if tuple(embedding.shape) != self.shape:
            raise ValueError(
                f"embedding of {key} has shape {tuple(embedding.shape)}, expected {self.shape}"
            )
        shard, row = divmod(self.count, self.shard_records)
        if shard != self._shard_id:
            if self._shard_file is not None:
                self._shard_file.close()
            self._shard_file = open(self.root / f"rank{self.rank}-shard{shard:04d}.f16", "ab")  # noqa: SIM115
            self._shard_id = shard
        data = embedding.detach().to("cpu", torch.float16).contiguous().numpy().tobytes()
        self._shard_file.write(data)
        self._shard_file.flush()
        self._index.write(json.dumps({"key": key, "shard": shard, "row": row}) + "\n")
        self._index.flush()
        self.done.add(key)
        self.count += 1
        return True

    def close(self) -> None:
        if self._shard_file is not None:
            self._shard_file.close()
            self._shard_file = None
        self._index.close()

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_indexes(root: Path) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for path in sorted(root.glob("rank*-index.jsonl")):
        rank = int(path.name[4:].split("-")[0])
        entries = []
        for line in path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: its record is re-done
                break
        out[rank] = entries
    return out


class OfficialStore:
    """Reader for the official layout: `rank{r}-keys.txt` and `rank{r}-values.bin`, each
    record an int32 seed followed by C*H*W float16 values."""

    def __init__(self, root: str | Path, shape: tuple[int, int, int] = (256, 64, 64)) -> None:
        self.root = Path(root)
        self.shape = shape
        self.numel = int(np.prod(shape))
        self.index: dict[str, tuple[int, int]] = {}
        for keys in sorted(self.root.glob("rank*-keys.txt")):
            rank = int(keys.name[4:].split("-")[0])
            for row, key in enumerate(keys.read_text().split()):
                self.index.setdefault(key, (rank, row))
        self._maps: dict[int, np.memmap] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: str) -> torch.Tensor:
        if self._pid != os.getpid():
            self._maps, self._pid = {}, os.getpid()
        rank, row = self.index[key]
        if rank not in self._maps:
            self._maps[rank] = np.memmap(self.root / f"rank{rank}-values.bin", np.uint8, mode="r")
        rec = 4 + 2 * self.numel
        raw = np.array(self._maps[rank][row * rec + 4 : (row + 1) * rec])
        return torch.from_numpy(raw.view(np.float16)).view(*self.shape)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


def open_store(root: str | Path) -> EmbeddingStore | OfficialStore:
    """Our store if `meta.json` is there, else the official layout."""
    root = Path(root)
    if (root / "meta.json").is_file():
        return EmbeddingStore(root)
    if any(root.glob("rank*-keys.txt")):
        return OfficialStore(root)
    raise FileNotFoundError(f"{root} holds no teacher embeddings")


@torch.no_grad()
def compute_embeddings(
    teacher: torch.nn.Module,
    loader: Iterable[dict],
    writer: EmbeddingWriter,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    total: int | None = None,
) -> int:
    """Run the teacher over batches ({'key', 'image'}) and store what is not stored yet.

    Returns the number of embeddings written.
    """
    written = 0
    bar = tqdm(total=total, disable=not progress, unit="img", desc="teacher embeddings")
    for batch in loader:
        keys = batch["key"]
        todo = [i for i, k in enumerate(keys) if k not in writer]
        if todo:
            images = batch["image"][todo].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                emb = teacher(images)
            for j, i in enumerate(todo):
                written += writer.add(keys[i], emb[j].float())
        bar.update(len(keys))
    bar.close()
    return written
