"""No flag is silently ignored: --epochs under fine-tune is the total, options a strategy would not
use are refused, and the report shows the values the run used."""
from __future__ import annotations

import json

import pytest

from graftkit import ConfigError, TrainConfig
from graftkit.config import split_fine_tune_epochs
from graftkit.workflows.compare import budget_fields

from .conftest import TINY, graft

TINY_FLAGS = ["--backbone", "tiny_cnn", "--image-size", "32", "--batch-size", "8", "--device", "cpu"]


def _epochs(cfg: TrainConfig) -> tuple:
    return cfg.epochs, cfg.head_epochs, cfg.finetune_epochs


def test_epochs_under_fine_tune_is_the_total_split_as_compare_splits_a_budget(tmp_path):
    assert _epochs(TrainConfig(data_dir=tmp_path)) == (6, 2, 4)
    assert _epochs(TrainConfig(data_dir=tmp_path, epochs=20)) == (20, *split_fine_tune_epochs(20)) == (20, 6, 14)
    assert budget_fields("fine-tune", 20) == {"head_epochs": 6, "finetune_epochs": 14}  # one rule for both
    assert _epochs(TrainConfig(data_dir=tmp_path, epochs=20, head_epochs=5)) == (20, 5, 15)
    assert _epochs(TrainConfig(data_dir=tmp_path, epochs=20, finetune_epochs=5)) == (20, 15, 5)
    assert _epochs(TrainConfig(data_dir=tmp_path, head_epochs=1, finetune_epochs=3)) == (4, 1, 3)
    assert _epochs(TrainConfig(data_dir=tmp_path, strategy="scratch", epochs=7)) == (7, None, None)
    # one source of truth: a config rebuilt from its own dict (config.json) is the same config
    cfg = TrainConfig(data_dir=tmp_path, epochs=20)
    assert TrainConfig(**cfg.to_dict()) == cfg
    assert _epochs(cfg.replace(finetune_epochs=2)) == (8, 6, 2)  # the total follows a changed phase


@pytest.mark.parametrize("given", [dict(epochs=20, head_epochs=2, finetune_epochs=4), dict(epochs=3, head_epochs=5),
                                   dict(epochs=1)])
def test_epochs_that_disagree_with_the_phases_are_an_error_naming_the_flags(tmp_path, given):
    with pytest.raises(ConfigError, match="--epochs") as caught:
        TrainConfig(data_dir=tmp_path, **given)
    assert all(f"--{name.replace('_', '-')} {value}" in str(caught.value) for name, value in given.items())


def test_train_cli_trains_the_epochs_it_is_given_and_prints_the_split(class_folder, tmp_path):
    out = tmp_path / "run"
    done = graft("train", str(class_folder), *TINY_FLAGS, "--epochs", "3", "--plain", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "3 epochs (1 head + 2 fine-tune)" in done.stdout + done.stderr
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["phase"] for row in history] == ["head", "finetune", "finetune"]
    saved = json.loads((out / "config.json").read_text())
    assert (saved["epochs"], saved["head_epochs"], saved["finetune_epochs"]) == (3, 1, 2)
    bad = graft("train", str(class_folder), *TINY_FLAGS, "--epochs", "20", "--head-epochs", "2",
                "--finetune-epochs", "4", "--print-config")
    assert bad.returncode == 2 and "--head-epochs 2" in bad.stderr and "--epochs 20" in bad.stderr


@pytest.mark.parametrize("strategy, flags, named", [
    ("scratch", ["--finetune-lr", "0.001"], "--finetune-lr"),
    ("scratch", ["--head-epochs", "3"], "--head-epochs"),
    ("feature-extraction", ["--freeze", "2"], "--freeze"),
    ("feature-extraction", ["--mixup", "0.2"], "--mixup"),
    ("feature-extraction", ["--augment", "strong"], "--cache-views"),
    ("scratch", ["--cache-views", "4"], "--cache-views"),
    ("scratch", ["--pretrained"], "--pretrained"),
])
def test_train_refuses_options_its_strategy_would_not_use(class_folder, strategy, flags, named):
    result = graft("train", str(class_folder), "--strategy", strategy, *flags, "--print-config")
    assert result.returncode == 2 and named in result.stderr and "Traceback" not in result.stderr, result.stderr
    used = graft("train", str(class_folder), "--strategy", "fine-tune", *flags, "--print-config")
    assert used.returncode == 0, used.stderr  # the same options mean something under fine-tune


def test_train_accepts_options_that_say_off(class_folder):
    for flags in (["--strategy", "feature-extraction", "--augment", "none", "--mixup", "0"],
                  ["--strategy", "scratch", "--no-pretrained"]):
        result = graft("train", str(class_folder), *flags, "--print-config")
        assert result.returncode == 0, result.stderr


def test_old_run_configs_keep_what_they_trained(tmp_path):
    """Runs written before --epochs meant the fine-tune total recorded an unused epochs=10."""
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data_dir": str(tmp_path), "strategy": "fine-tune", "epochs": 10,
                                                 "head_epochs": 2, "finetune_epochs": 4}))
    assert _epochs(TrainConfig.from_run(run)) == (6, 2, 4)


def test_report_config_table_shows_the_values_used(session_run, tmp_path):
    from graftkit.report import write_report
    from graftkit.report.html import used_settings

    rows = dict(used_settings({"strategy": "fine-tune", "epochs": 10, "head_epochs": 2, "finetune_epochs": 4,
                               "batch_size": None, "pretrained": True, "split_seed": None, "seed": 0,
                               "finetune_lr": 1e-4, "device": "auto", "max_seconds": None},
                              {"batch_size": 32, "head_batch_size": 16, "device": "cpu"}))
    assert rows["epochs"] == "6 (2 head + 4 fine-tune)" and "head_epochs" not in rows
    assert rows["batch_size"] == "32 (16 in the head phase, on cached features)"
    assert rows["pretrained"] == "yes" and rows["device"] == "cpu (auto)" and rows["max_seconds"] == "no limit"
    extraction = dict(used_settings({"strategy": "feature-extraction", "augment": "light", "cache": True,
                                     "cache_views": 1}))
    assert extraction["augment"].startswith("light, unused")
    scratch = dict(used_settings({"strategy": "scratch", "epochs": 5, "finetune_lr": 1e-4, "batch_size": None},
                                 {"batch_size": 32, "head_batch_size": 16}))
    assert scratch["batch_size"] == "32" and "finetune_lr" not in scratch
    html = write_report(session_run, tmp_path / "report.html", gradcam=0).read_text()
    table = html[html.index('id="config"'):html.index("full config.json")]
    assert "3 (2 head + 1 fine-tune)" in table
    assert ">True<" not in table and ">None<" not in table and ">False<" not in table
