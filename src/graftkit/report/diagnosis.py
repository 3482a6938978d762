"""What to fix, read from a run folder: a few findings, each with what was seen and what to try.

``diagnose(run)`` is a pure function of the run files (``history.jsonl``, ``metrics.json``,
``predictions.csv``, ``config.json``, ``label_issues.csv``). Each rule below looks at one thing and
returns a :class:`Finding` or None; the suggestions name graftkit's own flags and commands, in the
order to try them. ``graft train`` prints the findings at its end, ``report.html`` shows them first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .runfiles import RunFiles
from .summary import per_class_metrics

SEVERITIES = ("high", "medium", "low")

# Thresholds, chosen to stay quiet on a healthy run (e.g. the default hymenoptera run).
FINETUNE_DROP = 0.005     # fine-tuning's best val accuracy this far below the head's: it did not help
OVERFIT_GAP = 0.10        # train accuracy (with augmentation) this far above val accuracy
LOSS_RISE = 0.10          # val loss 10 % above its minimum, 2+ epochs later, while train loss fell
RECALL_GAP = 0.15         # a class's recall this far below the overall accuracy
MIN_SUPPORT = 3           # val images of a class before its recall means anything
FEW_IMAGES = 20           # training images per class
SMALL_VAL = 50            # validation images in all
STILL_RISING = 0.02       # val accuracy gained over the last two epochs, best at the last one


@dataclass(frozen=True)
class Finding:
    """One thing to fix: ``seen`` gives the numbers, ``try_next`` the remedies in order."""

    rule: str
    severity: str
    title: str
    seen: str
    try_next: tuple[str, ...]
    images: tuple[str, ...] = field(default=())  # paths to look at (shown as thumbnails in the report)


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _data(run: RunFiles) -> str:
    """The run's data folder, for commands to copy (quoted when it holds a space)."""
    data = str(run.config.get("data_dir") or "DATA")
    return f"'{data}'" if " " in data else data


def _augment_remedy(run: RunFiles) -> str:
    """More augmentation, in the form the run's strategy uses it."""
    augment, views = str(run.config.get("augment", "light")), int(run.config.get("cache_views", 1) or 1)
    if run.strategy == "feature-extraction":  # trains on cached crops: augmentation only via cached views
        if augment != "strong" or views < 2:
            return (f"--augment strong --cache-views 4 (now {augment}, {views} view(s)): feature extraction "
                    f"sees augmentation only through cached views")
        return f"--cache-views {2 * views}: more augmented views per image"
    if augment != "strong":
        return f"--augment strong (now {augment})"
    return "--mixup 0.2 or --cutmix 1.0 (augment is already strong)"


def _epochs_flag(run: RunFiles) -> str:
    return "--finetune-epochs" if run.strategy == "fine-tune" else "--epochs"


def finetune_hurt(run: RunFiles) -> Finding | None:
    """Fine-tuning lowered validation accuracy: the saved model is a head-phase epoch."""
    head = [r for r in run.history if r["phase"] == "head"]
    tuned = [r for r in run.history if r["phase"] == "finetune"]
    if run.strategy != "fine-tune" or not head or not tuned:
        return None
    best_head = max(head, key=lambda r: r["val_accuracy"])
    best_tuned = max(r["val_accuracy"] for r in tuned)
    if best_tuned > best_head["val_accuracy"] - FINETUNE_DROP:
        return None
    lr = float(run.config.get("finetune_lr", 1e-4))
    return Finding(
        "finetune-hurt", "high" if best_head["val_accuracy"] - best_tuned >= 0.03 else "medium",
        "Fine-tuning lowered validation accuracy",
        f"the best epoch was head epoch {best_head['epoch']} ({_pct(best_head['val_accuracy'])}); after "
        f"unfreezing, validation accuracy peaked at {_pct(best_tuned)} and ended at "
        f"{_pct(tuned[-1]['val_accuracy'])}. The saved model is the head epoch's.",
        ("--strategy feature-extraction: the head alone did better, and trains in seconds on cached features",
         f"--finetune-lr {lr / 3:.0e} (now {lr:.0e}): a gentler fine-tune",
         "--freeze auto: measure how many stages to unfreeze"))


def overfitting(run: RunFiles) -> Finding | None:
    """Training accuracy far above validation accuracy at the last epoch."""
    rows = [r for r in run.history if r.get("train_accuracy") is not None]
    if not rows:
        return None
    last = rows[-1]
    gap = last["train_accuracy"] - last["val_accuracy"]
    if gap < OVERFIT_GAP:
        return None
    smoothing = float(run.config.get("label_smoothing", 0.1))
    remedies = [_augment_remedy(run),
                f"fewer epochs ({_epochs_flag(run)}): the best epoch was {run.metrics.get('best_epoch')} "
                f"of {len(run.history)}"]
    if smoothing < 0.2:
        remedies.append(f"--label-smoothing 0.2 (now {smoothing:g})")
    remedies.append("more labelled images, or unlabelled ones with --pseudo-label --unlabeled DIR")
    return Finding(
        "overfitting", "high" if gap >= 0.2 else "medium", "Overfitting: training accuracy far above validation",
        f"at the last epoch ({last['epoch']}) training accuracy was {_pct(last['train_accuracy'])} (with "
        f"augmentation), validation {_pct(last['val_accuracy'])}: a gap of {100 * gap:.1f} points.",
        tuple(remedies))


def val_loss_rising(run: RunFiles) -> Finding | None:
    """Validation loss rising for 2+ epochs after its minimum while training loss kept falling."""
    rows = [r for r in run.history if r.get("val_loss") is not None and r.get("train_loss") is not None]
    if len(rows) < 3:
        return None
    best = min(range(len(rows)), key=lambda i: rows[i]["val_loss"])
    low, last = rows[best], rows[-1]
    if len(rows) - 1 - best < 2 or last["val_loss"] < low["val_loss"] * (1 + LOSS_RISE) or \
            last["train_loss"] >= low["train_loss"]:
        return None
    lr_flag = "--finetune-lr" if run.strategy == "fine-tune" else "--lr"
    return Finding(
        "val-loss-rising", "medium", "Validation loss rising while training loss falls",
        f"validation loss rose from {low['val_loss']:.3f} (epoch {low['epoch']}) to {last['val_loss']:.3f} "
        f"(epoch {last['epoch']}) while training loss fell from {low['train_loss']:.3f} to "
        f"{last['train_loss']:.3f}: the model grows over-confident on what it gets wrong.",
        (f"stop earlier: {_epochs_flag(run)} so that training ends near epoch {low['epoch']}",
         f"a lower {lr_flag}", _augment_remedy(run)))


def low_recall_classes(run: RunFiles) -> list[Finding]:
    """Classes whose validation recall is well below the overall accuracy; their missed images."""
    if not run.predictions:
        return []
    result = per_class_metrics(run.predictions, run.classes)
    accuracy, classes, matrix = result["accuracy"], result["classes"], result["confusion_matrix"]
    train_counts = run.class_counts("train") or {}
    findings = []
    for i, cls in enumerate(classes):
        m = result["per_class"][cls]
        if m["support"] < MIN_SUPPORT or m["recall"] > accuracy - RECALL_GAP:
            continue
        confused = max((j for j in range(len(classes)) if j != i), key=lambda j: matrix[i][j])
        missed = [r["path"] for r in sorted(run.predictions, key=lambda r: r["true_class_probability"])
                  if r["label"] == cls and r["predicted"] != cls]
        right = round(m["recall"] * m["support"])
        count = train_counts.get(cls)
        findings.append((m["recall"], Finding(
            "low-recall", "high" if m["recall"] < 0.5 else "medium", f"Class '{cls}' is often missed",
            f"recall {_pct(m['recall'])} ({right} of {m['support']} validation images right) against "
            f"{_pct(accuracy)} overall; most often taken for '{classes[confused]}' ({matrix[i][confused]}x)"
            + (f"; it has {count} training images" if count is not None else "") + ".",
            (f"look at its missed images (below): wrong labels, or views the training images lack?",
             f"add training images of '{cls}', like the missed ones",
             f"fix the labels listed under 'Likely label errors' (graft check-data {_data(run)} --label-issues)",
             _augment_remedy(run)),
            tuple(missed[:8]))))
    return [finding for _, finding in sorted(findings, key=lambda pair: pair[0])[:3]]  # the weakest 3


def few_images(run: RunFiles) -> Finding | None:
    counts = run.class_counts("train")
    if not counts:
        return None
    small = sorted((n, c) for c, n in counts.items() if n < FEW_IMAGES)
    if not small:
        return None
    fewest, name = small[0]
    others = f"; {len(small)} classes have fewer than {FEW_IMAGES}" if len(small) > 1 else ""
    return Finding(
        "few-images", "high" if fewest < 10 else "medium", "Too few training images per class",
        f"'{name}' has {fewest} training images{others}.",
        (f"add labelled images: {FEW_IMAGES}-50 or more per class",
         "--strategy feature-extraction: fewer weights to fit on few images",
         "unlabelled photos of these classes: --pseudo-label --unlabeled DIR",
         f"graft label-efficiency {_data(run)}: how accuracy grows with images per class"))


def likely_label_errors(run: RunFiles) -> Finding | None:
    rows = run.label_issues
    if not rows:
        return None
    checked = int(run.metrics.get("num_train") or 0) + int(run.metrics.get("num_val") or 0)
    first = rows[0]
    share = f" ({_pct(len(rows) / checked)})" if checked else ""
    in_val = sum(r["split"] == "val" for r in rows)
    return Finding(
        "label-issues", "medium" if len(rows) >= 3 or in_val else "low", "Likely label errors",
        f"{len(rows)} of {checked or '?'} images{share} look mislabelled ({in_val} in validation); the most "
        f"suspicious: '{Path(first['path']).name}' labelled '{first['given_label']}', looks like "
        f"'{first['suggested_label']}'.",
        ("look at them (label_issues.csv, thumbnails below); move the wrong ones to their class, delete "
         "the ambiguous ones, and retrain",
         f"graft check-data {_data(run)} --label-issues: the list again after the fix"),
        tuple(r["path"] for r in rows[:8]))


def diverged(run: RunFiles) -> Finding | None:
    events = run.metrics.get("diverged") or []
    if not events:
        return None
    where = ", ".join(f"{d['phase']} epoch {d['epoch']}" for d in events)
    flag = "--finetune-lr" if any(d["phase"] == "finetune" for d in events) else "--lr"
    return Finding("diverged", "high", "Training diverged",
                   f"the loss blew up in {where}; that phase stopped and the best earlier epoch was kept.",
                   (f"a lower {flag} (a third of it)", "--lr-find: measure a learning rate"))


def still_improving(run: RunFiles) -> Finding | None:
    rows = run.history
    if len(rows) < 3 or run.metrics.get("best_epoch") != rows[-1]["epoch"]:
        return None
    gain = rows[-1]["val_accuracy"] - rows[-3]["val_accuracy"]
    if gain < STILL_RISING:
        return None
    return Finding("still-improving", "low", "Still improving at the last epoch",
                   f"validation accuracy rose {100 * gain:.1f} points over the last two epochs and the last "
                   f"epoch ({rows[-1]['epoch']}) was the best.",
                   (f"more epochs ({_epochs_flag(run)})",))


def small_validation(run: RunFiles) -> Finding | None:
    num_val = int(run.metrics.get("num_val") or 0)
    if not 0 < num_val < SMALL_VAL:
        return None
    from scipy.stats import binomtest

    accuracy = float(run.metrics["val_accuracy"])
    interval = binomtest(round(accuracy * num_val), num_val).proportion_ci(method="wilson")
    return Finding("small-validation", "low", "Few validation images",
                   f"{num_val} validation images: one image moves accuracy by {_pct(1 / num_val)}; the 95 % "
                   f"interval of {_pct(accuracy)} is {_pct(interval.low)} - {_pct(interval.high)}.",
                   ("more validation images (a val/ folder, or a larger --val-fraction)",
                    "graft compare --seeds 3: differences between settings with intervals"))


def stopped_early(run: RunFiles) -> Finding | None:
    stop = run.metrics.get("stopped_early")
    if not stop:
        return None
    return Finding("stopped-early", "low", "Stopped by the time budget",
                   f"the time budget ({stop.get('max_seconds')} s of training) stopped it after epoch "
                   f"{stop.get('after_epoch')}.", ("a larger --time-limit, or fewer epochs",))


RULES: tuple[Callable[[RunFiles], Any], ...] = (
    diverged, finetune_hurt, overfitting, val_loss_rising, low_recall_classes, few_images, likely_label_errors,
    small_validation, still_improving, stopped_early)


def diagnose(run: RunFiles) -> list[Finding]:
    """Every finding of :data:`RULES` for ``run``, most severe first (an empty list: nothing to fix)."""
    findings: list[Finding] = []
    for rule in RULES:
        found = rule(run)
        findings.extend(found if isinstance(found, list) else [found] if found else [])
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


NOTHING_TO_SAY = "Diagnosis: nothing to fix found (no overfitting, rising loss, weak class or likely label error)."


def diagnosis_lines(findings: list[Finding], max_findings: int = 4) -> list[str]:
    """A few plain-text lines for the end of ``graft train``."""
    if not findings:
        return [NOTHING_TO_SAY]
    lines = [f"Diagnosis ({len(findings)} finding{'s' if len(findings) > 1 else ''}; details in report.html):"]
    for f in findings[:max_findings]:
        lines.append(f"  [{f.severity}] {f.title}: {f.seen}")
        lines.append(f"      try: {f.try_next[0]}" + (f"; then {f.try_next[1]}" if len(f.try_next) > 1 else ""))
    if len(findings) > max_findings:
        lines.append(f"  ... and {len(findings) - max_findings} more in report.html")
    return lines
