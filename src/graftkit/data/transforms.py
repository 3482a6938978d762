"""Transforms on decoded uint8 squares, matched to a backbone's input size and normalisation.

Images are decoded once into ``(3, S, S)`` uint8 tensors (``S = round(image_size / 0.875)``,
see ``decoded.py``). Evaluation is the centre ``image_size`` crop of that square; augmentation works
on the same square. A *view* is one deterministic augmentation of one image: view 0 is the
evaluation crop, view ``v > 0`` a random crop + flip seeded by (image, v), so cached features of a
view are reproducible.

Augmentation is for training only: every preset changes ``build_train_transform`` and nothing else;
validation always goes through ``build_eval_transform``. MixUp/CutMix act on whole batches and live in
``build_batch_mix``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torchvision.transforms import v2

from ..errors import ConfigError
from .model_input import check_tta

AUGMENTS = ("none", "light", "strong")
CUSTOM_AUGMENT_SUFFIXES = (".json", ".yaml", ".yml")  # --augment FILE: a custom pipeline
EVAL_CROP_FRACTION = 0.875  # resize to size/0.875, centre-crop size: the usual ImageNet eval


def decode_size_for(image_size: int) -> int:
    return round(image_size / EVAL_CROP_FRACTION)


def build_eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """``(3, S, S)`` uint8 → ``(3, image_size, image_size)`` normalised float."""
    return v2.Compose([v2.CenterCrop(image_size), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(mean), list(std))])


def build_tta_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                        crops: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(3, S, S)`` uint8 → ``(2 * crops, 3, image_size, image_size)`` normalised float, the views of
    test-time augmentation: the centre crop (``crops=5``: then the four corner crops) and, after each,
    its mirror image. View 0 is exactly ``build_eval_transform``'s output."""
    check_tta(True, crops)
    to_float = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def views(square: torch.Tensor) -> torch.Tensor:
        if crops == 1:
            cut = [v2.functional.center_crop(square, [image_size])]
        else:
            *corners, centre = v2.functional.five_crop(square, [image_size])
            cut = [centre, *corners]
        normalised = [to_float(c) for c in cut]
        return torch.stack([v for x in normalised for v in (x, x.flip(-1))])

    views.views = 2 * crops  # per image: what a forward pass's batch is counted in
    return views


def build_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                          augment: str = "light") -> v2.Compose:
    """``(3, S, S)`` uint8 → ``(3, image_size, image_size)`` normalised float, randomly augmented.

    ``none``: as evaluation. ``light``: random resized crop (35–100 % of the area) + horizontal flip.
    ``strong``: random resized crop (25–100 %) + flip + colour jitter + TrivialAugmentWide, then
    random erasing (p 0.25) after normalisation. A path to a ``.json``/``.yaml`` file: the pipeline it
    lists (see ``load_augment_file``).
    """
    check_augment(augment)
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if augment == "none":
        return build_eval_transform(image_size, mean, std)
    if augment == "light":
        return v2.Compose([v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), *to_float])
    if augment == "strong":
        return v2.Compose([v2.RandomResizedCrop(image_size, scale=(0.25, 1.0), antialias=True),
                           v2.RandomHorizontalFlip(), v2.ColorJitter(0.3, 0.3, 0.3, 0.05),
                           v2.TrivialAugmentWide(), *to_float, v2.RandomErasing(p=0.25, value=0)])
    before, after = load_augment_file(Path(augment), image_size)
    return v2.Compose([*before, *to_float, *after])


def check_augment(augment: str, image_size: int | None = None) -> None:
    """Raise ``ConfigError`` unless ``augment`` is a preset name or an existing pipeline file; with
    ``image_size``, a pipeline file is also built and run once (``load_augment_file``)."""
    if augment in AUGMENTS:
        return
    if Path(augment).suffix.lower() in CUSTOM_AUGMENT_SUFFIXES:
        if not Path(augment).is_file():
            raise ConfigError(f"augment pipeline file '{augment}' does not exist. Check the path.")
        if image_size is not None:
            load_augment_file(Path(augment), image_size)
        return
    raise ConfigError(f"augment must be one of {', '.join(AUGMENTS)} or a .json/.yaml pipeline file; "
                      f"got {augment!r}")


def augment_key(augment: str) -> str:
    """What identifies an augmentation for caches: the preset name, or the file's content digest."""
    if augment in AUGMENTS:
        return augment
    return "file:" + hashlib.blake2b(Path(augment).read_bytes(), digest_size=12).hexdigest()


# Transforms that need float input (run after normalisation), and those that take the output size.
_AFTER_NORMALISE = {"RandomErasing"}
_SIZED = {"RandomResizedCrop", "RandomCrop", "CenterCrop", "Resize"}


def load_augment_file(path: Path, image_size: int) -> tuple[list[v2.Transform], list[v2.Transform]]:
    """A custom pipeline: ``{"transforms": [{"name": "RandomResizedCrop", "scale": [0.5, 1]}, ...]}``.

    Each entry names a ``torchvision.transforms.v2`` transform and its keyword arguments; they run in
    order on the uint8 image, except ``RandomErasing``, which runs after normalisation. Sized
    transforms get ``size = image_size`` unless given; the result is centre-cropped to ``image_size``.

    Returns:
        (transforms on uint8 images, transforms after normalisation).
    """
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            spec: Any = json.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise ConfigError(f"reading '{path}' needs PyYAML: pip install pyyaml, or write the "
                                  f"pipeline as .json") from None
            spec = yaml.safe_load(text)
    except Exception as exc:  # json and yaml raise their own error types
        raise ConfigError(f"cannot parse augment pipeline '{path}' ({exc}).") from None
    entries = spec.get("transforms") if isinstance(spec, dict) else spec
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"augment pipeline '{path}' must list transforms: "
                          f'{{"transforms": [{{"name": "RandomHorizontalFlip"}}, ...]}}')
    before, after = [], []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"augment pipeline '{path}', entry {i + 1}: expected {{\"name\": ..., "
                              f"<keyword arguments>}}, got {entry!r}")
        kwargs = {k: v for k, v in entry.items() if k != "name"}
        name = str(entry["name"])
        factory = getattr(v2, name, None)
        if not (isinstance(factory, type) and issubclass(factory, v2.Transform)) or name.startswith("_"):
            raise ConfigError(f"augment pipeline '{path}', entry {i + 1}: {name!r} is not a "
                              f"torchvision.transforms.v2 transform (e.g. RandomResizedCrop, ColorJitter, "
                              f"RandAugment, RandomErasing).")
        if name in _SIZED:
            kwargs.setdefault("size", image_size)
        if name in ("RandomResizedCrop", "Resize"):
            kwargs.setdefault("antialias", True)
        try:
            transform = factory(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"augment pipeline '{path}', entry {i + 1} ({name}): {exc}") from None
        (after if name in _AFTER_NORMALISE else before).append(transform)
    before.append(v2.CenterCrop(image_size))  # whatever the pipeline did, the model sees image_size
    _try_pipeline(path, before, after, image_size)
    return before, after


def _try_pipeline(path: Path, before: list, after: list, image_size: int) -> None:
    """Run the pipeline once on a dummy decoded square, so that a crop larger than the image, a
    ToPILImage or a wrong type fails when the file is loaded, not in the middle of training."""
    square = decode_size_for(image_size)
    pipeline = v2.Compose([*before, v2.ToDtype(torch.float32, scale=True), *after])
    try:
        with torch.random.fork_rng(devices=[]):  # the global random state is left untouched
            torch.manual_seed(0)
            out = pipeline(torch.full((3, square, square), 128, dtype=torch.uint8))
    except Exception as exc:  # torchvision raises many types for a misconfigured transform
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"augment pipeline '{path}' fails on a {square}x{square} decoded image "
                          f"(image size {image_size}): {first}. Fix the entry it names.") from None
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or \
            tuple(out.shape) != (3, image_size, image_size):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"augment pipeline '{path}' turns a {square}x{square} image into {got}, not a "
                          f"3x{image_size}x{image_size} image tensor. Remove conversions such as ToPILImage.")


def build_batch_mix(mixup: float, cutmix: float, num_classes: int) -> Callable | None:
    """MixUp and/or CutMix on a training batch ``(B, 3, H, W)``, ``(B,)`` → images, soft targets
    ``(B, num_classes)``; one of the two per batch when both are on. None when both alphas are 0."""
    mixes = []
    if mixup > 0:
        mixes.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix > 0:
        mixes.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)


def view_seed(key: str, view: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}:{view}".encode(), digest_size=8).digest(), "little") >> 1


def make_view(image: torch.Tensor, key: str, view: int, train_transform: Callable,
              eval_transform: Callable) -> torch.Tensor:
    """View 0: the evaluation crop. View v > 0: an augmentation seeded by (image key, v); the global
    random state is left untouched."""
    if view == 0:
        return eval_transform(image)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(view_seed(key, view))
        return train_transform(image)
