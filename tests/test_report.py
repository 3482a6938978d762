"""Reports from run files alone: self-contained HTML, regeneration, Grad-CAM, summary numbers."""
from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from graftkit import TrainConfig, fit
from graftkit.backbones import Backbone
from graftkit.heads import Classifier
from graftkit.report import load_run, write_report
from graftkit.report.gradcam import grad_cam
from graftkit.report.runfiles import RunFiles
from graftkit.report.summary import mean_interval, per_class_metrics, summarize_comparison, time_to_reach

from .conftest import TINY, graft


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def assert_self_contained(path: Path) -> None:
    """Every image is a data: URI; no script, stylesheet, font or URL that could reach a network."""
    text = path.read_text()
    parser = _Tags()
    parser.feed(text)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert images, "a report without figures"
    for tag, attrs in parser.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed", "base"), tag
        if tag == "img":
            assert attrs["src"].startswith("data:image/"), attrs["src"][:60]
        for name in ("src", "srcset", "poster", "action", "data"):
            if name in attrs:
                assert attrs[name].startswith("data:"), (tag, name, attrs[name][:60])
        if "href" in attrs:  # only links to sibling reports, relative
            assert tag == "a" and ":" not in attrs["href"] and not attrs["href"].startswith("/"), attrs["href"]
    outside_data = re.sub(r"data:[^\"'\s)]+", "", text)
    for needle in ("http://", "https://", "//", "url(", "@import"):
        assert needle not in outside_data, needle


@pytest.fixture
def finished_run(split_folder, tmp_path) -> Path:
    run = fit(TrainConfig(data_dir=split_folder, strategy="fine-tune", out_dir=tmp_path / "run", lr=1e-2,
                          **{**TINY, "epochs": None, "head_epochs": 2, "finetune_epochs": 1}))
    return run.out_dir


def test_run_report_is_self_contained_and_complete(session_run):
    path = write_report(session_run)
    assert path == session_run / "report.html"
    assert_self_contained(path)
    text = path.read_text()
    for heading in ("Learning curves", "Final metrics", "Per-class precision and recall",
                    "Worst-classified validation images", "Grad-CAM", "Data", "Configuration"):
        assert heading in text, heading
    # the worst images are embedded thumbnails with true / predicted labels and confidence
    assert text.count('src="data:image/jpeg') >= 9 + 3 * 4  # 9 val images + 4 Grad-CAM rows of 3
    assert "predicted" in text and "p(true)" in text


def test_report_regenerates_from_a_copied_folder_without_training(session_run, tmp_path, monkeypatch):
    import importlib

    fit_module = importlib.import_module("graftkit.engine.fit")
    copy = tmp_path / "copied"
    shutil.copytree(session_run, copy)
    monkeypatch.setattr(fit_module, "_fit", lambda *a, **k: pytest.fail("a report must not train"))
    first = write_report(copy).read_text()
    second = write_report(copy).read_text()
    strip = lambda t: re.sub(r"written \d{4}-\d\d-\d\d \d\d:\d\d", "", t)  # noqa: E731
    assert strip(first) == strip(second)
    assert_self_contained(copy / "report.html")


def test_report_survives_moved_images_and_lists_skipped_files(finished_run, tmp_path):
    (finished_run / "skipped.txt").write_text("/data/cat/bad.jpg\ttruncated file\n")
    for row in load_run(finished_run).predictions:
        Path(row["path"]).unlink(missing_ok=True)  # the data moved away after training
    text = write_report(finished_run, tmp_path / "r.html").read_text()
    assert "image not found" in text and "/data/cat/bad.jpg" in text and "truncated file" in text


def test_report_cli_and_a_folder_that_is_not_a_run(session_run, tmp_path):
    done = graft("report", str(session_run), "--out", str(tmp_path / "cli.html"), "--gradcam", "0")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli.html").is_file()
    (tmp_path / "empty").mkdir()
    bad = graft("report", str(tmp_path / "empty"))
    assert bad.returncode == 2 and "not a finished run folder" in bad.stderr and "Traceback" not in bad.stderr


def _identity_classifier() -> Classifier:
    """Last stage = the input itself; class 0 reads channel 0, class 1 reads channel 1."""
    backbone = Backbone([nn.Identity()], ["id"], 3, (0, 0, 0), (1, 1, 1), image_size=8, name="identity")
    model = Classifier(backbone, 2, dropout=0.0)
    with torch.no_grad():
        model.head[-1].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
        model.head[-1].bias.zero_()
    return model.eval()


def test_grad_cam_points_at_the_evidence_for_each_class():
    image = torch.zeros(1, 3, 8, 8)
    image[0, 0, :, :4] = 1.0  # channel 0 (class 0's evidence) on the left half
    image[0, 1, :, 4:] = 1.0  # channel 1 (class 1's evidence) on the right half
    model = _identity_classifier()
    left, right = grad_cam(model, image, 0)[0], grad_cam(model, image, 1)[0]
    assert left.shape == right.shape == (8, 8)
    assert left[:, :3].min() > 0.99 and left[:, 5:].max() < 1e-6
    assert right[:, 5:].min() > 0.99 and right[:, :3].max() < 1e-6


def test_grad_cam_shape_range_and_class_dependence_on_a_cnn():
    torch.manual_seed(0)
    from graftkit import create_backbone

    model = Classifier(create_backbone("tiny_cnn"), 3).eval()
    images = torch.randn(2, 3, 32, 32)
    maps = {c: grad_cam(model, images, c) for c in range(3)}
    for cam in maps.values():
        assert cam.shape == (2, 32, 32)
        assert cam.min() >= 0 and cam.max() <= 1 + 1e-6
    assert not torch.allclose(maps[0], maps[1]) and not torch.allclose(maps[1], maps[2])
    per_image = grad_cam(model, images, [0, 1])  # one class per image
    assert torch.allclose(per_image[0], maps[0][0]) and torch.allclose(per_image[1], maps[1][1])
    assert all(p.grad is None for p in model.parameters())  # no gradients left behind


def test_per_class_metrics_from_predictions():
    rows = [{"label": "a", "predicted": "a"}, {"label": "a", "predicted": "b"}, {"label": "b", "predicted": "b"},
            {"label": "b", "predicted": "b"}]
    result = per_class_metrics(rows, ["a", "b"])
    assert result["confusion_matrix"] == [[1, 1], [0, 2]]
    assert result["per_class"]["a"]["recall"] == 0.5 and result["per_class"]["a"]["precision"] == 1.0
    assert result["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert result["accuracy"] == 0.75


def test_mean_interval_is_a_student_t_interval():
    values = [0.80, 0.85, 0.90]
    result = mean_interval(values)
    half = 4.302652729911275 * np.std(values, ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert result["mean"] == pytest.approx(0.85)
    assert result["interval"] == pytest.approx([0.85 - half, 0.85 + half])
    assert mean_interval([0.5])["interval"] is None
    assert mean_interval([0.9, 1.0], bounds=(0, 1))["interval"][1] == 1.0


def test_comparison_intervals_of_seconds_and_loss_are_clipped_at_zero():
    """Three seeds of 20, 20 and 400 s: the t-interval's lower end (mean - 545 s) would be -212 s or worse."""
    def run(seed: int, seconds: float, loss: float) -> RunFiles:
        metrics = {"val_accuracy": 0.9, "val_loss": loss, "seconds_total": seconds, "best_epoch": 1}
        return RunFiles(Path(f"seed{seed}"), {"seed": seed}, metrics, [{"epoch": 1, "val_accuracy": 0.9}])

    summary = summarize_comparison({"fine-tune": [run(0, 20.0, 0.01), run(1, 20.0, 0.01), run(2, 400.0, 2.0)]})
    seconds, loss = summary["strategies"]["fine-tune"]["seconds"], summary["strategies"]["fine-tune"]["val_loss"]
    assert seconds["mean"] - seconds["half_width"] < 0 and seconds["interval"][0] == 0.0
    assert seconds["interval"][1] == pytest.approx(seconds["mean"] + seconds["half_width"])
    assert loss["interval"][0] == 0.0 and loss["interval"][1] > 0


def test_time_to_reach_is_the_first_epoch_at_the_target():
    history = [{"epoch": 1, "val_accuracy": 0.5, "elapsed": 3.0}, {"epoch": 2, "val_accuracy": 0.9, "elapsed": 5.0},
               {"epoch": 3, "val_accuracy": 0.95, "elapsed": 7.0}]
    assert time_to_reach(history, 0.85) == (5.0, 2)
    assert time_to_reach(history, 0.99) == (None, None)
