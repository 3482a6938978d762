"""``--freeze auto``: choose how many backbone stages stay frozen by measuring, not by rule of thumb.

A workflow above the engine: it calls :func:`graftkit.engine.fit` once per candidate and once more
for the chosen depth (``fit`` itself trains exactly one run).

Each candidate depth (all frozen = feature extraction, all but the last stage, all but two, half,
none) is trained briefly on the same split with the same seed; the best validation accuracy wins,
and ties (within :data:`TIE_TOLERANCE`) go to the faster depth. The feature cache keeps this cheap:
the head phase all candidates share runs on cached pooled features, and with the first K stages
frozen ``fit`` caches their output once and trains only the rest. The final run then trains the
chosen depth with the full budget and records the table in ``freeze_auto.json``.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import TrainConfig
from ..errors import ConfigError
from .probe import candidate_depths, depth_label, seconds_after_head  # noqa: F401  (re-exported)

TIE_TOLERANCE = 0.005  # accuracies this close count as equal: the faster depth wins


def candidate_finetune_epochs(cfg: TrainConfig) -> int:
    """The short budget of a candidate's unfrozen phase: half the run's, at least one epoch."""
    return max(1, math.ceil(cfg.finetune_epochs / 2))


def candidate_config(cfg: TrainConfig, depth: int, num_stages: int, finetune_epochs: int,
                     out_dir: Path | None) -> TrainConfig:
    """The run that trains ``depth`` frozen stages: fine-tune with ``freeze=depth``, or, with every
    stage frozen, feature extraction for the same number of epochs."""
    common = dict(freeze_auto=False, out_dir=out_dir, resume=False)
    if depth >= num_stages:
        return cfg.replace(strategy="feature-extraction", epochs=cfg.head_epochs + finetune_epochs, freeze=0,
                           **common)
    return cfg.replace(freeze=depth, finetune_epochs=finetune_epochs, **common)


def pick_depth(rows: Sequence[dict[str, Any]], tolerance: float = TIE_TOLERANCE) -> tuple[dict[str, Any], str]:
    """The row with the best ``val_accuracy``; rows within ``tolerance`` of it count as ties and the
    one with the fewest ``seconds`` wins. Returns ``(row, reason)``."""
    if not rows:
        raise ConfigError("no freeze depth was measured")
    best = max(r["val_accuracy"] for r in rows)
    ties = [r for r in rows if r["val_accuracy"] >= best - tolerance - 1e-12]
    chosen = min(ties, key=lambda r: (r["seconds"], -r["val_accuracy"]))
    top = max(rows, key=lambda r: (r["val_accuracy"], -r["seconds"]))
    if len(ties) == 1:
        reason = (f"chose {chosen['label']} (--freeze {chosen['depth']}): the best validation accuracy "
                  f"{chosen['val_accuracy']:.4f} of {len(rows)} depths tried")
    else:
        others = ", ".join(r["label"] for r in ties if r is not chosen)
        reason = (f"chose {chosen['label']} (--freeze {chosen['depth']}): validation accuracy "
                  f"{chosen['val_accuracy']:.4f}, within {tolerance * 100:.1f} points of the best "
                  f"({top['val_accuracy']:.4f}), and the fastest of the tied depths "
                  f"({chosen['seconds']:.1f}s; tied: {others})")
    return chosen, reason


def measure_freeze_depths(cfg: TrainConfig, scan: Any, num_stages: int, depths: Sequence[int] | None = None,
                          train: Callable | None = None, on_result: Callable[[str], None] | None = None
                          ) -> list[dict[str, Any]]:
    """Train each candidate depth briefly (same split, same seed) and return one row per depth.

    ``seconds`` is the part that differs between depths: everything after the shared head phase
    (its first ``head_epochs`` epochs, on cached pooled features), caching a frozen prefix included.
    ``train`` defaults to :func:`graftkit.fit` (tests pass a stub).
    """
    if train is None:
        from ..engine.fit import fit as train
    finetune_epochs = candidate_finetune_epochs(cfg)
    depths = list(depths if depths is not None else candidate_depths(num_stages))
    work = Path(tempfile.mkdtemp(prefix="graftkit-freeze-auto-"))
    rows = []
    try:
        for index, depth in enumerate(depths, 1):
            label = depth_label(depth, num_stages)
            candidate = candidate_config(cfg, depth, num_stages, finetune_epochs, work / f"freeze{depth}")
            candidate = candidate.replace(progress="none", max_seconds=None)
            run = train(candidate, scan=scan)
            history = list(run.history)
            differing = seconds_after_head(history, cfg.head_epochs)
            row = {"depth": depth, "label": label, "trainable_stages": num_stages - depth,
                   "val_accuracy": float(run.metrics["val_accuracy"]), "seconds": round(differing, 3),
                   "seconds_total": round(float(run.metrics.get("seconds_total", differing)), 3),
                   "best_epoch": run.metrics.get("best_epoch"),
                   "val_accuracy_per_epoch": [r["val_accuracy"] for r in history]}
            rows.append(row)
            if on_result is not None:
                on_result(f"freeze auto [{index}/{len(depths)}] {label} (--freeze {depth}): val_accuracy "
                          f"{row['val_accuracy']:.4f}, {row['seconds']:.1f}s after the shared head phase")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def fit_auto_freeze(cfg: TrainConfig, scan: Any = None, depths: Sequence[int] | None = None,
                    train: Callable | None = None):
    """Measure the candidate freeze depths, then train the chosen one with the full budget.

    The run folder gets ``freeze_auto.json`` (each depth with accuracy and seconds, the choice and
    why) before the final training starts. Returns the final :class:`Run`.
    """
    from ..backbones import create_backbone
    from ..engine.fit import fit, prepare_out_dir
    from ..engine.prepare import scan_for
    from ..engine.progress import ProgressReporter
    from ..fileio import atomic_write_text

    if cfg.strategy != "fine-tune":
        raise ConfigError("--freeze auto needs --strategy fine-tune")
    if cfg.resume:
        raise ConfigError("resume a --freeze auto run with 'graft train --resume RUN_DIR' alone: it continues "
                          "the depth that was chosen")
    if cfg.finetune_epochs < 1:
        raise ConfigError("--freeze auto compares fine-tuning depths; it needs --finetune-epochs >= 1")
    train = train or fit
    num_stages = create_backbone(cfg.backbone, pretrained=False).num_stages
    out_dir = prepare_out_dir(cfg)  # fail now, not after the search, if the folder holds a run
    cfg = cfg.replace(out_dir=out_dir)
    scan = scan if scan is not None else scan_for(cfg)
    report = ProgressReporter("none" if cfg.progress == "none" else "plain")
    depths = list(depths if depths is not None else candidate_depths(num_stages))
    finetune_epochs = candidate_finetune_epochs(cfg)
    report.message(f"freeze auto: trying {len(depths)} depths of {num_stages} stages "
                   f"({', '.join(str(d) for d in depths)} frozen), each {cfg.head_epochs} head epoch(s) + "
                   f"{finetune_epochs} epoch(s) unfrozen, seed {cfg.seed}")
    rows = measure_freeze_depths(cfg, scan, num_stages, depths, train, on_result=report.message)
    chosen, reason = pick_depth(rows)
    report.message(f"freeze auto: {reason}")
    table = {
        "candidates": rows, "chosen_depth": chosen["depth"], "chosen_label": chosen["label"], "reason": reason,
        "num_stages": num_stages, "tie_tolerance": TIE_TOLERANCE,
        "budget": (f"each depth trained {cfg.head_epochs} head epoch(s), then {finetune_epochs} epoch(s) with "
                   f"its stages unfrozen (all frozen: {cfg.head_epochs + finetune_epochs} head epochs), seed "
                   f"{cfg.seed}, the same split; seconds count what follows the shared head phase, "
                   f"including caching the frozen prefix; ties within {TIE_TOLERANCE * 100:.1f} points of "
                   f"accuracy go to the faster depth. The final run trains the chosen depth with "
                   f"{cfg.head_epochs} + {cfg.finetune_epochs} epochs."),
    }
    atomic_write_text(out_dir / "freeze_auto.json", json.dumps(table, indent=2))
    report.close()
    final = candidate_config(cfg, chosen["depth"], num_stages, cfg.finetune_epochs, out_dir)
    return train(final, scan=scan)


def train_run(cfg: TrainConfig, scan: Any = None):
    """What ``graft train`` and ``graftkit.train`` run: :func:`fit_auto_freeze` with
    ``cfg.freeze_auto``, else one :func:`graftkit.engine.fit`; then, where the run cached the
    pretrained features, the likely label errors (``label_issues.csv``, seconds)."""
    from ..engine.fit import fit
    from ..engine.label_issues import check_run_label_issues

    run = fit_auto_freeze(cfg, scan) if cfg.freeze_auto else fit(cfg, scan=scan)
    line = check_run_label_issues(run.config, run.out_dir)
    if cfg.progress != "none":
        print(line, flush=True)
    return run
