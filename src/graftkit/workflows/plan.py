"""``graft train --time-limit 10m`` and ``--backbone auto``: measure, plan, then train once.

The time limit covers the whole process from the command line's start. What is spent before the
plan (start-up, the scan, the probes of :mod:`graftkit.workflows.probe`) is subtracted, a reserve
is kept for the final evaluation and the run files, and the planner picks, from a ladder of
schedules (the richest first: fine-tune with the first half of the stages frozen and the settings
of the flowers sweep: lr 2.7e-3, fine-tune lr 2.9e-4, label smoothing 0.03), the richest one whose
predicted seconds fit.
``fit``'s ``max_seconds`` then stops before an epoch that would not end in time; the best epoch
is kept. Backbones are ranked by linear-probe accuracy on an inner split of the training images,
never on the val split the run reports. ``plan.json`` in the run folder records every candidate.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import TrainConfig
from ..errors import ConfigError
from ..metrics import binomial_se
from .probe import (RELATIVE_COST, CostModel, Schedule, caches_prefix, measure_backbone, planned_freeze,
                    probe_images, probe_split)

AUTO_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
PROBE_SHARE = 0.2       # probing stops before a backbone whose probe would pass this share of the limit
TARGET_FRACTION = 0.97  # the plan aims to end here; fit's clock, the reserve and the slack cover the rest
RESERVE_FRACTION, RESERVE_MIN = 0.04, 5.0  # kept for the final evaluation and run files
# Settings of the planned fine-tune schedules: the best of a 20-trial flowers sweep (lite0, stage 0
# frozen, 5 fine-tune epochs: 0.928 against 0.904 with the defaults). A flag given on the command
# line wins over them.
PLANNED_SETTINGS = {"lr": 2.7e-3, "finetune_lr": 2.9e-4, "label_smoothing": 0.03}
# Planned runs train on the clean centre crops (their frozen prefix cached once), as the sweep that
# chose those settings did: fresh light augmentation every fine-tune epoch scored no better at 2+8
# epochs (flowers 0.924 against 0.928, dtd10 0.917 against 0.921, seed 0; BENCHMARKS.md) and costs the
# prefix every epoch. A given --augment wins.
PLANNED_AUGMENT = "none"
SCHEDULE_FIELDS = ("strategy", "epochs", "head_epochs", "finetune_epochs", "freeze")
PLAN_NAME = "plan.json"
SUBSET_NAME = "plan_split.csv"  # the training images kept when the limit cannot afford them all
MIN_TRAIN_PER_CLASS = 5
LABEL_ISSUES_SECONDS = 20.0  # the check after training (up to a minute of CPU) runs when this much is left
# Two or three backbones joined (``graft ensemble``) when the limit affords each of them one of these
# fine-tune lengths (:func:`planned_freeze`): more members first, then the longest; otherwise one backbone.
# Single runs use the time they are given poorly: their curves flatten after 4-5
# fine-tune epochs (history.jsonl of the 15m runs), and joining two backbones' runs measured +0.4
# (flowers, lite0 + lite1) and +0.8 points (dtd10, lite0 + lite2) over the better one (docs/ensemble.md).
ENSEMBLE_FINETUNE_EPOCHS = (8, 7, 6, 5, 4)
MAX_MEMBERS = 3  # the three offline backbones
# A later member fine-tunes up to this many epochs (the ladder's longest) when the earlier ones ran faster
# than predicted: the cost model's timed steps read 17-37 % slow against the 15m runs' epochs (plan.json
# of the session-7 runs), so planned members left a third of the limit unused ...
MAX_FINETUNE_EPOCHS = 8
# ... and down to this many when they ran slower than the plan expected; fewer and it is not trained.
MIN_MEMBER_FINETUNE_EPOCHS = 3
# Members are planned at this pace (seconds taken over the cost model's predicted seconds): the 13 members
# of the session-8 15m runs ran at 0.65-0.85 (median 0.77), never above 1. A plan that assumed 1.0 left
# 250-320 s of 900 unused whenever the timed steps read slow (BENCHMARKS.md, session 8). The later members
# are re-planned from the pace the run measures (:func:`member_epochs`), so a machine where the cost model
# is right shortens or skips them rather than overrunning the limit.
PLAN_PACE = 0.8
PACE_RANGE = (0.5, 2.0)  # the measured pace is trusted within these bounds
JOIN_FIXED_SECONDS = 5.0  # loading the members and writing the joined model
MEMBERS_DIR = "members"


def schedule_ladder(num_stages: int) -> list[Schedule]:
    """Candidate schedules, the richest (and slowest) first."""
    half, deep = planned_freeze(num_stages), max(num_stages - 2, 0)
    ladder = [Schedule("fine-tune", 2, n, half) for n in (8, 6, 5, 4, 3)]
    if deep > half:
        ladder.append(Schedule("fine-tune", 2, 3, deep))
    ladder += [Schedule("fine-tune", 2, 2, num_stages - 1), Schedule("fine-tune", 1, 1, num_stages - 1)]
    return ladder + [Schedule("feature-extraction", 10), Schedule("feature-extraction", 3)]


def tier(schedule: Schedule) -> int:
    """2: fine-tune with at least 4 epochs unfrozen; 1: a shorter fine-tune; 0: feature extraction."""
    if schedule.strategy != "fine-tune" or not schedule.finetune_epochs:
        return 0
    return 2 if schedule.finetune_epochs >= 4 else 1


def tie_tolerance(accuracy: float, num_val: int) -> float:
    """The standard error of a probe accuracy on ``num_val`` images (at least one point)."""
    return max(0.01, binomial_se(accuracy, num_val))


def tied_with_best(candidates: Sequence[dict[str, Any]]) -> tuple[float, list[dict[str, Any]]]:
    """The standard error of the best probe of ``candidates`` (:func:`tie_tolerance`) and the
    candidates within it of the best (the best included)."""
    best = max(candidates, key=lambda c: c["probe_accuracy"])
    tolerance = tie_tolerance(best["probe_accuracy"], best["inner_val_images"])
    return tolerance, [c for c in candidates if c["probe_accuracy"] >= best["probe_accuracy"] - tolerance - 1e-12]


def fit_schedule(ladder: Sequence[Schedule], seconds: Callable[[Schedule], float],
                 available: float | None) -> tuple[Schedule, float, bool]:
    """The first schedule of ``ladder`` predicted to fit ``available`` seconds (or the first, with no
    limit); the last one when none does. Returns ``(schedule, predicted seconds, fits)``."""
    for schedule in ladder:
        predicted = seconds(schedule)
        if available is None or predicted <= available:
            return schedule, predicted, True
    return ladder[-1], seconds(ladder[-1]), False


def choose(candidates: list[dict[str, Any]], schedules: Callable[[str], Sequence[Schedule]],
           seconds: Callable[[str, Schedule], float], available: float | None) -> tuple[dict[str, Any], str]:
    """Pick backbone and schedule. Each probed backbone gets the richest schedule that fits; the
    highest tier of schedule wins, then the best probe accuracy; accuracies within the probe's
    standard error count as tied and the backbone whose schedule is predicted to take least time wins. Fills each candidate's ``schedule``,
    ``predicted_seconds`` and ``fits``; returns ``(chosen candidate, reason)``."""
    probed = [c for c in candidates if c.get("probe_accuracy") is not None]
    if not probed:
        raise ConfigError("no backbone could be probed; pass --backbone NAME")
    for c in probed:
        schedule, predicted, fits = fit_schedule(schedules(c["backbone"]), lambda s: seconds(c["backbone"], s),
                                                 available)
        c.update(schedule=schedule, predicted_seconds=round(predicted, 1), fits=fits, tier=tier(schedule))
    fitting = [c for c in probed if c["fits"]] or probed
    top_tier = max(c["tier"] for c in fitting)
    pool = [c for c in fitting if c["tier"] == top_tier]
    tolerance, ties = tied_with_best(pool)
    # the cheapest run of the tied: its schedule's predicted seconds (a forward pass alone ranks lite0 and
    # lite1 by noise on a CPU with AMX: 14.2 against 13.9 ms per image, for runs of 472 and 683 s)
    chosen = min(ties, key=lambda c: (c["predicted_seconds"], -c["probe_accuracy"]))
    why = [f"{chosen['backbone']}: probe accuracy {chosen['probe_accuracy']:.3f} on the inner split"]
    if len(ties) > 1:
        others = ", ".join(f"{c['backbone']} {c['probe_accuracy']:.3f}" for c in ties if c is not chosen)
        why.append(f"tied within the probe's standard error ({tolerance:.3f}) with {others}; the cheapest run wins")
    elif len(pool) > 1:
        why.append("the best of the backbones that fit the same kind of schedule")
    left_out = [c["backbone"] for c in fitting if c["tier"] < top_tier]
    if left_out:
        why.append(f"{', '.join(left_out)} would only fit a shorter schedule")
    if available is not None:
        why.append(f"{chosen['schedule'].describe(chosen['num_stages'])}: predicted {chosen['predicted_seconds']:.0f}s "
                   f"of {available:.0f}s available" + ("" if chosen["fits"] else " (the cheapest; over budget)"))
    return chosen, "; ".join(why)


def joinable(candidates: list[dict[str, Any]], chosen: dict[str, Any]) -> list[dict[str, Any]]:
    """The backbones that may be joined with ``chosen``: the probes within the standard error of the best
    of the others; none unless ``chosen``'s plan is a full fine-tune (tier 2) that fits."""
    others = [c for c in candidates if c is not chosen and c.get("probe_accuracy") is not None]
    if chosen.get("tier") != 2 or not chosen.get("fits") or not others:
        return []
    return tied_with_best(others)[1]


def member_schedule(candidate: dict[str, Any], epochs: int) -> Schedule:
    """A member's schedule: fine-tune 2 head + ``epochs`` epochs, the first half of the stages frozen."""
    return Schedule("fine-tune", 2, epochs, planned_freeze(candidate["num_stages"]))


def plan_members(candidates: list[dict[str, Any]], chosen: dict[str, Any], seconds: Callable[[str, Schedule], float],
                 join_seconds: Callable[[Sequence[str]], float], available: float) -> dict[str, Any] | None:
    """Backbones to train after ``chosen`` and join with it, when ``available`` seconds afford them all at
    one of :data:`ENSEMBLE_FINETUNE_EPOCHS` and the expected :data:`PLAN_PACE`: as many as :data:`MAX_MEMBERS`
    (more members first, then more epochs), drawn from :func:`joinable` (the cheapest group of them). None
    when not even two fit. ``predicted_seconds`` are the cost model's (at pace 1)."""
    ties = joinable(candidates, chosen)
    for count in range(min(MAX_MEMBERS, len(ties) + 1), 1, -1):
        for epochs in ENSEMBLE_FINETUNE_EPOCHS:
            options = []
            for group in itertools.combinations(ties, count - 1):
                members = [(c, member_schedule(c, epochs)) for c in (chosen, *group)]
                members = [(c, schedule, seconds(c["backbone"], schedule)) for c, schedule in members]
                join = join_seconds([c["backbone"] for c, _, _ in members])
                total = sum(m[2] for m in members) + join
                if PLAN_PACE * total <= available:
                    options.append((total, [c["backbone"] for c in group], members, join))
            if options:
                total, _, members, join = min(options, key=lambda o: (o[0], o[1]))
                return {"members": members, "predicted_seconds": total, "join_seconds": join,
                        "finetune_epochs": epochs}
    return None


def optional_members(candidates: list[dict[str, Any]], chosen: dict[str, Any], planned: Sequence[str],
                     seconds: Callable[[str, Schedule], float]) -> list[tuple[dict[str, Any], Schedule, float]]:
    """Backbones that join after the ``planned`` ones only if those run faster than predicted (the timed steps
    read slow, and one timed step is noisy): those of :func:`joinable` not planned, cheapest first, up to
    :data:`MAX_MEMBERS` in all, at the shortest of :data:`ENSEMBLE_FINETUNE_EPOCHS` (:func:`member_epochs`
    shortens them further when that is what the time left affords)."""
    spare = [c for c in joinable(candidates, chosen) if c["backbone"] not in planned]
    options = [(c, member_schedule(c, min(ENSEMBLE_FINETUNE_EPOCHS))) for c in spare]
    options = sorted(((c, schedule, seconds(c["backbone"], schedule)) for c, schedule in options),
                     key=lambda m: (m[2], m[0]["backbone"]))
    return options[:max(MAX_MEMBERS - len(planned), 0)]


def probe_backbones(cfg: TrainConfig, inner, names: Sequence[str], budget: float | None,
                    say: Callable[[str], None], measure: Callable = measure_backbone,
                    num_images: int = 0) -> list[dict[str, Any]]:
    """Measure each backbone in turn; with a ``budget``, skip one whose probe (extrapolated from the
    first by :data:`RELATIVE_COST`) would take the probes past :data:`PROBE_SHARE` of it, and time
    training steps only where two forward passes over the ``num_images`` of the run fit the budget
    (else no fine-tune schedule can: the steps are estimated from the forward pass)."""
    rows: list[dict[str, Any]] = []
    spent, first = 0.0, None
    steps_worth = None if budget is None else (lambda forward: 2 * forward * num_images < budget - spent)
    for name in names:
        if budget is not None and first is not None:
            guess = first["seconds"] * RELATIVE_COST.get(name, 1.0) / RELATIVE_COST.get(first["backbone"], 1.0)
            if spent + guess > PROBE_SHARE * budget:
                rows.append({"backbone": name, "probe_accuracy": None,
                             "skipped": f"probing it would take ~{guess:.0f}s; the probes may use "
                                        f"{PROBE_SHARE:.0%} of the limit ({PROBE_SHARE * budget:.0f}s), "
                                        f"{spent:.0f}s spent"})
                say(f"plan: skipped {name} (the limit cannot afford its probe)")
                continue
        m = measure(cfg.replace(backbone=name, progress="none"), inner, steps_worth=steps_worth)
        speed = m["speed"]
        row = {"backbone": name, "image_size": m["image_size"], "probe_accuracy": round(m["probe_accuracy"], 4),
               "inner_train_images": len(inner.train), "inner_val_images": len(inner.val),
               "probe_seconds": round(m["seconds"], 1), "seconds": m["seconds"], "num_stages": speed.num_stages,
               "speed": speed, "pooled_cached": m["pooled_cached"],
               "steps_timed": m.get("steps_timed", True)}
        rows.append(row)
        first = first or row
        spent += m["seconds"]
        say(f"plan: {name} probe accuracy {row['probe_accuracy']:.3f} ({len(inner.val)} inner val images), "
            f"{speed.forward * 1000:.0f} ms/image forward, probed in {m['seconds']:.0f}s")
    return rows


def schedule_settings(schedule: Schedule, fixed: set[str]) -> dict[str, Any]:
    """TrainConfig changes of a planned schedule (flags in ``fixed`` are the user's and stay)."""
    if schedule.strategy == "fine-tune":
        changes = dict(strategy="fine-tune", head_epochs=schedule.head_epochs,
                       finetune_epochs=schedule.finetune_epochs, freeze=schedule.freeze, **PLANNED_SETTINGS)
    else:
        changes = dict(strategy="feature-extraction", epochs=schedule.epochs, lr=PLANNED_SETTINGS["lr"])
    changes["augment"] = PLANNED_AUGMENT
    return {k: v for k, v in changes.items() if k not in fixed}


def user_schedule(cfg: TrainConfig) -> Schedule:
    if cfg.strategy == "fine-tune":
        return Schedule("fine-tune", cfg.head_epochs or 0, cfg.finetune_epochs or 0, cfg.freeze)
    return Schedule(cfg.strategy, cfg.total_epochs)


def candidate_json(c: dict[str, Any], chosen: dict[str, Any]) -> dict[str, Any]:
    out = {k: c[k] for k in ("backbone", "image_size", "probe_accuracy", "inner_train_images", "inner_val_images",
                             "probe_seconds", "steps_timed", "predicted_seconds", "fits", "skipped") if k in c}
    if "speed" in c:
        s = c["speed"]
        out["ms_per_image"] = {"decode": round(s.decode * 1e3, 2), "forward": round(s.forward * 1e3, 2),
                               "train_step_by_freeze": {str(d): round(v * 1e3, 2) for d, v in s.train_step.items()}}
    if "schedule" in c:
        out["schedule"] = c["schedule"].describe(c["num_stages"])
    out["chosen"] = c is chosen
    return out


def affordable_train_images(seconds: Callable[[int], float], num_train: int, available: float,
                            minimum: int) -> int:
    """The most training images (at least ``minimum``, at most ``num_train``) whose run is predicted
    to fit ``available`` seconds; ``seconds(n)`` grows linearly with ``n``."""
    base, slope = seconds(0), seconds(1) - seconds(0)
    affordable = int((available - base) // slope) if slope > 0 else num_train
    return max(min(affordable, num_train), min(minimum, num_train))


def train_subset(scan, inner, num: int, seed: int):
    """``num`` training images (about: stratified per class, seeded), the probe's first (their pooled
    features are cached), and all of val: a DataScan like ``scan``."""
    from ..data import DataScan
    from ..data.scan import stratified_split

    probed = [*inner.train, *inner.val]
    if num <= len(probed):
        kept = stratified_split(probed, scan.classes, num / len(probed), seed + 2, scan.root)[1]
    else:
        seen = {s.path for s in probed}
        rest = [s for s in scan.train if s.path not in seen]
        kept = probed + stratified_split(rest, scan.classes, (num - len(probed)) / len(rest), seed + 2, scan.root)[1]
    kept = sorted(kept, key=lambda s: (s.label, str(s.path)))
    return DataScan(scan.root, scan.layout, scan.classes, kept, list(scan.val), scan.bad, scan.ignored,
                    list(scan.warnings))


def make_plan(cfg: TrainConfig, scan, *, time_limit: float | None, started: float, auto_backbone: bool,
              fixed: set[str], say: Callable[[str], None] = print, measure: Callable = measure_backbone,
              ensemble: bool = True):
    """Probe, then choose. Returns ``(run config, plan.json's content, scan to train on)``: the config
    has ``max_seconds`` under a limit; when even the cheapest plan cannot fit, the scan keeps a
    stratified subset of the training images that does (listed in ``plan_split.csv``). With
    ``ensemble`` and a limit that affords two or three backbones (:func:`plan_members`), plan.json's
    ``ensemble`` lists the members (the run config is the first's) and ``train_planned`` joins them."""
    schedule_fixed = bool(fixed & set(SCHEDULE_FIELDS)) or time_limit is None
    if not schedule_fixed and "augment" not in fixed:
        cfg = cfg.replace(augment=PLANNED_AUGMENT)  # probe as the run will train: its features are reused
    inner = probe_split(scan, cfg.seed, probe_images(time_limit))
    names = AUTO_BACKBONES if auto_backbone else (cfg.backbone,)
    rows = probe_backbones(cfg, inner, names, time_limit, say, measure, len(scan.train) + len(scan.val))
    cost = CostModel({r["backbone"]: r["speed"] for r in rows if "speed" in r})
    num_train, num_val = len(scan.train), len(scan.val)
    elapsed = time.monotonic() - started
    reserve = None if time_limit is None else max(RESERVE_MIN, RESERVE_FRACTION * time_limit)
    available = None if time_limit is None else time_limit * TARGET_FRACTION - elapsed - reserve
    by_name = {r["backbone"]: r for r in rows}
    cached = caches_prefix(cfg)

    def seconds(name: str, schedule: Schedule, n: int = num_train) -> float:
        return cost.seconds(name, schedule, n, num_val, decoded=name == cfg.backbone,
                            pooled_cached=min(by_name[name]["pooled_cached"], n), cached_prefix=cached)

    def schedules(name: str) -> Sequence[Schedule]:
        return [user_schedule(cfg)] if schedule_fixed else schedule_ladder(by_name[name]["num_stages"])

    chosen, reason = choose(rows, schedules, seconds, available)
    pair = None
    if ensemble and available is not None and not schedule_fixed:
        def join_seconds(names: Sequence[str]) -> float:  # the members' forward passes over val
            return JOIN_FIXED_SECONDS + num_val * sum(by_name[n]["speed"].forward for n in names)

        pair = plan_members(rows, chosen, seconds, join_seconds, available)
        planned = [c["backbone"] for c, _, _ in pair["members"]] if pair else [chosen["backbone"]]
        optional = optional_members(rows, chosen, planned, seconds)
        if optional and pair is None:  # one backbone planned; the others wait for its measured pace
            first = (chosen, chosen["schedule"], chosen["predicted_seconds"])
            pair = {"members": [first], "predicted_seconds": chosen["predicted_seconds"],
                    "join_seconds": join_seconds([chosen["backbone"], optional[0][0]["backbone"]])}
        if optional:
            pair["optional"] = optional
            reason += (f"; {', '.join(c['backbone'] for c, _, _ in optional)} (fine-tune 2+{optional[0][1].finetune_epochs}, "
                       f"predicted {', '.join(f'{sec:.0f}s' for _, _, sec in optional)}) will join if the planned "
                       f"run{'s take' if len(planned) > 1 else ' takes'} less time than predicted")
    if pair is not None and len(pair["members"]) > 1:
        chosen["schedule"], chosen["predicted_seconds"] = pair["members"][0][1], round(pair["members"][0][2], 1)
        names = ", ".join(c["backbone"] for c, _, _ in pair["members"])
        reason += (f"; the limit affords {len(pair['members'])} backbones at fine-tune 2+{pair['finetune_epochs']} "
                   f"each: {names} train one after the other and are joined into one model (the mean of their "
                   f"calibrated logits, docs/ensemble.md), predicted {pair['predicted_seconds']:.0f}s "
                   f"({PLAN_PACE * pair['predicted_seconds']:.0f}s at the pace members have run at, {PLAN_PACE:g}x) of "
                   f"{available:.0f}s")
    name, schedule = chosen["backbone"], chosen["schedule"]
    changes = {} if schedule_fixed else schedule_settings(schedule, fixed)
    run_cfg, run_scan = cfg.replace(backbone=name, **changes), scan
    if available is not None and not chosen["fits"]:
        # at least the probe's images (their pooled features are cached: free for a head-only plan)
        minimum = max(MIN_TRAIN_PER_CLASS * len(scan.classes), by_name[name]["pooled_cached"])
        num = affordable_train_images(lambda n: seconds(name, schedule, n), num_train, available, minimum)
        if num < num_train:
            run_scan = train_subset(scan, inner, num, cfg.seed)
            run_cfg = run_cfg.replace(split_file=(Path(cfg.out_dir) / SUBSET_NAME).resolve())
            chosen["predicted_seconds"] = round(seconds(name, schedule, len(run_scan.train)), 1)
            reason += (f"; the limit affords {len(run_scan.train)} of {num_train} training images (stratified, "
                       f"seeded; {SUBSET_NAME}), predicted {chosen['predicted_seconds']:.0f}s")
    # the first member may run until the later ones would have left only their shortest runs at the planned
    # pace (they are re-planned from its measured pace): where the cost model is right, they shorten, it is not cut
    after_first = 0.0 if pair is None else pair["join_seconds"] * (len(pair["members"]) > 1) + PLAN_PACE * sum(
        seconds(c["backbone"], member_schedule(c, MIN_MEMBER_FINETUNE_EPOCHS)) for c, _, _ in pair["members"][1:])
    if available is not None:
        epoch = cost.epoch_seconds(name, schedule, len(run_scan.train), num_val, cached)
        left = time_limit * TARGET_FRACTION - (time.monotonic() - started) - reserve - after_first
        run_cfg = run_cfg.replace(max_seconds=round(max(left - epoch, 1.0), 1))
    plan = {"time_limit_seconds": time_limit, "seconds_before_plan": round(elapsed, 1),
            "reserve_seconds": reserve, "available_seconds": None if available is None else round(available, 1),
            "num_train": len(run_scan.train), "num_val": num_val, "probe_split": "inner split of the training images "
            f"({len(inner.train)} train / {len(inner.val)} val, seeded, stratified); the val split is not read",
            "candidates": [candidate_json(c, chosen) for c in rows], "chosen": {
                "backbone": name, "schedule": schedule.describe(chosen["num_stages"]),
                "predicted_seconds": chosen["predicted_seconds"], "settings": changes,
                "max_seconds": run_cfg.max_seconds},
            "reason": reason}
    if pair is not None:
        optional = pair.get("optional", [])
        plan["ensemble"] = {
            "predicted_seconds": round(pair["predicted_seconds"], 1), "join_seconds": round(pair["join_seconds"], 1),
            "planned_pace": PLAN_PACE,
            "members": [{"backbone": c["backbone"], "schedule": sched.describe(c["num_stages"]),
                         "predicted_seconds": round(sec, 1), "settings": schedule_settings(sched, fixed),
                         "epoch_seconds": round(cost.epoch_seconds(c["backbone"], sched, num_train, num_val, cached), 1),
                         "folder": f"{MEMBERS_DIR}/{c['backbone']}", "optional": index >= len(pair["members"])}
                        for index, (c, sched, sec) in enumerate([*pair["members"], *optional])]}
        plan["chosen"]["ensemble"] = [m["backbone"] for m in plan["ensemble"]["members"] if not m["optional"]]
    return run_cfg, plan, run_scan


def summary_line(plan: dict[str, Any]) -> str:
    c = plan["chosen"]
    limit = "" if plan["time_limit_seconds"] is None else f" of {plan['time_limit_seconds']:.0f}s"
    pair = plan.get("ensemble", {"members": []})
    optional = [m["backbone"] for m in pair["members"] if m.get("optional")]
    later = f"; then {' + '.join(optional)} if time allows" if optional else ""
    if len(pair["members"]) - len(optional) > 1:
        planned = [m["backbone"] for m in pair["members"] if not m.get("optional")]
        pace = pair.get("planned_pace", 1.0)
        return (f"plan: {' + '.join(planned)} joined, {c['schedule']} each, predicted {pair['predicted_seconds']:.0f}s "
                f"({pace * pair['predicted_seconds']:.0f}s at the pace members have run at){limit}{later} "
                f"({len(plan['candidates'])} candidate(s), plan.json)")
    return (f"plan: {c['backbone']}, {c['schedule']}, predicted {c['predicted_seconds']:.0f}s{limit}{later} "
            f"({len(plan['candidates'])} candidate(s), plan.json)")


def member_epochs(info: dict[str, Any], pace: float, left: float, margin: float = 0.0,
                  later: Sequence[dict[str, Any]] = ()) -> int | None:
    """Fine-tune epochs for member ``info`` (plan.json's ``ensemble.members`` entry) re-planned from ``pace``
    (measured seconds of the members trained so far over their predicted seconds): the most, from
    :data:`MIN_MEMBER_FINETUNE_EPOCHS` to :data:`MAX_FINETUNE_EPOCHS`, whose predicted run at that pace, with
    the ``later`` members' at as many epochs (a fair share; they are re-planned in their turn), fits ``left``
    (the plan's target) and, with one epoch to spare, ``left + margin`` (the limit itself, less a minimal
    reserve; the member's clock stops it there); None when not even the fewest fit. The spare epoch:
    the pace of one backbone is not quite another's (lite1 ran at 0.80-0.85 where lite0 ran at 0.75-0.79),
    and a member the clock stops before its last epoch ends its learning-rate schedule early (dtd10: a lite1
    stretched to 2+7 at lite0's pace was stopped after 6 fine-tune epochs, 0.913 against 0.917-0.921). Kept
    inside the target as well, it left one epoch of the slowest member unused in every run (session 9: 728-785 s
    of 900). A head-only member keeps its schedule (0) when it fits."""
    planned = int(info["settings"].get("finetune_epochs", 0))
    if not planned:
        return 0 if pace * info["predicted_seconds"] <= left else None
    for epochs in range(MAX_FINETUNE_EPOCHS, min(MIN_MEMBER_FINETUNE_EPOCHS, planned) - 1, -1):
        run = pace * (member_seconds(info, epochs) + sum(member_seconds(m, epochs) for m in later))
        if run <= left and run + pace * info["epoch_seconds"] <= left + margin:
            return epochs
    return None


def member_seconds(info: dict[str, Any], epochs: int) -> float:
    """Predicted seconds of member ``info`` fine-tuning ``epochs`` epochs instead of its planned ones."""
    return info["predicted_seconds"] + (epochs - int(info["settings"].get("finetune_epochs", 0))) * info["epoch_seconds"]


def train_members(run_cfg: TrainConfig, plan: dict[str, Any], scan, *, time_limit: float, started: float,
                  train: Callable, say: Callable[[str], None]):
    """Train the members plan.json's ``ensemble`` lists into ``members/``, one after the other, and join
    them into the run folder. After each member, the later ones are re-planned from the measured pace
    (seconds taken over seconds predicted, within :data:`PACE_RANGE`): a member gets more or fewer fine-tune
    epochs (:func:`member_epochs`) than planned, as the time left at that pace affords, and one that no longer
    fits even its shortest run is skipped, with the ones after it (an optional one alone); with one member left, the run folder
    gets its files. plan.json's ``ensemble.trained`` records what each member was given and took.
    Returns ``(run, first member's run)``."""
    import shutil

    from ..engine.checkpoint import load_model
    from ..engine.fit import Run
    from ..fileio import atomic_write_text
    from .ensemble import ensemble_runs

    out_dir, pair = Path(run_cfg.out_dir), plan["ensemble"]
    infos = pair["members"]
    trained: list[dict[str, Any]] = []
    # what lies between the plan's target and the limit itself, less a minimal reserve for the run files: a
    # re-planned member's spare epoch and its clock may use it (the join's seconds are kept apart)
    margin = time_limit * (1 - TARGET_FRACTION) + plan["reserve_seconds"] - RESERVE_MIN

    def timed(info: dict[str, Any], cfg: TrainConfig, predicted: float):
        begun = time.monotonic()
        run = train(cfg, scan=scan)
        trained.append({"backbone": info["backbone"], "finetune_epochs": cfg.finetune_epochs,
                        "predicted_seconds": round(predicted, 1), "seconds": round(time.monotonic() - begun, 1)})
        return run

    runs = [timed(infos[0], run_cfg.replace(out_dir=out_dir / infos[0]["folder"]), infos[0]["predicted_seconds"])]
    for index, info in enumerate(infos[1:], 1):
        pace = min(max(sum(t["seconds"] for t in trained) / sum(t["predicted_seconds"] for t in trained),
                       PACE_RANGE[0]), PACE_RANGE[1])
        later = [m for m in infos[index + 1:] if not m.get("optional")]
        left = (time_limit * TARGET_FRACTION - (time.monotonic() - started) - plan["reserve_seconds"]
                - pair["join_seconds"])
        # as many epochs as the later members can have too; else this one alone (the later ones are then skipped)
        epochs = member_epochs(info, pace, left, margin, later)
        if epochs is None and later:
            later, epochs = [], member_epochs(info, pace, left, margin)
        planned = int(info["settings"].get("finetune_epochs", 0))
        if epochs is None:
            fewest = min(planned, MIN_MEMBER_FINETUNE_EPOCHS)
            needed = pace * member_seconds(info, fewest)
            why = f"{left:.0f}s left, {needed:.0f}s predicted at the measured pace {pace:.2f}x" + (
                f" for 2+{fewest}, and an epoch more to spare within the limit ({left + margin:.0f}s)"
                if planned else "")
            if info.get("optional"):
                say(f"plan: {info['backbone']} does not fit after all ({why}): not trained")
                continue
            say(f"plan: {info['backbone']} no longer fits ({why}): "
                f"{', '.join(m['backbone'] for m in infos[index:])} skipped")
            break
        predicted = member_seconds(info, epochs)
        if epochs != planned:
            say(f"plan: the members so far took {pace:.2f}x their predicted time: {info['backbone']} fine-tunes "
                f"{epochs} epochs instead of {planned} (predicted {pace * predicted:.0f}s of {left:.0f}s left)")
        settings = {**info["settings"], **({"finetune_epochs": epochs} if planned else {})}
        cfg = run_cfg.replace(backbone=info["backbone"], **settings, out_dir=out_dir / info["folder"],
                              max_seconds=round(max(left + margin - pace * (
                                  info["epoch_seconds"] + sum(member_seconds(m, epochs) for m in later)), 1.0), 1))
        runs.append(timed(info, cfg, predicted))
    pair["trained"] = trained
    atomic_write_text(out_dir / PLAN_NAME, json.dumps(plan, indent=2))
    first = runs[0]
    if len(runs) == 1:
        say(f"plan: the run is {infos[0]['backbone']} alone (its files copied from {infos[0]['folder']})")
        for path in sorted(Path(first.out_dir).iterdir()):
            if path.is_file() and not path.is_symlink():
                shutil.copy2(path, out_dir / path.name)
        return Run(out_dir, first.config, first.classes, first.metrics, first.history, first.model), first
    metrics = ensemble_runs([r.out_dir for r in runs], out_dir, data_dir=scan.root, device=run_cfg.device,
                            say=say, new_folder=False, skip_bad_images=run_cfg.skip_bad_images)
    members = ", ".join(f"{r.config.backbone} {r.metrics['val_accuracy']:.4f}" for r in runs)
    say(f"val_accuracy {metrics['val_accuracy']:.4f} joined ({members}) → {out_dir}")
    return Run(out_dir, first.config, first.classes, metrics, [], load_model(out_dir)[0]), first


def train_planned(cfg: TrainConfig, *, time_limit: float | None, started: float, auto_backbone: bool,
                  fixed: set[str] = frozenset(), measure: Callable = measure_backbone, train: Callable | None = None,
                  ensemble: bool = True):
    """Scan, probe, plan (``plan.json``), train (two or three backbones joined, when the limit affords them and
    ``ensemble``); then the label-issue check when time is left."""
    from ..engine.fit import fit, prepare_out_dir
    from ..engine.label_issues import check_run_label_issues
    from ..engine.prepare import scan_for
    from ..fileio import atomic_write_text

    say = (lambda line: None) if cfg.progress == "none" else (lambda line: print(line, flush=True))
    out_dir = prepare_out_dir(cfg)  # refuse a used folder before spending the budget
    cfg = cfg.replace(out_dir=out_dir)
    scan = scan_for(cfg)
    run_cfg, plan, scan = make_plan(cfg, scan, time_limit=time_limit, started=started, auto_backbone=auto_backbone,
                                    fixed=set(fixed), say=say, measure=measure, ensemble=ensemble)
    if run_cfg.split_file is not None and run_cfg.split_file != cfg.split_file:
        from ..data.split_file import write_split_file

        write_split_file(run_cfg.split_file, scan.root, scan.train, scan.val)
    atomic_write_text(Path(out_dir) / PLAN_NAME, json.dumps(plan, indent=2))
    print(summary_line(plan), flush=True)
    if "ensemble" in plan:
        run, checked = train_members(run_cfg, plan, scan, time_limit=time_limit, started=started,
                                     train=train or fit, say=say)
    else:
        run = checked = (train or fit)(run_cfg, scan=scan)
    left = None if time_limit is None else time_limit - (time.monotonic() - started)
    if left is None or left > LABEL_ISSUES_SECONDS:
        line = check_run_label_issues(checked.config, checked.out_dir)
    else:
        line = "label issues: not checked (the time limit is spent); run 'graft check-data DATA --label-issues'"
    if cfg.progress != "none":
        print(line, flush=True)
    return run
