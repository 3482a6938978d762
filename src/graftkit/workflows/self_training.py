"""Self-training: ``fit``, pseudo-label the unlabelled images, ``fit`` again on both; repeat.

Each round is an ordinary run folder (``OUT/round0`` is the run without pseudo-labels, ``OUT/round1``
trains on labelled + the pseudo-labels chosen by round 0's model, ...). Every round re-labels the
whole unlabelled pile with the latest model, so an early mistake can be corrected. The last round is
the result: its files are copied to ``OUT`` with ``pseudo_labels.csv`` (every round's choices),
``label_next.csv`` (the unlabelled images the final model is least sure about) and
``pseudo_label.json`` (per round: added per class, thresholds, validation accuracy).
"""
from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from ..config import TrainConfig
from ..data import find_unlabeled_images
from ..engine import Run, fit
from ..engine.prepare import scan_and_decode
from ..errors import ConfigError
from ..fileio import atomic_write_text
from ..ood import OOD_FILE
from ..semi.pseudo_label import PseudoLabelling, RunPredictor, class_caps, pseudo_label, with_extra_train

RUN_FILES = ("config.json", "history.jsonl", "metrics.json", "model.safetensors", "model.json", OOD_FILE,
             "predictions.csv", "augmentations.jpg", "augmentations.png", "skipped.csv", "duplicates.txt",
             "label_conflicts.csv")


@dataclass(frozen=True)
class PseudoLabelConfig:
    """How pseudo-labels are chosen; the training itself is the ``TrainConfig``.

    Per class, an unlabelled image becomes a pseudo-label when the model's top class is that class,
    its confidence is at least ``threshold`` (and the ``class_quantile`` of that class's
    confidences), and it is among the ``cap`` most confident, where ``cap`` is ``max_ratio`` x the
    class's labelled count, at most ``max_per_class``.
    """

    unlabeled_dir: Path
    rounds: int = 2
    threshold: float = 0.5
    class_quantile: float = 0.0
    max_ratio: float | None = 5.0
    max_per_class: int | None = None
    label_next: int = 50   # how many least-confident images label_next.csv lists

    def __post_init__(self) -> None:
        object.__setattr__(self, "unlabeled_dir", Path(self.unlabeled_dir))
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if not 0 <= self.threshold < 1:
            raise ConfigError(f"threshold must be in [0, 1), got {self.threshold}")
        if not 0 <= self.class_quantile < 1:
            raise ConfigError(f"class_quantile must be in [0, 1), got {self.class_quantile}")
        if self.max_ratio is not None and self.max_ratio <= 0:
            raise ConfigError(f"max_ratio must be > 0, got {self.max_ratio}")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ConfigError(f"max_per_class must be >= 1, got {self.max_per_class}")
        if self.max_ratio is None and self.max_per_class is None:
            raise ConfigError("pseudo-labels need a per-class cap: set max_ratio or max_per_class")


def train_with_pseudo_labels(cfg: TrainConfig, pl: PseudoLabelConfig,
                             on_round: Callable[[dict[str, Any]], None] | None = None) -> Run:
    """Train on ``cfg.data_dir``, then ``pl.rounds`` times: pseudo-label ``pl.unlabeled_dir`` with
    the latest model and train again on labelled + pseudo-labelled images.

    Returns:
        The last round's run, with ``out_dir`` the main folder.
    """
    started = time.perf_counter()
    out = cfg.out_dir or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-pseudo-label"
    if (out / "metrics.json").exists() or (out / "round0").exists():
        raise ConfigError(f"'{out}' already holds a run; pass another --out (nothing was overwritten).")
    if cfg.resume:
        raise ConfigError("--resume does not apply to --pseudo-label runs; start a new --out.")
    scratch = None if cfg.cache else Path(tempfile.mkdtemp(prefix="graftkit-nocache-"))
    try:
        return _self_train(cfg, pl, out, scratch or cfg.cache_dir, on_round or (lambda row: None), started)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _self_train(cfg: TrainConfig, pl: PseudoLabelConfig, out: Path, cache_dir: Path,
                on_round: Callable[[dict[str, Any]], None], started: float) -> Run:
    # the split every round trains and validates on: seeded as fit seeds it (and records it)
    scan, decoded, _ = scan_and_decode(cfg, None, cache_dir)
    unlabeled, bad = find_unlabeled_images(pl.unlabeled_dir, decoded)
    labelled_keys = set(decoded.keys([s.path for s in [*scan.train, *scan.val]]))
    copies = [p for p in unlabeled if decoded.key_of[p] in labelled_keys]
    unlabeled = [p for p in unlabeled if decoded.key_of[p] not in labelled_keys]
    notes = []
    if bad:
        notes.append(f"{len(bad)} unreadable unlabelled file(s) left out, e.g. {bad[0][0]} ({bad[0][1]})")
    if copies:
        notes.append(f"{len(copies)} unlabelled image(s) are copies of labelled train/val images; left out "
                     f"(e.g. {copies[0]})")
    labelled_counts = list(scan.class_counts("train").values())
    caps = class_caps(labelled_counts, pl.max_ratio, pl.max_per_class)

    run = fit(cfg.replace(out_dir=out / "round0"), scan)
    rounds = [{"round": 0, "val_accuracy": run.metrics["val_accuracy"], "num_train": len(scan.train),
               "added": {c: 0 for c in scan.classes}, "num_pseudo": 0, "seconds": run.metrics["seconds_total"]}]
    on_round({**rounds[-1], "notes": notes, "num_unlabeled": len(unlabeled)})
    all_chosen: list[tuple[int, PseudoLabelling]] = []
    for round_index in range(1, pl.rounds + 1):
        round_started = time.perf_counter()
        labelling = pseudo_label(RunPredictor(run, decoded), unlabeled, caps, pl.threshold, pl.class_quantile)
        all_chosen.append((round_index, labelling))
        round_dir = out / f"round{round_index}"
        round_dir.mkdir(parents=True, exist_ok=True)
        _write_pseudo_labels(round_dir / "pseudo_labels.csv", [(round_index, labelling)], scan.classes)
        # The data step: the same labelled scan plus this round's pseudo-labels; then plain fit.
        run = fit(cfg.replace(out_dir=round_dir), with_extra_train(scan, labelling.chosen))
        counts = labelling.counts()
        rounds.append({"round": round_index, "val_accuracy": run.metrics["val_accuracy"],
                       "num_train": run.metrics["num_train"], "num_pseudo": len(labelling.chosen),
                       "added": dict(zip(scan.classes, counts)),
                       "thresholds": dict(zip(scan.classes, [round(t, 4) for t in labelling.thresholds])),
                       "seconds": round(time.perf_counter() - round_started, 3)})
        on_round(rounds[-1])

    final = pseudo_label(RunPredictor(run, decoded), unlabeled, caps, pl.threshold, pl.class_quantile)
    for name in RUN_FILES:
        if (run.out_dir / name).exists():
            shutil.copy2(run.out_dir / name, out / name)
    _write_pseudo_labels(out / "pseudo_labels.csv", all_chosen, scan.classes)
    _write_label_next(out / "label_next.csv", final, scan.classes, pl.label_next)
    summary = {"unlabeled_dir": str(pl.unlabeled_dir), "num_unlabeled": len(unlabeled),
               "split": {"val_fraction": cfg.val_fraction, "seed": cfg.resolved_split_seed},
               "settings": {"rounds": pl.rounds, "threshold": pl.threshold, "class_quantile": pl.class_quantile,
                            "max_ratio": pl.max_ratio, "max_per_class": pl.max_per_class},
               "caps": dict(zip(scan.classes, [min(c, len(unlabeled)) for c in caps])),
               "baseline_val_accuracy": rounds[0]["val_accuracy"], "val_accuracy": rounds[-1]["val_accuracy"],
               "rounds": rounds, "notes": notes, "seconds_total": round(time.perf_counter() - started, 3)}
    atomic_write_text(out / "pseudo_label.json", json.dumps(summary, indent=2))
    metrics = {**run.metrics, "pseudo_label": {k: summary[k] for k in ("baseline_val_accuracy", "rounds")},
               "seconds_total": summary["seconds_total"]}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    return Run(out, run.config, run.classes, metrics, run.history, run.model)


def _write_pseudo_labels(path: Path, rounds: list[tuple[int, PseudoLabelling]], classes: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "confidence", "round"])
    for round_index, labelling in rounds:
        for p in labelling.chosen:
            writer.writerow([str(p.path), classes[p.label], f"{p.confidence:.6f}", round_index])
    atomic_write_text(path, buffer.getvalue())


def _write_label_next(path: Path, labelling: PseudoLabelling, classes: list[str], limit: int) -> None:
    """The unlabelled images the final model hesitates most on (smallest top-1 minus top-2 margin)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "predicted", "confidence", "margin"])
    for p in labelling.least_confident(limit):
        writer.writerow([str(p.path), classes[p.label], f"{p.confidence:.6f}", f"{p.margin:.6f}"])
    atomic_write_text(path, buffer.getvalue())
