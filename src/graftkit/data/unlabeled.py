"""A folder of unlabelled images (for pseudo-labelling and self-supervised pretraining)."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .decoded import DecodedImages
from .images import is_image_name
from .scan import walk_files


def find_unlabeled_images(folder: Path, decoded: DecodedImages) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under ``folder`` (recursive), decoded into the cache; unreadable ones apart."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"unlabelled folder '{folder}' does not exist or is not a folder. Check --unlabeled.")
    good, bad = [], []
    for path in (f for f in walk_files(folder) if is_image_name(f)):
        reason = decoded.check_and_fill(path)
        if reason is None:
            good.append(path)
        else:
            bad.append((path, reason))
    decoded.flush()
    if not good:
        raise DataError(f"no readable images under '{folder}'"
                        + (f" ({len(bad)} unreadable, e.g. {bad[0][0]}: {bad[0][1]})" if bad else "")
                        + ". Pass a folder of unlabelled images to --unlabeled.")
    return good, bad
