from __future__ import annotations

import numpy as np
import pytest
import torch

from graftkit import TrainConfig, fit
from graftkit.cache import ArrayStore, cache_summary

from .conftest import TINY


def test_array_store_roundtrip_and_reopen(tmp_path):
    store = ArrayStore(tmp_path / "s", (2, 3), "float32", {"description": "test"})
    store.put(["a", "b"], np.arange(12, dtype=np.float32).reshape(2, 2, 3))
    store.put(["c"], np.full((1, 2, 3), 7, np.float32))
    assert store.missing(["a", "c", "d", "d"]) == ["d"]
    again = ArrayStore(tmp_path / "s", (2, 3), "float32")
    got = again.get(["c", "a"])
    assert got[0].tolist() == [[7] * 3] * 2 and got[1].tolist() == [[0, 1, 2], [3, 4, 5]]


def _head_run(folder, out, cache: bool, views: int):
    from safetensors.torch import save_file

    import graftkit

    weights = out.parent / "tiny.safetensors"
    if not weights.exists():
        torch.manual_seed(123)
        save_file({k: v.contiguous() for k, v in graftkit.create_backbone("tiny_cnn").state_dict().items()},
                  str(weights))
    return fit(TrainConfig(data_dir=folder, strategy="feature-extraction", weights=weights, out_dir=out,
                           cache=cache, cache_views=views, augment="light", precision="fp32",
                           **{**TINY, "epochs": 3}))


@pytest.mark.parametrize("views", [1, 3])
def test_cached_and_uncached_head_training_give_the_same_model(split_folder, tmp_path, views):
    cached = _head_run(split_folder, tmp_path / "cached", cache=True, views=views)
    uncached = _head_run(split_folder, tmp_path / "uncached", cache=False, views=views)
    for key, value in cached.model.state_dict().items():
        torch.testing.assert_close(value, uncached.model.state_dict()[key], atol=1e-5, rtol=1e-4)
    assert [h["val_accuracy"] for h in cached.history] == [h["val_accuracy"] for h in uncached.history]


def test_second_run_reuses_decoded_images_and_features(split_folder, tmp_path, isolated_cache):
    first = _head_run(split_folder, tmp_path / "one", cache=True, views=2)
    rows_after_first = {e["key"]: e["rows"] for e in cache_summary(isolated_cache)}
    second = _head_run(split_folder, tmp_path / "two", cache=True, views=2)
    assert {e["key"]: e["rows"] for e in cache_summary(isolated_cache)} == rows_after_first
    kinds = sorted(e["kind"] for e in cache_summary(isolated_cache))
    assert kinds == ["decoded", "features"]
    features = next(e for e in cache_summary(isolated_cache) if e["kind"] == "features")
    assert features["rows"] == 24 * 2 + 9  # train images x views + val images x 1
    assert first.metrics["val_accuracy"] == second.metrics["val_accuracy"]


def test_partial_freeze_caches_the_prefix_and_trains_the_rest(split_folder, tmp_path, isolated_cache):
    # without augmentation every epoch sees the same crops: the frozen prefix is computed once
    run = fit(TrainConfig(data_dir=split_folder, strategy="fine-tune", freeze=2, out_dir=tmp_path / "p",
                          precision="fp32", augment="none", **TINY))
    descriptions = [e["description"] for e in cache_summary(isolated_cache) if e["kind"] == "features"]
    assert any("pooled features" in d for d in descriptions)     # head phase
    assert any("output of stages 0-1" in d for d in descriptions)  # fine-tune phase, first 2 frozen
    assert [p["name"] for p in run.metrics["phases"]] == ["head", "finetune"]
