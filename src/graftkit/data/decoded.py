"""Decode each image once: a uint8 cache of centred squares that every epoch and view reuses.

An image is keyed by a hash of its bytes, so renamed or copied files hit the cache and an edited
file misses it. Rows are ``(S, S, 3)`` uint8 with ``S = round(image_size / 0.875)``: the eval
transform is a centre crop of it, augmentation crops from it.
"""
from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from ..cache import ArrayStore
from .images import check_resize_plan, load_image, read_image_file, resize_center_square, to_rgb
from .scan import DECODE_ERRORS, describe_image_error

DECODER_VERSION = 1


def content_key(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_square(data: bytes, size: int) -> np.ndarray:
    """Bytes of an image file → ``(size, size, 3)`` uint8 RGB (EXIF applied, shorter side fitted)."""
    img = load_image(io.BytesIO(data), min_size=size)
    return np.array(resize_center_square(img, size), dtype=np.uint8)


def image_square(img: Image.Image, size: int) -> np.ndarray:
    """A Pillow image in memory → the ``(size, size, 3)`` uint8 square :func:`decode_square` makes of
    its file: EXIF orientation applied, RGB (transparency on white), shorter side fitted, centred."""
    check_resize_plan(*img.size)
    return np.array(resize_center_square(to_rgb(ImageOps.exif_transpose(img)), size), dtype=np.uint8)


class DecodedImages:
    """The decoded-image cache for one square size, filled while the data is scanned."""

    def __init__(self, cache_dir: Path, size: int, flush_every: int = 256) -> None:
        self.size = int(size)
        self.store = ArrayStore.in_cache(cache_dir, "decoded", f"v{DECODER_VERSION}-{self.size}px",
                                         (self.size, self.size, 3), "uint8",
                                         {"description": f"decoded RGB images, centred {self.size}px squares"})
        self.key_of: dict[Path, str] = {}
        self._pending_keys: list[str] = []
        self._pending_set: set[str] = set()
        self._pending_rows: list[np.ndarray] = []
        self._flush_every = flush_every
        self._lock = threading.Lock()
        self.decoded_now = 0

    def check_and_fill(self, path: Path) -> str | None:
        """Scan hook: read ``path`` once, decode it unless cached; return why it is bad, or None."""
        try:
            data = read_image_file(path)
        except DECODE_ERRORS as exc:  # unreadable, not a regular file, or too large
            return describe_image_error(exc)
        if not data:
            return "empty file (0 bytes)"
        key = content_key(data)
        with self._lock:
            self.key_of[Path(path)] = key
            if key in self.store or key in self._pending_set:
                return None
        try:
            row = decode_square(data, self.size)
        except DECODE_ERRORS as exc:
            return describe_image_error(exc)
        with self._lock:
            if key in self._pending_set:  # the same bytes twice (a duplicate file)
                return None
            self._pending_keys.append(key)
            self._pending_set.add(key)
            self._pending_rows.append(row)
            self.decoded_now += 1
            if len(self._pending_keys) >= self._flush_every:
                self._flush_locked()
        return None

    def _flush_locked(self) -> None:
        if self._pending_keys:
            self.store.put(self._pending_keys, np.stack(self._pending_rows))
            self._pending_keys, self._pending_rows, self._pending_set = [], [], set()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def keys(self, paths: Sequence[Path]) -> list[str]:
        """Cache keys of scanned paths (every path must have been through ``check_and_fill``)."""
        return [self.key_of[Path(p)] for p in paths]

    def get(self, keys: Sequence[str]) -> np.ndarray:
        return self.store.get(keys)
