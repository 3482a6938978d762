"""``graft compare``: scratch vs feature extraction vs fine-tuning on the same data, split and budget.

The data is scanned once and the same :class:`DataScan` goes to every ``fit``, so every strategy and
seed trains and validates on the same images. Each run gets its own folder
(``OUT/<strategy>/seed<k>/``); ``compare.json`` and ``report.html`` are then built from those
folders alone (``graft report OUT`` rebuilds them without retraining).
"""
from __future__ import annotations

import json
import resource
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from .._version import __version__
from ..config import STRATEGIES, TrainConfig, split_fine_tune_epochs
from ..errors import ConfigError
from ..fileio import atomic_write_text, refuse_out_inside_data

DEFAULT_STRATEGIES = ("scratch", "feature-extraction", "fine-tune")
DEFAULT_BUDGET_EPOCHS = 6
MINUTES_ONLY_EPOCH_CAP = 50  # with only --budget-minutes: the schedule's horizon; the clock stops it


def budget_fields(strategy: str, epochs: int) -> dict[str, int]:
    """The same epoch budget for every strategy; fine-tune spends a third of it (at least one epoch)
    on the head with the backbone frozen and the rest fine-tuning."""
    if strategy == "fine-tune":
        head, finetune = split_fine_tune_epochs(epochs, "--budget-epochs")  # as `graft train --epochs` splits
        return {"head_epochs": head, "finetune_epochs": finetune}
    return {"epochs": epochs}


def memory_definition(isolated: bool) -> str:
    if isolated:
        return ("peak resident set size (getrusage ru_maxrss) of the process that ran the one training: a "
                "fresh Python process per run, so it includes the interpreter, torch, the model, batches and "
                "the pages of the memory-mapped caches it read; not GPU memory")
    return ("getrusage ru_maxrss of the one process that ran every training in turn: a high-water mark "
            "that never goes down, so a run shows at least the peak of the runs before it")


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _train_and_measure(cfg: TrainConfig, scan: Any, tune_allocator: bool = False) -> dict[str, Any]:
    """Run one training (in a fresh process when isolated) and measure its peak memory.
    ``tune_allocator``: the fresh process takes the allocator setting of the one that started it."""
    import torch

    from ..engine import fit
    from ..hardware import tune_cpu_allocator

    if tune_allocator:
        tune_cpu_allocator()

    before = _peak_rss_mb()  # the interpreter, torch and graftkit, loaded
    run = fit(cfg, scan=scan)
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"val_accuracy": run.metrics["val_accuracy"], "seconds_total": run.metrics["seconds_total"],
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "peak_rss_before_training_mb": round(before, 1),
            "cuda_peak_allocated_mb": None if cuda is None else round(cuda, 1)}


def _run_isolated(cfg: TrainConfig, scan: Any) -> dict[str, Any]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ..hardware import allocator_tuned

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_train_and_measure, cfg, scan, allocator_tuned()).result()


def _same_run(run_dir: Path, cfg: TrainConfig) -> None:
    """A finished run found in the folder must be the one this comparison would train."""
    saved = json.loads((run_dir / "config.json").read_text())
    for key in ("strategy", "seed", "backbone", "epochs", "head_epochs", "finetune_epochs", "max_seconds"):
        want = getattr(cfg, key)
        if saved.get(key) != want and not (key == "epochs" and cfg.strategy == "fine-tune") and \
                not (key in ("head_epochs", "finetune_epochs") and cfg.strategy != "fine-tune"):
            raise ConfigError(f"'{run_dir}' holds a finished run with {key}={saved.get(key)!r}, but this "
                              f"comparison asks for {want!r}. Pass another --out, or delete that folder.")
    if Path(saved.get("data_dir", "")).resolve() != Path(cfg.data_dir).resolve():
        raise ConfigError(f"'{run_dir}' was trained on '{saved.get('data_dir')}', not '{cfg.data_dir}'. "
                          f"Pass another --out.")


def compare(base: TrainConfig, out_dir: str | Path, strategies: Sequence[str] = DEFAULT_STRATEGIES,
            num_seeds: int = 3, budget_epochs: int | None = None, budget_minutes: float | None = None,
            isolate: bool = True, write_reports: bool = True) -> dict[str, Any]:
    """Train every strategy with ``num_seeds`` seeds on one split and budget; summarise and report.

    Args:
        base: settings shared by every run (data, backbone, learning rates, device...); its strategy
            and epochs are replaced per run, its ``seed`` is the first seed.
        out_dir: the comparison folder.
        strategies: which strategies, in the order shown.
        num_seeds: seeds ``base.seed, base.seed + 1, ...``.
        budget_epochs: epochs per run (fine-tune: split a third head, the rest fine-tuning);
            default :data:`DEFAULT_BUDGET_EPOCHS`, or a cap of :data:`MINUTES_ONLY_EPOCH_CAP` when
            only ``budget_minutes`` is given.
        budget_minutes: wall-clock budget per run (``TrainConfig.max_seconds``, checked between epochs).
        isolate: run each training in a fresh process, so its peak memory is its own.
        write_reports: write each run's ``report.html`` and the comparison's ``report.html``.

    Returns:
        What ``compare.json`` holds.
    """
    from ..engine.fit import Interrupted
    from ..engine.prepare import scan_for
    from ..engine.progress import ProgressReporter
    from ..report.runfiles import load_run
    from ..report.summary import summarize_comparison

    strategies = list(strategies)
    for name in strategies:
        if name not in STRATEGIES:
            raise ConfigError(f"unknown strategy {name!r} in --strategies; choose from {', '.join(STRATEGIES)}")
    if len(set(strategies)) != len(strategies) or not strategies:
        raise ConfigError(f"--strategies must name each strategy once; got {', '.join(strategies) or 'none'}")
    if num_seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {num_seeds}")
    if budget_minutes is not None and not budget_minutes > 0:
        raise ConfigError(f"--budget-minutes must be > 0, got {budget_minutes}")
    if budget_epochs is not None and budget_epochs < 1:
        raise ConfigError(f"--budget-epochs must be >= 1, got {budget_epochs}")
    epochs = budget_epochs or (MINUTES_ONLY_EPOCH_CAP if budget_minutes else DEFAULT_BUDGET_EPOCHS)
    max_seconds = None if budget_minutes is None else 60.0 * budget_minutes
    out_dir = Path(out_dir)
    refuse_out_inside_data(out_dir, base.data_dir)
    if (out_dir / "metrics.json").exists():
        raise ConfigError(f"'{out_dir}' is a training run folder; pass a new folder to --out.")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ProgressReporter("none" if base.progress == "none" else "plain")  # runs draw their own bars
    seeds = [base.seed + k for k in range(num_seeds)]
    split_seed = base.resolved_split_seed

    # One scan: the same split for every run. It decodes every image into the shared cache once.
    scan = scan_for(base)
    report.message(f"compare {', '.join(strategies)} × {num_seeds} seed(s) on {base.data_dir}: "
                   f"{len(scan.train)} train / {len(scan.val)} val images (split seed {split_seed}), "
                   f"{epochs} epochs{f' or {budget_minutes:g} min' if budget_minutes else ''} per run → {out_dir}")

    plan = []
    for strategy in strategies:
        for seed in seeds:
            cfg = base.replace(strategy=strategy, seed=seed, split_seed=split_seed, freeze_auto=False,
                               out_dir=out_dir / strategy / f"seed{seed}", max_seconds=max_seconds, resume=False,
                               weights=None if strategy == "scratch" else base.weights,
                               **budget_fields(strategy, epochs))
            plan.append(cfg)
    # The pretrained strategies share the frozen backbone's pooled features: compute them once, before
    # any run is timed, so the first of those runs does not pay for all the others.
    feature_cache_seconds = None
    pending = {c.strategy for c in plan if not (c.out_dir / "metrics.json").exists()}
    if base.cache and base.pretrained and {"feature-extraction", "fine-tune"} & pending:
        import shutil
        import tempfile

        warm_dir = Path(tempfile.mkdtemp(prefix="graftkit-warm-"))
        try:
            warm = base.replace(strategy="feature-extraction", epochs=1, seed=seeds[0], split_seed=split_seed,
                                out_dir=warm_dir / "run", max_seconds=None, freeze_auto=False, resume=False,
                                progress="none")
            measured = _run_isolated(warm, scan) if isolate else _train_and_measure(warm, scan)
            feature_cache_seconds = float(measured["seconds_total"])
        finally:
            shutil.rmtree(warm_dir, ignore_errors=True)
        report.message(f"frozen-backbone features cached for feature-extraction and fine-tune in "
                       f"{feature_cache_seconds:.1f}s (not counted in their runs' seconds)")

    for index, cfg in enumerate(plan, 1):
        run_dir = cfg.out_dir
        label = f"[{index}/{len(plan)}] {cfg.strategy} seed {cfg.seed}"
        if (run_dir / "metrics.json").exists():
            _same_run(run_dir, cfg)
            report.message(f"{label}: finished earlier in {run_dir}, kept")
            continue
        if (run_dir / "checkpoint.pt").exists():
            cfg = TrainConfig.from_run(run_dir, resume=True, progress=base.progress)
            report.message(f"{label}: resuming the interrupted run in {run_dir}")
        else:
            report.message(f"{label} → {run_dir}")
        try:
            measured = _run_isolated(cfg, scan) if isolate else _train_and_measure(cfg, scan)
        except (KeyboardInterrupt, Interrupted):
            raise Interrupted(f"interrupted during {label}. Run the same 'graft compare' command again to go "
                              f"on: finished runs are kept and the interrupted one resumes.") from None
        atomic_write_text(run_dir / "resources.json", json.dumps(
            {**measured, "isolated_process": isolate, "measured": memory_definition(isolate)}, indent=2))
        report.message(f"{label}: val_accuracy {measured['val_accuracy']:.4f}, peak memory "
                       f"{measured['peak_rss_mb']:.0f} MB")

    runs = {s: [load_run(out_dir / s / f"seed{seed}") for seed in seeds] for s in strategies}
    previous = json.loads((out_dir / "compare.json").read_text()) if (out_dir / "compare.json").is_file() else {}
    summary = summarize_comparison(runs)
    first = runs[strategies[0]][0]
    result = {
        "data_dir": str(base.data_dir), "out_dir": str(out_dir), "backbone": first.metrics.get("backbone"),
        "image_size": first.metrics.get("image_size"), "seeds": seeds,
        "split": {"seed": split_seed, "val_fraction": base.val_fraction, "layout": scan.layout,
                  "num_train": len(scan.train), "num_val": len(scan.val),
                  "same_for_every_run": True},
        "budget": {"epochs": epochs, "minutes": budget_minutes,
                   "fine_tune_head_epochs": budget_fields("fine-tune", epochs)["head_epochs"] if epochs >= 2 else None,
                   "fine_tune_finetune_epochs": budget_fields("fine-tune", epochs)["finetune_epochs"] if epochs >= 2 else None},
        "feature_cache_seconds": feature_cache_seconds if feature_cache_seconds is not None else previous.get(
            "feature_cache_seconds"),
        **summary, "graftkit_version": __version__, "written": datetime.now().isoformat(timespec="seconds"),
    }
    atomic_write_text(out_dir / "compare.json", json.dumps(result, indent=2))
    if write_reports:
        from ..report.html import render_compare_report, render_run_report

        for strategy in strategies:
            for seed in seeds:
                render_run_report(out_dir / strategy / f"seed{seed}")
        render_compare_report(out_dir)
    for name in summary["ranking_by_mean_val_accuracy"]:
        s = summary["strategies"][name]
        acc = s["val_accuracy"]
        interval = (f" (95% t-interval {acc['interval'][0]:.4f}–{acc['interval'][1]:.4f})"
                    if acc.get("interval") else "")
        report.message(f"{name:<19} mean val_accuracy {acc['mean']:.4f}{interval}, "
                       f"{s['seconds']['mean']:.0f}s per run")
    report.message(f"compare.json{' and report.html' if write_reports else ''} → {out_dir}")
    report.close()
    return result
