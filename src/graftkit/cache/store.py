"""A keyed, append-only, memory-mapped array store on disk, checked before it is trusted.

Rows (one decoded image, or one image's features for one view) are found by a string key. Each
``put`` writes a new chunk file (``.npy``, read back with ``mmap_mode="r"``) and then its index
(atomically), so a crash leaves at worst an orphan chunk, never a wrong row, and two processes
filling the same store never overwrite each other. Nothing is pickled.

Nothing on disk is trusted blindly. The index of a chunk records the chunk's size and a blake2b
checksum computed while it was written. When a store is opened, every chunk's size is compared with
its index (a ``stat``: cheap at any cache size); the first time a process asks for a chunk's rows
(``in``, ``missing``, ``get``) the whole chunk is hashed once. A short, missing or altered chunk is
deleted together with its index, with one warning line, and its keys count as missing, so the
caller recomputes them (the decoded-image cache decodes again, the feature cache runs the backbone
again) and the run goes on with correct data.

A cache folder is marked by a ``CACHEDIR.TAG`` file (the cache-directory tagging convention, which
backup tools honour) holding graftkit's cache format. graftkit writes into a folder only if it holds
the marker or is new or empty, and ``clear_cache`` deletes only files it recognises as its own inside
a marked folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
import uuid
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConfigError, GraftError
from ..fileio import atomic_write_text

STORE_VERSION = 2
CACHE_FORMAT = 2
MARKER = "CACHEDIR.TAG"
MARKER_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
KINDS = ("decoded", "features")

log = logging.getLogger("graftkit.cache")


class CacheError(GraftError):
    """A cache file changed while this process was using it."""


def _marker_text() -> str:
    return (f"{MARKER_SIGNATURE}\n# This folder is a cache written by graftkit: decoded images and frozen\n"
            f"# features, recomputed when missing. 'graft cache clear' empties it.\n"
            f"graftkit-cache-format: {CACHE_FORMAT}\n")


def is_graftkit_cache(cache_dir: Path) -> bool:
    """True when ``cache_dir`` holds graftkit's marker file."""
    marker = Path(cache_dir) / MARKER
    try:
        if marker.is_symlink() or not marker.is_file():
            return False
        text = marker.read_text(errors="replace")
    except OSError:
        return False
    return text.startswith(MARKER_SIGNATURE) and "graftkit-cache-format:" in text


def _looks_like_old_graftkit_cache(cache_dir: Path) -> bool:
    """A folder written by graftkit before the marker existed: only ``decoded/`` and ``features/``
    holding store folders (each with a ``meta.json``)."""
    for entry in os.scandir(cache_dir):
        if entry.name not in KINDS or not entry.is_dir(follow_symlinks=False):
            return False
        for store in os.scandir(entry.path):
            if not store.is_dir(follow_symlinks=False) or not os.path.isfile(os.path.join(store.path, "meta.json")):
                return False
    return True


def ensure_cache_root(cache_dir: Path) -> Path:
    """Make ``cache_dir`` a graftkit cache (new, empty or already marked), or refuse it.

    Raises:
        ConfigError: the folder holds files graftkit did not write (e.g. a dataset passed as
            ``--cache-dir``): nothing is written there.
    """
    root = Path(cache_dir)
    if is_graftkit_cache(root):
        return root
    if root.is_symlink() and not root.exists():
        raise ConfigError(f"cache folder '{root}' is a broken symbolic link; pass --cache-dir with a folder.")
    if root.exists():
        if not root.is_dir():
            raise ConfigError(f"cache folder '{root}' is a file, not a folder; pass --cache-dir with a new folder.")
        if any(True for _ in os.scandir(root)) and not _looks_like_old_graftkit_cache(root):
            names = sorted(e.name for e in os.scandir(root))[:3]
            raise ConfigError(f"'{root}' is not a graftkit cache (it holds {', '.join(names)}, and no {MARKER}); "
                              f"graftkit writes nothing there. Pass --cache-dir with a new or empty folder.")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(root / MARKER, _marker_text())
    return root


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, f) -> None:
        self.f, self.hash, self.size = f, hashlib.blake2b(digest_size=16), 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.hash.update(view)
        self.size += view.nbytes
        return self.f.write(view)

    def flush(self) -> None:
        self.f.flush()


def _file_digest(path: Path) -> tuple[int, str]:
    digest, size = hashlib.blake2b(digest_size=16), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


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
        self._chunks: dict[str, dict] = {}       # chunk -> its index record (keys, bytes, blake2b)
        self._verified: set[str] = set()
        self._maps: dict[str, np.ndarray] = {}
        self._lock = threading.RLock()
        self.refresh()

    @classmethod
    def in_cache(cls, cache_dir: Path, kind: str, name: str, row_shape: Sequence[int], dtype: str,
                 meta: dict | None = None) -> "ArrayStore":
        """The store ``cache_dir/kind/name``, after checking (or marking) ``cache_dir`` as graftkit's."""
        return cls(ensure_cache_root(cache_dir) / kind / name, row_shape, dtype, meta)

    def refresh(self) -> None:
        """Read every chunk index on disk (also those other processes wrote); size-check each chunk."""
        legacy = 0
        with self._lock:
            for index_file in sorted(self.root.glob("index-*.json")):
                chunk = index_file.stem.removeprefix("index-")
                if chunk in self._chunks:
                    continue
                try:
                    record = json.loads(index_file.read_text())
                except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                    self._drop(chunk, "its index is unreadable")
                    continue
                if not (isinstance(record, dict) and isinstance(record.get("keys"), list)
                        and isinstance(record.get("bytes"), int) and isinstance(record.get("blake2b"), str)):
                    self._drop(chunk, "", quiet=True)
                    legacy += 1
                    continue
                try:
                    size = (self.root / f"chunk-{chunk}.npy").stat().st_size
                except OSError:
                    size = -1
                if size != record["bytes"]:
                    self._drop(chunk, f"its file is {'missing' if size < 0 else f'{size} bytes'}, "
                                      f"not the {record['bytes']} bytes written")
                    continue
                self._chunks[chunk] = record
                for row, key in enumerate(record["keys"]):
                    self._index.setdefault(str(key), (chunk, row))
        if legacy:
            log.warning("warning: %d cache chunk(s) in '%s' were written by an older graftkit without "
                        "checksums; rebuilding them", legacy, self.root)

    def _drop(self, chunk: str, why: str, quiet: bool = False) -> None:
        """Forget a damaged chunk and delete its files (graftkit wrote them), with one warning line."""
        record = self._chunks.pop(chunk, None)
        if record is not None:
            for key in record["keys"]:
                if self._index.get(key, (None,))[0] == chunk:
                    del self._index[key]
        self._maps.pop(chunk, None)
        self._verified.discard(chunk)
        for name in (f"chunk-{chunk}.npy", f"index-{chunk}.json"):
            try:
                (self.root / name).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.debug("could not delete %s: %s", self.root / name, exc)
        if quiet:
            return
        log.warning("warning: cache chunk '%s' cannot be trusted (%s); rebuilding it",
                    self.root / f"chunk-{chunk}.npy", why)

    def _verify(self, chunk: str) -> bool:
        """Hash a chunk the first time this process uses it; drop it (False) when it does not match."""
        if chunk in self._verified:
            return True
        record = self._chunks.get(chunk)
        if record is None:
            return False
        try:
            size, digest = _file_digest(self.root / f"chunk-{chunk}.npy")
        except OSError as exc:
            self._drop(chunk, f"it cannot be read: {exc.strerror or exc}")
            return False
        if size != record["bytes"] or digest != record["blake2b"]:
            self._drop(chunk, "its checksum does not match what was written")
            return False
        self._verified.add(chunk)
        return True

    def _has(self, key: str) -> bool:
        found = self._index.get(key)
        return found is not None and self._verify(found[0])

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._has(key)

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, keys: Iterable[str]) -> list[str]:
        """Keys without a trusted row (checking, once, each chunk the others live in)."""
        with self._lock:
            return [k for k in dict.fromkeys(keys) if not self._has(k)]

    def _chunk(self, chunk: str) -> np.ndarray:
        array = self._maps.get(chunk)
        if array is None:
            with self._lock:
                if not self._verify(chunk):
                    raise CacheError(f"cache chunk '{self.root / f'chunk-{chunk}.npy'}' changed while this run "
                                     f"was using it; it was deleted: run the command again to rebuild it.")
                path = self.root / f"chunk-{chunk}.npy"
                try:
                    array = np.load(path, mmap_mode="r")
                except (OSError, ValueError) as exc:
                    self._drop(chunk, f"numpy cannot read it: {exc}")
                    raise CacheError(f"cache chunk '{path}' is damaged and was deleted; run the command again "
                                     f"to rebuild it.") from None
                if array.shape[1:] != self.row_shape or array.dtype != self.dtype:
                    self._drop(chunk, f"it holds {array.dtype} rows of {array.shape[1:]}")
                    raise CacheError(f"cache chunk '{path}' does not match its store and was deleted; run the "
                                     f"command again to rebuild it.")
                self._maps[chunk] = array
        return array

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Rows for ``keys`` in order, as one ``(len(keys), *row_shape)`` array in RAM."""
        out = np.empty((len(keys), *self.row_shape), self.dtype)
        by_chunk: dict[str, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            found = self._index.get(key)
            if found is None:
                raise CacheError(f"cache store '{self.root}' has no row for {key!r} (a damaged chunk was deleted "
                                 f"while this run used it); run the command again to rebuild it.")
            chunk, row = found
            by_chunk.setdefault(chunk, []).append((i, row))
        for chunk, pairs in by_chunk.items():
            pairs.sort(key=lambda p: p[1])  # read rows in file order
            positions, rows = zip(*pairs)
            out[list(positions)] = self._chunk(chunk)[list(rows)]
        return out

    def put(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """Append rows (``(len(keys), *row_shape)``) as a new chunk, with its size and checksum."""
        if len(keys) == 0:
            return
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        chunk = uuid.uuid4().hex[:12]
        tmp = self.root / f".chunk-{chunk}.npy.tmp"
        try:
            with open(tmp, "wb") as f:
                writer = _HashingWriter(f)
                np.save(writer, rows)
            os.replace(tmp, self.root / f"chunk-{chunk}.npy")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        record = {"version": STORE_VERSION, "keys": list(keys), "bytes": writer.size,
                  "blake2b": writer.hash.hexdigest()}
        atomic_write_text(self.root / f"index-{chunk}.json", json.dumps(record))
        with self._lock:
            self._chunks[chunk] = record
            self._verified.add(chunk)   # hashed while written by this process
            for row, key in enumerate(keys):
                self._index.setdefault(key, (chunk, row))

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.glob("chunk-*.npy"))


def cache_summary(cache_dir: Path) -> list[dict]:
    """One entry per store under ``cache_dir``: kind, rows, size on disk, what produced it."""
    out = []
    for kind in KINDS:
        for meta_file in sorted((Path(cache_dir) / kind).glob("*/meta.json")):
            store = meta_file.parent
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                meta = {}
            rows = 0
            for index_file in store.glob("index-*.json"):
                try:
                    record = json.loads(index_file.read_text())
                    rows += len(record["keys"] if isinstance(record, dict) else record)
                except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                    pass
            size = sum(f.stat().st_size for f in store.glob("chunk-*.npy") if f.is_file())
            out.append({"kind": kind, "key": store.name, "rows": rows, "bytes": size,
                        "description": meta.get("description", "") if isinstance(meta, dict) else ""})
    return out


def _is_store_file(name: str) -> bool:
    """Names graftkit writes inside a store folder (atomic writes leave ``.NAME.XXXX.tmp`` on a crash)."""
    if name == "meta.json":
        return True
    if (name.startswith("chunk-") and name.endswith(".npy")) or (name.startswith("index-") and name.endswith(".json")):
        return True
    return name.startswith((".chunk-", ".index-", ".meta.json.")) and name.endswith(".tmp")


def clear_cache(cache_dir: Path) -> tuple[int, list[str]]:
    """Delete the stores graftkit wrote under ``cache_dir``; returns (bytes freed, what was left alone).

    Only a folder holding graftkit's marker is touched, and inside it only store folders (with a
    ``meta.json``) under ``decoded/`` and ``features/`` and the files graftkit names that way; anything
    else (and any symbolic link) stays, and is listed in the second value.

    Raises:
        ConfigError: ``cache_dir`` exists but is not a graftkit cache; nothing is deleted.
    """
    root = Path(cache_dir)
    if not root.exists():
        return 0, []
    if not is_graftkit_cache(root):
        if root.is_dir() and not any(True for _ in os.scandir(root)):
            return 0, []
        raise ConfigError(f"'{root}' is not a graftkit cache (no {MARKER} written by graftkit); nothing was "
                          f"deleted. Check --cache-dir; to remove a cache from an older graftkit, delete the "
                          f"folder yourself.")
    freed, left = 0, []
    for kind in KINDS:
        kind_dir = root / kind
        if kind_dir.is_symlink() or not kind_dir.is_dir():
            if kind_dir.is_symlink():
                left.append(str(kind_dir))
            continue
        for store in os.scandir(kind_dir):
            if not store.is_dir(follow_symlinks=False) or not os.path.isfile(os.path.join(store.path, "meta.json")):
                left.append(store.path)
                continue
            for entry in os.scandir(store.path):
                info = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(info.st_mode) or not _is_store_file(entry.name):
                    left.append(entry.path)
                    continue
                os.unlink(entry.path)
                if entry.name.startswith("chunk-"):
                    freed += info.st_size
            try:
                os.rmdir(store.path)
            except OSError:
                pass
        try:
            os.rmdir(kind_dir)
        except OSError:
            pass
    for entry in os.scandir(root):
        if entry.name not in (*KINDS, MARKER):
            left.append(entry.path)
    return freed, sorted(left)
