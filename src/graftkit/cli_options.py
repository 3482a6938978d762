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
Backbone = Annotated[str, typer.Option(help="See 'graft backbones'; any timm name too.")]
Pretrained = Annotated[bool, typer.Option(help="--no-pretrained: random init.")]
Weights = Annotated[Optional[Path], typer.Option(help="Local .safetensors/.pth backbone weights.")]
ImageSize = Annotated[Optional[int], typer.Option(help="Input size (default: the backbone's).")]
Epochs = Annotated[Optional[int], typer.Option(
    help="Epochs in all. fine-tune splits them: a third (at least 1) with the backbone frozen, the rest "
         "unfrozen (as 'graft compare --budget-epochs'); or give --head-epochs/--finetune-epochs.",
    show_default="10; fine-tune: 6 = 2 head + 4")]
HeadEpochs = Annotated[Optional[int], typer.Option(
    help="fine-tune: epochs with the backbone frozen (on cached features: cheap).",
    show_default="2, or a third of --epochs")]
FinetuneEpochs = Annotated[Optional[int], typer.Option(
    help="fine-tune: epochs after unfreezing.", show_default="4, or --epochs less --head-epochs")]
Lr = Annotated[float, typer.Option(help="Peak learning rate of the head (and of scratch).")]
FinetuneLr = Annotated[float, typer.Option(help="Peak learning rate after unfreezing.")]
BatchSize = Annotated[Optional[int], typer.Option(
    help="Default: 32 on a CPU (16 for a head on cached features), 64 on CUDA.")]
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
CacheDir = Annotated[Optional[Path], typer.Option(help="Cache folder (default ~/.cache/graftkit).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the result.")]
Plain = Annotated[bool, typer.Option(help="One line per epoch, no progress bar.")]
