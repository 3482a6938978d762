"""Size of a run's augmentation preview: the old PNG (compress_level=1) against the JPEG written now.

    python benchmarks/augment_grid_size.py [DATASET]   # default hymenoptera, 224 px, 8 images x 5 views
"""
from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from common import dataset

from graftkit.data import decode_size_for, scan_data
from graftkit.data.preview import augment_grid, decodable_samples, one_per_class, save_augment_grid


def main() -> None:
    data = dataset(sys.argv[1] if len(sys.argv) > 1 else "hymenoptera")
    scan = scan_data(data, verify=False)
    order = [scan.train[i] for i in one_per_class([s.label for s in scan.train], len(scan.train))]
    _, squares = decodable_samples(order, decode_size_for(224), 8)
    old = io.BytesIO()
    augment_grid(squares, 224, "light").save(old, "PNG", compress_level=1)  # what runs wrote before
    with tempfile.TemporaryDirectory() as tmp:
        new = save_augment_grid(Path(tmp) / "augmentations.jpg", squares, 224, "light").stat().st_size
        png = save_augment_grid(Path(tmp) / "augmentations.png", squares, 224, "light").stat().st_size
    old_size = len(old.getvalue())
    print(f"{data.name}, 8 images x (val crop + 5 views) at 224 px")
    print(f"  before: augmentations.png (PNG, compress_level=1): {old_size / 2**20:.2f} MiB")
    print(f"  now:    augmentations.jpg (JPEG, quality 85):      {new / 2**20:.2f} MiB  ({old_size / new:.1f}x smaller)")
    print(f"  (augment-preview --out x.png, optimised PNG:      {png / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
