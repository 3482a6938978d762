"""``graft`` commands for scarce labels: subsample, label-efficiency, augment-preview, pretrain, and the
``--pseudo-label`` path of ``graft train``. Registered on the app of ``cli.py``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import cli_options as opt
from .config import TrainConfig
from .errors import GraftError

_D = opt.DEFAULTS


def train_pseudo_label(cfg: TrainConfig, unlabeled: Optional[Path], pseudo_label: bool, rounds: int,
                        threshold: float, class_quantile: float, max_ratio: float, max_per_class: Optional[int],
                        quiet: bool) -> None:
    from .workflows.self_training import PseudoLabelConfig, train_with_pseudo_labels

    if unlabeled is None or not pseudo_label:
        raise GraftError("--pseudo-label and --unlabeled DIR go together: pass both (or neither).")
    pl = PseudoLabelConfig(unlabeled, rounds=rounds, threshold=threshold, class_quantile=class_quantile,
                           max_ratio=max_ratio, max_per_class=max_per_class)

    def on_round(row: dict) -> None:
        for note in row.get("notes", []):
            typer.echo(f"warning: {note}")
        added = ", ".join(f"{c} {n}" for c, n in row["added"].items())
        typer.echo(f"round {row['round']}: val_accuracy {row['val_accuracy']:.4f}, "
                   f"{row['num_pseudo']} pseudo-labels ({added})"
                   + (f" of {row['num_unlabeled']} unlabelled images" if "num_unlabeled" in row else ""))

    run = train_with_pseudo_labels(cfg, pl, on_round=on_round)
    base = run.metrics["pseudo_label"]["baseline_val_accuracy"]
    typer.echo(f"pseudo-label: val_accuracy {run.metrics['val_accuracy']:.4f} (without: {base:.4f}) → "
               f"{run.out_dir} (pseudo_labels.csv, label_next.csv)")


def subsample_command(
    data_dir: Annotated[Path, typer.Argument(help="Dataset: train/ + val/, or class folders.")],
    per_class: Optional[str] = typer.Option(None, help="Labelled images kept per class (a number, or 'all')."),
    long_tail: Optional[float] = typer.Option(None, help="Instead of --per-class: a long-tailed train split whose "
                                              "largest class has RATIO times the images of the smallest "
                                              "(exponential profile over the classes in a seeded order).",
                                              metavar="RATIO"),
    out: Path = typer.Option(..., "--out", help="New folder for train/, val/ and unlabeled/."),
    seed: int = typer.Option(0, help="Which images (and, with --long-tail, which classes) are picked."),
    val_fraction: float = typer.Option(_D["val_fraction"], help="Held out per class when there is no val/."),
) -> None:
    """Make OUT/train/<class>/ (N per class or a long tail), OUT/val/ and OUT/unlabeled/ (the rest), as links."""
    from .fileio import refuse_out_inside_data
    from .scarce import parse_per_class, subsample

    if (per_class is None) == (long_tail is None):
        raise GraftError("subsample takes one of --per-class N or --long-tail RATIO.")
    sizes = [None] if per_class is None else parse_per_class(per_class)
    if len(sizes) != 1:
        raise GraftError("subsample takes one --per-class size; label-efficiency takes several.")
    refuse_out_inside_data(out, data_dir)
    result = subsample(data_dir, sizes[0], out, seed=seed, val_fraction=val_fraction, long_tail=long_tail)
    for warning in result.warnings:
        typer.echo(f"warning: {warning}")
    if result.long_tail is not None:
        profile = ", ".join(f"{c} {n}" for c, n in result.long_tail["profile"].items())
        typer.echo(f"long tail {long_tail:g}×: {profile} (train images per class; in subsample.json)")
    typer.echo(f"{out}: train {sum(result.train_counts.values())}, val {sum(result.val_counts.values())}, "
               f"unlabeled {sum(result.unlabeled_counts.values())} images (files placed by: {result.link_method})")


def label_efficiency_command(
    data_dir: opt.DataDir,
    per_class: str = typer.Option("5,10,25,all", help="Sizes: labelled images per class, comma-separated."),
    seeds: int = typer.Option(3, help="Runs per size (different subsets and training seeds)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder (default runs/<time>-label-efficiency)."),
    strategy: opt.Strategy = "fine-tune",
    backbone: opt.Backbone = _D["backbone"],
    image_size: opt.ImageSize = None,
    epochs: opt.Epochs = None,  # defaults: cli_options.DEFAULT_TEXT
    head_epochs: opt.HeadEpochs = None,
    finetune_epochs: opt.FinetuneEpochs = None,
    augment: opt.Augment = _D["augment"],
    batch_size: opt.BatchSize = None,
    device: opt.Device = _D["device"],
) -> None:
    """Accuracy against labelled images per class (mean and 95% interval over seeds): JSON + plot."""
    from datetime import datetime

    from .scarce import parse_per_class
    from .workflows.label_efficiency import label_efficiency

    out = out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-label-efficiency"
    sizes = parse_per_class(per_class)
    unique = list(dict.fromkeys(sizes))
    if len(unique) < len(sizes):
        typer.echo(f"note: --per-class {per_class} repeats a size; measuring each once: "
                   f"{','.join('all' if s is None else str(s) for s in unique)}")
    if epochs is None and head_epochs is None and finetune_epochs is None:  # few labels: a long, cheap head phase
        epochs, head_epochs, finetune_epochs = (None, 30, 2) if strategy == "fine-tune" else (30, None, None)
    cfg = TrainConfig(data_dir=data_dir, strategy=strategy, backbone=backbone, image_size=image_size,
                      epochs=epochs, head_epochs=head_epochs, finetune_epochs=finetune_epochs, augment=augment,
                      batch_size=batch_size, device=device, progress="none")

    def on_run(row: dict) -> None:
        size = "all" if row["per_class"] is None else row["per_class"]
        typer.echo(f"{size:>5} per class, seed {row['seed']}: val_accuracy {row['val_accuracy']:.4f} "
                   f"({row['num_train']} train images, {row['seconds']:.0f}s)")

    summary = label_efficiency(cfg, unique, seeds, out, on_run=on_run)
    for size in summary["sizes"]:
        acc = size["val_accuracy"]
        interval = f" ± {100 * acc['half_width']:.1f}" if acc["half_width"] is not None else ""
        typer.echo(f"{size['label']:>5} per class: {100 * acc['mean']:.1f}{interval} % (95% interval, {acc['n']} seeds)")
    for line in summary["gains"]:
        typer.echo(line)
    typer.echo(f"→ {out}/label_efficiency.json, label_efficiency.png ({summary['seconds_total']:.0f}s)")


def augment_preview(
    data_dir: Annotated[Path, typer.Argument(help="Dataset: train/ + val/, or class folders.")],
    augment: str = typer.Option("strong", help="none | light | strong | a .json/.yaml pipeline file."),
    out: Path = typer.Option(Path("augmentations.jpg"), "--out", help="Image to write (.jpg, or .png)."),
    image_size: Optional[int] = typer.Option(None, help="Default: the backbone's."),
    backbone: str = typer.Option(_D["backbone"], help="Sets the default image size."),
    num_images: int = typer.Option(8, help="Rows: training images, classes in turn."),
    num_views: int = typer.Option(5, help="Augmented views per image."),
    mixup: float = typer.Option(0.0), cutmix: float = typer.Option(0.0),
    seed: int = typer.Option(0),
) -> None:
    """Write a grid: each row a training image's validation crop, then its augmentations."""
    from .backbones import native_image_size
    from .data import decode_size_for, scan_data
    from .data.preview import check_preview_out, decodable_samples, one_per_class, save_augment_grid
    from .data.transforms import check_augment

    check_preview_out(out)  # before any work: a .png path that is not a folder
    size = image_size or native_image_size(backbone)
    check_augment(augment, size)
    scan = scan_data(data_dir, verify=False)
    order = [scan.train[i] for i in one_per_class([s.label for s in scan.train], len(scan.train))]
    picked, squares = decodable_samples(order, decode_size_for(size), num_images,
                                        on_skip=lambda p, r: typer.echo(f"skipped: {p}: {r}", err=True))
    save_augment_grid(out, squares, size, augment, num_views=num_views, mixup=mixup, cutmix=cutmix, seed=seed,
                      titles=[scan.classes[s.label] for s in picked])
    typer.echo(f"wrote {out} ({len(picked)} images x {num_views} views, {size}px, augment {augment})")


def pretrain(
    unlabeled_dir: Annotated[Path, typer.Argument(help="Folder of unlabelled images (searched recursively).")],
    out: Path = typer.Option(..., "--out", help="Folder for backbone.safetensors and pretrain.json."),
    method: str = typer.Option("simclr", help="simclr | byol | dino (losses, heads and views from lightly)."),
    backbone: str = typer.Option(_D["backbone"], help="Starts from its ImageNet weights."),
    weights: Optional[Path] = typer.Option(None, help="Start from these backbone weights instead."),
    epochs: int = typer.Option(10, help="Passes over the unlabelled images."),
    minutes: Optional[float] = typer.Option(None, help="Stop between steps so the command ends within this time."),
    image_size: int = typer.Option(128, help="Size of the views (small is cheap on a CPU)."),
    batch_size: int = typer.Option(32),
    lr: float = typer.Option(1e-3, help="Learning rate of the projection heads."),
    backbone_lr: float = typer.Option(1e-4, help="Learning rate of the backbone."),
    freeze: int = typer.Option(0, help="First K backbone stages stay frozen (cheaper)."),
    train_bn: bool = typer.Option(False, help="Let BatchNorm statistics adapt (noisy with small batches)."),
    probe_data: Optional[Path] = typer.Option(None, help="Labelled folder: linear/kNN probe before and after."),
    probe_image_size: Optional[int] = typer.Option(None, help="Probe input size (default: the backbone's)."),
    seed: int = typer.Option(0),
    device: str = typer.Option(_D["device"]),
) -> None:
    """Self-supervised pretraining on unlabelled images; use with 'graft train --weights OUT/backbone.safetensors'."""
    from .ssl import PretrainConfig, pretrain_ssl

    cfg = PretrainConfig(unlabeled_dir, out, method=method, backbone=backbone, weights=weights, epochs=epochs,
                         minutes=minutes, image_size=image_size, batch_size=batch_size, lr=lr,
                         backbone_lr=backbone_lr, freeze=freeze, train_bn=train_bn, seed=seed, device=device,
                         probe_data=probe_data, probe_image_size=probe_image_size)
    summary = pretrain_ssl(cfg, on_epoch=lambda r: typer.echo(f"epoch {r['epoch']}: loss {r['loss']:.4f} "
                                                                 f"({r['steps']} steps, {r['seconds']:.0f}s)"),
                           on_message=typer.echo)
    probe = summary["probe"]
    if probe:
        b, a = probe["before"], probe["after"]
        typer.echo(f"probe on {probe_data}: linear {b['linear_accuracy']:.4f} → {a['linear_accuracy']:.4f}, "
                   f"kNN {b['knn_accuracy']:.4f} → {a['knn_accuracy']:.4f}")
    typer.echo(f"stopped by {summary['stopped_by']} after {summary['steps']} steps, {summary['seconds_total']:.0f}s "
               f"→ {out}/backbone.safetensors. Use: {summary['use']}")


def register(app: typer.Typer) -> None:
    """Add these commands to ``app`` (called by ``cli.py``)."""
    app.command("subsample")(subsample_command)
    app.command("label-efficiency")(label_efficiency_command)
    app.command("augment-preview")(augment_preview)
    app.command("pretrain")(pretrain)
