"""Cached frozen features: run the frozen prefix of the backbone once per image (and view).

With stages ``0..cut-1`` frozen (BatchNorm in inference mode), their output for a given input never
changes, so it is computed once and stored on disk (``cache/features/<key>/``). Training then runs
only the rest: :class:`TailModel` (``cut == num_stages``: the head alone on pooled features). The key
holds everything that changes the output: backbone, a digest of the prefix weights, cut,
preprocessing, augmentation preset, precision and the image bytes with the view index.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..cache import ArrayStore
from ..data import DecodedImages, batch_order, make_view, step_share, view_schedule
from ..heads import Classifier
from .fusion import fold_frozen_batchnorm

FEATURES_VERSION = 1


class TailModel(nn.Module):
    """The trainable part of a classifier: stages ``cut..`` + pooling + head (on cached input)."""

    def __init__(self, classifier: Classifier, cut: int) -> None:
        super().__init__()
        self.classifier, self.cut = classifier, cut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backbone = self.classifier.backbone
        if self.cut < backbone.num_stages:
            x = backbone.pool(backbone.forward_stages(x, self.cut))
        return self.classifier.head(x)


def prefix_forward(classifier: Classifier, x: torch.Tensor, cut: int) -> torch.Tensor:
    backbone = classifier.backbone
    x = backbone.forward_stages(x, 0, cut)
    return backbone.pool(x) if cut == backbone.num_stages else x


def weights_digest(modules: Sequence[nn.Module]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def open_feature_store(cache_dir: Path, classifier: Classifier, cut: int, image_size: int,
                       decode_size: int, augment: str, precision: str, fold_bn: bool = True) -> ArrayStore:
    backbone = classifier.backbone
    prefix = list(backbone.stages[:cut]) + ([backbone.pool] if cut == backbone.num_stages else [])
    spec = {"version": FEATURES_VERSION, "backbone": backbone.name, "weights": weights_digest(prefix),
            "cut": cut, "image_size": image_size, "decode_size": decode_size, "mean": backbone.mean,
            "std": backbone.std, "augment": augment, "precision": precision, "fold_bn": fold_bn}
    key = hashlib.blake2b(json.dumps(spec, sort_keys=True).encode(), digest_size=12).hexdigest()
    with torch.no_grad():
        probe = torch.zeros(1, 3, image_size, image_size, device=next(backbone.parameters()).device)
        shape = tuple(prefix_forward(classifier.eval(), probe, cut).shape[1:])
    pooled = cut == backbone.num_stages
    description = (f"{backbone.name} {'pooled features' if pooled else f'output of stages 0-{cut - 1}'}, "
                   f"{image_size}px, augment {augment}, {precision}")
    return ArrayStore.in_cache(cache_dir, "features", key, shape, "float32" if pooled else "float16",
                               {**spec, "description": description})


def fill_features(store: ArrayStore, classifier: Classifier, cut: int, decoded: DecodedImages,
                  feature_keys: Sequence[str], train_transform: Callable, eval_transform: Callable,
                  device: torch.device, autocast: Callable, batch_size: int = 16,
                  on_batch: Callable[[int], None] | None = None, fold_bn: bool = True,
                  rows_per_chunk: int = 1024) -> int:
    """Compute and store the prefix output of every ``"image key:view"`` not yet in ``store``."""
    todo = store.missing(feature_keys)
    classifier.eval()
    pending_keys: list[str] = []
    pending_rows: list[np.ndarray] = []
    with fold_frozen_batchnorm(classifier, enabled=fold_bn):
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            images = []
            for feature_key in batch:
                key, view = feature_key.rsplit(":", 1)
                image = torch.from_numpy(decoded.get([key])[0]).permute(2, 0, 1)
                images.append(make_view(image, key, int(view), train_transform, eval_transform))
            x = torch.stack(images).to(device, memory_format=torch.channels_last)
            with torch.no_grad(), autocast():
                out = prefix_forward(classifier, x, cut)
            pending_keys.extend(batch)
            pending_rows.append(out.float().cpu().numpy())
            if len(pending_keys) >= rows_per_chunk or start + batch_size >= len(todo):
                store.put(pending_keys, np.concatenate(pending_rows))
                pending_keys, pending_rows = [], []
            if on_batch is not None:
                on_batch(len(batch))
    return len(todo)


class FeatureBatches:
    """Batches of ``(cached features, labels)``; same shuffling and view choice as ``ImageBatches``."""

    def __init__(self, store: ArrayStore, keys: Sequence[str], labels: Sequence[int], batch_size: int,
                 shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 num_views: int | None = None, shard: tuple[int, int] = (0, 1),
                 sample_weights: torch.Tensor | None = None) -> None:
        self.store, self.keys, self.shard, self.sample_weights = store, list(keys), shard, sample_weights
        self.labels = torch.tensor(list(labels))
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.num_views = num_views
        self.generator = torch.Generator().manual_seed(seed)
        self.views = np.zeros(len(self.keys), dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        if self.num_views is not None:
            self.views = view_schedule(self.seed, epoch, len(self.keys), self.num_views)

    def __len__(self) -> int:
        full, rest = divmod(len(self.keys), self.batch_size)
        return full + (1 if rest and not (self.drop_last and full > 0) else 0)

    @property
    def step_share(self) -> float:
        return step_share(len(self.keys), self.batch_size, self.shard)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for indices in batch_order(len(self.keys), self.batch_size, self.shuffle, self.generator,
                                   self.drop_last, self.shard, self.sample_weights):
            rows = self.store.get([f"{self.keys[i]}:{self.views[i]}" for i in indices])
            yield torch.from_numpy(rows).float(), self.labels[indices]




@contextlib.contextmanager
def capture_pooled(classifier: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the pooled features the classifier's head receives while the block runs:
    ``with capture_pooled(model) as rows: predict_logits(model, ...)``; then ``torch.cat(rows)`` is
    ``(N, num_features)``, in the order the images went through."""
    rows: list[torch.Tensor] = []
    handle = classifier.head.register_forward_hook(
        lambda _module, inputs, _output: rows.append(inputs[0].detach().float().cpu()))
    try:
        yield rows
    finally:
        handle.remove()
