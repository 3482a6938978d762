"""A grid of augmented training samples: what the model sees, next to what validation sees."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import ConfigError, DataError
from ..fileio import atomic_write_bytes
from .transforms import build_batch_mix, build_eval_transform, build_train_transform

CELL_GAP = 2


def augment_grid(squares: Sequence[np.ndarray], image_size: int, augment: str, num_views: int = 5,
                 mixup: float = 0.0, cutmix: float = 0.0, seed: int = 0,
                 titles: Sequence[str] | None = None) -> Image.Image:
    """One row per image: the validation crop, then ``num_views`` training augmentations.

    With MixUp/CutMix on, a last row shows one mixed batch of the first views.

    Args:
        squares: decoded images, ``(S, S, 3)`` uint8 each (as the decoded-image cache holds them).
        image_size: the model's input size.
        augment: a preset name or pipeline file (``build_train_transform``).
    """
    zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # no normalisation: pixels stay in [0, 1]
    train_tf = build_train_transform(image_size, zero, one, augment)
    eval_tf = build_eval_transform(image_size, zero, one)
    rows: list[list[torch.Tensor]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for square in squares:
            image = torch.from_numpy(np.ascontiguousarray(square)).permute(2, 0, 1)
            rows.append([eval_tf(image)] + [train_tf(image) for _ in range(num_views)])
        mix = build_batch_mix(mixup, cutmix, max(2, len(squares)))
        if mix is not None and len(rows) > 1:
            batch = torch.stack([row[1] for row in rows])
            mixed, _ = mix(batch, torch.arange(len(rows)))
            rows.append([torch.zeros_like(batch[0]), *list(mixed[:num_views])])
    columns = num_views + 1
    cell = image_size + CELL_GAP
    header = 12
    grid = Image.new("RGB", (columns * cell, header + len(rows) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    draw.text((2, 0), "val", fill=(0, 0, 0))
    draw.text((cell + 2, 0), f"train: {Path(augment).name}" + (" + mix" if mixup or cutmix else ""),
              fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, tensor in enumerate(row):
            pixels = (tensor.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            grid.paste(Image.fromarray(pixels), (c * cell, header + r * cell))
        if titles is not None and r < len(titles):
            draw.text((2, header + r * cell + 1), titles[r][:12], fill=(255, 255, 0))
    return grid


GRID_NAME = "augmentations.jpg"  # in a run folder; runs before 0.2 wrote augmentations.png
PREVIEW_SUFFIXES = (".jpg", ".jpeg", ".png")


def save_augment_grid(path: Path, squares: Sequence[np.ndarray], image_size: int, augment: str,
                      **options) -> Path:
    """Write ``augment_grid(...)`` at ``path``: a JPEG (quality 85: for a grid of photos at 224 px
    0.6 MB instead of a 4 MB PNG, benchmarks/augment_grid_size.py), or a PNG if ``path`` ends in .png."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = augment_grid(squares, image_size, augment, **options)
    buffer = io.BytesIO()
    if path.suffix.lower() == ".png":
        grid.save(buffer, "PNG", optimize=True)
    else:
        grid.save(buffer, "JPEG", quality=85, optimize=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def one_per_class(labels: Sequence[int], limit: int = 8) -> list[int]:
    """Indices of up to ``limit`` items, taking classes in turn so every class shows."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    picked: list[int] = []
    depth = 0
    while len(picked) < limit and any(depth < len(v) for v in by_class.values()):
        for members in by_class.values():
            if depth < len(members) and len(picked) < limit:
                picked.append(members[depth])
        depth += 1
    return picked


def check_preview_out(path: Path) -> None:
    """Refuse an output that cannot become the PNG (another suffix, an existing folder) up front."""
    path = Path(path)
    if path.suffix.lower() not in PREVIEW_SUFFIXES:
        raise ConfigError(f"--out '{path}' must be a .jpg or .png file (the preview is an image).")
    if path.is_dir():
        raise ConfigError(f"--out '{path}' is an existing folder; pass a file name such as '{path / GRID_NAME}'.")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"--out '{path}': '{path.parent}' is a file, not a folder. Pass another --out.")


def decodable_samples(samples: Sequence, decode_size: int, limit: int, on_skip=None) -> tuple[list, list[np.ndarray]]:
    """The first ``limit`` of ``samples`` that decode, with their squares; the others are reported
    through ``on_skip(path, reason)`` and replaced by the next ones."""
    from .decoded import decode_square
    from .images import read_image_file
    from .scan import DECODE_ERRORS, describe_image_error

    picked, squares = [], []
    for sample in samples:
        if len(picked) >= limit:
            break
        try:
            squares.append(decode_square(read_image_file(sample.path), decode_size))
            picked.append(sample)
        except DECODE_ERRORS as exc:
            if on_skip is not None:
                on_skip(sample.path, describe_image_error(exc))
    if not picked:
        raise DataError(f"none of the {len(samples)} training images could be read. Run 'graft check-data'.")
    return picked, squares
