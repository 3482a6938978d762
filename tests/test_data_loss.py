"""Issue 14, items 1-3: graftkit never destroys a user's files and never trusts a cache file unchecked."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from graftkit import TrainConfig, fit
from graftkit.cache import ArrayStore, cache_summary, clear_cache, ensure_cache_root
from graftkit.errors import ConfigError
from graftkit.scarce import subsample

from .conftest import TINY, invoke_graft, write_color_images


def _sha256_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


# --- 1. subsample never writes through a link into the source ------------------------------------

@pytest.fixture
def colliding_names(tmp_path: Path) -> Path:
    """Two classes whose images share file names across sub-folders: red/000.png, red/a/000.png, ..."""
    root = tmp_path / "nested"
    for sub, seed in (("", 1), ("a", 2), ("b", 3)):
        write_color_images(root / "red" / sub, (210, 40, 40), 4, seed=seed)
        write_color_images(root / "blue" / sub, (40, 40, 210), 4, seed=10 + seed)
    return root


@pytest.mark.parametrize("method", ["symlink", "copy"])
def test_subsample_with_colliding_names_leaves_every_source_file_unchanged(colliding_names, tmp_path,
                                                                           monkeypatch, method):
    before = _sha256_tree(colliding_names)
    if method == "copy":  # a file system without links: every image is copied
        def no_links(*args, **kwargs):
            raise OSError(1, "Operation not permitted")
        monkeypatch.setattr(os, "symlink", no_links)
        monkeypatch.setattr(os, "link", no_links)
    result = subsample(colliding_names, 5, tmp_path / "sub", seed=0, val_fraction=0.25)
    assert _sha256_tree(colliding_names) == before
    out = tmp_path / "sub"
    written = {p for p in out.rglob("*") if p.is_file() or p.is_symlink()} - {
        out / "subsample.json", out / "unlabeled_truth.csv"}
    # every source image appears exactly once, under a unique name, and the counts say so
    targets = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in written)
    assert targets == sorted(before.values())
    total = sum(result.train_counts.values()) + sum(result.val_counts.values()) + sum(result.unlabeled_counts.values())
    assert total == len(before) == 24
    assert result.train_counts == {"blue": 5, "red": 5}
    for split, counts in (("train", result.train_counts), ("val", result.val_counts)):
        for name, n in counts.items():
            assert len(list((out / split / name).iterdir())) == n
    assert len(list((out / "unlabeled").iterdir())) == sum(result.unlabeled_counts.values())
    assert result.link_method == method
    assert not any("failed" in w for w in result.warnings) if method == "symlink" else True


def test_subsample_refuses_an_out_folder_inside_the_data(colliding_names):
    before = _sha256_tree(colliding_names)
    with pytest.raises(ConfigError, match="inside DATA_DIR"):
        subsample(colliding_names, 2, colliding_names / "red" / "subset", seed=0)
    assert _sha256_tree(colliding_names) == before and not (colliding_names / "red" / "subset").exists()


# --- 2. cache clear deletes only what graftkit wrote ----------------------------------------------

def test_cache_clear_refuses_a_folder_graftkit_did_not_create(tmp_path):
    dataset = tmp_path / "dataset"
    write_color_images(dataset / "features" / "cat", (200, 10, 10), 3)
    write_color_images(dataset / "decoded" / "dog", (10, 10, 200), 3)
    before = _sha256_tree(dataset)
    with pytest.raises(ConfigError, match="not a graftkit cache"):
        clear_cache(dataset)
    result = invoke_graft_failing("cache", "clear", "--cache-dir", str(dataset))
    assert result.exit_code == 2 and "not a graftkit cache" in result.output and "Traceback" not in result.output
    assert _sha256_tree(dataset) == before
    with pytest.raises(ConfigError, match="not a graftkit cache"):  # nor does training write into it
        ensure_cache_root(dataset)


def invoke_graft_failing(*args: str):
    """The real entry point (``graftkit.cli.main``: one-line errors, exit codes) run in this process."""
    import contextlib
    import io
    import sys
    from types import SimpleNamespace
    from unittest import mock

    from graftkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", ["graft", *args]), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    return SimpleNamespace(exit_code=code, output=out.getvalue() + err.getvalue())


def test_cache_clear_deletes_only_graftkit_files_in_a_marked_cache(tmp_path):
    cache = tmp_path / "cache"
    store = ArrayStore.in_cache(cache, "features", "k1", (4,), "float32", {"description": "demo"})
    store.put(["x", "y"], np.ones((2, 4), np.float32))
    ArrayStore.in_cache(cache, "decoded", "v1-8px", (2,), "uint8").put(["a"], np.zeros((1, 2), np.uint8))
    mine = cache / "features" / "k1" / "notes.txt"       # a user's file inside a store
    mine.write_text("keep me")
    stranger = cache / "features" / "photos"               # a folder that is no store
    write_color_images(stranger, (1, 2, 3), 2)
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros(3))
    (cache / "decoded" / "link").symlink_to(tmp_path)      # a link is removed never, followed never
    chunks = sum(f.stat().st_size for f in cache.rglob("chunk-*.npy"))
    freed, left = clear_cache(cache)
    assert freed == chunks
    assert not list(cache.rglob("chunk-*.npy")) and not list(cache.rglob("index-*.json"))
    assert mine.read_text() == "keep me" and len(list(stranger.iterdir())) == 2 and outside.exists()
    assert (cache / "decoded" / "link").is_symlink()
    assert str(mine) in left and str(stranger) in left and str(cache / "decoded" / "link") in left
    assert not (cache / "decoded" / "v1-8px").exists()
    assert cache_summary(cache) == [e for e in cache_summary(cache) if e["key"] == "k1"]  # only the kept folder


def test_cache_cli_info_and_clear(tmp_path):
    cache = tmp_path / "c"
    ArrayStore.in_cache(cache, "decoded", "k", (2,), "uint8", {"description": "d"}).put(["a"], np.zeros((1, 2), np.uint8))
    assert "1 store(s)" in invoke_graft("cache", "info", "--cache-dir", str(cache)).output
    cleared = invoke_graft("cache", "clear", "--cache-dir", str(cache))
    assert "freed" in cleared.output and "left alone" not in cleared.output
    assert "0 store(s)" in invoke_graft("cache", "info", "--cache-dir", str(cache)).output
    assert "freed 0.0 MiB" in invoke_graft("cache", "clear", "--cache-dir", str(tmp_path / "never-made")).output


# --- 3. a damaged cache is detected and rebuilt ---------------------------------------------------

def _store_with_rows(tmp_path: Path) -> tuple[ArrayStore, Path]:
    store = ArrayStore.in_cache(tmp_path / "cache", "features", "k", (3,), "float32")
    store.put(["a", "b"], np.arange(6, dtype=np.float32).reshape(2, 3))
    (chunk,) = store.root.glob("chunk-*.npy")
    return store, chunk


def _damage(chunk: Path, how: str) -> None:
    data = bytearray(chunk.read_bytes())
    if how == "flip":           # same size, one value changed
        data[-1] ^= 0xFF
    elif how == "nan":          # a float written as NaN
        data[-4:] = np.array([np.nan], np.float32).tobytes()
    elif how == "random":
        data[:] = np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8).tobytes()
    elif how == "truncate":
        data = data[: len(data) // 2]
    chunk.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "nan", "random", "truncate"])
def test_a_damaged_chunk_is_dropped_with_one_warning_and_its_keys_are_missing(tmp_path, caplog, how):
    store, chunk = _store_with_rows(tmp_path)
    _damage(chunk, how)
    with caplog.at_level(logging.WARNING, logger="graftkit.cache"):
        reopened = ArrayStore(store.root, (3,), "float32")
        assert reopened.missing(["a", "b"]) == ["a", "b"]
        assert "a" not in reopened
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot be trusted" in warnings[0] and str(chunk) in warnings[0]
    assert not chunk.exists()  # graftkit's own damaged file is gone; the row is recomputed
    reopened.put(["a"], np.full((1, 3), 9, np.float32))
    assert ArrayStore(store.root, (3,), "float32").get(["a"]).tolist() == [[9, 9, 9]]


def test_an_intact_chunk_is_hashed_once_per_process(tmp_path, monkeypatch):
    store, _ = _store_with_rows(tmp_path)
    import graftkit.cache.store as store_module

    calls = []
    real = store_module._file_digest
    monkeypatch.setattr(store_module, "_file_digest", lambda p: calls.append(p) or real(p))
    reopened = ArrayStore(store.root, (3,), "float32")
    assert reopened.missing(["a", "b", "c"]) == ["c"]
    assert reopened.get(["b", "a"]).tolist() == [[3, 4, 5], [0, 1, 2]]
    assert "a" in reopened and len(calls) == 1


def test_index_without_checksum_from_an_older_graftkit_is_not_trusted(tmp_path):
    store, chunk = _store_with_rows(tmp_path)
    (index,) = store.root.glob("index-*.json")
    index.write_text(json.dumps(["a", "b"]))   # graftkit <= 0.1's index format: keys only
    assert ArrayStore(store.root, (3,), "float32").missing(["a"]) == ["a"] and not chunk.exists()


def test_two_stores_writing_the_same_folder_keep_each_others_rows(tmp_path):
    one = ArrayStore.in_cache(tmp_path / "c", "features", "k", (2,), "float32")
    two = ArrayStore.in_cache(tmp_path / "c", "features", "k", (2,), "float32")
    one.put(["a"], np.ones((1, 2), np.float32))
    two.put(["b"], np.full((1, 2), 2, np.float32))
    two.put(["a"], np.full((1, 2), 5, np.float32))  # a race: both computed "a"
    three = ArrayStore(one.root, (2,), "float32")
    assert three.missing(["a", "b"]) == [] and three.get(["b"]).tolist() == [[2, 2]]
    assert three.get(["a"]).tolist() in ([[1, 1]], [[5, 5]])


def _fe_run(data: Path, out: Path, cache: bool) -> dict:
    return fit(TrainConfig(data_dir=data, strategy="feature-extraction", out_dir=out, cache=cache,
                           precision="fp32", seed=3, **{**TINY, "epochs": 3})).metrics


@pytest.mark.parametrize("kind", ["decoded", "features"])
def test_a_run_on_a_corrupted_cache_rebuilds_it_and_matches_the_uncached_run(split_folder, tmp_path,
                                                                            isolated_cache, caplog, kind):
    reference = _fe_run(split_folder, tmp_path / "nocache", cache=False)
    first = _fe_run(split_folder, tmp_path / "warm", cache=True)
    assert first["val_accuracy"] == reference["val_accuracy"]
    chunks = sorted((isolated_cache / kind).rglob("chunk-*.npy"))
    assert chunks
    for chunk in chunks:
        _damage(chunk, "random")
    with caplog.at_level(logging.WARNING, logger="graftkit.cache"):
        again = _fe_run(split_folder, tmp_path / "again", cache=True)
    warnings = [r.getMessage() for r in caplog.records if r.name == "graftkit.cache"]
    assert len(warnings) == len(chunks) and all("rebuilding" in w for w in warnings)
    assert again["val_accuracy"] == reference["val_accuracy"]
    assert again["val_loss"] == pytest.approx(reference["val_loss"], abs=1e-5)


# --- the two model files belong together ---------------------------------------------------------

def test_weights_from_another_run_or_a_torn_write_are_caught_on_load(split_folder, tmp_path):
    import graftkit
    from graftkit.errors import CheckpointError

    one = fit(TrainConfig(data_dir=split_folder, strategy="feature-extraction", out_dir=tmp_path / "one",
                          seed=1, **{**TINY, "epochs": 1}))
    two = fit(TrainConfig(data_dir=split_folder, strategy="feature-extraction", out_dir=tmp_path / "two",
                          seed=2, **{**TINY, "epochs": 1}))
    graftkit.load(one.out_dir)  # intact pair: loads
    # model.safetensors rewritten, model.json not (a full disk between the two writes)
    (one.out_dir / "model.safetensors").write_bytes((two.out_dir / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="is not the file"):
        graftkit.load(one.out_dir)
    # a model.json from before this check (no digest) still loads
    meta = json.loads((two.out_dir / "model.json").read_text())
    del meta["weights_blake2b"]
    (two.out_dir / "model.json").write_text(json.dumps(meta))
    graftkit.load(two.out_dir)
