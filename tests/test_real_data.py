"""Checks on the real photo datasets in ../shared/datasets; skipped when that folder is absent."""
from __future__ import annotations

import pytest

from graftkit import TrainConfig, fit, scan_data

from .conftest import SHARED_DATASETS

HYMENOPTERA = SHARED_DATASETS / "hymenoptera"
needs_shared = pytest.mark.skipif(not HYMENOPTERA.is_dir(),
                                  reason=f"real datasets not found at {SHARED_DATASETS}")


@needs_shared
def test_hymenoptera_scans_clean():
    scan = scan_data(HYMENOPTERA)
    assert scan.layout == "splits" and scan.classes == ["ants", "bees"]
    assert (len(scan.train), len(scan.val)) == (244, 153)
    assert not scan.bad and not scan.ignored


@needs_shared
@pytest.mark.slow
def test_feature_extraction_on_hymenoptera(tmp_path):
    """About two minutes on 2 cores: run with `pytest -m slow`."""
    run = fit(TrainConfig(data_dir=HYMENOPTERA, strategy="feature-extraction", epochs=3,
                          out_dir=tmp_path / "fe", progress="none"))
    assert run.metrics["val_accuracy"] >= 0.93
