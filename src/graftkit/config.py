"""One frozen config flows from the CLI (or Python) to :func:`graftkit.fit`."""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

STRATEGIES = ("scratch", "feature-extraction", "fine-tune")
DEVICES = ("auto", "cpu", "cuda")
PROGRESS = ("auto", "bar", "plain", "none")
PRECISIONS = ("auto", "fp32", "bf16")
TRACKERS = ("mlflow", "tensorboard")
BALANCES = ("none", "weights", "sampler", "auto")
HEAD_INITS = ("auto", "random")
MAX_IMAGE_SIZE = 1024    # --image-size: a 1024 px input is decoded and cached at 1170 px (4 MB a row)
MAX_CACHE_VIEWS = 64     # --cache-views: one backbone pass per view and training image
MAX_SEED = 2**63 - 1     # --seed, --split-seed: what torch.manual_seed takes
DEFAULT_EPOCHS = 10          # scratch, feature-extraction
DEFAULT_HEAD_EPOCHS = 2      # fine-tune without --epochs: the frozen phase ...
DEFAULT_FINETUNE_EPOCHS = 4  # ... then the unfrozen phase
EPOCH_FIELDS = ("epochs", "head_epochs", "finetune_epochs")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/graftkit`` or ``~/.cache/graftkit``."""
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graftkit"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults are measured (see README, "Defaults").

    The epoch fields are resolved on construction (:func:`resolve_epochs`): ``epochs`` is always the
    number of epochs the run trains, for fine-tune ``head_epochs + finetune_epochs``.

    Strategies:
        scratch: random init, every stage trained for ``epochs`` at ``lr``.
        feature-extraction: pretrained backbone frozen (BatchNorm in inference mode), the new head
            trained for ``epochs`` at ``lr``.
        fine-tune: feature extraction for ``head_epochs`` at ``lr``, then stages from ``freeze`` on
            unfrozen and trained with the head for ``finetune_epochs`` at ``finetune_lr`` (stage k
            from the top gets ``finetune_lr * stage_lr_decay**k``).
    """

    data_dir: Path
    strategy: str = "fine-tune"
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: Path | None = None
    image_size: int | None = None  # None: the backbone's native size
    epochs: int | None = None      # all epochs (fine-tune: head + fine-tune); see resolve_epochs
    head_epochs: int | None = None  # fine-tune: the frozen phase
    finetune_epochs: int | None = None  # fine-tune: the unfrozen phase
    freeze: int = 0                # fine-tune: stages kept frozen in the unfrozen phase
    freeze_auto: bool = False      # fine-tune: measure candidate freeze depths first, train the best
    lr: float = 3e-3               # head (and scratch) peak learning rate, AdamW
    finetune_lr: float = 1e-4      # fine-tune phase peak learning rate
    stage_lr_decay: float = 0.8    # per stage, from the top, in the fine-tune phase
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1   # of each phase's steps, then cosine to zero
    label_smoothing: float = 0.1
    balance: str = "auto"          # class imbalance: none | weights (loss) | sampler | auto (on at max/min >= 3x)
    dropout: float = 0.2
    head_init: str = "auto"        # auto: from the ImageNet classifier when every class names an ImageNet class
    ema: bool = False              # validate and keep an exponential moving average of the weights (engine.ema)
    ema_decay: float = 0.99        # --ema: the average's decay per step, reached after timm's warm-up
    train_bn: bool = False         # BatchNorm of unfrozen pretrained stages: batch stats (True) or kept
    batch_size: int | None = None  # None: 32 on a CPU (measured fastest with a bounded heap), 64 on CUDA
    accumulate: int = 1            # each batch in this many parts, one optimizer step per batch
    sync_bn: bool = False          # distributed: BatchNorm in train mode uses the global batch's statistics
    augment: str = "light"         # none | light | strong, or a .json/.yaml pipeline file (train only)
    mixup: float = 0.0             # MixUp alpha on image batches (0: off); train only
    cutmix: float = 0.0            # CutMix alpha on image batches (0: off); train only
    val_fraction: float = 0.2
    seed: int = 0
    split_seed: int | None = None  # seeds the val hold-out of a class-folder root; None: ``seed``
    skip_bad_images: bool = False
    device: str = "auto"
    num_workers: int = 0
    channels_last: bool = True
    precision: str = "auto"        # auto: bf16 autocast where the hardware runs it, else fp32
    compile: bool = False          # torch.compile the trained part (slow first epoch)
    fold_bn: bool = True           # fold frozen BatchNorm into the conv before it (same result, faster)
    cache: bool = True             # reuse decoded images and frozen features across epochs and runs
    cache_dir: Path | None = None  # None: default_cache_dir()
    cache_views: int = 1           # cached views per training image for frozen phases (1 = clean crop)
    out_dir: Path | None = None    # None: runs/<time>-<strategy>
    resume: bool = False           # continue the interrupted run in out_dir from its checkpoint
    checkpoint_every: float = 10.0  # seconds of training between checkpoints (0: every epoch)
    max_seconds: float | None = None  # wall-clock budget: no new epoch starts after it (None: no limit)
    progress: str = "auto"
    track: str | None = None       # mlflow | tensorboard: record params, per-epoch metrics, files
    track_uri: str | None = None   # MLflow tracking URI / TensorBoard log folder (None: next to the run)
    split_file: Path | None = None  # CSV path,split: which images of data_dir train and validate (data.split_file)

    def __post_init__(self) -> None:
        _check_types(self)
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.out_dir is not None:
            object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))
        if self.split_file is not None:
            object.__setattr__(self, "split_file", Path(self.split_file))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir) if self.cache_dir else default_cache_dir())
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("device", self.device, DEVICES)
        _choice("progress", self.progress, PROGRESS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("balance", self.balance, BALANCES)
        _choice("head_init", self.head_init, HEAD_INITS)
        if self.track is not None:
            _choice("track", self.track, TRACKERS)
        if self.accumulate < 1:
            raise ConfigError(f"--accumulate must be >= 1 (parts per batch), got {self.accumulate}")
        if not 1 <= self.cache_views <= MAX_CACHE_VIEWS:
            raise ConfigError(f"--cache-views (cache_views) must be between 1 and {MAX_CACHE_VIEWS}, "
                              f"got {self.cache_views}")
        for name in ("seed", "split_seed"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= MAX_SEED:
                raise ConfigError(f"{_flag(name)} must be between 0 and 2**63-1, got {value}")
        for name in ("mixup", "cutmix", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                what = "a Beta alpha; 0 turns it off" if name != "weight_decay" else "0 turns it off"
                raise ConfigError(f"{_flag(name)} must be a finite number >= 0 ({what}), got {value}")
        for name in ("lr", "finetune_lr", "checkpoint_every") + (("max_seconds",) if self.max_seconds else ()):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{_flag(name)} must be a finite number, got {getattr(self, name)}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0 seconds, got {self.checkpoint_every}")
        for name in ("epochs", "head_epochs", "finetune_epochs", "freeze", "num_workers"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"{_flag(name)} ({name}) must be >= 0, got {getattr(self, name)}")
        for name, value in zip(EPOCH_FIELDS, resolve_epochs(self.strategy, self.epochs, self.head_epochs,
                                                            self.finetune_epochs)):
            object.__setattr__(self, name, value)
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.image_size is not None and not 16 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ConfigError(f"--image-size (image_size) must be between 16 and {MAX_IMAGE_SIZE} pixels, "
                              f"got {self.image_size}")
        from .data.transforms import AUGMENTS, check_augment

        # a pipeline file is built and run once now, at the size it will see, so it fails here
        check_augment(self.augment, None if self.augment in AUGMENTS else self.image_size or _native_size(self.backbone))
        for name in ("lr", "finetune_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        for name in ("label_smoothing", "dropout", "warmup_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"--ema-decay must be between 0 and 1 (e.g. 0.99), got {self.ema_decay}")
        if not 0 < self.stage_lr_decay <= 1:
            raise ConfigError(f"stage_lr_decay must be in (0, 1], got {self.stage_lr_decay}")
        if self.strategy == "scratch" and self.weights is not None:
            raise ConfigError("--weights has no meaning with --strategy scratch (random init); drop one")
        if self.resume and self.out_dir is None:
            raise ConfigError("resume needs the run folder: pass --resume RUN_DIR")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ConfigError(f"max_seconds must be > 0 (or None for no limit), got {self.max_seconds}")
        if self.freeze_auto and self.strategy != "fine-tune":
            raise ConfigError(f"--freeze auto chooses which stages to fine-tune; it needs --strategy fine-tune, "
                              f"not {self.strategy!r}")
        if self.total_epochs == 0:
            raise ConfigError(f"strategy {self.strategy!r} would train for 0 epochs; raise the epochs")

    @property
    def total_epochs(self) -> int:
        return self.epochs

    @property
    def resolved_split_seed(self) -> int:
        """The seed of the validation hold-out (``split_seed``, else ``seed``)."""
        return self.seed if self.split_seed is None else self.split_seed

    @classmethod
    def from_run(cls, run_dir: str | Path, **changes: Any) -> "TrainConfig":
        """The resolved config saved in ``run_dir/config.json`` (for ``--resume``)."""
        path = Path(run_dir) / "config.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read '{path}' ({exc}); --resume needs a run folder written by "
                              f"'graft train'.") from None
        if not isinstance(saved, dict):
            raise ConfigError(f"'{path}' must hold a JSON object of settings, got {type(saved).__name__}; "
                              f"--resume needs a run folder written by 'graft train'.")
        if saved.get("strategy") == "ensemble":
            members = [str(m) for m in saved.get("members", [])] if isinstance(saved.get("members"), list) else []
            raise ConfigError(f"'{run_dir}' holds runs joined into one model ('graft ensemble'): there is no "
                              f"training to resume. Resume one of its members ({', '.join(members) or 'members/'}) "
                              f"and join them again, or train anew.")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in saved.items() if k in known}
        values["image_size"] = saved.get("image_size", values.get("image_size"))
        _drop_unused_epochs(values)
        try:  # the field types and ranges of TrainConfig are the schema of config.json
            return cls(**{**values, "out_dir": Path(run_dir), **changes})
        except ConfigError as exc:
            raise ConfigError(f"'{path}' holds a setting graftkit cannot use: {exc}. Restore the file, or "
                              f"start a new run without --resume.") from None

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes``. The epoch fields stay consistent: a changed phase
        (``finetune_epochs``) changes the total ``epochs``; a changed ``epochs`` or strategy is
        split anew (:func:`resolve_epochs`)."""
        phases = {"head_epochs", "finetune_epochs"}
        if "epochs" not in changes and phases & set(changes):
            changes = {"epochs": None, **changes}
        elif ("epochs" in changes or "strategy" in changes) and not phases & set(changes):
            changes = {"head_epochs": None, "finetune_epochs": None, **changes}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str, flag: str = "--time-limit") -> float:
    """Seconds in a wall-clock budget written ``90s``, ``25m``, ``1h``, ``1h30m`` or a plain number of
    seconds (``600``); ``flag`` names the option in the error."""
    match = _DURATION.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    unitless = match is not None and match.group(3) and not text.strip().lower().endswith("s")
    if match is None or not any(match.groups()) or (unitless and (match.group(1) or match.group(2))):
        raise ConfigError(f"{flag} takes a duration such as 90s, 25m, 1h or 1h30m; got {text!r}")
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if not total > 0:
        raise ConfigError(f"{flag} must be longer than 0 seconds; got {text!r}")
    return total


def split_fine_tune_epochs(total: int, flag: str = "--epochs") -> tuple[int, int]:
    """Fine-tune's share of ``total`` epochs: a third (at least one epoch) on the head with the
    backbone frozen, the rest fine-tuning. ``flag`` names the option ``total`` came from."""
    if total < 2:
        raise ConfigError(f"fine-tune needs at least 2 epochs (head, then fine-tuning); got {flag} {total}. "
                          f"Raise {flag}, or give --head-epochs and --finetune-epochs.")
    head = max(1, total // 3)
    return head, total - head


def resolve_epochs(strategy: str, epochs: int | None, head_epochs: int | None,
                   finetune_epochs: int | None) -> tuple[int, int | None, int | None]:
    """``(epochs, head_epochs, finetune_epochs)`` as the run trains them; None means "not given".

    scratch and feature-extraction train ``epochs`` (default 10); the fine-tune phases do not
    apply and resolve to None. fine-tune: ``epochs`` is the total: given alone it is split as
    :func:`split_fine_tune_epochs` says; given with one phase, the other phase gets the rest;
    given with both, they must add up to it. Without ``epochs`` the phases default to 2 + 4.
    """
    if strategy != "fine-tune":
        return (DEFAULT_EPOCHS if epochs is None else epochs), None, None
    if epochs is None:
        head = DEFAULT_HEAD_EPOCHS if head_epochs is None else head_epochs
        finetune = DEFAULT_FINETUNE_EPOCHS if finetune_epochs is None else finetune_epochs
        return head + finetune, head, finetune
    if head_epochs is None and finetune_epochs is None:
        return epochs, *split_fine_tune_epochs(epochs)
    head = epochs - finetune_epochs if head_epochs is None else head_epochs
    finetune = epochs - head if finetune_epochs is None else finetune_epochs
    if head < 0 or finetune < 0 or head + finetune != epochs:
        given = " ".join(f"{_flag(n)} {v}" for n, v in zip(EPOCH_FIELDS, (epochs, head_epochs, finetune_epochs))
                         if v is not None)
        raise ConfigError(f"{given} disagree: under fine-tune --epochs is the total, --head-epochs + "
                          f"--finetune-epochs. Give --epochs alone (split a third head, the rest "
                          f"fine-tuning), or the two phases alone.")
    return epochs, head, finetune


FINE_TUNE_ONLY = ("head_epochs", "finetune_epochs", "finetune_lr", "stage_lr_decay", "freeze", "train_bn")


def unused_options(cfg: TrainConfig, given: set[str]) -> list[str]:
    """Why each option named in ``given`` (config fields the user set) would change nothing in ``cfg``'s
    run; the command line refuses these rather than ignore them."""
    reasons = {}
    if cfg.strategy != "fine-tune":
        for name in FINE_TUNE_ONLY:
            reasons[name] = f"applies to --strategy fine-tune only, not {cfg.strategy}"
    if cfg.strategy == "scratch" or not cfg.pretrained:
        reasons["head_init"] = "starts from a pretrained backbone's ImageNet classifier, and this run has none"
    if cfg.strategy == "scratch":
        if cfg.pretrained:
            reasons["pretrained"] = "scratch always starts from random weights"
        reasons["cache_views"] = "scratch trains every stage, so no features are cached"
    if cfg.strategy == "feature-extraction" and cfg.cache:
        why = "feature-extraction trains on cached features"
        for name in ("mixup", "cutmix"):
            if getattr(cfg, name):  # 0 says "off", which is true
                reasons[name] = f"mixes whole images; {why} (pass --no-cache to mix images)"
        if cfg.cache_views == 1 and cfg.augment != "none":
            reasons["augment"] = (f"{why} of the clean crop (--cache-views 1); pass --cache-views 4 for "
                                  f"4 augmented views per image, or --no-cache")
    if cfg.ema and (cfg.strategy == "feature-extraction" or (cfg.strategy == "fine-tune" and not cfg.finetune_epochs)):
        reasons["ema"] = "averages the weights of phases that train the backbone, and this run trains only the head"
    if not cfg.ema:
        reasons["ema_decay"] = "applies with --ema only"
    return [f"{_flag(name)} {reasons[name]}" for name in sorted(given) if name in reasons]


def _drop_unused_epochs(values: dict[str, Any]) -> None:
    """Runs written before ``epochs`` meant the fine-tune total recorded an unused ``epochs`` (fine-tune)
    or unused phases (the other strategies): keep what they trained."""
    if values.get("strategy", "fine-tune") == "fine-tune":
        phases = [values.get("head_epochs"), values.get("finetune_epochs")]
        if all(type(v) is int for v in [*phases, values.get("epochs")]) and values["epochs"] != sum(phases):
            values.pop("epochs")
    else:
        values.pop("head_epochs", None)
        values.pop("finetune_epochs", None)


def _flag(name: str) -> str:
    """The command-line flag of a config field, e.g. ``--weight-decay``."""
    return "--" + name.replace("_", "-")


def _type_ok(value: Any, annotation: str) -> bool:
    """Whether ``value`` fits a field annotation such as ``"int"``, ``"float | None"``, ``"Path | None"``."""
    for kind in (part.strip() for part in annotation.split("|")):
        if (kind == "None" and value is None) or (kind == "bool" and isinstance(value, bool)) or \
                (kind == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool)) or \
                (kind == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool)) or \
                (kind == "str" and isinstance(value, str)) or (kind == "Path" and isinstance(value, (str, os.PathLike))):
            return True
    return False


def _check_types(cfg: "TrainConfig") -> None:
    """Every field of the type it is declared with (a config.json edited by hand, a Python caller)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _type_ok(value, str(f.type)):
            raise ConfigError(f"{_flag(f.name)} ({f.name}) must be of type {f.type}, got {value!r}")


def _native_size(backbone: str) -> int:
    from .backbones import native_image_size

    return native_image_size(backbone)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
