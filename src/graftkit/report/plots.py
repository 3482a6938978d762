"""PNG figures for the reports (matplotlib's Agg canvas; pyplot and its global state are not used).

Every function takes plain values read from run files and returns PNG bytes.
"""
from __future__ import annotations

import functools
import io
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

STRATEGY_COLORS = {"scratch": "#d1495b", "feature-extraction": "#2e86ab", "fine-tune": "#3b9c4f"}
_EXTRA_COLORS = ["#8e6bbf", "#e08e0b", "#5d6d7e", "#c0392b", "#16a085"]
TRAIN_STYLE, VAL_STYLE = dict(linestyle="--", linewidth=1.4), dict(linestyle="-", linewidth=2.0)


_F = TypeVar("_F", bound=Callable[..., Any])


def literal_text(function: _F) -> _F:
    """Draw every text of the figures ``function`` makes as literal text: a class or folder named
    ``$\\nope$`` is printed as it is, never parsed as math text (or handed to LaTeX)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from matplotlib import rc_context

        with rc_context({"text.parse_math": False, "text.usetex": False}):
            return function(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def strategy_color(name: str, index: int = 0) -> str:
    return STRATEGY_COLORS.get(name, _EXTRA_COLORS[index % len(_EXTRA_COLORS)])


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def aggregate(histories: Sequence[Sequence[dict[str, Any]]], key: str, x: str = "epoch"
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Align seeds by epoch: ``(x, mean, min, max)`` of ``key`` for every epoch any seed reached.

    With ``x="elapsed"`` the x value of an epoch is the mean wall-clock time at its end over seeds.
    """
    by_epoch: dict[int, list[tuple[float, float]]] = {}
    for history in histories:
        for row in history:
            if key in row and row[key] is not None:
                xv = float(row["epoch"]) if x == "epoch" else float(row.get(x, np.nan))
                by_epoch.setdefault(int(row["epoch"]), []).append((xv, float(row[key])))
    epochs = sorted(by_epoch)
    xs = np.array([np.mean([p[0] for p in by_epoch[e]]) for e in epochs])
    values = [np.array([p[1] for p in by_epoch[e]]) for e in epochs]
    return (xs, np.array([v.mean() for v in values]), np.array([v.min() for v in values]),
            np.array([v.max() for v in values]))


def _phase_starts(history: Sequence[dict[str, Any]], x: str) -> list[tuple[float, str]]:
    """Where a new phase begins (between the last epoch of one and the first of the next)."""
    out = []
    for before, row in zip(history, history[1:]):
        if row.get("phase") != before.get("phase"):
            if x == "epoch":
                position = before["epoch"] + 0.5
            else:
                position = float(before.get("elapsed", 0.0))
            out.append((position, str(row.get("phase"))))
    return out


@literal_text
def run_curves_png(history: Sequence[dict[str, Any]], title: str = "") -> bytes:
    """Accuracy and loss, train (dashed) vs validation (solid), against epoch and wall-clock seconds."""
    fig = _figure(10.5, 7.0)
    axes = fig.subplots(2, 2)
    for row_index, x in enumerate(("epoch", "elapsed")):
        xlabel = "epoch" if x == "epoch" else "seconds since the run started"
        for col, (metric, label) in enumerate((("accuracy", "accuracy"), ("loss", "loss"))):
            ax = axes[row_index][col]
            for split, style, color in (("train", TRAIN_STYLE, "#7f8c8d"), ("val", VAL_STYLE, "#2e86ab")):
                xs, mean, _, _ = aggregate([history], f"{split}_{metric}", x)
                if len(xs):
                    ax.plot(xs, mean, marker="o", markersize=3.5, color=color, label=split, **style)
            for position, phase in _phase_starts(history, x):
                ax.axvline(position, color="#999999", linestyle=":", linewidth=1)
                ax.annotate(phase, (position, 1), xycoords=("data", "axes fraction"), fontsize=8,
                            color="#666666", xytext=(3, -12), textcoords="offset points")
            _style(ax, f"{label} vs {'epoch' if x == 'epoch' else 'time'}", xlabel, label)
            if metric == "accuracy":
                ax.set_ylim(top=1.01)
            ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=12)
    return _png(fig)


@literal_text
def compare_curves_png(histories: dict[str, list[list[dict[str, Any]]]], target: float | None = None) -> bytes:
    """Validation accuracy and loss per strategy, against epoch and wall-clock seconds.

    One line per strategy (the mean over seeds) with a band from the lowest to the highest seed.
    """
    fig = _figure(11.0, 7.5)
    axes = fig.subplots(2, 2)
    for row_index, x in enumerate(("epoch", "elapsed")):
        for col, (key, label) in enumerate((("val_accuracy", "validation accuracy"), ("val_loss", "validation loss"))):
            ax = axes[row_index][col]
            for i, (name, runs) in enumerate(histories.items()):
                xs, mean, low, high = aggregate(runs, key, x)
                if not len(xs):
                    continue
                color = strategy_color(name, i)
                ax.plot(xs, mean, color=color, linewidth=2.2, marker="o", markersize=3.5,
                        label=f"{name} (n={len(runs)})")
                if len(runs) > 1:
                    ax.fill_between(xs, low, high, color=color, alpha=0.18, linewidth=0)
            if key == "val_accuracy" and target is not None:
                ax.axhline(target, color="#555555", linestyle=":", linewidth=1)
                ax.annotate("90% of best", (0, target), xycoords=("axes fraction", "data"), fontsize=8,
                            color="#555555", xytext=(4, 3), textcoords="offset points")
            xlabel = "epoch" if x == "epoch" else "seconds since the run started (mean over seeds)"
            _style(ax, f"{label} vs {'epoch' if x == 'epoch' else 'wall-clock time'}", xlabel, label)
            ax.legend(fontsize=8, loc="lower right" if key == "val_accuracy" else "upper right")
    fig.suptitle("mean over seeds; shaded: lowest to highest seed", fontsize=10, color="#555555")
    return _png(fig)


@literal_text
def overfitting_png(histories: dict[str, list[list[dict[str, Any]]]]) -> bytes:
    """Per strategy: train (dashed) vs validation (solid) accuracy and loss against epoch."""
    names = list(histories)
    fig = _figure(max(4.0 * len(names), 6.0), 6.2)
    axes = np.array(fig.subplots(2, len(names), squeeze=False))
    for col, name in enumerate(names):
        color = strategy_color(name, col)
        for row_index, metric in enumerate(("accuracy", "loss")):
            ax = axes[row_index][col]
            for split, style in (("train", TRAIN_STYLE), ("val", VAL_STYLE)):
                xs, mean, low, high = aggregate(histories[name], f"{split}_{metric}", "epoch")
                if len(xs):
                    ax.plot(xs, mean, color=color, marker="o", markersize=3, label=split, **style)
                    if len(histories[name]) > 1:
                        ax.fill_between(xs, low, high, color=color, alpha=0.12, linewidth=0)
            _style(ax, f"{name}: {metric}", "epoch", metric)
            ax.legend(fontsize=8)
    fig.suptitle("train (dashed) vs validation (solid): a widening gap is over-fitting. Train loss "
                 "includes label smoothing and augmentation.", fontsize=9, color="#555555")
    return _png(fig)


@literal_text
def confusion_png(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = "confusion matrix") -> bytes:
    """Counts with rows = true class, columns = predicted class; the diagonal is correct."""
    m = np.asarray(matrix, dtype=float)
    size = min(2.4 + 0.45 * len(classes), 12.0)
    fig = _figure(size + 1.0, size)
    ax = fig.subplots()
    normalised = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), labels=list(classes), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), labels=list(classes), fontsize=8)
    if len(classes) <= 30:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if normalised[i, j] > 0.6 else "#222222")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=11, loc="left")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    return _png(fig)


@literal_text
def lr_find_png(result: dict[str, Any]) -> bytes:
    """Smoothed loss against learning rate (log scale) with the suggestion marked."""
    fig = _figure(8.0, 4.8)
    ax = fig.subplots()
    lrs, losses, smoothed = result["lrs"], result["losses"], result["smoothed"]
    ax.plot(lrs, losses, color="#bbbbbb", linewidth=1, label="loss per step")
    ax.plot(lrs, smoothed, color="#2e86ab", linewidth=2, label="smoothed loss")
    ax.set_xscale("log")
    finite = [v for v in smoothed if np.isfinite(v)]
    if finite:
        low, start = min(finite), finite[0]
        ax.set_ylim(low - 0.1 * abs(start - low) - 1e-3, max(start, low) + 0.6 * abs(start - low) + 1e-3)
    marks = [("suggestion", result.get("suggestion"), "#3b9c4f")]
    if result.get("minimum_lr"):
        marks.append(("loss minimum", result["minimum_lr"], "#d1495b"))
    if result.get("steepest_lr"):
        marks.append(("steepest descent", result["steepest_lr"], "#e08e0b"))
    for label, lr, color in marks:
        if lr:
            ax.axvline(lr, color=color, linestyle="--", linewidth=1.3, label=f"{label} {lr:.1e}")
    _style(ax, f"learning-rate range test ({result.get('phase', '')})", "learning rate (log scale)",
           "training loss")
    ax.legend(fontsize=8)
    return _png(fig)


@literal_text
def freeze_auto_png(rows: Sequence[dict[str, Any]], chosen: int | None = None) -> bytes:
    """Validation accuracy (bars) and seconds (dots) per tried freeze depth."""
    fig = _figure(8.0, 4.2)
    ax = fig.subplots()
    labels = [r["label"] for r in rows]
    accuracies = [r["val_accuracy"] for r in rows]
    colors = ["#3b9c4f" if r["depth"] == chosen else "#9dbbd0" for r in rows]
    ax.bar(range(len(rows)), accuracies, color=colors)
    for i, a in enumerate(accuracies):
        ax.text(i, a, f"{a:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), labels=labels, rotation=15, fontsize=8)
    low = min(accuracies) if accuracies else 0
    ax.set_ylim(max(0.0, low - 0.1), 1.02)
    _style(ax, "validation accuracy (bars; chosen: green) and seconds (dots) per depth", "",
           "validation accuracy")
    twin = ax.twinx()
    twin.plot(range(len(rows)), [r["seconds"] for r in rows], "o", color="#d1495b")
    twin.set_ylabel("seconds (the part that differs)", color="#d1495b")
    twin.set_ylim(0, 1.15 * max([r["seconds"] for r in rows] + [1e-3]))
    return _png(fig)


def reliability_png(before: dict[str, list], after: dict[str, list], bins: int = 15) -> bytes:
    """Reliability diagram: accuracy against mean confidence per bin of the max probability, before
    and after temperature scaling, with the image count per bin underneath."""
    fig = _figure(6.4, 4.6)
    ax, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="#888888", linestyle=":", linewidth=1.2, label="perfectly calibrated")
    edges = np.linspace(0, 1, bins + 1)
    for table, colour, name in ((before, "#d1495b", "before (T = 1)"), (after, "#2e86ab", "after (cross-fitted T)")):
        points = [(c, a) for c, a in zip(table["confidence"], table["accuracy"]) if c is not None]
        if points:
            ax.plot(*zip(*points), marker="o", color=colour, linewidth=1.8, label=name)
    width = (edges[1] - edges[0]) / 2.2
    counts.bar(edges[:-1] + width * 0.1, before["count"], width=width, align="edge", color="#d1495b", alpha=0.7)
    counts.bar(edges[:-1] + width * 1.1, after["count"], width=width, align="edge", color="#2e86ab", alpha=0.7)
    _style(ax, "reliability (validation images)", "", "accuracy")
    _style(counts, "", "confidence (max probability)", "images")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return _png(fig)
