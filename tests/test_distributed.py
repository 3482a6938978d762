"""Distributed data parallel on torchrun (gloo on CPU) and its single-process reference, --accumulate."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graftkit import TrainConfig, fit
from graftkit.data import batch_order, step_share

from .conftest import TINY, graft, write_color_images

# What the equality of a distributed run and one process needs: no dropout, no augmentation, fp32,
# BatchNorm frozen (fine-tune's default: train_bn off) and the same sample order (the same seed).
EXACT = ["--backbone", "tiny_cnn", "--image-size", "32", "--device", "cpu", "--precision", "fp32",
         "--dropout", "0", "--augment", "none", "--head-epochs", "2", "--finetune-epochs", "1",
         "--batch-size", "6", "--lr", "0.05", "--finetune-lr", "0.01", "--checkpoint-every", "0", "--plain"]


# AdamW divides by the root of the squared gradients: an element whose gradient is near zero turns
# rounding differences (summing in parts, or over ranks) into visible ones, ~3e-6 here.
WEIGHT_ATOL = 1e-5


def _odd_split(root: Path) -> Path:
    """train/ (3 classes x 7: 21 images, batches of 6 drop 3) + val/ (3 x 3 = 9: odd over 2 ranks)."""
    for i, (name, rgb) in enumerate({"red": (210, 40, 40), "green": (40, 210, 40), "blue": (40, 40, 210)}.items()):
        write_color_images(root / "train" / name, rgb, 7, seed=i)
        write_color_images(root / "val" / name, rgb, 3, seed=10 + i)
    return root


def test_shards_are_disjoint_and_make_up_each_global_batch():
    def plan(shard):
        return batch_order(23, 8, True, torch.Generator().manual_seed(3), True, shard)

    whole, parts = plan((0, 1)), [plan((rank, 3)) for rank in range(3)]
    assert len(whole) == 2 and all(len(p) == len(whole) for p in parts)  # every rank takes every step
    for step, batch in enumerate(whole):
        pieces = [set(p[step]) for p in parts]
        assert set().union(*pieces) == set(batch) and sum(map(len, pieces)) == len(batch)
    assert step_share(23, 8, (0, 2)) == 4 and step_share(5, 8, (1, 2)) == 2.5


def test_accumulate_gives_the_weights_of_one_part(tmp_path):
    """Uneven parts too: a batch of 6 in 4 parts is 2 + 2 + 1 + 1, each weighted by its share."""
    data = _odd_split(tmp_path / "data")
    common = dict({k: v for k, v in TINY.items() if k != "batch_size"}, precision="fp32", dropout=0.0,
                  augment="none", epochs=None, head_epochs=2, finetune_epochs=1, lr=0.05, finetune_lr=0.01,
                  cache_dir=tmp_path / "cache")
    runs = {(batch_size, accumulate): fit(TrainConfig(data_dir=data, out_dir=tmp_path / f"b{batch_size}a{accumulate}",
                                                      batch_size=batch_size, accumulate=accumulate, **common))
            for batch_size, accumulate in ((6, 1), (6, 4), (7, 1))}
    one, parts = runs[6, 1].model.state_dict(), runs[6, 4].model.state_dict()
    for name, tensor in one.items():
        torch.testing.assert_close(parts[name], tensor, rtol=1e-4, atol=WEIGHT_ATOL, msg=name)
    assert [r["train_images"] for r in runs[6, 4].history] == [18] * 3
    moved = one["head.1.weight"] - runs[7, 1].model.state_dict()["head.1.weight"]
    assert moved.abs().max() > 100 * WEIGHT_ATOL  # the batch matters: the comparison above could fail


@pytest.mark.parametrize("args, message", [
    (["--nproc", "4096"], "more processes than this machine's"),
    (["--nproc", "2", "--lr-find"], "run in one process"),
    (["--nproc", "2", "--freeze", "auto"], "run in one process"),
    (["--sync-bn"], "SyncBatchNorm has no CPU kernel"),
    (["--accumulate", "0"], "--accumulate must be >= 1"),
    (["--batch-size", "2", "--accumulate", "3"], "cannot be split into 3 parts"),
])
def test_unsupported_distributed_setups_exit_2_in_one_line(split_folder, tmp_path, args, message):
    result = graft("train", str(split_folder), "--backbone", "tiny_cnn", "--image-size", "32", "--device", "cpu",
                   "--out", str(tmp_path / "run"), "--quiet", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_python_m_graftkit_version_does_not_import_torch():
    code = ("import runpy, sys\nsys.argv = ['graftkit', '--version']\ntry:\n"
            "    runpy.run_module('graftkit', run_name='__main__')\nexcept SystemExit as exc:\n"
            "    assert exc.code in (0, None), exc.code\nprint('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["graftkit", "0.1.0", "False"]


def _predictions(run: Path) -> list[dict]:
    with (run / "predictions.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_torchrun_ranks_train_as_one_process_with_the_same_global_batch(tmp_path, capfd):
    """``graft train --nproc 2`` (torchrun, gloo) against one process with ``--accumulate 2``."""
    data = _odd_split(tmp_path / "data")
    single = graft("train", str(data), *EXACT, "--accumulate", "2", "--out", str(tmp_path / "one"),
                   "--cache-dir", str(tmp_path / "cache-one"))
    assert single.returncode == 0, single.stderr
    capfd.readouterr()
    ddp = graft("train", str(data), *EXACT, "--nproc", "2", "--out", str(tmp_path / "two"),
                "--cache-dir", str(tmp_path / "cache-two"))
    assert ddp.returncode == 0, ddp.stderr
    printed = capfd.readouterr().out  # the ranks print to the terminal, not through this process
    one, two = tmp_path / "one", tmp_path / "two"
    # only rank 0 wrote: one history row per epoch (not two), the same files as one process
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    history = [json.loads(line) for line in (two / "history.jsonl").read_text().splitlines()]
    single_history = [json.loads(line) for line in (one / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    # the ranks' shares add up to one process's images (18 of 21: batches of 6, the rest dropped)
    assert [r["train_images"] for r in history] == [r["train_images"] for r in single_history] == [18] * 3
    # validation: each of the 9 images scored once, in order, and the metrics are those of one process
    metrics, single_metrics = (json.loads((run / "metrics.json").read_text()) for run in (two, one))
    rows, single_rows = _predictions(two), _predictions(one)
    assert [r["path"] for r in rows] == [r["path"] for r in single_rows] and len({r["path"] for r in rows}) == 9
    assert metrics["num_val"] == 9 and metrics["world_size"] == 2
    assert metrics["val_accuracy"] == pytest.approx(sum(r["label"] == r["predicted"] for r in rows) / 9)
    assert metrics["val_accuracy"] == pytest.approx(single_metrics["val_accuracy"])
    assert metrics["val_loss"] == pytest.approx(single_metrics["val_loss"], rel=1e-5)
    # the weights: those of one process with the same global batch, to float tolerance
    weights, single_weights = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
    for name, tensor in single_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=WEIGHT_ATOL, msg=name)
    assert printed.count("epoch  1/3") == 1 and printed.count("val_accuracy") == 1  # rank 0 speaks for all


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_one_line(split_folder, tmp_path, capfd):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # rank 0 refuses to overwrite a finished run
    result = graft("train", str(split_folder), *EXACT, "--nproc", "2", "--out", str(out))
    ranks = capfd.readouterr().err  # what the ranks printed themselves
    assert result.returncode == 2  # not a hang: rank 1, waiting for rank 0, was stopped
    assert result.stderr.strip().splitlines()[-1] == ("error: rank 0 of 2 failed (exit code 2); the other ranks "
                                                      "were stopped. Its message is above.")
    assert "already holds a run" in ranks and "Traceback" not in ranks


@pytest.mark.slow
def test_a_run_resumes_on_two_ranks_where_one_process_stopped(tmp_path, monkeypatch):
    """Interrupted after its first epoch in one process, resumed with --nproc 2: the weights of the
    uninterrupted run (checkpoint, sample order and history carry over; the global batch is the same)."""
    import importlib

    fit_module = importlib.import_module("graftkit.engine.fit")
    data = _odd_split(tmp_path / "data")
    common = ["--cache-dir", str(tmp_path / "cache"), *EXACT]
    assert graft("train", str(data), *common, "--out", str(tmp_path / "whole")).returncode == 0
    real = fit_module._train_epoch

    def stop_in_second_epoch(*args, **kwargs):
        if args[5] == 1:  # the global epoch index
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(fit_module, "_train_epoch", stop_in_second_epoch)
        assert graft("train", str(data), *common, "--out", str(tmp_path / "cut")).returncode == 130
    resumed = graft("train", "--resume", str(tmp_path / "cut"), "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr
    rows = [json.loads(line) for line in (tmp_path / "cut" / "history.jsonl").read_text().splitlines()]
    whole = [json.loads(line) for line in (tmp_path / "whole" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["val_loss"] for r in rows] == pytest.approx([r["val_loss"] for r in whole], rel=1e-5)
    weights, reference = (load_file(tmp_path / run / "model.safetensors") for run in ("cut", "whole"))
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=WEIGHT_ATOL, msg=name)
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["world_size"] == 2
