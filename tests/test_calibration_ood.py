"""Calibrated confidence (temperature scaling, ECE) and the "unknown" detector (graftkit.ood)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graftkit import calibration, ood
from graftkit.errors import CheckpointError, ConfigError

from .conftest import graft


def overconfident(n: int = 600, num_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits that put ~99.9 % on their argmax, which is right only 70 % of the time."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    predicted = np.where(rng.random(n) < 0.7, labels, (labels + 1) % num_classes)
    logits = rng.normal(0, 0.3, (n, num_classes))
    logits[np.arange(n), predicted] += 8.0
    return logits, labels


def test_temperature_fit_softens_an_overconfident_model_and_lowers_nll():
    logits, labels = overconfident()
    t = calibration.fit_temperature(logits, labels)
    assert t > 2.0  # over-confident: divided by a large temperature
    assert calibration.nll(logits, labels, t) < 0.5 * calibration.nll(logits, labels)
    # the minimum really is one: nudging T either way costs likelihood
    assert calibration.nll(logits, labels, t) <= min(calibration.nll(logits, labels, t * 1.1),
                                                     calibration.nll(logits, labels, t / 1.1))
    # the predicted class never changes
    assert (calibration.softmax(logits, t).argmax(1) == logits.argmax(1)).all()


def test_calibrate_scores_cross_fitted_figures():
    logits, labels = overconfident(seed=1)
    fitted = calibration.calibrate(logits, labels, folds=5)
    assert fitted["ece_after"] < fitted["ece_before"] / 3
    assert fitted["nll_after"] < fitted["nll_before"]
    crossed = calibration.cross_fit(logits, labels, folds=5)
    assert len(crossed["per_fold"]["temperature"]) == 5
    # every image is scored by a temperature fitted without it: the probabilities differ from the full fit's
    assert not np.allclose(crossed["probs"], calibration.softmax(logits, fitted["temperature"]))


def test_ece_matches_a_hand_computed_example():
    probs = np.array([[0.93, 0.07], [0.38, 0.62], [0.29, 0.71], [0.16, 0.84], [0.91, 0.09]])
    labels = np.array([0, 0, 1, 1, 1])
    # bins of width 1/15: 0.93 and 0.91 share bin 13 (one right, one wrong), 0.62, 0.71, 0.84 are alone
    # |0.5 - 0.92| * 2 + |0 - 0.62| + |1 - 0.71| + |1 - 0.84| = 0.84 + 0.62 + 0.29 + 0.16 = 1.91
    assert calibration.ece(probs, labels) == pytest.approx(1.91 / 5)
    table = calibration.reliability(probs, labels)
    assert table["count"][13] == 2 and sum(table["count"]) == 5
    assert table["accuracy"][13] == pytest.approx(0.5) and table["confidence"][13] == pytest.approx(0.92)


def test_knn_distance_and_p_values_on_known_neighbours():
    bank = np.eye(4, dtype=np.float32)
    queries = np.array([[3.0, 0, 0, 0], [1.0, 1.0, 0, 0], [0, 0, 0, -2.0]])
    np.testing.assert_allclose(ood.knn_distance(queries, bank, k=1), [0.0, 1 - 1 / np.sqrt(2), 1.0], atol=1e-6)
    # k = 2: the mean over the two nearest (e0 and any other basis vector for the first query)
    np.testing.assert_allclose(ood.knn_distance(queries[:1], bank, k=2), [0.5], atol=1e-6)
    reference = np.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(ood.p_values(np.array([0.05, 0.25, 0.4, 0.9]), reference), [1.0, 0.5, 0.25, 0.0])


def clusters(n: int, seed: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(centres), n)
    return centres[labels] + rng.normal(0, 0.3, (n, centres.shape[1])), labels


def test_scorer_keeps_the_stated_fraction_and_flags_far_features():
    centres = np.zeros((3, 16))
    centres[[0, 1, 2], [0, 1, 2]] = 4.0
    train, train_labels = clusters(900, 0, centres)
    val, _ = clusters(400, 1, centres)
    held_out, _ = clusters(2000, 2, centres)
    scorer = ood.build_scorer(train, train_labels, val, keep_fraction=0.95, k=5, max_rows=300)
    assert len(scorer.bank) <= 300 and scorer.bank.dtype == np.float16
    assert scorer.threshold == pytest.approx(0.05)
    kept = np.mean(~scorer.is_unknown(held_out))  # new in-distribution images: ~95 % kept
    assert 0.92 <= kept <= 0.98
    far = np.zeros((50, 16))
    far[:, 10] = 5.0
    far += np.random.default_rng(3).normal(0, 0.3, far.shape)
    assert scorer.is_unknown(far).all()
    figures = ood.detection_figures(-scorer.distances(held_out), -scorer.distances(far))
    assert figures["auroc"] == pytest.approx(1.0) and figures["fpr_at_95_tpr"] == 0.0


def test_bank_subsample_keeps_every_class():
    features = np.random.default_rng(0).normal(size=(1000, 8))
    labels = np.r_[np.zeros(990, int), np.ones(10, int)]
    bank = ood.sample_bank(features, labels, max_rows=100, seed=0)
    assert len(bank) <= 100
    np.testing.assert_allclose(np.linalg.norm(bank.astype(np.float32), axis=1), 1.0, atol=1e-3)
    assert len(bank) == len(ood.sample_bank(features, labels, max_rows=100, seed=0))


# ------------------------------------------------------------------------ stored with the model, used


def test_training_stores_calibration_and_unknown_detector(session_run):
    import graftkit

    meta = json.loads((session_run / "model.json").read_text())
    assert set(meta["calibration"]) >= {"temperature", "nll_before", "nll_after", "ece_before", "ece_after"}
    assert meta["ood"]["file"] == "ood.safetensors" and (session_run / "ood.safetensors").is_file()
    metrics = json.loads((session_run / "metrics.json").read_text())
    assert sum(metrics["calibration"]["reliability_after"]["count"]) == metrics["num_val"]
    classifier = graftkit.load(session_run)
    assert classifier.temperature == pytest.approx(meta["calibration"]["temperature"])
    paths = sorted((Path(metrics["classes"] and json.loads((session_run / "config.json").read_text())["data_dir"])
                    / "val").rglob("*.png"))[:4]
    logits, _ = classifier.predict_outputs(paths)
    np.testing.assert_allclose(classifier.predict_proba(paths),
                               calibration.softmax(logits, meta["calibration"]["temperature"]), atol=1e-6)
    assert classifier.ood is not None and classifier.ood.bank.shape[1] == meta["ood"]["num_features"]


def test_report_shows_the_reliability_diagram(session_run, tmp_path):
    out = tmp_path / "report.html"
    assert graft("report", str(session_run), "--out", str(out), "--gradcam", "0").returncode == 0
    text = out.read_text()
    assert "Calibration" in text and 'alt="reliability diagram"' in text


def copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


@pytest.mark.parametrize("field, value, message", [
    ("calibration.temperature", "hot", "field 'calibration.temperature' must be a number from 0.01 to 100"),
    ("calibration.temperature", -1.0, "field 'calibration.temperature' must be a number from 0.01 to 100"),
    ("calibration.ece_after", 3.0, "field 'calibration.ece_after' must be a number in [0, 1]"),
    ("ood.k", 0, "field 'ood.k' must be an integer >= 1"),
    ("ood.threshold", 1.5, "field 'ood.threshold' must be a p-value threshold in [0, 1]"),
    ("ood.file", "../../etc/passwd", "field 'ood.file' must be a file name in the run folder"),
    ("ood.blake2b", "0" * 32, "is not the file model.json was written with"),
    ("ood", None, "has no field 'ood.file'"),
])
def test_edited_calibration_or_ood_field_is_one_line_error(session_run, tmp_path, field, value, message):
    import graftkit

    run = copy_run(session_run, tmp_path)
    meta = json.loads((run / "model.json").read_text())
    block, name = field.split(".") if "." in field else (field, None)
    if name is None:
        meta[block] = {"k": 3}
    else:
        meta[block][name] = value
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        graftkit.load(run)
    assert message in str(err.value) and "\n" not in str(err.value) and str(run) in str(err.value)


def test_damaged_ood_file_is_refused(session_run, tmp_path):
    import graftkit

    run = copy_run(session_run, tmp_path)
    data = bytearray((run / "ood.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (run / "ood.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="ood.safetensors' is not the file model.json was written with"):
        graftkit.load(run)


def test_old_model_json_without_calibration_or_ood_still_loads(session_run, tmp_path):
    import graftkit

    run = copy_run(session_run, tmp_path)
    meta = json.loads((run / "model.json").read_text())
    del meta["calibration"], meta["ood"]
    (run / "model.json").write_text(json.dumps(meta))
    (run / "ood.safetensors").unlink()
    classifier = graftkit.load(run)
    assert classifier.temperature == 1.0 and classifier.ood is None
    image = next((Path(json.loads((run / "config.json").read_text())["data_dir"]) / "val").rglob("*.png"))
    prediction = classifier.predict(image)[0]
    assert prediction.unknown_score is None and prediction.label in classifier.classes
    result = graft("predict", str(run), str(image), "--reject-unknown")
    assert result.returncode == 2 and "has no unknown detector" in result.stderr


def far_images(folder: Path, count: int = 4) -> Path:
    """High-contrast noise and stripes: nothing like the flat colour images the run trained on."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = (rng.random((32, 32, 3)) > 0.5).astype(np.uint8) * 255 if i % 2 else \
            np.tile((np.arange(32) % 2 * 255).astype(np.uint8)[None, :, None], (32, 1, 3))
        Image.fromarray(pixels).save(folder / f"far{i}.png")
    return folder


def test_reject_unknown_answers_unknown_for_far_images(session_run, tmp_path):
    far = far_images(tmp_path / "far")
    result = graft("predict", str(session_run), str(far), "--reject-unknown", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["class"] for r in rows] == ["unknown"] * 4 and all(r["is_unknown"] for r in rows)
    plain = json.loads(graft("predict", str(session_run), str(far), "--format", "json").stdout)
    assert all(r["class"] != "unknown" for r in plain)  # without the flag: the closest class, flagged


def test_evaluate_prints_calibration_and_unknown_detection(session_run, tmp_path):
    data_dir = Path(json.loads((session_run / "config.json").read_text())["data_dir"])
    far = far_images(tmp_path / "far")
    result = graft("evaluate", str(session_run), str(data_dir), "--ood", str(far))
    assert result.returncode == 0, result.stderr
    assert "ECE" in result.stdout and "NLL" in result.stdout and "cross-fitted" in result.stdout
    assert "feature distance: AUROC" in result.stdout and "max probability: AUROC" in result.stdout
    figures = json.loads(graft("evaluate", str(session_run), str(data_dir), "--ood", str(far), "--json").stdout)
    assert figures["ood"]["feature_distance"]["out_rejected"] == 1.0
    assert figures["ood"]["feature_distance"]["auroc"] == pytest.approx(1.0)


def test_predict_without_detector_refuses_reject_unknown_in_the_api(session_run, tmp_path):
    import graftkit

    classifier = graftkit.load(session_run)
    classifier.ood = None
    with pytest.raises(ConfigError, match="no unknown detector"):
        classifier.predict(far_images(tmp_path / "far"), reject_unknown=True)
