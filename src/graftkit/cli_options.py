"""Training options of the ``graft`` commands, declared once.

``train``, ``compare``, ``lr-find`` and ``label-efficiency`` take these as parameter types
(``augment: Augment = DEFAULTS["augment"]``), so a flag has one help text everywhere; each command
keeps its own default. Defaults come from :class:`graftkit.TrainConfig`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from .config import TrainConfig

DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

DataDir = Annotated[Path, typer.Argument(help="Folder with train/ and val/, or with one folder per class.")]
Strategy = Annotated[str, typer.Option(help="scratch | feature-extraction | fine-tune.")]
Backbone = Annotated[str, typer.Option(help="See 'graft backbones'; any timm name too. train: 'auto' probes the "
                                                "offline ones and picks one (docs/time-limit.md).")]
Pretrained = Annotated[bool, typer.Option(help="--no-pretrained: random init.")]
Weights = Annotated[Optional[Path], typer.Option(help="Local .safetensors/.pth backbone weights.")]
ImageSize = Annotated[Optional[int], typer.Option(help="Input size in pixels.")]
Epochs = Annotated[Optional[int], typer.Option(
    help="Epochs in all. fine-tune splits them: a third (at least 1) with the backbone frozen, the rest "
         "unfrozen (as 'graft compare --budget-epochs'); or give --head-epochs/--finetune-epochs.")]
HeadEpochs = Annotated[Optional[int], typer.Option(
    help="fine-tune: epochs with the backbone frozen (on cached features: cheap).")]
FinetuneEpochs = Annotated[Optional[int], typer.Option(help="fine-tune: epochs after unfreezing.")]
Lr = Annotated[float, typer.Option(help="Peak learning rate of the head (and of scratch).")]
FinetuneLr = Annotated[float, typer.Option(help="Peak learning rate after unfreezing.")]
BatchSize = Annotated[Optional[int], typer.Option(help="Images per training step.")]
Augment = Annotated[str, typer.Option(
    help="none | light (random resized crop + flip) | strong (+ colour jitter, TrivialAugment, random "
         "erasing) | a .json/.yaml pipeline file. Train only.")]
ValFraction = Annotated[float, typer.Option(help="Held out per class when there is no val/.")]
Seed = Annotated[int, typer.Option(help="Seeds training, and the validation hold-out of a class-folder root.")]
SplitSeed = Annotated[Optional[int], typer.Option(
    help="Seeds the validation hold-out of a class-folder root instead of --seed (recorded in model.json).")]
SkipBadImages = Annotated[bool, typer.Option(help="Train on the readable images; list the rest in skipped.csv.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda.")]
Precision = Annotated[str, typer.Option(help="auto | fp32 | bf16 (autocast).")]
Cache = Annotated[bool, typer.Option(help="--no-cache: decode and recompute everything in this run only.")]
CacheDir = Annotated[Optional[Path], typer.Option(help="Cache folder.")]
TimeLimit = Annotated[Optional[str], typer.Option(
    "--time-limit", help="Wall-clock limit: 90s, 10m, 1h, 1h30m. train: of the whole command; the backbones are "
                         "probed and backbone, freeze depth and epochs planned to fit (plan.json, "
                         "docs/time-limit.md). compare: per run, checked between epochs.")]
Ema = Annotated[bool, typer.Option(
    help="Fine-tuning: keep an exponential moving average of the weights, validate it each epoch and keep "
         "the best epoch's average (docs/tta-ema.md).")]
EmaDecay = Annotated[float, typer.Option(help="--ema: decay per step (reached after a warm-up).")]
Tta = Annotated[bool, typer.Option(
    "--tta", help="Test-time augmentation: average the calibrated probabilities of the centre crop and its "
                  "mirror image (docs/tta-ema.md).")]
TtaCrops = Annotated[int, typer.Option(help="--tta: 5 also averages the four corner crops and their mirror "
                                            "images (10 views, 5x the time of 2).")]
Balance = Annotated[str, typer.Option(
    help="Class imbalance: none | weights (inverse-frequency loss weights) | sampler (class-balanced "
         "sampling) | auto (weights when the largest train class has >= 3x the images of the smallest). "
         "On imbalanced data the best epoch is chosen by balanced accuracy.")]
HeadInit = Annotated[str, typer.Option(
    help="auto: when every class folder names an ImageNet class (ants, bees, n02219486), the new head starts "
         "from those rows of the backbone's ImageNet classifier (docs/head-init.md); random: always a random head.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result.")]
Plain = Annotated[bool, typer.Option(help="One line per epoch, no progress bar.")]


# ----------------------------------------------------------------------------- how --help reads
# Options are grouped into panels by name, so a command lists them under these headings and a new
# option only needs a line here (commands with few options keep one "Options" panel).
PANELS = {
    "Data": ("val_fraction", "seed", "split_seed", "skip_bad_images"),
    "Model": ("strategy", "backbone", "pretrained", "weights", "image_size", "freeze", "dropout", "head_init",
              "train_bn"),
    "Schedule": ("epochs", "head_epochs", "finetune_epochs", "lr", "finetune_lr", "stage_lr_decay", "weight_decay",
                 "label_smoothing", "balance", "ema", "ema_decay", "lr_find", "time_limit", "ensemble", "max_seconds",
                 "budget_epochs", "budget_minutes", "seeds", "strategies"),
    "Augmentation": ("augment", "mixup", "cutmix", "cache_views"),
    "Scarce labels": ("unlabeled", "pseudo_label", "rounds", "threshold", "class_quantile", "max_ratio",
                      "max_per_class"),
    "Speed": ("batch_size", "device", "num_workers", "precision", "compile", "fold_bn", "cache", "cache_dir",
              "isolate", "nproc", "accumulate", "sync_bn"),
    "Output": ("out", "quiet", "plain", "checkpoint_every", "resume", "print_config", "report", "track", "track_uri"),
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}
MIN_OPTIONS_FOR_PANELS = 10
# What an option left unset means, for the "[default: ...]" of options whose default is None.
DEFAULT_TEXT = {  # by option name, or by (command, option name)
    "epochs": "10; fine-tune: 6 = 2 head + 4",
    "head_epochs": "2, or a third of --epochs",
    "finetune_epochs": "4, or --epochs less --head-epochs",
    ("label-efficiency", "epochs"): "30; fine-tune: 32 = 30 head + 2",
    ("label-efficiency", "head_epochs"): "30, or a third of --epochs",
    ("label-efficiency", "finetune_epochs"): "2, or --epochs less --head-epochs",
    "batch_size": "32 on a CPU (16 for a head on cached features), 64 on CUDA",
    "image_size": "the backbone's, e.g. 224",
    "split_seed": "--seed",
    "out": "runs/<time>-<strategy>",
    "cache_dir": "~/.cache/graftkit",
    "max_seconds": "no limit",
    "time_limit": "no limit",
    "weights": "the backbone's own",
    "max_per_class": "no limit",
    "budget_epochs": "6",
    "budget_minutes": "no limit",
    "track": "off",
    "track_uri": "mlflow: sqlite:///<runs folder>/mlflow.db; tensorboard: <run>/tensorboard",
}
TYPE_NAMES = {int: "INTEGER", float: "NUMBER", str: "TEXT", Path: "PATH"}


class _Argument(typer.core.TyperArgument):
    """An argument shown by its metavar (``MODEL``, ``PATHS...``), in the usage line too, with no
    ``<path>``/``<list[Path]>`` tag beside it."""

    def display_type_rich(self, ctx) -> None:
        return None

    def _usage_display_name(self) -> str:
        return self.metavar if self.required else f"[{self.metavar}]"


class GraftCommand(typer.core.TyperCommand):
    """A command whose --help reads: options in panels (:data:`PANELS`), every default shown,
    value types as words (INTEGER, PATH), no type tag on flags, arguments as MODEL / PATHS..."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        options = [p for p in self.params if not isinstance(p, typer.core.TyperArgument)]
        self.grouped = len(options) >= MIN_OPTIONS_FOR_PANELS
        if self.grouped:  # panels in PANELS' order (stable within one): only --help lists them so
            order = list(PANELS)
            self.params.sort(key=lambda p: order.index(PANEL_OF[p.name]) if p.name in PANEL_OF else -1)
        for param in self.params:
            if isinstance(param, typer.core.TyperArgument):
                param.__class__ = _Argument
                param.metavar = param.metavar or param.name.upper() + ("..." if param.nargs != 1 else "")
                continue
            annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
            if annotation is bool or getattr(param, "is_flag", False):
                param.metavar = ""  # a flag takes no value
            elif param.metavar is None:
                param.metavar = TYPE_NAMES.get(annotation, "VALUE")
            text = DEFAULT_TEXT.get((self.name, param.name), DEFAULT_TEXT.get(param.name))
            if param.default is None and text and "default" not in (param.help or "").lower():
                param.show_default = text
            if self.grouped and getattr(param, "rich_help_panel", None) is None and param.name in PANEL_OF:
                param.rich_help_panel = PANEL_OF[param.name]


    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
            option.rich_help_panel = "Output" if self.grouped else None
        return option


class GraftGroup(typer.core.TyperGroup):
    """``graft --help``: no type tag on its flags."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if getattr(getattr(param, "type_descriptor", None), "annotation", None) is bool:
                param.metavar = ""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


def style_help(app: typer.Typer) -> None:
    """Give every command of ``app`` (and of its sub-apps) :class:`GraftCommand`'s help."""
    if not isinstance(app.info.cls, type) or app.info.cls is typer.core.TyperGroup:  # unset: typer's default
        app.info.cls = GraftGroup
    for info in app.registered_commands:
        if info.cls in (None, typer.core.TyperCommand):  # a command's own class is kept
            info.cls = GraftCommand
    for group in app.registered_groups:
        style_help(group.typer_instance)
