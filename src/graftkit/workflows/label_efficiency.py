"""``label_efficiency``: validation accuracy against labelled images per class, over seeds.

For each size and seed: subsample the training set (a temporary folder of links), train with the
same config, keep the validation accuracy (the validation set is the same for every size). The
backbone pass over each image is cached by image content, so every run after the first trains the
frozen phase on cached features.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import TrainConfig
from ..data import scan_data
from ..engine import fit
from ..errors import ConfigError
from ..fileio import refuse_out_inside_data, refuse_used_folder
from ..report.plots import literal_text
from ..report.summary import mean_interval as summary_mean_interval
from ..scarce.subsample import subsample

# A short budget that fits dtd10 (960 train images, 10 classes) x 4 sizes x 3 seeds in well under
# 30 minutes on 2 CPU cores: the head trains on cached features (milliseconds per epoch, so it can
# have 30 epochs even at 5 images per class), then 2 fine-tune epochs (~0.05 s per training image).
DEFAULT_BUDGET = {"strategy": "fine-tune", "head_epochs": 30, "finetune_epochs": 2}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample standard deviation and the Student-t interval of the mean, under the key names
    of ``label_efficiency.json`` (the computation is the reports' ``summary.mean_interval``)."""
    stats = summary_mean_interval(values, confidence)
    return {"mean": stats["mean"], "std": stats["sd"], "ci95": stats["interval"],
            "half_width": stats.get("half_width"), "n": stats["n"]}


def label_efficiency(cfg: TrainConfig, sizes: Sequence[int | None], seeds: int, out_dir: str | Path,
                     on_run: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train at each labelled-set size with ``seeds`` seeds; write and return the summary.

    Args:
        cfg: the training config (its ``data_dir`` is the full dataset; ``seed`` and ``out_dir`` are
            set per run).
        sizes: labelled images per class; None means all of them.
        seeds: runs per size (seed ``s`` picks the subset and seeds training).
        out_dir: new folder for ``label_efficiency.json``, ``label_efficiency.png`` and ``runs/``.
        on_run: called with each finished run's row (for progress lines).
    """
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    out = Path(out_dir)
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"sizes {', '.join('all' if s is None else str(s) for s in sizes)} repeat one; "
                          f"give each size once (its --seeds runs give the interval).")
    refuse_out_inside_data(out, cfg.data_dir)
    refuse_used_folder(out, "label-efficiency")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # One hold-out for every size and seed, seeded as fit seeds it (cfg.resolved_split_seed) and
    # recorded by every run (model.json split.seed), so `graft evaluate RUN DATA` rebuilds it.
    split_seed = cfg.resolved_split_seed
    scan = scan_data(cfg.data_dir, cfg.val_fraction, seed=split_seed, verify=False)
    results = []
    for size in sizes:
        runs = []
        for seed in range(seeds):
            name = f"{'all' if size is None else size}-per-class-seed{seed}"
            with tempfile.TemporaryDirectory(prefix="graftkit-subset-") as tmp:
                subset = subsample(cfg.data_dir, size, Path(tmp) / "data", seed=seed, val_fraction=cfg.val_fraction,
                                   scan=scan, split_seed=split_seed)
                run = fit(cfg.replace(data_dir=subset.out_dir, seed=seed, split_seed=split_seed,
                                      out_dir=out / "runs" / name))
                (run.out_dir / "subsample.json").write_text((subset.out_dir / "subsample.json").read_text())
            row = {"seed": seed, "val_accuracy": run.metrics["val_accuracy"],
                   "num_train": run.metrics["num_train"], "seconds": run.metrics["seconds_total"],
                   "run_dir": str(run.out_dir)}
            runs.append(row)
            if on_run is not None:
                on_run({"per_class": size, **row})
        accuracies = [r["val_accuracy"] for r in runs]
        results.append({"per_class": size, "label": "all" if size is None else str(size),
                        "mean_per_class": runs[0]["num_train"] / len(scan.classes),
                        "val_accuracy": mean_interval(accuracies), "runs": runs})
    summary = {
        "data_dir": str(cfg.data_dir), "classes": scan.classes, "num_val": len(scan.val), "seeds": seeds,
        "split": {"val_fraction": cfg.val_fraction, "seed": split_seed},
        "strategy": cfg.strategy, "backbone": cfg.backbone,
        "budget": {k: getattr(cfg, k) for k in ("head_epochs", "finetune_epochs", "epochs", "lr",
                                                "finetune_lr", "augment", "image_size")},
        "sizes": results, "gains": _gains(results), "seconds_total": round(time.perf_counter() - started, 1),
    }
    (out / "label_efficiency.json").write_text(json.dumps(summary, indent=2))
    plot_label_efficiency(summary, out / "label_efficiency.png")
    return summary


def _gains(results: list[dict[str, Any]]) -> list[str]:
    """One line per step up in size: the gain and whether the 95 % intervals overlap."""
    lines = []
    for low, high in zip(results, results[1:]):
        a, b = low["val_accuracy"], high["val_accuracy"]
        gain = 100 * (b["mean"] - a["mean"])
        if a["ci95"] and b["ci95"]:
            apart = b["ci95"][0] > a["ci95"][1] or a["ci95"][0] > b["ci95"][1]
            note = "intervals do not overlap" if apart else "intervals overlap: within the noise"
        else:
            note = "one seed: no interval"
        lines.append(f"{low['label']} -> {high['label']} per class: {gain:+.1f} points ({note})")
    return lines


@literal_text
def plot_label_efficiency(summary: dict[str, Any], path: Path) -> Path:
    """Accuracy (mean and 95 % interval) against labelled images per class, log-scaled.

    Drawn on a ``matplotlib.figure.Figure`` of its own (as report/plots.py does): pyplot, its global
    state and the process's backend are left alone."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("the label-efficiency plot needs matplotlib: pip install graftkit[plots]") from None
    sizes = summary["sizes"]
    x = [s["mean_per_class"] for s in sizes]
    y = [100 * s["val_accuracy"]["mean"] for s in sizes]
    err = [100 * (s["val_accuracy"]["half_width"] or 0.0) for s in sizes]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.errorbar(x, y, yerr=err, marker="o", capsize=4)
    for s, xi, yi in zip(sizes, x, y):
        ax.annotate(f"{yi:.1f}", (xi, yi), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    for s in sizes:
        for r in s["runs"]:
            ax.plot(s["mean_per_class"], 100 * r["val_accuracy"], ".", color="grey", alpha=0.6)
    ax.set_xscale("log")
    ax.set_xticks(x, [s["label"] if s["per_class"] is not None else f"all ({xi:.0f})" for s, xi in zip(sizes, x)])
    ax.minorticks_off()
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{Path(summary['data_dir']).name}: {summary['strategy']}, {summary['backbone']}, "
                 f"mean and 95% interval of {summary['seeds']} seed(s)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
