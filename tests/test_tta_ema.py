"""Test-time augmentation (evaluate/predict --tta) and the moving average of the weights (train --ema)."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from graftkit import TrainConfig, fit
from graftkit.errors import CheckpointError, ConfigError

from .conftest import TINY, graft, tiny_flags
from .test_reliability import _crash_at

fit_module = importlib.import_module("graftkit.engine.fit")


def _data_dir(run: Path) -> Path:
    return Path(json.loads((run / "config.json").read_text())["data_dir"])


def _classifier(run: Path, **meta_changes):
    from graftkit.engine.checkpoint import load_model
    from graftkit.predict import ImageClassifier

    model, meta = load_model(run)
    return ImageClassifier(model, {**meta, "precision": "fp32", **meta_changes})


def _probabilities(predictions, classes) -> np.ndarray:
    return np.array([[dict(p.top)[c] for c in classes] for p in predictions])


# ----------------------------------------------------------------------------- test-time augmentation

def test_tta_views_start_with_the_evaluation_crop_and_mirror_each_crop():
    from graftkit.data.transforms import build_eval_transform, build_tta_transform

    square = torch.randint(0, 256, (3, 37, 37), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    centre = build_eval_transform(32, mean, std)(square)
    flip = build_tta_transform(32, mean, std, crops=1)(square)
    five = build_tta_transform(32, mean, std, crops=5)(square)
    assert flip.shape == (2, 3, 32, 32) and five.shape == (10, 3, 32, 32)
    assert torch.equal(flip[0], centre) and torch.equal(flip[1], centre.flip(-1)) and torch.equal(five[:2], flip)
    assert torch.equal(five[3], five[2].flip(-1)) and not torch.equal(five[2], five[0])  # a corner, mirrored


def test_tta_on_a_mirror_symmetric_image_changes_nothing(session_run):
    classifier = _classifier(session_run)
    rows = np.linspace(0, 255, 48)[:, None, None] * np.array([1.0, 0.3, 0.7])  # varies down, not across
    image = np.broadcast_to(rows, (48, 48, 3)).astype(np.uint8)
    k = len(classifier.classes)
    plain = _probabilities(classifier.predict(image, top_k=k), classifier.classes)
    averaged = _probabilities(classifier.predict(image, top_k=k, tta=True), classifier.classes)
    assert np.abs(plain - averaged).max() < 1e-6


def test_tta_probabilities_are_the_mean_of_the_calibrated_views(session_run):
    from graftkit.predict import in_memory_square

    classifier = _classifier(session_run, calibration={"temperature": 0.05})  # sharp: the views differ more
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[:, 20:] = (250, 40, 40)  # red on the right only
    square = in_memory_square(image, int(classifier.meta["preprocessing"]["resize"]))
    centre = classifier.transform(torch.from_numpy(square).permute(2, 0, 1))
    with torch.no_grad():
        logits = classifier.model(torch.stack([centre, centre.flip(-1)]))
    by_hand = (logits / classifier.temperature).softmax(1).mean(0).numpy()
    k = len(classifier.classes)
    plain = _probabilities(classifier.predict(image, top_k=k), classifier.classes)[0]
    averaged = _probabilities(classifier.predict(image, top_k=k, tta=True), classifier.classes)[0]
    assert np.abs(averaged - by_hand).max() < 1e-6
    assert np.abs(plain - by_hand).max() > 1e-4  # the mirror image made a difference


def test_evaluate_with_tta_says_so_and_scores_the_averaged_probabilities(session_run):
    data = _data_dir(session_run)
    plain = json.loads(graft("evaluate", str(session_run), str(data), "--json", "--device", "cpu").stdout)
    result = graft("evaluate", str(session_run), str(data), "--json", "--tta", "--tta-crops", "5", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    tta = json.loads(result.stdout)
    assert plain["tta"] is None and tta["tta"] == "5 crops (centre, corners) + horizontal flip (10 views)"
    assert tta["num_images"] == plain["num_images"] and tta["loss"] != plain["loss"]
    files = sorted((data / "val").rglob("*.png"))
    classifier = _classifier(session_run)
    logits, _ = classifier.predict_outputs(files, tta=True, tta_crops=5)
    assert logits.shape == (len(files), 10, len(classifier.classes))
    text = graft("evaluate", str(session_run), str(data), "--tta", "--device", "cpu").stdout
    assert "test-time augmentation: centre crop + horizontal flip (2 views)" in text.splitlines()[0]


def test_predict_with_tta_runs_and_says_so_on_stderr(session_run):
    result = graft("predict", str(session_run), str(_data_dir(session_run) / "val"), "--tta", "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert "test-time augmentation: centre crop + horizontal flip (2 views)" in result.stderr
    assert result.stdout.splitlines()[0] == "path,class_1,probability_1" and len(result.stdout.splitlines()) == 10


@pytest.mark.parametrize("flags, message", [(["--tta-crops", "5"], "--tta-crops 5 needs --tta"),
                                            (["--tta", "--tta-crops", "3"], "--tta-crops must be 1")])
def test_bad_tta_flags_are_refused_in_one_line(session_run, flags, message):
    for command in (["predict", str(session_run), str(_data_dir(session_run) / "val")],
                    ["evaluate", str(session_run), str(_data_dir(session_run))]):
        result = graft(*command, *flags)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_onnx_predict_flips_in_numpy_and_refuses_five_crops(session_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from graftkit.export import export_model
    from graftkit.onnx_classifier import OnnxClassifier

    export_model(session_run, "onnx", tmp_path / "m.onnx")
    onnx_classifier, classifier = OnnxClassifier(tmp_path / "m.onnx"), _classifier(session_run)
    val, k = _data_dir(session_run) / "val", len(classifier.classes)
    ours = _probabilities(onnx_classifier.predict(val, top_k=k, tta=True), classifier.classes)
    theirs = _probabilities(classifier.predict(val, top_k=k, tta=True), classifier.classes)
    assert np.abs(ours - theirs).max() < 1e-5
    with pytest.raises(ConfigError, match="--tta-crops 5 needs the run folder"):
        onnx_classifier.predict(val, tta=True, tta_crops=5)


# ----------------------------------------------------------------------------- moving average of weights

def test_the_average_is_timms_warmed_up_ema_computed_by_hand():
    from graftkit.engine.ema import WeightAverage
    from graftkit.engine.loop import train_one_epoch

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    average = WeightAverage(model, decay=0.5)
    batches = [(torch.randn(6, 4), torch.randint(0, 3, (6,))) for _ in range(3)]
    seen = []
    train_one_epoch(model, batches, optimizer, lambda step: 0.5, torch.nn.CrossEntropyLoss(), torch.device("cpu"),
                    channels_last=False, average=average,
                    on_step=lambda loss: seen.append(model.weight.detach().clone()))
    # update 1 copies; update k >= 2 decays by 1 - k**-0.75, capped at 0.5
    decays = [0.0, 1 - 2 ** -0.75, 0.5]
    assert [average.decay_at(k) for k in (1, 2, 3)] == pytest.approx(decays)
    expected = seen[0]
    for weights, decay in zip(seen[1:], decays[1:]):
        expected = decay * expected + (1 - decay) * weights
    assert average.steps == 3
    assert torch.allclose(average.ema.module.weight, expected, atol=1e-6)
    assert not torch.allclose(average.ema.module.weight, model.weight)  # the average lags the weights


def _ema_options(split_folder, **changes):
    return dict(data_dir=split_folder, strategy="fine-tune", checkpoint_every=0, precision="fp32", ema=True,
                ema_decay=0.9, **{**TINY, "epochs": None, "head_epochs": 1, "finetune_epochs": 2, **changes})


def test_ema_validates_and_keeps_the_averaged_weights(split_folder, tmp_path):
    from safetensors.torch import load_file

    run = fit(TrainConfig(out_dir=tmp_path / "r", **_ema_options(split_folder, head_epochs=0)))
    assert [row.get("weights") for row in run.history] == ["ema", "ema"]
    assert run.metrics["ema"] == {"decay": 0.9, "best_weights": "ema"}
    checkpoint = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    averaged, raw = checkpoint["ema"]["weights"], checkpoint["model"]
    assert checkpoint["ema"]["steps"] == 2 * 3  # 24 images, batches of 8, two epochs
    assert any(not torch.equal(averaged[k], raw[k]) for k in raw if raw[k].is_floating_point())
    if run.metrics["best_epoch"] == 2:  # the last epoch's average is the checkpoint's
        saved = load_file(tmp_path / "r" / "model.safetensors")
        assert all(torch.equal(saved[k], averaged[k]) for k in saved)


def test_ema_changes_what_is_validated_and_kept_never_the_training(split_folder, tmp_path):
    """The raw weights of an --ema run follow the run without it exactly (benchmarks/tta_ema.py relies on it)."""
    plain = fit(TrainConfig(out_dir=tmp_path / "plain", **{**_ema_options(split_folder), "ema": False,
                                                           "ema_decay": 0.99}))
    averaged = fit(TrainConfig(out_dir=tmp_path / "ema", **_ema_options(split_folder)))
    own = [(r.get("raw_val_loss", r["val_loss"]), r["train_loss"]) for r in averaged.history]
    assert own == [(r["val_loss"], r["train_loss"]) for r in plain.history]
    assert [r["val_loss"] for r in averaged.history][1:] != [r["val_loss"] for r in plain.history][1:]


def test_ema_run_resumes_only_with_its_average(split_folder, tmp_path, monkeypatch):
    """Resuming reproduces an uninterrupted --ema run (test_reliability); without the average it is refused."""
    options = _ema_options(split_folder)
    with monkeypatch.context() as patch:
        _crash_at(patch, 2)
        with pytest.raises(fit_module.Interrupted):
            fit(TrainConfig(out_dir=tmp_path / "old", **options))
    state = torch.load(tmp_path / "old" / "checkpoint.pt", weights_only=True)
    torch.save({**state, "ema": None}, tmp_path / "old" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="holds no average of the weights"):
        fit(TrainConfig.from_run(tmp_path / "old", resume=True))


@pytest.mark.parametrize("flags, message", [
    (["--strategy", "feature-extraction", "--ema"], "--ema averages the weights of phases that train the backbone"),
    (["--head-epochs", "1", "--finetune-epochs", "0", "--ema"], "--ema averages"),
    (["--ema-decay", "0.9"], "--ema-decay applies with --ema only"),
    (["--ema", "--ema-decay", "1"], "--ema-decay must be between 0 and 1")])
def test_ema_flags_that_change_nothing_are_refused(class_folder, tmp_path, flags, message):
    strategy = flags[1] if flags[0] == "--strategy" else "fine-tune"
    base = [f for f in tiny_flags(strategy) if not f.startswith(("--head-epochs", "--finetune-epochs"))]
    result = graft("train", str(class_folder), "--out", str(tmp_path / "r"), *base, *flags)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "r").exists()
