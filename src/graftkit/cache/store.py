"""A keyed, append-only, memory-mapped array store on disk.

Rows (one decoded image, or one image's features for one view) are found by a string key. Each
``put`` writes a new chunk file (``.npy``, read back with ``mmap_mode="r"``) and then its index
(atomically), so a crash leaves at worst an orphan chunk, never a wrong row, and two processes
filling the same store never overwrite each other. Nothing is pickled.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..fileio import atomic_write_text

STORE_VERSION = 1


class ArrayStore:
    """Rows of one shape and dtype under ``root``; ``meta`` describes what produced them."""

    def __init__(self, root: Path, row_shape: Sequence[int], dtype: str, meta: dict | None = None) -> None:
        self.root = Path(root)
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = np.dtype(dtype)
        self.root.mkdir(parents=True, exist_ok=True)
        meta_file = self.root / "meta.json"
        if not meta_file.exists():
            atomic_write_text(meta_file, json.dumps({"version": STORE_VERSION, "row_shape": self.row_shape,
                                                     "dtype": self.dtype.str, **(meta or {})}, indent=2))
        self._index: dict[str, tuple[str, int]] = {}
        self._maps: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Read every chunk index on disk (also those other processes wrote)."""
        for index_file in sorted(self.root.glob("index-*.json")):
            chunk = index_file.stem.removeprefix("index-")
            try:
                keys = json.loads(index_file.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # a damaged index only costs recomputation
            for row, key in enumerate(keys):
                self._index.setdefault(key, (chunk, row))

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self._index]

    def _chunk(self, chunk: str) -> np.ndarray:
        array = self._maps.get(chunk)
        if array is None:
            array = np.load(self.root / f"chunk-{chunk}.npy", mmap_mode="r")
            self._maps[chunk] = array
        return array

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Rows for ``keys`` in order, as one ``(len(keys), *row_shape)`` array in RAM."""
        out = np.empty((len(keys), *self.row_shape), self.dtype)
        by_chunk: dict[str, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            chunk, row = self._index[key]
            by_chunk.setdefault(chunk, []).append((i, row))
        for chunk, pairs in by_chunk.items():
            pairs.sort(key=lambda p: p[1])  # read rows in file order
            positions, rows = zip(*pairs)
            out[list(positions)] = self._chunk(chunk)[list(rows)]
        return out

    def put(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Append rows (``(len(keys), *row_shape)``) as a new chunk."""
        if len(keys) == 0:
            return
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        chunk = uuid.uuid4().hex[:12]
        tmp = self.root / f".chunk-{chunk}.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, rows)
        os.replace(tmp, self.root / f"chunk-{chunk}.npy")
        atomic_write_text(self.root / f"index-{chunk}.json", json.dumps(list(keys)))
        with self._lock:
            for row, key in enumerate(keys):
                self._index.setdefault(key, (chunk, row))

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.glob("chunk-*.npy"))


def cache_summary(cache_dir: Path) -> list[dict]:
    """One entry per store under ``cache_dir``: kind, rows, size on disk, what produced it."""
    out = []
    for meta_file in sorted(Path(cache_dir).glob("*/*/meta.json")):
        store = meta_file.parent
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        rows = 0
        for index_file in store.glob("index-*.json"):
            try:
                rows += len(json.loads(index_file.read_text()))
            except (OSError, json.JSONDecodeError):
                pass
        size = sum(f.stat().st_size for f in store.glob("chunk-*.npy"))
        out.append({"kind": store.parent.name, "key": store.name, "rows": rows, "bytes": size,
                    "description": meta.get("description", "")})
    return out


def clear_cache(cache_dir: Path) -> int:
    """Delete every store under ``cache_dir``; returns the bytes freed."""
    freed = sum(entry["bytes"] for entry in cache_summary(cache_dir))
    for kind in ("decoded", "features"):
        shutil.rmtree(Path(cache_dir) / kind, ignore_errors=True)
    return freed
