"""Measure backbones on the user's own data before spending a budget: probe accuracy and speed.

For each candidate backbone, on an inner split carved from the training images (a seeded,
stratified subsample when the data is large; the reported val split is never read):

* a linear probe: pooled features of the pretrained backbone at its native size (computed once and
  kept in the feature cache, so the head phase of the final run reuses them), a logistic regression
  fitted on the inner train part, scored on the inner val part;
* speed: decoding and one forward pass per image (measured while the features are computed), and a
  few timed training steps at each candidate freeze depth (the frozen prefix runs once, as ``fit``
  caches it; the rest trains).

:class:`CostModel` turns those timings into seconds for a whole run: ``seconds(backbone,
schedule, num_train, num_val)``. The planner (``workflows/plan.py``), ``--freeze auto``
(:func:`candidate_depths`, :func:`depth_label`) and the sweep (:func:`estimate_training_seconds`)
use it.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..config import TrainConfig
from ..data import DataScan
from ..data.scan import stratified_split

PROBE_MAX_IMAGES = 400     # images of the inner split the probe looks at, at most (train + val parts)
PROBE_VAL_FRACTION = 0.25  # of those, held out to score the probe
PROBE_MIN_IMAGES = 100     # ... and at least (under a time limit: one image per second of it in between)
# Images per timed training step. Per-image cost falls with the batch (each step's fixed work is
# shared): timed at 4, the steps predicted fine-tune epochs (batch 32) 1.4-2x too slow (session-5
# runs, BENCHMARKS.md "Time limit"); at 16 the fixed share is a quarter of that.
TIMING_BATCH = 16
FORWARD_BATCH = 16         # images of the timed forward pass (fit's evaluation batch on a CPU)
TIMING_STEPS = 1           # timed steps per freeze depth, after one warm-up step at the first depth
PROBE_C = 0.5              # L2 strength of the logistic-regression probe on standardised features
# Relative cost of a forward pass (FLOPs at the native size, timm's model cards), to skip a probe
# that the budget cannot afford before spending it.
RELATIVE_COST = {"efficientnet_lite0": 1.0, "efficientnet_lite1": 1.5, "efficientnet_lite2": 2.2}
# Seconds that do not grow with the data: building the model, the feature store, the confidence
# fit and the run files. Measured ~5-10 s on 2 CPU cores; the planner adds its own reserve.
FIXED_SECONDS = 8.0


def candidate_depths(num_stages: int, limit: int = 5) -> list[int]:
    """Frozen-stage counts to try, most frozen first: all, all but the last, all but two, half, none."""
    out: list[int] = []
    for depth in (num_stages, num_stages - 1, num_stages - 2, num_stages // 2, 0):
        if 0 <= depth <= num_stages and depth not in out:
            out.append(depth)
    return out[:limit]


def depth_label(depth: int, num_stages: int) -> str:
    trainable = num_stages - depth
    if trainable <= 0:
        return "all frozen (feature extraction)"
    if depth == 0:
        return "none frozen (all stages trained)"
    return "last stage trainable" if trainable == 1 else f"last {trainable} stages trainable"


def planned_freeze(num_stages: int) -> int:
    """The frozen stages of a planned fine-tune (``workflows.plan``): the first half (3 of EfficientNet-Lite's
    7), whose output is cached once (the planned runs train on clean crops). On inner splits of the training
    images it scored as stage 0 frozen did, in half the time (lite0, 2+6: dtd10 0.900 and 0.900, 107 s against
    194 s; flowers 0.920 and 0.920, 120 s against 208 s; BENCHMARKS.md, session 11): the time saved buys more
    members and epochs. :func:`timing_depths` always times it."""
    return num_stages // 2


def timing_depths(num_stages: int) -> list[int]:
    """Freeze depths whose training step the probe times: the planned one (:func:`planned_freeze`) and all
    but two (the planner's schedules), stage 0 frozen (a given ``--freeze 1``); other depths take the
    nearest measured one."""
    return sorted({min(1, num_stages - 1), planned_freeze(num_stages), max(num_stages - 2, 0)})


def seconds_after_head(history: Sequence[dict[str, Any]], head_epochs: int) -> float:
    """The seconds of a run's epochs after its first ``head_epochs`` (where freeze depths differ)."""
    return float(sum(r["seconds"] for r in history[head_epochs:]))


# ----------------------------------------------------------------------------- the inner split


def probe_images(time_limit: float | None) -> int:
    """How many training images the probe looks at: :data:`PROBE_MAX_IMAGES`, or under a time limit
    one per second of it, between :data:`PROBE_MIN_IMAGES` and that."""
    if time_limit is None:
        return PROBE_MAX_IMAGES
    return int(min(PROBE_MAX_IMAGES, max(PROBE_MIN_IMAGES, time_limit)))


def probe_split(scan: DataScan, seed: int, max_images: int = PROBE_MAX_IMAGES,
                val_fraction: float = PROBE_VAL_FRACTION) -> DataScan:
    """The probe's data: only ``scan.train`` (a stratified, seeded subsample of at most
    ``max_images`` when it is larger), split again into an inner train and an inner val part."""
    train = list(scan.train)
    if len(train) > max_images:
        _, train = stratified_split(train, scan.classes, max_images / len(train), seed + 1, scan.root)
    inner_train, inner_val = stratified_split(train, scan.classes, val_fraction, seed, scan.root)
    return DataScan(scan.root, scan.layout, scan.classes, inner_train, inner_val, [], [], [])


# ----------------------------------------------------------------------------- the cost model


@dataclass(frozen=True)
class Schedule:
    """What a candidate plan trains: fine-tune (``freeze`` stages stay frozen after ``head_epochs``
    head epochs, then ``finetune_epochs``) or feature extraction (``head_epochs`` epochs, head only)."""

    strategy: str
    head_epochs: int
    finetune_epochs: int = 0
    freeze: int = 0

    @property
    def epochs(self) -> int:
        return self.head_epochs + self.finetune_epochs

    def describe(self, num_stages: int) -> str:
        if self.strategy == "feature-extraction":
            return f"feature extraction, {self.head_epochs} epochs"
        return (f"fine-tune {self.head_epochs} head + {self.finetune_epochs} epochs, "
                f"{depth_label(self.freeze, num_stages)} (--freeze {self.freeze})")


@dataclass
class BackboneSpeed:
    """Seconds per image of one backbone on this machine (native size, the run's precision)."""

    name: str
    num_stages: int
    decode: float               # decoding an image into the decoded-image cache (0 when already there)
    forward: float              # a forward pass to pooled features (no gradient)
    prefix: dict[int, float] = field(default_factory=dict)      # stages 0..depth-1, no gradient
    train_step: dict[int, float] = field(default_factory=dict)  # a training step of stages depth.. + head
    tail_eval: dict[int, float] = field(default_factory=dict)   # stages depth.. + head, no gradient


@dataclass
class CostModel:
    """Predicted seconds of a run from measured per-image speeds (:class:`BackboneSpeed`)."""

    speeds: dict[str, BackboneSpeed]
    fixed: float = FIXED_SECONDS
    head_epoch_per_image: float = 2e-5  # a head epoch on cached pooled features

    def seconds(self, backbone: str, schedule: Schedule, num_train: int, num_val: int,
                decoded: bool = False, pooled_cached: int = 0, cached_prefix: bool = False) -> float:
        """Whole-run seconds: decoding (unless ``decoded``), pooled features (less ``pooled_cached``
        rows already in the cache), head epochs, fine-tune epochs (their frozen prefix runs every epoch
        on freshly augmented images, or once when ``cached_prefix``: see ``engine.prepare.fixed_views``)
        and the fine-tuned model's training features (for the unknown detector), the final evaluation
        (a full forward pass over val, also after feature extraction) and the fixed part."""
        s = self.speeds[backbone]
        images = num_train + num_val
        total = self.fixed + (0.0 if decoded else images * s.decode)
        total += max(images - pooled_cached, 0) * s.forward
        total += schedule.head_epochs * images * self.head_epoch_per_image
        if schedule.strategy == "fine-tune" and schedule.finetune_epochs:
            depth = _nearest(s.train_step, schedule.freeze)
            total += images * s.prefix.get(depth, 0.0) if cached_prefix else 0.0
            total += schedule.finetune_epochs * self.epoch_seconds(backbone, schedule, num_train, num_val,
                                                                   cached_prefix)
            total += num_train * s.forward  # the unknown detector's features of the fine-tuned model
        return total + num_val * s.forward  # the final evaluation of the best epoch's model

    def epoch_seconds(self, backbone: str, schedule: Schedule, num_train: int, num_val: int,
                      cached_prefix: bool = False) -> float:
        """The longest single epoch of ``schedule``: what the last epoch may overrun a budget by."""
        s = self.speeds[backbone]
        if schedule.strategy != "fine-tune" or not schedule.finetune_epochs:
            return (num_train + num_val) * self.head_epoch_per_image
        depth = _nearest(s.train_step, schedule.freeze)
        prefix = 0.0 if cached_prefix else (num_train + num_val) * s.prefix.get(depth, 0.0)
        return prefix + num_train * s.train_step[depth] + num_val * s.tail_eval[depth]


def _nearest(table: dict[int, float], depth: int) -> int:
    """The measured depth closest to ``depth`` (freezing more is cheaper: ties go to the shallower)."""
    return min(table, key=lambda d: (abs(d - depth), d))


def estimate_training_seconds(cost: CostModel, cfg: TrainConfig, num_train: int, num_val: int) -> float:
    """Predicted seconds of ``fit(cfg)`` on ``num_train``/``num_val`` images (for the sweep: which
    configurations fit the time left). ``cost`` must hold ``cfg.backbone``'s speeds."""
    if cfg.strategy == "fine-tune":
        schedule = Schedule("fine-tune", cfg.head_epochs or 0, cfg.finetune_epochs or 0, cfg.freeze)
    else:
        schedule = Schedule("feature-extraction", cfg.total_epochs)
    return cost.seconds(cfg.backbone, schedule, num_train, num_val, cached_prefix=caches_prefix(cfg))


def caches_prefix(cfg: TrainConfig) -> bool:
    """Whether ``cfg``'s fine-tune epochs run on a cached frozen prefix (fixed views) rather than
    computing it every epoch on freshly augmented images."""
    from ..engine.prepare import fixed_views

    return cfg.cache and fixed_views(cfg, trains_backbone=True)


# ----------------------------------------------------------------------------- measuring


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                          seed: int = 0) -> float:
    """Accuracy on ``val_x`` of a logistic regression fitted on standardised ``train_x``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=500, random_state=seed % 2**32))
    with warnings.catch_warnings():  # a probe stopped at max_iter still ranks backbones
        warnings.simplefilter("ignore")
        probe.fit(train_x, train_y)
    return float((probe.predict(val_x) == val_y).mean())


def time_depths(model, depths: Sequence[int], image_size: int, device, autocast: Callable,
                batch: int = TIMING_BATCH, steps: int = TIMING_STEPS) -> dict[str, dict[int, float]]:
    """Per-image seconds of the frozen prefix, a training step of the rest and its evaluation, for
    each depth (``depth == num_stages``: the head on pooled features, costs ~0 and is skipped), and
    of a warm forward pass (``"forward"``)."""
    import torch
    from torch import nn

    from ..engine.features import TailModel, prefix_forward

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
    labels = torch.arange(batch, device=device) % model.num_classes
    num_stages, out = model.backbone.num_stages, {"prefix": {}, "train_step": {}, "tail_eval": {}}
    for depth in depths:
        if depth >= num_stages:
            continue
        model.set_trainable([i >= depth for i in range(num_stages)], train_bn=False)
        model.eval()
        with torch.no_grad(), autocast():
            started = time.perf_counter()
            x = prefix_forward(model, images, depth) if depth else images
            out["prefix"][depth] = (time.perf_counter() - started) / batch if depth else 0.0
        tail = TailModel(model, depth)
        params = [p for p in tail.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-6)
        loss_fn = nn.CrossEntropyLoss()
        tail.train()
        timings = []
        for _ in range(steps + (not out["train_step"])):  # a first step warms up the allocator and kernels
            started = time.perf_counter()
            with autocast():
                loss = loss_fn(tail(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            timings.append(time.perf_counter() - started)
        out["train_step"][depth] = timings[-1] / batch
        tail.eval()
        with torch.no_grad(), autocast():
            started = time.perf_counter()
            tail(x)
            out["tail_eval"][depth] = (time.perf_counter() - started) / batch
    model.set_trainable([True] * num_stages, train_bn=True)
    return out


def time_forward(model, image_size: int, device, autocast: Callable, batch: int = FORWARD_BATCH) -> float:
    """Per-image seconds of a forward pass to pooled features, at fit's evaluation batch size."""
    import torch

    model.eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator).to(device)
    with torch.no_grad(), autocast():
        started = time.perf_counter()
        model.backbone(images)
        return (time.perf_counter() - started) / batch


def estimated_depths(forward: float, depths: Sequence[int], num_stages: int) -> dict[str, dict[int, float]]:
    """What :func:`time_depths` would measure, from the forward pass alone (stages share the cost
    evenly; a training step costs three forward passes): when timing them is not worth its cost."""
    trained = {d: (num_stages - d) / num_stages for d in depths if d < num_stages}
    return {"prefix": {d: forward * (1 - share) for d, share in trained.items()},
            "train_step": {d: 3 * forward * share for d, share in trained.items()},
            "tail_eval": {d: forward * share for d, share in trained.items()}}


def measure_backbone(cfg: TrainConfig, inner: DataScan, depths: Sequence[int] | None = None,
                     steps_worth: Callable[[float], bool] | None = None) -> dict[str, Any]:
    """Probe ``cfg.backbone`` (at its native size) on ``inner``: probe accuracy on its val part, and
    a :class:`BackboneSpeed`. The training steps are timed unless ``steps_worth(seconds of a forward
    pass per image)`` says no (then :func:`estimated_depths`). Returns ``{"name", "probe_accuracy",
    "speed", "seconds", "steps_timed", ...}``."""
    from ..engine.label_issues import pooled_features
    from ..engine.prepare import prepare
    from ..engine.runtime import autocast_for, seed_everything

    started = time.perf_counter()
    seed_everything(cfg.seed)
    prepared = prepare(cfg, inner)
    decoded_now = prepared.data.decoded.decoded_now
    decode_seconds = time.perf_counter() - started
    features_started = time.perf_counter()
    features, computed = pooled_features(prepared, cfg)
    forward = (time.perf_counter() - features_started) / computed if computed else None
    n_train = len(inner.train)
    labels = np.array([s.label for s in [*inner.train, *inner.val]])
    accuracy = linear_probe_accuracy(features[:n_train], labels[:n_train], features[n_train:], labels[n_train:],
                                     cfg.seed)
    model, num_stages = prepared.model, prepared.model.backbone.num_stages
    autocast = autocast_for(prepared.device, prepared.precision)
    depths = list(depths if depths is not None else timing_depths(num_stages))
    # A forward pass timed warm (one batch, after the features): the features' own rate includes the
    # first batches' kernel warm-up, which the run pays once and a small probe sample cannot spread.
    warm = time_forward(model, prepared.data.image_size, prepared.device, autocast)
    forward = warm if forward is None else min(forward, warm)
    steps_timed = steps_worth is None or steps_worth(forward)
    timed = (time_depths(model, depths, prepared.data.image_size, prepared.device, autocast) if steps_timed
             else estimated_depths(forward, depths, num_stages))
    speed = BackboneSpeed(cfg.backbone, num_stages, decode=decode_seconds / decoded_now if decoded_now else 0.0,
                          forward=forward, **timed)
    return {"name": cfg.backbone, "image_size": prepared.data.image_size, "probe_accuracy": accuracy,
            "speed": speed, "seconds": time.perf_counter() - started, "pooled_cached": n_train + len(inner.val),
            "steps_timed": steps_timed}
