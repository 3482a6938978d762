"""Datasets that ship inside dependencies or are generated: the demo and the tests need no network."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits_folder(out_dir: str | Path, image_size: int = 64) -> Path:
    """Write scikit-learn's bundled handwritten digits (1,797 8×8 scans) as an image folder.

    Layout ``out_dir/train/<digit>/*.png`` and ``out_dir/val/<digit>/*.png``, with the usual
    stratified 80/20 split (every fifth image of each class to val). Existing files are reused.
    """
    from sklearn.datasets import load_digits

    out = Path(out_dir)
    marker = out / ".complete"
    if marker.exists():
        return out
    digits = load_digits()
    seen: dict[int, int] = {}
    for image, label in zip(digits.images, digits.target):
        index = seen.get(int(label), 0)
        seen[int(label)] = index + 1
        split = "val" if index % 5 == 0 else "train"
        folder = out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (255 - image * (255 / 16)).clip(0, 255).astype(np.uint8)  # dark ink on white paper
        Image.fromarray(pixels, "L").resize((image_size, image_size), Image.BILINEAR).save(
            folder / f"{index:04d}.png")
    marker.write_text("ok\n")
    return out


def write_color_folder(out_dir: str | Path, classes: dict[str, tuple[int, int, int]] | None = None,
                       per_class: int = 8, image_size: int = 32, seed: int = 0) -> Path:
    """A tiny learnable dataset: each class is a colour plus noise (for tests and examples)."""
    classes = classes or {"red": (200, 40, 40), "blue": (40, 40, 200)}
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    for name, rgb in classes.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-30, 30, size=(image_size, image_size, 3))
            pixels = np.clip(np.array(rgb)[None, None] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "RGB").save(out / name / f"{i:03d}.png")
    return out
