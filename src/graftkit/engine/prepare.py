"""``prepare(cfg, scan)``: the data and the model one run trains, before its first step.

``fit`` and the learning-rate range test both start here: the scan (validated, every image decoded
once into the cache), the batches each phase trains on, and the classifier on its device.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import create_backbone, native_image_size
from ..config import TrainConfig
from ..data import (DataScan, DecodedDataset, DecodedImages, ImageBatches, augment_key, build_eval_transform,
                    build_train_transform, decode_size_for, scan_data)
from ..data.conflicts import find_label_conflicts
from ..data.split_file import apply_split_file
from ..errors import ConfigError
from ..heads import Classifier, start_from_imagenet
from ..strategies import Phase
from .balance import build_loss, resolve_balance, sample_weights
from .distributed import World
from .features import FeatureBatches, TailModel, fill_features, open_feature_store
from .progress import ProgressReporter
from .runtime import autocast_for, eval_batch_size, resolve_device, resolve_precision, train_batch_size


def fixed_views(cfg: TrainConfig, trains_backbone: bool) -> bool:
    """Whether a phase with a frozen prefix trains on fixed views of each image (the clean crop, or
    ``--cache-views N`` augmented ones), whose prefix outputs can be cached, rather than on images
    augmented afresh every epoch. Head-only phases do (that is what makes feature extraction fast);
    a phase that trains backbone stages does only without augmentation or with ``--cache-views N``
    chosen: caching one clean crop there would switch augmentation off for the whole fine-tune."""
    return not trains_backbone or cfg.augment == "none" or cfg.cache_views > 1


class TrainingData:
    """The scanned data with its decoded-image cache, and the batches each phase trains on."""

    def __init__(self, cfg: TrainConfig, scan: DataScan, decoded: DecodedImages, image_size: int,
                 device: torch.device, world: World | None = None) -> None:
        self.cfg, self.scan, self.decoded, self.image_size = cfg, scan, decoded, image_size
        self.world = world or World(device=device)
        self.batch_size, self.eval_batch_size = train_batch_size(cfg, device), eval_batch_size(device)
        self.head_batch_size = train_batch_size(cfg, device, head_only=True)
        self.train_keys = decoded.keys([s.path for s in scan.train])
        self.val_keys = decoded.keys([s.path for s in scan.val])
        self.train_labels = [s.label for s in scan.train]
        in_train = set(self.train_keys)
        self.duplicates = [s.path for s, k in zip(scan.val, self.val_keys) if k in in_train]
        self.val_labels = [s.label for s in scan.val]
        self.label_conflicts = find_label_conflicts([*scan.train, *scan.val], [*self.train_keys, *self.val_keys])
        self.balance = resolve_balance(cfg.balance, self.train_labels, len(scan.classes))
        self.sample_weights = (sample_weights(self.train_labels, len(scan.classes))
                               if self.balance.method == "sampler" else None)
        self._check_parts()

    def build_loss(self) -> nn.Module:
        """The training loss: cross-entropy with the config's label smoothing, weighted by class under
        ``--balance weights`` (or ``auto`` on imbalanced data)."""
        return build_loss(self.balance, self.train_labels, len(self.scan.classes), self.cfg.label_smoothing)

    def _check_parts(self) -> None:
        """Every rank needs images in every part of every batch (a batch runs as ``accumulate`` parts
        on each rank)."""
        parts = self.world.size * self.cfg.accumulate
        smallest = min(self.batch_size, self.head_batch_size, len(self.train_keys))
        if smallest < parts:
            raise ConfigError(f"a batch of {smallest} training image(s) cannot be split into {parts} parts "
                              f"({self.world.size} process(es) x --accumulate {self.cfg.accumulate}); raise "
                              f"--batch-size or lower --nproc / --accumulate.")
        if len(self.val_keys) < self.world.size:
            raise ConfigError(f"{len(self.val_keys)} validation image(s) cannot be shared by {self.world.size} "
                              f"processes; lower --nproc or hold out more images (--val-fraction).")

    def batches_for(self, phase: Phase, model: Classifier, device: torch.device, precision: str,
                    report: ProgressReporter) -> tuple[nn.Module, Any, Any]:
        """(module to train, train batches, val batches) for a phase.

        A frozen prefix (stages before the first trainable one) runs once per image and view and
        is cached when the phase trains on fixed views (:func:`fixed_views`); the module to train is
        then only the rest of the network. Otherwise every epoch augments the images afresh.
        """
        cfg, backbone = self.cfg, model.backbone
        cut = backbone.num_stages if phase.first_trainable is None else phase.first_trainable
        train_tf = build_train_transform(self.image_size, backbone.mean, backbone.std, cfg.augment)
        eval_tf = build_eval_transform(self.image_size, backbone.mean, backbone.std)
        fixed = cut > 0 and fixed_views(cfg, trains_backbone=cut < backbone.num_stages)
        num_views = (1 if cfg.augment == "none" else cfg.cache_views) if fixed else None
        batch_size = self.head_batch_size if cut == backbone.num_stages and cfg.cache else self.batch_size
        drop_last = len(self.train_keys) > batch_size
        if fixed and cfg.cache:
            store = open_feature_store(cfg.cache_dir, model, cut, self.image_size, self.decoded.size,
                                       augment_key(cfg.augment), precision, cfg.fold_bn)
            self._fill_features(store, model, cut, num_views, train_tf, eval_tf, device, precision, report)
            train = FeatureBatches(store, self.train_keys, self.train_labels, batch_size, shuffle=True,
                                   seed=cfg.seed, drop_last=drop_last, num_views=num_views, shard=self.world.shard,
                                   sample_weights=self.sample_weights)
            val = FeatureBatches(store, self.world.share(self.val_keys), self.world.share(self.val_labels),
                                 self.eval_batch_size)
            return TailModel(model, cut), train, val
        pin = device.type == "cuda"
        train = ImageBatches(DecodedDataset(self.decoded, self.train_keys, self.train_labels, train_tf, eval_tf),
                             batch_size, shuffle=True, seed=cfg.seed, drop_last=drop_last,
                             num_views=num_views, num_workers=cfg.num_workers, pin_memory=pin,
                             shard=self.world.shard, sample_weights=self.sample_weights)
        val = self.val_batches(eval_tf, pin)
        return model, train, val

    def _fill_features(self, store, model: Classifier, cut: int, num_views: int, train_tf, eval_tf,
                       device: torch.device, precision: str, report: ProgressReporter) -> None:
        """Compute the missing feature rows of stages ``0..cut-1``: the training rows, then the validation
        rows (each batch of the prefix holds one kind), each rank its share, all reading all after."""
        def fill(rows: list[str], on_batch=None) -> None:
            fill_features(store, model, cut, self.decoded, rows, train_tf, eval_tf, device,
                          autocast_for(device, precision), self.eval_batch_size, on_batch=on_batch,
                          fold_bn=self.cfg.fold_bn)

        wanted = [[f"{k}:{v}" for k in self.train_keys for v in range(num_views)], [f"{k}:0" for k in self.val_keys]]
        todo = [store.missing(rows) for rows in wanted]
        self.world.barrier()  # every rank has listed what is missing before any rank writes
        total = sum(map(len, todo))
        if total:
            report.start_epoch(f"caching stages 0-{cut - 1}", sum(len(self.world.share(rows)) for rows in todo))
        started = time.perf_counter()
        for rows in todo:
            fill(self.world.share(rows), report.advance)
        self.world.barrier()
        store.refresh()  # the rows the other ranks wrote
        if self.world.size > 1:  # a cache folder the ranks do not share (machines): compute the rest here
            fill(wanted[0] + wanted[1])
        if total:
            report.end_epoch(f"cached {total} feature rows (stages 0-{cut - 1}, {num_views} view(s) per "
                             f"training image) in {time.perf_counter() - started:.1f}s")

    def val_batches(self, eval_tf, pin: bool = False) -> ImageBatches:
        """This rank's share of the validation images, in order (all of them alone)."""
        dataset = DecodedDataset(self.decoded, self.world.share(self.val_keys), self.world.share(self.val_labels),
                                 eval_tf)
        return ImageBatches(dataset, self.eval_batch_size, num_workers=self.cfg.num_workers, pin_memory=pin)


def scan_for(cfg: TrainConfig) -> DataScan:
    """Scan and validate ``cfg.data_dir`` as ``fit`` would, filling the decoded-image cache on the way:
    for callers that train several times on one split (``graft compare``, ``--freeze auto``)."""
    if not cfg.cache:
        return _with_split_file(cfg, scan_data(cfg.data_dir, cfg.val_fraction, cfg.resolved_split_seed,
                                               cfg.skip_bad_images))
    return scan_and_decode(cfg, None, cfg.cache_dir)[0]


def scan_and_decode(cfg: TrainConfig, scan: DataScan | None,
                    cache_dir: Path) -> tuple[DataScan, DecodedImages, int]:
    """Scan and validate the data (unless ``scan`` is given), decoding every image once into the
    decoded-image cache; returns the scan, the cache and the resolved image size. The validation
    hold-out of a class-folder root is seeded by ``cfg.resolved_split_seed``, the seed every run
    records (``model.json``: ``split.seed``) so that ``graft evaluate`` rebuilds it."""
    image_size = cfg.image_size or native_image_size(cfg.backbone)
    decoded = DecodedImages(cache_dir, decode_size_for(image_size))
    if scan is None:
        scan = _with_split_file(cfg, scan_data(cfg.data_dir, cfg.val_fraction, cfg.resolved_split_seed,
                                               cfg.skip_bad_images, checker=decoded.check_and_fill))
    else:
        for sample in [*scan.train, *scan.val]:
            decoded.check_and_fill(sample.path)
    decoded.flush()
    return scan, decoded, image_size


def _with_split_file(cfg: TrainConfig, scan: DataScan) -> DataScan:
    """The scan, or its images split as ``cfg.split_file`` lists them."""
    return scan if cfg.split_file is None else apply_split_file(scan, cfg.split_file)


@dataclass
class Prepared:
    """What a run trains: its data (and batches), the classifier on its device, the precision."""

    data: TrainingData
    model: Classifier
    device: torch.device
    precision: str
    head_init: list[tuple[str, str]] | None = None  # (class, ImageNet class) when the head starts from them

    @property
    def scan(self) -> DataScan:
        return self.data.scan


def prepare(cfg: TrainConfig, scan: DataScan | None = None, cache_dir: Path | None = None,
            world: World | None = None) -> Prepared:
    """The data (scanned unless ``scan`` is given, decoded into ``cache_dir``, default
    ``cfg.cache_dir``) and a fresh classifier for ``cfg``, on the device it asks for (``world``:
    this rank's device and share of the data, under distributed data parallel)."""
    device = world.device if world else resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    with (world or World()).main_first():  # rank 0 decodes new images; the others then find them cached
        scan, decoded, image_size = scan_and_decode(cfg, scan, cache_dir or cfg.cache_dir)
    data = TrainingData(cfg, scan, decoded, image_size, device, world)
    backbone = create_backbone(cfg.backbone, pretrained=cfg.pretrained and cfg.strategy != "scratch",
                               weights=cfg.weights)
    model = Classifier(backbone, len(scan.classes), cfg.dropout)
    # a backbone keeps its ImageNet classifier only when pretrained (so never under scratch)
    head_init = start_from_imagenet(model, scan.classes) if cfg.head_init == "auto" else None
    if cfg.sync_bn:
        model = sync_batchnorm(model, device)
    model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    return Prepared(data, model, device, precision, head_init)


def sync_batchnorm(model: Classifier, device: torch.device) -> Classifier:
    """BatchNorm layers that train (scratch, ``train_bn``) normalise with the statistics of the global
    batch over all ranks, as one process would (timm's converter keeps BatchNormAct's activation)."""
    from timm.layers import convert_sync_batchnorm

    if device.type != "cuda":
        raise ConfigError("--sync-bn needs CUDA GPUs: PyTorch's SyncBatchNorm has no CPU kernel. On CPUs "
                          "each rank normalises with its own batch (drop --sync-bn), or keep BatchNorm "
                          "frozen (the default of fine-tuning).")
    return convert_sync_batchnorm(model)
