from __future__ import annotations

from graftkit import scan_data
from graftkit.data.synthetic import write_digits_folder


def test_digits_folder_is_a_valid_split_dataset(tmp_path):
    root = write_digits_folder(tmp_path / "digits", image_size=16)
    scan = scan_data(root, min_size=None)
    assert scan.classes == [str(d) for d in range(10)]
    assert len(scan.train) + len(scan.val) == 1797
    assert 0.18 < len(scan.val) / 1797 < 0.22
    assert min(scan.class_counts("val").values()) >= 30
    # A second call reuses what is there.
    assert write_digits_folder(root, image_size=16) == root
