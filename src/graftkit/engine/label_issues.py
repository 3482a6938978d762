"""Likely label errors: out-of-sample probabilities from k-fold linear probes, ranked by cleanlab.

Every labelled image (train and val) gets class probabilities from a logistic regression that never
saw it: the pretrained backbone's pooled features (the ones the head phase caches anyway, clean
centre crop) are split into stratified, seeded folds and a probe is fitted on the other folds.
cleanlab's ``find_label_issues`` (confident learning) then flags the images whose given label the
probes find unlikely, and ``get_label_quality_scores`` ranks them (lowest quality first). cleanlab is
an optional extra: ``pip install "graftkit[labels]"``.
"""
from __future__ import annotations

import csv
import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import TrainConfig
from ..data import augment_key, build_eval_transform
from ..errors import ConfigError
from ..runfiles_schema import LABEL_ISSUE_COLUMNS
from .features import fill_features, open_feature_store
from .prepare import Prepared, prepare
from .progress import ProgressReporter
from .runtime import autocast_for, seed_everything

FOLDS = 5
PROBE_C = 0.1  # L2 strength of the probes on standardised features: softer, better-calibrated probabilities
# After training, the check runs by itself below this many images x classes: the probes' cost grows with
# both (flower_photos_1250, 1250 x 5: 9 s of CPU on 2 cores), so at most about a minute of CPU.
MAX_AUTO_WORK = 40_000
CSV_NAME = "label_issues.csv"
INSTALL_HINT = 'pip install "graftkit[labels]"'
METHOD = (f"{FOLDS}-fold stratified logistic-regression probes on the pretrained backbone's pooled features "
          f"(out-of-sample probabilities for every image), cleanlab find_label_issues (confident learning), "
          f"ranked by cleanlab's self-confidence label quality")


@dataclass(frozen=True)
class LabelIssue:
    """One image whose given label looks wrong; ``rank`` 1 is the most suspicious."""

    rank: int
    path: Path
    split: str
    given_label: str
    suggested_label: str
    label_quality: float


@dataclass
class LabelIssues:
    issues: list[LabelIssue]
    num_checked: int
    seconds: float
    features_computed: int
    method: str = METHOD


def cleanlab_missing() -> str | None:
    """None when cleanlab can be imported, else the one-line hint to install it."""
    try:
        import cleanlab.filter  # noqa: F401
    except ImportError:
        return f"finding label issues needs cleanlab: {INSTALL_HINT}"
    return None


def out_of_sample_probabilities(features: np.ndarray, labels: np.ndarray, num_classes: int,
                                folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """``(N, num_classes)`` probabilities, each row from a probe fitted without that row.

    Args:
        features: ``(N, D)`` pooled features.
        labels: ``(N,)`` given class indices; every class present needs at least 2 images.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=num_classes)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        rare = [i for i, n in enumerate(counts) if n == 1]
        raise ConfigError(f"finding label issues needs at least 2 images per class; class index(es) {rare} "
                          f"have 1. Add images to them.")
    probs = np.zeros((len(labels), num_classes))
    splitter = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed % 2**32)
    for fit_rows, held_rows in splitter.split(features, labels):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=1000))
        with warnings.catch_warnings():  # a probe that stops at max_iter still ranks well
            warnings.simplefilter("ignore")
            probe.fit(features[fit_rows], labels[fit_rows])
        probs[np.ix_(held_rows, probe.classes_)] = probe.predict_proba(features[held_rows])
    return probs


def rank_label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(indices of the flagged images, most suspicious first; label quality of every image)``."""
    from cleanlab.filter import find_label_issues as cleanlab_find
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    flagged = cleanlab_find(labels, probs, n_jobs=1)  # boolean mask; one process: no worker pool
    order = np.flatnonzero(flagged)
    return order[np.argsort(quality[order], kind="stable")], quality


def pooled_features(prepared: Prepared, cfg: TrainConfig, compute_missing: bool = True,
                    report: ProgressReporter | None = None) -> tuple[np.ndarray, int] | None:
    """``((N, D) features of train then val images, rows computed now)``; None when some are not
    cached and ``compute_missing`` is False."""
    data, model, device = prepared.data, prepared.model, prepared.device
    backbone, cut = model.backbone, model.backbone.num_stages
    store = open_feature_store(cfg.cache_dir, model, cut, data.image_size, data.decoded.size,
                               augment_key(cfg.augment), prepared.precision, cfg.fold_bn)
    keys = [*data.train_keys, *data.val_keys]
    missing = store.missing(dict.fromkeys(f"{k}:0" for k in keys))
    if missing and not compute_missing:
        return None
    if missing:
        eval_tf = build_eval_transform(data.image_size, backbone.mean, backbone.std)
        if report is not None:
            report.start_epoch("pooled features", len(missing))
        fill_features(store, model, cut, data.decoded, [f"{k}:0" for k in dict.fromkeys(keys)], eval_tf, eval_tf, device,
                      autocast_for(device, prepared.precision), data.eval_batch_size,
                      on_batch=None if report is None else report.advance, fold_bn=cfg.fold_bn)
        if report is not None:
            report.end_epoch(f"computed pooled features of {len(missing)} image(s)")
    return store.get([f"{k}:0" for k in keys]).reshape(len(keys), -1), len(missing)


def find_label_issues(cfg: TrainConfig, prepared: Prepared | None = None, compute_missing: bool = True,
                      report: ProgressReporter | None = None) -> LabelIssues | None:
    """The likely mislabelled images of ``cfg.data_dir`` (train and val), ranked.

    Returns None when ``compute_missing`` is False and the pooled features are not all cached.
    """
    hint = cleanlab_missing()
    if hint:
        raise ConfigError(hint)
    started = time.perf_counter()
    if prepared is None:
        seed_everything(cfg.seed)  # a backbone without weights (tiny_cnn) gets the same init as in fit
        prepared = prepare(cfg)
    found = pooled_features(prepared, cfg, compute_missing, report)
    if found is None:
        return None
    features, computed = found
    scan = prepared.scan
    samples = [*scan.train, *scan.val]
    splits = ["train"] * len(scan.train) + ["val"] * len(scan.val)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    probs = out_of_sample_probabilities(features, labels, len(scan.classes), seed=cfg.seed)
    order, quality = rank_label_issues(labels, probs)
    issues = [LabelIssue(rank, samples[i].path, splits[i], scan.classes[labels[i]],
                         scan.classes[int(probs[i].argmax())], float(quality[i]))
              for rank, i in enumerate(order, 1)]
    return LabelIssues(issues, len(samples), time.perf_counter() - started, computed)


def label_issues_csv(result: LabelIssues) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(LABEL_ISSUE_COLUMNS)
    for issue in result.issues:
        writer.writerow([issue.rank, str(issue.path), issue.split, issue.given_label, issue.suggested_label,
                         f"{issue.label_quality:.6f}"])
    return buffer.getvalue()


def write_label_issues(out_dir: Path, result: LabelIssues) -> Path:
    from ..fileio import atomic_write_text

    path = Path(out_dir) / CSV_NAME
    atomic_write_text(path, label_issues_csv(result))
    return path


def summary_line(result: LabelIssues, where: Path) -> str:
    share = len(result.issues) / max(result.num_checked, 1)
    return (f"label issues: {len(result.issues)} of {result.num_checked} images ({share:.1%}) look mislabelled "
            f"({FOLDS}-fold linear probes on pooled features + cleanlab, {result.seconds:.1f}s"
            f"{f', {result.features_computed} feature rows computed' if result.features_computed else ''}) → {where}")


def check_run_label_issues(cfg: TrainConfig, out_dir: Path) -> str:
    """After a run: find label issues when it is cheap (the run cached the pooled features of the
    pretrained backbone), write ``label_issues.csv`` in the run folder; returns one line saying what
    was done, or why not and what to run instead."""
    instead = f"run 'graft check-data {cfg.data_dir} --label-issues'"
    if cfg.strategy == "scratch" or not cfg.pretrained:
        return f"label issues: not checked (this run has no pretrained features); {instead}"
    if not cfg.cache:
        return f"label issues: not checked (--no-cache kept no features); {instead}"
    num_images, num_classes = _run_size(out_dir)
    if num_images * num_classes > MAX_AUTO_WORK:
        return (f"label issues: not checked after training ({num_images} images x {num_classes} classes: the "
                f"probes would take minutes); {instead}")
    hint = cleanlab_missing()
    if hint:
        return f"label issues: not checked; {hint}"
    try:
        result = find_label_issues(cfg.replace(progress="none"), compute_missing=False)
    except ConfigError as exc:
        return f"label issues: not checked ({exc})"
    if result is None:
        return f"label issues: not checked (this run did not cache the pooled features); {instead}"
    return summary_line(result, write_label_issues(out_dir, result))


def _run_size(out_dir: Path) -> tuple[int, int]:
    """(images, classes) from the run's metrics.json; (0, 0) when it cannot be read."""
    import json

    try:
        metrics = json.loads((Path(out_dir) / "metrics.json").read_text())
        return int(metrics.get("num_train", 0)) + int(metrics.get("num_val", 0)), len(metrics.get("classes") or [])
    except (OSError, ValueError, TypeError, AttributeError):
        return 0, 0
