"""The ``graft`` command line: thin functions that build a config and call the public API."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .config import TrainConfig
from .errors import GraftError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="graftkit: transfer learning and fine-tuning of image classifiers.")
_state = {"debug": False}
_D = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"graftkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False,
          debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


@app.command()
def backbones() -> None:
    """List the backbones; 'offline' ones have weights that ship with graftkit's dependencies."""
    from rich.console import Console
    from rich.table import Table

    from .backbones import list_backbones

    table = Table("name", "works offline", "description")
    for info in list_backbones():
        table.add_row(info.name, "yes" if info.offline else "no", info.description)
    table.add_row("<any timm model>", "no", "timm hub weights (network), or --weights FILE, or --no-pretrained")
    Console().print(table)


@app.command("check-data")
def check_data(data_dir: Path,
               val_fraction: float = typer.Option(_D["val_fraction"], help="Held out per class when there is no val/."),
               seed: int = typer.Option(_D["seed"], help="Seeds the split."),
               skip_bad_images: bool = typer.Option(False, help="Report unreadable images but do not fail.")) -> None:
    """Scan DATA_DIR as training would: classes, counts, and every problem with a fix."""
    from .data import scan_data

    scan = scan_data(data_dir, val_fraction, seed, skip_bad_images=skip_bad_images)
    train_counts, val_counts = scan.class_counts("train"), scan.class_counts("val")
    typer.echo(f"{data_dir}: {scan.layout} layout, {len(scan.classes)} classes, "
               f"{len(scan.train)} train / {len(scan.val)} val images")
    for cls in scan.classes:
        typer.echo(f"  {cls:<24} train {train_counts[cls]:>6}  val {val_counts[cls]:>6}")
    for bad in [*scan.bad, *scan.ignored]:
        typer.echo(f"skipped: {bad.path}: {bad.reason}")
    for warning in scan.warnings:
        typer.echo(f"warning: {warning}")
    typer.echo("ok" if not scan.bad else f"usable with --skip-bad-images ({len(scan.bad)} bad files)")


@app.command()
def train(
    data_dir: Annotated[Optional[Path], typer.Argument(
        help="Folder with train/ and val/, or with one folder per class.")] = None,
    strategy: str = typer.Option(_D["strategy"], help="scratch | feature-extraction | fine-tune."),
    backbone: str = typer.Option(_D["backbone"], help="See 'graft backbones'; any timm name too."),
    pretrained: bool = typer.Option(True, help="--no-pretrained: random init."),
    weights: Optional[Path] = typer.Option(None, help="Local .safetensors/.pth backbone weights."),
    image_size: Optional[int] = typer.Option(None, help="Input size (default: the backbone's)."),
    epochs: int = typer.Option(_D["epochs"], help="Epochs for scratch and feature-extraction."),
    head_epochs: int = typer.Option(_D["head_epochs"], help="fine-tune: epochs with the backbone frozen."),
    finetune_epochs: int = typer.Option(_D["finetune_epochs"], help="fine-tune: epochs after unfreezing."),
    freeze: int = typer.Option(_D["freeze"], help="fine-tune: first K stages stay frozen when unfreezing."),
    lr: float = typer.Option(_D["lr"], help="Peak learning rate of the head (and of scratch)."),
    finetune_lr: float = typer.Option(_D["finetune_lr"], help="Peak learning rate after unfreezing."),
    stage_lr_decay: float = typer.Option(_D["stage_lr_decay"], help="LR factor per stage going down."),
    weight_decay: float = typer.Option(_D["weight_decay"]),
    label_smoothing: float = typer.Option(_D["label_smoothing"]),
    dropout: float = typer.Option(_D["dropout"], help="Dropout before the new head."),
    train_bn: bool = typer.Option(_D["train_bn"], help="Let unfrozen BatchNorm use batch statistics."),
    fold_bn: bool = typer.Option(_D["fold_bn"], help="Fold frozen BatchNorm into convs (faster, same result)."),
    batch_size: Optional[int] = typer.Option(None, help="Default: 16 on a CPU, 64 on CUDA."),
    augment: str = typer.Option(_D["augment"], help="none | light (random resized crop + flip) | strong (+ colour "
                                "jitter, TrivialAugment, random erasing) | a .json/.yaml pipeline file. Train only."),
    mixup: float = typer.Option(_D["mixup"], help="MixUp alpha on image batches (0: off, e.g. 0.2)."),
    cutmix: float = typer.Option(_D["cutmix"], help="CutMix alpha on image batches (0: off, e.g. 1.0)."),
    val_fraction: float = typer.Option(_D["val_fraction"], help="Held out per class when there is no val/."),
    seed: int = typer.Option(_D["seed"]),
    skip_bad_images: bool = typer.Option(False, help="Train on the readable images; list the rest in skipped.txt."),
    device: str = typer.Option(_D["device"], help="auto | cpu | cuda."),
    num_workers: int = typer.Option(_D["num_workers"], help="Data-loading worker processes."),
    precision: str = typer.Option(_D["precision"], help="auto | fp32 | bf16 (autocast)."),
    compile: bool = typer.Option(_D["compile"], "--compile", help="torch.compile the trained part."),
    cache: bool = typer.Option(_D["cache"], help="--no-cache: decode and recompute everything in this run only."),
    cache_dir: Optional[Path] = typer.Option(None, help="Cache folder (default ~/.cache/graftkit)."),
    cache_views: int = typer.Option(_D["cache_views"], help="Augmented views cached per training image "
                                    "for frozen phases: 1 = the clean crop only (fastest); more = more "
                                    "augmentation, one backbone pass per view."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<time>-<strategy>)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final line."),
    plain: bool = typer.Option(False, help="One line per epoch, no progress bar."),
    checkpoint_every: float = typer.Option(_D["checkpoint_every"], help="Seconds between checkpoints (0: every epoch)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the interrupted run in this folder."),
    print_config: bool = typer.Option(False, help="Print the resolved config and exit."),
    unlabeled: Optional[Path] = typer.Option(None, help="Folder of unlabelled images (for --pseudo-label)."),
    pseudo_label: bool = typer.Option(False, "--pseudo-label", help="Self-train: pseudo-label --unlabeled "
                                      "with the model, retrain on labelled + pseudo-labelled, --rounds times."),
    rounds: int = typer.Option(2, help="--pseudo-label: pseudo-label/retrain rounds."),
    threshold: float = typer.Option(0.5, help="--pseudo-label: minimum confidence of a pseudo-label."),
    class_quantile: float = typer.Option(0.0, help="--pseudo-label: per class, also require this quantile "
                                         "of the confidences predicted for that class."),
    max_ratio: float = typer.Option(5.0, help="--pseudo-label: at most this many pseudo-labels per "
                                    "labelled image of a class."),
    max_per_class: Optional[int] = typer.Option(None, help="--pseudo-label: at most this many per class."),
) -> None:
    """Train a classifier on DATA_DIR and write a run folder."""
    from .engine import fit

    progress = "none" if quiet else ("plain" if plain else "auto")
    if resume is not None:
        cfg = TrainConfig.from_run(resume, resume=True, progress=progress)
        if data_dir is not None and Path(data_dir).resolve() != Path(cfg.data_dir).resolve():
            raise GraftError(f"--resume {resume} trains on '{cfg.data_dir}', not '{data_dir}'. "
                             f"Drop DATA_DIR or pass the same folder.")
        run = fit(cfg)
        if quiet:
            typer.echo(f"val_accuracy {run.metrics['val_accuracy']:.4f} → {run.out_dir}")
        return
    if data_dir is None:
        raise GraftError("train needs DATA_DIR (or --resume RUN_DIR). See 'graft train --help'.")
    cfg = TrainConfig(data_dir=data_dir, strategy=strategy, backbone=backbone, pretrained=pretrained,
                      weights=weights, image_size=image_size, epochs=epochs, head_epochs=head_epochs,
                      finetune_epochs=finetune_epochs, freeze=freeze, lr=lr, finetune_lr=finetune_lr,
                      stage_lr_decay=stage_lr_decay, weight_decay=weight_decay,
                      label_smoothing=label_smoothing, dropout=dropout, train_bn=train_bn, fold_bn=fold_bn,
                      batch_size=batch_size, augment=augment, val_fraction=val_fraction, seed=seed,
                      skip_bad_images=skip_bad_images, device=device, num_workers=num_workers,
                      precision=precision, compile=compile, cache=cache, cache_dir=cache_dir,
                      cache_views=cache_views, checkpoint_every=checkpoint_every, out_dir=out,
                      progress=progress, mixup=mixup, cutmix=cutmix)
    if print_config:
        typer.echo(cfg.to_json())
        return
    if pseudo_label or unlabeled is not None:
        _train_pseudo_label(cfg, unlabeled, pseudo_label, rounds, threshold, class_quantile, max_ratio,
                            max_per_class, quiet)
        return
    run = fit(cfg)
    if quiet:
        typer.echo(f"val_accuracy {run.metrics['val_accuracy']:.4f} → {run.out_dir}")


def _train_pseudo_label(cfg: TrainConfig, unlabeled: Optional[Path], pseudo_label: bool, rounds: int,
                        threshold: float, class_quantile: float, max_ratio: float, max_per_class: Optional[int],
                        quiet: bool) -> None:
    from .semi import PseudoLabelConfig, train_with_pseudo_labels

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


@app.command()
def predict(model: Annotated[Path, typer.Argument(help="Run folder (or its model.json).")],
            paths: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive).")],
            top_k: int = typer.Option(1, help="Classes to show per image."),
            format: str = typer.Option("table", "--format", help="table | json | csv.")) -> None:
    """Predict the class of images with a trained model."""
    from .predict import ImageClassifier

    if format not in ("table", "json", "csv"):
        raise GraftError(f"--format must be table, json or csv; got {format!r}")
    classifier = ImageClassifier.from_run(model)
    results = classifier.predict(paths, top_k=top_k,
                                 on_skip=lambda p, r: typer.echo(f"skipped: {p}: {r}", err=True))
    if format == "json":
        typer.echo(json.dumps([{"path": str(r.path), "class": r.label, "probability": r.probability,
                                "top": [{"class": c, "probability": p} for c, p in r.top]}
                               for r in results], indent=2))
    elif format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", *[h for i in range(len(results[0].top)) for h in (f"class_{i + 1}", f"probability_{i + 1}")]])
        for r in results:
            writer.writerow([str(r.path), *[v for c, p in r.top for v in (c, f"{p:.6f}")]])
        typer.echo(buffer.getvalue(), nl=False)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("image", "class", "probability", *(["top"] if top_k > 1 else []))
        for r in results:
            extra = [", ".join(f"{c} {p:.3f}" for c, p in r.top[1:])] if top_k > 1 else []
            table.add_row(str(r.path), r.label, f"{r.probability:.3f}", *extra)
        Console().print(table)


@app.command()
def evaluate(model: Annotated[Path, typer.Argument(help="Run folder (or its model.json).")],
             data_dir: Annotated[Path, typer.Argument(help="Labelled image folder.")],
             split: str = typer.Option("val", help="val | train | all."),
             as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
             skip_bad_images: bool = typer.Option(False)) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix on labelled data."""
    from .predict import ImageClassifier

    result = ImageClassifier.from_run(model).evaluate(data_dir, split, skip_bad_images)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"accuracy {result['accuracy']:.4f} on {result['num_images']} images "
                  f"({split} split of {data_dir}), loss {result['loss']:.4f}")
    table = Table("class", "precision", "recall", "f1", "support")
    for cls, m in result["per_class"].items():
        table.add_row(cls, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)
    matrix = Table("true \\ predicted", *result["classes"], title="confusion matrix")
    for cls, row in zip(result["classes"], result["confusion_matrix"]):
        matrix.add_row(cls, *map(str, row))
    console.print(matrix)


@app.command("subsample")
def subsample_command(
    data_dir: Annotated[Path, typer.Argument(help="Dataset: train/ + val/, or class folders.")],
    per_class: str = typer.Option(..., help="Labelled images kept per class (a number, or 'all')."),
    out: Path = typer.Option(..., "--out", help="New folder for train/, val/ and unlabeled/."),
    seed: int = typer.Option(0, help="Which images are picked."),
    val_fraction: float = typer.Option(_D["val_fraction"], help="Held out per class when there is no val/."),
) -> None:
    """Make OUT/train/<class>/ (N per class), OUT/val/ and OUT/unlabeled/ (the rest), as links."""
    from .scarce import parse_per_class, subsample

    sizes = parse_per_class(per_class)
    if len(sizes) != 1:
        raise GraftError("subsample takes one --per-class size; label-efficiency takes several.")
    result = subsample(data_dir, sizes[0], out, seed=seed, val_fraction=val_fraction)
    for warning in result.warnings:
        typer.echo(f"warning: {warning}")
    typer.echo(f"{out}: train {sum(result.train_counts.values())}, val {sum(result.val_counts.values())}, "
               f"unlabeled {sum(result.unlabeled_counts.values())} images ({result.link_method}s)")


@app.command("label-efficiency")
def label_efficiency_command(
    data_dir: Annotated[Path, typer.Argument(help="Dataset: train/ + val/, or class folders.")],
    per_class: str = typer.Option("5,10,25,all", help="Sizes: labelled images per class, comma-separated."),
    seeds: int = typer.Option(3, help="Runs per size (different subsets and training seeds)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder (default runs/<time>-label-efficiency)."),
    strategy: str = typer.Option("fine-tune", help="Training strategy of every run."),
    backbone: str = typer.Option(_D["backbone"]),
    image_size: Optional[int] = typer.Option(None),
    epochs: int = typer.Option(30, help="Epochs for feature-extraction and scratch."),
    head_epochs: int = typer.Option(30, help="fine-tune: head epochs (on cached features: cheap)."),
    finetune_epochs: int = typer.Option(2, help="fine-tune: epochs after unfreezing (~0.05 s/image on a CPU)."),
    augment: str = typer.Option(_D["augment"]),
    batch_size: Optional[int] = typer.Option(None),
    device: str = typer.Option(_D["device"]),
) -> None:
    """Accuracy against labelled images per class (mean and 95% interval over seeds): JSON + plot."""
    from datetime import datetime

    from .scarce import label_efficiency, parse_per_class

    out = out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-label-efficiency"
    cfg = TrainConfig(data_dir=data_dir, strategy=strategy, backbone=backbone, image_size=image_size,
                      epochs=epochs, head_epochs=head_epochs, finetune_epochs=finetune_epochs, augment=augment,
                      batch_size=batch_size, device=device, progress="none")

    def on_run(row: dict) -> None:
        size = "all" if row["per_class"] is None else row["per_class"]
        typer.echo(f"{size:>5} per class, seed {row['seed']}: val_accuracy {row['val_accuracy']:.4f} "
                   f"({row['num_train']} train images, {row['seconds']:.0f}s)")

    summary = label_efficiency(cfg, parse_per_class(per_class), seeds, out, on_run=on_run)
    for size in summary["sizes"]:
        acc = size["val_accuracy"]
        interval = f" ± {100 * acc['half_width']:.1f}" if acc["half_width"] is not None else ""
        typer.echo(f"{size['label']:>5} per class: {100 * acc['mean']:.1f}{interval} % (95% interval, {acc['n']} seeds)")
    for line in summary["gains"]:
        typer.echo(line)
    typer.echo(f"→ {out}/label_efficiency.json, label_efficiency.png ({summary['seconds_total']:.0f}s)")


@app.command("augment-preview")
def augment_preview(
    data_dir: Annotated[Path, typer.Argument(help="Dataset: train/ + val/, or class folders.")],
    augment: str = typer.Option("strong", help="none | light | strong | a .json/.yaml pipeline file."),
    out: Path = typer.Option(Path("augmentations.png"), "--out", help="PNG to write."),
    image_size: Optional[int] = typer.Option(None, help="Default: the backbone's."),
    backbone: str = typer.Option(_D["backbone"], help="Sets the default image size."),
    num_images: int = typer.Option(8, help="Rows: training images, classes in turn."),
    num_views: int = typer.Option(5, help="Augmented views per image."),
    mixup: float = typer.Option(0.0), cutmix: float = typer.Option(0.0),
    seed: int = typer.Option(0),
) -> None:
    """Write a grid: each row a training image's validation crop, then its augmentations."""
    from .backbones.registry import native_image_size
    from .data import decode_size_for, decode_square, scan_data
    from .data.preview import one_per_class, save_augment_grid
    from .data.transforms import check_augment

    check_augment(augment)
    size = image_size or native_image_size(backbone)
    scan = scan_data(data_dir, verify=False)
    picked = [scan.train[i] for i in one_per_class([s.label for s in scan.train], num_images)]
    squares = [decode_square(s.path.read_bytes(), decode_size_for(size)) for s in picked]
    save_augment_grid(out, squares, size, augment, num_views=num_views, mixup=mixup, cutmix=cutmix, seed=seed,
                      titles=[scan.classes[s.label] for s in picked])
    typer.echo(f"wrote {out} ({len(picked)} images x {num_views} views, {size}px, augment {augment})")


@app.command()
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


cache_app = typer.Typer(help="Inspect or clear the decoded-image and feature caches.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info(cache_dir: Optional[Path] = typer.Option(None, help="Default ~/.cache/graftkit.")) -> None:
    """What the cache holds: one line per store, with rows and size on disk."""
    from .cache import cache_summary
    from .config import default_cache_dir

    folder = cache_dir or default_cache_dir()
    entries = cache_summary(folder)
    for e in entries:
        typer.echo(f"{e['kind']:<9} {e['rows']:>8} rows {e['bytes'] / 2**20:>9.1f} MiB  {e['description']}  ({e['key']})")
    total = sum(e["bytes"] for e in entries)
    typer.echo(f"{folder}: {len(entries)} store(s), {total / 2**20:.1f} MiB")


@cache_app.command("clear")
def cache_clear(cache_dir: Optional[Path] = typer.Option(None, help="Default ~/.cache/graftkit.")) -> None:
    """Delete every cached decoded image and feature (they are recomputed when needed)."""
    from .cache import clear_cache
    from .config import default_cache_dir

    folder = cache_dir or default_cache_dir()
    typer.echo(f"freed {clear_cache(folder) / 2**20:.1f} MiB in {folder}")


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder."),
         data: Path = typer.Option(Path("runs/demo-data"), help="Where to write the digits images."),
         epochs: int = typer.Option(4, help="Training epochs.")) -> None:
    """Train on scikit-learn's bundled handwritten digits, offline, in about a minute."""
    from .data.synthetic import write_digits_folder
    from .engine import fit

    data_dir = write_digits_folder(data)
    cfg = TrainConfig(data_dir=data_dir, strategy="feature-extraction", image_size=128, epochs=epochs,
                      augment="none", out_dir=out, lr=1e-2)
    run = fit(cfg)
    typer.echo(f"demo: val_accuracy {run.metrics['val_accuracy']:.4f} on {run.metrics['num_val']} digits; "
               f"run folder {run.out_dir}")


def main() -> None:
    try:
        app()
    except GraftError as exc:
        if _state["debug"]:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug, not bad input: still one line unless --debug
        if _state["debug"]:
            raise
        typer.echo(f"internal error: {type(exc).__name__}: {exc}. Rerun with 'graft --debug ...' for the "
                   f"traceback and report it.", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
