"""Numbers behind the reports: per-class metrics from predictions.csv, intervals over seeds, and the
comparison summary written to ``compare.json``. Pure functions of run files."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..metrics import classification_metrics
from .runfiles import RunFiles

INTERVAL_DEFINITION = ("95% Student-t confidence interval of the mean over seeds: "
                       "mean ± t(0.975, n-1) · sd / sqrt(n), sd with n-1 in the denominator, accuracies "
                       "clipped to [0, 1]; null with a single seed")
TARGET_FRACTION = 0.9
TARGET_DEFINITION = (f"{TARGET_FRACTION:.0%} of the best validation accuracy any run of the comparison "
                     f"reached at any epoch; the time is the run's wall-clock seconds from its start "
                     f"(data check and model build included; features already in the cache are read, not "
                     f"recomputed) to the end of the first epoch whose validation accuracy reaches it")


def per_class_metrics(predictions: Sequence[dict[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows = true class)."""
    index = {c: i for i, c in enumerate(classes)}
    for row in predictions:  # classes seen only in predictions (an old run) still count
        for name in (row["label"], row["predicted"]):
            if name not in index:
                index[name] = len(index)
    labels = [index[row["label"]] for row in predictions]
    predicted = [index[row["predicted"]] for row in predictions]
    return classification_metrics(np.array(labels, dtype=np.int64), np.array(predicted, dtype=np.int64), list(index))


def worst_predictions(predictions: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The ``count`` validation images the model found least likely to be their true class."""
    return sorted(predictions, key=lambda r: (r["true_class_probability"], r["path"]))[:count]


NON_NEGATIVE = (0.0, math.inf)  # bounds of a quantity that cannot be negative (seconds, a loss)


def t_quantile(confidence: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def mean_interval(values: Sequence[float], confidence: float = 0.95,
                  bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """Mean, sample sd and a Student-t interval of the mean (``interval`` is None for n < 2),
    clipped to ``bounds`` (e.g. ``(0, 1)`` for an accuracy) when given."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    n = len(arr)
    if n == 0:
        return {"mean": None, "sd": None, "interval": None, "n": 0}
    mean = float(arr.mean())
    if n < 2:
        return {"mean": mean, "sd": None, "interval": None, "n": 1}
    sd = float(arr.std(ddof=1))
    half = t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(bounds[0], low), min(bounds[1], high)
    return {"mean": mean, "sd": sd, "interval": [low, high], "half_width": half, "n": n}


def time_to_reach(history: Sequence[dict[str, Any]], target: float) -> tuple[float | None, int | None]:
    """``(seconds since the run started, epoch)`` at the first epoch whose val accuracy ≥ ``target``."""
    for row in history:
        if row["val_accuracy"] >= target - 1e-12:
            return float(row.get("elapsed", float("nan"))), int(row["epoch"])
    return None, None


def best_epoch_accuracy(run: RunFiles) -> float:
    return max([r["val_accuracy"] for r in run.history] or [run.metrics.get("val_accuracy", 0.0)])


def summarize_comparison(runs: dict[str, list[RunFiles]]) -> dict[str, Any]:
    """The per-strategy summary of a comparison, from its run folders alone.

    Per strategy: final val accuracy (the saved, best-epoch model) as mean, sd and a 95% t-interval
    over seeds; the last epoch's accuracy likewise; time and epochs to reach 90% of the best
    accuracy of any run; seconds per run; peak memory where ``resources.json`` recorded it.
    """
    best = max(best_epoch_accuracy(r) for rs in runs.values() for r in rs)
    target = TARGET_FRACTION * best
    strategies: dict[str, Any] = {}
    for name, rs in runs.items():
        accuracies = [float(r.metrics["val_accuracy"]) for r in rs]
        reached = [time_to_reach(r.history, target) for r in rs]
        seconds = [float(r.metrics.get("seconds_total", float("nan"))) for r in rs]
        memory = [(r.resources or {}).get("peak_rss_mb") for r in rs]
        reached_seconds = [s for s, _ in reached if s is not None]
        strategies[name] = {
            "val_accuracy": {**mean_interval(accuracies, bounds=(0.0, 1.0)), "per_seed": accuracies},
            "last_epoch_val_accuracy": mean_interval([r.history[-1]["val_accuracy"] for r in rs if r.history],
                                                     bounds=(0.0, 1.0)),
            "val_loss": mean_interval([float(r.metrics["val_loss"]) for r in rs], bounds=NON_NEGATIVE),
            "time_to_target_seconds": {
                "mean": float(np.mean(reached_seconds)) if reached_seconds else None,
                "per_seed": [s for s, _ in reached], "reached": f"{len(reached_seconds)}/{len(rs)}"},
            "epochs_to_target": [e for _, e in reached],
            "seconds": {**mean_interval(seconds, bounds=NON_NEGATIVE), "per_seed": seconds},
            "epochs": [len(r.history) for r in rs],
            "best_epoch": [r.metrics.get("best_epoch") for r in rs],
            "best_phase": [r.metrics.get("best_phase") for r in rs],
            "peak_memory_mb": {"max": max((m for m in memory if m is not None), default=None),
                               "per_seed": memory},
            "seeds": [int(r.config.get("seed", i)) for i, r in enumerate(rs)],
            "runs": [f"{name}/{r.run_dir.name}" for r in rs],
        }
    ranking = sorted(strategies, key=lambda s: -(strategies[s]["val_accuracy"]["mean"] or 0.0))
    first = next(iter(runs.values()))[0]
    return {
        "target_accuracy": target, "best_accuracy_any_run": best,
        "definitions": {"interval": INTERVAL_DEFINITION, "time_to_target": TARGET_DEFINITION,
                        "val_accuracy": "accuracy of the saved model (the best epoch by validation "
                                        "accuracy) on the validation split, per seed",
                        "peak_memory_mb": _memory_definition(runs)},
        "num_train": first.metrics.get("num_train"), "num_val": first.metrics.get("num_val"),
        "classes": first.classes, "strategies": strategies, "ranking_by_mean_val_accuracy": ranking,
    }


def _memory_definition(runs: dict[str, list[RunFiles]]) -> str:
    for rs in runs.values():
        for r in rs:
            if r.resources and r.resources.get("measured"):
                return str(r.resources["measured"])
    return "not measured (no resources.json in the run folders)"
