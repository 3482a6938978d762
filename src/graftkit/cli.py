"""The ``graft`` command line: thin functions that build a config and call the public API."""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import cli_options as opt
from ._version import __version__
from .config import TrainConfig
from .errors import ConfigError, GraftError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="graftkit: transfer learning and fine-tuning of image classifiers.")
_state = {"debug": False}
_D = opt.DEFAULTS


def _version(value: bool) -> None:
    if value:
        typer.echo(f"graftkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False,
          debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug
    _state["started"] = time.monotonic()  # --time-limit counts from here (torch is imported later)


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
def check_data(ctx: typer.Context, data_dir: Path,
               val_fraction: float = typer.Option(_D["val_fraction"], help="Held out per class when there is no val/."),
               seed: int = typer.Option(_D["seed"], help="Seeds the split."),
               skip_bad_images: bool = typer.Option(False, help="Report unreadable images but do not fail."),
               label_issues: bool = typer.Option(False, "--label-issues", help="Also rank likely mislabelled "
                                                 "images (k-fold linear probes on the backbone's cached features + "
                                                 "cleanlab, the 'labels' extra) into label_issues.csv."),
               top: Optional[int] = typer.Option(None, help="--label-issues: how many to print (default 20)."),
               out: Optional[Path] = typer.Option(None, "--out", help="--label-issues: new folder for "
                                                  "label_issues.csv (default runs/<time>-label-issues)."),
               backbone: opt.Backbone = _D["backbone"],
               device: opt.Device = _D["device"],
               cache_dir: opt.CacheDir = None) -> None:
    """Scan DATA_DIR as training would: classes, counts, and every problem with a fix."""
    from . import cli_diagnosis

    if not label_issues:
        cli_diagnosis.refuse_options_without_label_issues(ctx)
    from .data import scan_data
    from .data.conflicts import find_label_conflicts, label_conflicts_warning
    from .data.decoded import content_key
    from .data.scan import check_image

    keys: dict[Path, str] = {}  # content keys, hashed from the bytes the scan reads anyway
    scan = scan_data(data_dir, val_fraction, seed, skip_bad_images=skip_bad_images,
                     checker=lambda p: check_image(p, on_bytes=lambda q, data: keys.__setitem__(q, content_key(data))))
    train_counts, val_counts = scan.class_counts("train"), scan.class_counts("val")
    typer.echo(f"{data_dir}: {scan.layout} layout, {len(scan.classes)} classes, "
               f"{len(scan.train)} train / {len(scan.val)} val images")
    for cls in scan.classes:
        typer.echo(f"  {cls:<24} train {train_counts[cls]:>6}  val {val_counts[cls]:>6}")
    for bad in [*scan.bad, *scan.ignored]:
        typer.echo(f"skipped: {bad.path}: {bad.reason}")
    for warning in scan.warnings:
        typer.echo(f"warning: {warning}")
    samples = [*scan.train, *scan.val]
    conflicts = find_label_conflicts(samples, [keys.get(s.path, f"unread:{s.path}") for s in samples])
    for group in conflicts:
        typer.echo("label conflict: same bytes in " + ", ".join(f"{s.path} ({scan.classes[s.label]})" for s in group))
    if conflicts:
        typer.echo(f"warning: {label_conflicts_warning(conflicts, scan.classes, 'the lines above')}")
    typer.echo("ok" if not scan.bad else f"usable with --skip-bad-images ({len(scan.bad)} bad files)")
    if label_issues:
        cli_diagnosis.check_label_issues(data_dir, val_fraction, seed, skip_bad_images, top, out, backbone, device,
                                         cache_dir)


# What --resume may change: how the run goes on, not what it computes (--device: to rounding only).
RESUME_MAY_CHANGE = ("device", "num_workers", "cache_dir", "checkpoint_every", "accumulate", "track", "track_uri")


def _resume_changes(ctx: typer.Context, cfg: TrainConfig) -> dict:
    """The flags given with --resume that may change (as config changes), after refusing the rest:
    a resumed run goes on with its saved config, so other flags that differ from it are an error."""
    changes, conflicts = {}, []
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)  # typer's own click: compare by name
        if name in ("resume", "data_dir", "quiet", "plain", "print_config", "nproc") or \
                getattr(source, "name", None) not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        if name in RESUME_MAY_CHANGE:
            changes[name] = value
            continue
        saved = getattr(cfg, name, None)
        if name == "freeze":
            same = value.strip().lower() == "auto" if cfg.freeze_auto else value.strip() == str(cfg.freeze)
            saved = "auto" if cfg.freeze_auto else cfg.freeze
        elif name == "out":
            saved, same = cfg.out_dir, Path(value).resolve() == Path(cfg.out_dir).resolve()
        elif hasattr(cfg, name):
            same = str(value) == str(saved) if isinstance(value, Path) or isinstance(saved, Path) else value == saved
        else:  # --lr-find, --pseudo-label and its options: not part of a resumed run
            same = False
        if not same:
            shown = (f"--{'' if value else 'no-'}{name.replace('_', '-')}" if isinstance(value, bool)
                     else f"--{name.replace('_', '-')} {value}")
            conflicts.append(shown + (f" (saved: {saved})" if hasattr(cfg, name) or name in ("freeze", "out") else ""))
    if conflicts:
        raise ConfigError(f"--resume continues '{cfg.out_dir}' with its saved config.json; these flags would "
                          f"change it: {', '.join(conflicts)}. Drop them, or start a new run with another --out.")
    return changes


def _refuse_unused(ctx: typer.Context, cfg: TrainConfig) -> None:
    """Options given on the command line that this run would not use are an error, never ignored."""
    from .config import unused_options

    given = {name for name, _ in ctx.params.items()
             if getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
    unused = unused_options(cfg, given)
    if unused:
        raise ConfigError("these options would change nothing, so they are refused: " + "; ".join(unused) +
                          ". Drop them or change --strategy.")


@app.command()
def train(
    ctx: typer.Context,
    data_dir: Annotated[Optional[Path], typer.Argument(
        help="Folder with train/ and val/, or with one folder per class.")] = None,
    strategy: opt.Strategy = _D["strategy"],
    backbone: opt.Backbone = _D["backbone"],
    pretrained: opt.Pretrained = True,
    weights: opt.Weights = None,
    image_size: opt.ImageSize = None,
    epochs: opt.Epochs = _D["epochs"],
    head_epochs: opt.HeadEpochs = _D["head_epochs"],
    finetune_epochs: opt.FinetuneEpochs = _D["finetune_epochs"],
    freeze: str = typer.Option(str(_D["freeze"]), help="fine-tune: first K stages stay frozen when unfreezing; "
                               "'auto': try several depths briefly and train the best (see freeze_auto.json)."),
    lr: opt.Lr = _D["lr"],
    finetune_lr: opt.FinetuneLr = _D["finetune_lr"],
    stage_lr_decay: float = typer.Option(_D["stage_lr_decay"], help="LR factor per stage going down."),
    weight_decay: float = typer.Option(_D["weight_decay"]),
    label_smoothing: float = typer.Option(_D["label_smoothing"]),
    balance: opt.Balance = _D["balance"],
    dropout: float = typer.Option(_D["dropout"], help="Dropout before the new head."),
    head_init: opt.HeadInit = _D["head_init"],
    ema: opt.Ema = _D["ema"],
    ema_decay: opt.EmaDecay = _D["ema_decay"],
    train_bn: bool = typer.Option(_D["train_bn"], help="Let unfrozen BatchNorm use batch statistics."),
    fold_bn: bool = typer.Option(_D["fold_bn"], help="Fold frozen BatchNorm into convs (faster, same result)."),
    batch_size: opt.BatchSize = None,
    augment: opt.Augment = _D["augment"],
    mixup: float = typer.Option(_D["mixup"], help="MixUp alpha on image batches (0: off, e.g. 0.2)."),
    cutmix: float = typer.Option(_D["cutmix"], help="CutMix alpha on image batches (0: off, e.g. 1.0)."),
    val_fraction: opt.ValFraction = _D["val_fraction"],
    seed: opt.Seed = _D["seed"],
    split_seed: opt.SplitSeed = None,
    skip_bad_images: opt.SkipBadImages = False,
    device: opt.Device = _D["device"],
    num_workers: int = typer.Option(_D["num_workers"], help="Data-loading worker processes."),
    precision: opt.Precision = _D["precision"],
    compile: bool = typer.Option(_D["compile"], "--compile", help="torch.compile the trained part."),
    cache: opt.Cache = _D["cache"],
    cache_dir: opt.CacheDir = None,
    cache_views: int = typer.Option(_D["cache_views"], help="Augmented views cached per training image "
                                    "for frozen phases: 1 = the clean crop only (fastest); more = more "
                                    "augmentation, one backbone pass per view."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<time>-<strategy>)."),
    quiet: opt.Quiet = False,
    plain: opt.Plain = False,
    checkpoint_every: float = typer.Option(_D["checkpoint_every"], help="Seconds between checkpoints (0: every epoch)."),
    time_limit: opt.TimeLimit = None,
    ensemble: bool = typer.Option(True, help="--time-limit: when the limit affords two or three backbones, train "
                                  "them all and join them into one model (docs/ensemble.md); --no-ensemble: one backbone."),
    max_seconds: Optional[float] = typer.Option(None, help="Older spelling of --time-limit, in seconds."),
    lr_find: bool = typer.Option(False, "--lr-find", help="Run the learning-rate range test first and train with "
                                 "its suggestion (--lr; the plot goes to lr_find.png in the run folder)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the interrupted run in this folder, with its saved "
                                          "config (only --device, --num-workers, --cache-dir, --checkpoint-every, "
                                          "--quiet and --plain may be added)."),
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
    nproc: int = typer.Option(1, help="Processes for distributed data parallel (torchrun; gloo on CPUs, one per "
                              "GPU with NCCL). --batch-size and --lr stay those of the global batch."),
    accumulate: int = typer.Option(_D["accumulate"], help="Run each batch in this many parts (less memory), one "
                                   "optimizer step per batch: same results as one part."),
    sync_bn: bool = typer.Option(_D["sync_bn"], "--sync-bn", help="Distributed on GPUs: BatchNorm layers that "
                                 "train (scratch, --train-bn) use the global batch's statistics."),
    track: Optional[str] = typer.Option(None, help="mlflow | tensorboard: record config, per-epoch metrics, "
                                        "final metrics and model files (docs/tracking.md)."),
    track_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI or TensorBoard log folder "
                                            "(default: beside/inside the run folder)."),
) -> None:
    """Train a classifier on DATA_DIR and write a run folder."""
    from .workflows.freeze_auto import train_run

    progress = "none" if quiet else ("plain" if plain else "auto")
    if resume is not None:
        cfg = TrainConfig.from_run(resume, resume=True, progress=progress)
        if data_dir is not None and Path(data_dir).resolve() != Path(cfg.data_dir).resolve():
            raise GraftError(f"--resume {resume} trains on '{cfg.data_dir}', not '{data_dir}'. "
                             f"Drop DATA_DIR or pass the same folder.")
        cfg = cfg.replace(**_resume_changes(ctx, cfg))
        if print_config:
            typer.echo(cfg.to_json())
            return
        if _launched(nproc, cfg, cfg.freeze_auto):
            return
        run = train_run(cfg)
        _after_training(run, quiet)
        return
    if data_dir is None:
        raise GraftError("train needs DATA_DIR (or --resume RUN_DIR). See 'graft train --help'.")
    freeze_auto = freeze.strip().lower() == "auto"
    if max_seconds is not None:  # the older spelling of --time-limit
        if time_limit is not None:
            raise ConfigError("--max-seconds is the older spelling of --time-limit: give one of them")
        if not max_seconds > 0:
            raise ConfigError(f"--max-seconds must be longer than 0 seconds; got {max_seconds:g}")
        time_limit, max_seconds = f"{max_seconds:g}s", None
    planned = _planned(ctx, time_limit, backbone, freeze_auto, lr_find or pseudo_label or
                       unlabeled is not None, nproc)
    backbone = _D["backbone"] if planned and planned["auto_backbone"] else backbone
    try:
        freeze_depth = 0 if freeze_auto else int(freeze)
    except ValueError:
        raise GraftError(f"--freeze takes a number of stages or 'auto'; got {freeze!r}") from None
    cfg = TrainConfig(data_dir=data_dir, strategy=strategy, backbone=backbone, pretrained=pretrained,
                      weights=weights, image_size=image_size, epochs=epochs, head_epochs=head_epochs,
                      finetune_epochs=finetune_epochs, freeze=freeze_depth, freeze_auto=freeze_auto, lr=lr, finetune_lr=finetune_lr,
                      stage_lr_decay=stage_lr_decay, weight_decay=weight_decay,
                      label_smoothing=label_smoothing, balance=balance, dropout=dropout, head_init=head_init, ema=ema, ema_decay=ema_decay,
                      train_bn=train_bn, fold_bn=fold_bn,
                      batch_size=batch_size, augment=augment, val_fraction=val_fraction, seed=seed,
                      split_seed=split_seed, skip_bad_images=skip_bad_images, device=device, num_workers=num_workers,
                      precision=precision, compile=compile, cache=cache, cache_dir=cache_dir,
                      cache_views=cache_views, checkpoint_every=checkpoint_every, out_dir=out,
                      max_seconds=max_seconds, progress=progress, mixup=mixup, cutmix=cutmix,
                      accumulate=accumulate, sync_bn=sync_bn, track=track, track_uri=track_uri)
    _refuse_unused(ctx, cfg)
    if print_config:
        typer.echo(cfg.to_json())
        return
    if _launched(nproc, cfg, lr_find or pseudo_label or unlabeled is not None or freeze_auto):
        return
    if pseudo_label or unlabeled is not None:
        from .cli_scarce import train_pseudo_label

        train_pseudo_label(cfg, unlabeled, pseudo_label, rounds, threshold, class_quantile, max_ratio,
                            max_per_class, quiet)
        return
    if planned:
        from .workflows.plan import train_planned

        run = train_planned(cfg, started=_state.get("started") or time.monotonic(), **planned)
        _after_training(run, quiet)
        return
    scan = None
    if lr_find:
        from .engine.fit import default_out_dir, prepare_out_dir
        from .engine.lr_find import lr_range_test
        from .engine.prepare import scan_for
        from .report.lr_find import save_lr_find

        cfg = cfg.replace(out_dir=cfg.out_dir or default_out_dir(cfg.strategy))
        prepare_out_dir(cfg)  # refuse an existing run before spending time
        scan = scan_for(cfg)
        result = lr_range_test(cfg, scan, phase="auto")
        typer.echo(f"lr-find: {save_lr_find(result, cfg.out_dir, data_dir, cfg.strategy)}")
        cfg = cfg.replace(lr=float(f"{result.suggestion:.1e}"))
    run = train_run(cfg, scan=scan)
    _after_training(run, quiet)


def _planned(ctx: typer.Context, time_limit: Optional[str], backbone: str, freeze_auto: bool,
             other_workflow: bool, nproc: int) -> dict | None:
    """``--time-limit`` / ``--backbone auto``: what :func:`graftkit.workflows.plan.train_planned` needs
    (the limit in seconds, whether to probe every offline backbone, the flags the user fixed); None
    for a plain run."""
    from .config import parse_duration

    seconds = None if time_limit is None else parse_duration(time_limit, "--time-limit")
    given = {name for name in ctx.params
             if getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")}
    auto = backbone.strip().lower() == "auto" or (seconds is not None and "backbone" not in given)
    if "ensemble" in given and seconds is None:
        raise ConfigError("--ensemble/--no-ensemble choose how --time-limit spends its time: add --time-limit, or "
                          "join trained runs with 'graft ensemble'")
    if seconds is None and not auto:
        return None
    if freeze_auto or other_workflow or nproc > 1:
        raise ConfigError("--time-limit and --backbone auto plan one run in one process: drop --freeze auto, "
                          "--lr-find, --pseudo-label/--unlabeled and --nproc")
    return {"time_limit": seconds, "auto_backbone": auto, "fixed": given - {"backbone", "ensemble", "max_seconds"},
            "ensemble": ctx.params.get("ensemble", True)}


def _after_training(run, quiet: bool) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # one of torchrun's ranks: rank 0 speaks for the run
        return
    if quiet:
        typer.echo(f"val_accuracy {run.metrics['val_accuracy']:.4f} → {run.out_dir}")
    else:
        from .cli_diagnosis import print_run_diagnosis

        print_run_diagnosis(run.out_dir)


def _launched(nproc: int, cfg: TrainConfig, single_process_only: bool) -> bool:
    """``--nproc N`` (N > 1): run this same command as N ranks through torchrun's launcher, here."""

    distributed = nproc > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and single_process_only:
        raise ConfigError("--lr-find, --pseudo-label, --unlabeled and --freeze auto run in one process: drop "
                          "--nproc (or run them first, then train with --nproc).")
    if nproc == 1:
        return False
    from .engine.distributed import check_launch, launch

    check_launch(nproc, cfg.device)
    argv, skip = [], False
    for arg in sys.argv[1:]:  # the same command for every rank, without --nproc
        if skip or arg == "--nproc" or arg.startswith("--nproc="):
            skip = arg == "--nproc"
            continue
        argv.append(arg)
    launch(nproc, argv)
    return True


@app.command()
def predict(model: Annotated[Path, typer.Argument(help="Run folder (or its model.json), or an .onnx file from "
                                                   "'graft export'.", metavar="MODEL")],
            paths: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive).", metavar="PATHS...")],
            top_k: int = typer.Option(1, help="Classes to show per image."),
            format: str = typer.Option("table", "--format", help="table (plain text when piped) | csv | json (a "
                                       "streamed array) | jsonl (JSON Lines)."),
            reject_unknown: bool = typer.Option(False, "--reject-unknown", help="Answer 'unknown' for images "
                                                "unlike the training images (threshold set at training time)."),
            tta: opt.Tta = False,
            tta_crops: opt.TtaCrops = 1,
            device: opt.Device = "auto") -> None:
    """Predict the class of images with a run folder, or with an .onnx file from 'graft export'
    (then on onnxruntime, without torch). Rows are written as they are produced."""
    from .cli_predict import predict_command

    predict_command(model, paths, top_k, format, reject_unknown, device, tta, tta_crops)


@app.command()
def evaluate(model: Annotated[Path, typer.Argument(help="Run folder (or its model.json).", metavar="MODEL")],
             data_dir: Annotated[Path, typer.Argument(help="Labelled image folder.", metavar="DATA_DIR")],
             split: str = typer.Option("auto", help="auto: what DATA_DIR holds (the run's own data folder: the "
                                       "validation images it was trained against; a folder with train/ and val/: "
                                       "its val/; a folder of class folders: all of it) | val | train | all."),
             as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
             skip_bad_images: bool = typer.Option(False, help="Score the readable images, skip the rest."),
             ood: Optional[Path] = typer.Option(None, "--ood", help="Folder of images of other kinds: report how "
                                                "well the unknown detector rejects them (AUROC, FPR at 95% TPR)."),
             tta: opt.Tta = False,
             tta_crops: opt.TtaCrops = 1,
             device: opt.Device = "auto") -> None:
    """Accuracy, per-class precision/recall/F1, confusion matrix and calibration on labelled data."""
    from .cli_serve import print_calibration, print_unknown
    from .predict import ImageClassifier

    result = ImageClassifier.from_run(model, device=device).evaluate(
        data_dir, split, skip_bad_images, ood_dir=ood, on_skip=lambda p, r: typer.echo(f"skipped: {p}: {r}", err=True),
        tta=tta, tta_crops=tta_crops)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    typer.echo(f"accuracy {result['accuracy']:.4f} on {result['num_images']} images ({result['scored']}), "
               f"loss {result['loss']:.4f} (before calibration, as training's val_loss)"  # one line: it names the folder
               + (f", test-time augmentation: {result['tta']}" if result["tta"] else ""))
    typer.echo(f"balanced accuracy {result['balanced_accuracy']:.4f} (mean recall per class), "
               f"macro-F1 {result['macro_f1']:.4f}")
    table = Table("class", "precision", "recall", "f1", "support")
    for cls, m in result["per_class"].items():
        table.add_row(cls, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)
    matrix = Table("true \\ predicted", *result["classes"], title="confusion matrix")
    for cls, row in zip(result["classes"], result["confusion_matrix"]):
        matrix.add_row(cls, *map(str, row))
    console.print(matrix)
    print_calibration(console, result["calibration"])
    if "ood" in result:
        print_unknown(console, result["ood"])


@app.command()
def compare(
    data_dir: opt.DataDir,
    out: Path = typer.Option(..., "--out", help="Comparison folder: <strategy>/seed<k>/ runs, compare.json, report.html."),
    strategies: str = typer.Option("scratch,feature-extraction,fine-tune", help="Comma-separated strategies."),
    seeds: int = typer.Option(3, help="Seeds per strategy (--seed, --seed+1, ...)."),
    budget_epochs: Optional[int] = typer.Option(None, help="Epochs per run (default 6); fine-tune spends a third "
                                                "on the head, the rest fine-tuning."),
    time_limit: opt.TimeLimit = None,
    budget_minutes: Optional[float] = typer.Option(None, help="Older spelling of --time-limit, in minutes."),
    backbone: opt.Backbone = _D["backbone"],
    pretrained: opt.Pretrained = True,
    image_size: opt.ImageSize = None,
    lr: opt.Lr = _D["lr"],
    finetune_lr: opt.FinetuneLr = _D["finetune_lr"],
    batch_size: opt.BatchSize = None,
    augment: opt.Augment = _D["augment"],
    val_fraction: opt.ValFraction = _D["val_fraction"],
    seed: opt.Seed = _D["seed"],
    skip_bad_images: opt.SkipBadImages = False,
    device: opt.Device = _D["device"],
    precision: opt.Precision = _D["precision"],
    cache: opt.Cache = _D["cache"],
    cache_dir: opt.CacheDir = None,
    isolate: bool = typer.Option(True, help="Each run in a fresh process (its own peak memory); "
                                 "--no-isolate: all in this process."),
    report: bool = typer.Option(True, help="--no-report: skip the HTML reports."),
    quiet: opt.Quiet = False,
    plain: opt.Plain = False,
) -> None:
    """Scratch vs feature extraction vs fine-tuning: same data, split and budget; several seeds."""
    from .workflows.compare import compare as run_compare

    names = [s.strip() for s in strategies.split(",") if s.strip()]
    if time_limit is not None:
        from .config import parse_duration

        if budget_minutes is not None:
            raise ConfigError("--budget-minutes is the older spelling of --time-limit: give one of them")
        budget_minutes = parse_duration(time_limit, "--time-limit") / 60.0
    base = TrainConfig(data_dir=data_dir, backbone=backbone, pretrained=pretrained, image_size=image_size, lr=lr,
                       finetune_lr=finetune_lr, batch_size=batch_size, augment=augment, val_fraction=val_fraction,
                       seed=seed, skip_bad_images=skip_bad_images, device=device, precision=precision, cache=cache,
                       cache_dir=cache_dir, progress="none" if quiet else ("plain" if plain else "auto"))
    result = run_compare(base, out, names, seeds, budget_epochs, budget_minutes, isolate=isolate, write_reports=report)
    if quiet:
        for name in result["ranking_by_mean_val_accuracy"]:
            typer.echo(f"{name} {result['strategies'][name]['val_accuracy']['mean']:.4f}")
        typer.echo(f"→ {out}")


@app.command()
def report(path: Annotated[Path, typer.Argument(help="A run folder, or a folder written by 'graft compare'.")],
           out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default PATH/report.html)."),
           worst: int = typer.Option(12, help="Worst-classified validation images to show."),
           gradcam: int = typer.Option(4, help="Grad-CAM heat-maps for this many of them (0: none).")) -> None:
    """Write a self-contained report.html for a run or a comparison, from its files alone."""
    from .report import write_report

    typer.echo(f"report → {write_report(path, out, worst=worst, gradcam=gradcam)}")


@app.command("lr-find")
def lr_find_command(
    data_dir: opt.DataDir,
    strategy: opt.Strategy = _D["strategy"],
    phase: str = typer.Option("auto", help="head (backbone frozen, cached features: seconds) | full (every "
                              "stage) | auto: full for scratch, else head."),
    start_lr: float = typer.Option(1e-7, help="First learning rate tried."),
    end_lr: float = typer.Option(10.0, help="Last learning rate tried."),
    steps: int = typer.Option(100, help="Steps (mini-batches) of the test."),
    backbone: opt.Backbone = _D["backbone"],
    image_size: opt.ImageSize = None,
    batch_size: opt.BatchSize = None,
    augment: opt.Augment = _D["augment"],
    val_fraction: opt.ValFraction = _D["val_fraction"],
    seed: opt.Seed = _D["seed"],
    skip_bad_images: opt.SkipBadImages = False,
    device: opt.Device = _D["device"],
    cache: opt.Cache = _D["cache"],
    cache_dir: opt.CacheDir = None,
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for lr_find.json and lr_find.png "
                                       "(default runs/<time>-lr-find)."),
    quiet: opt.Quiet = False,
) -> None:
    """Learning-rate range test: plot the loss against an exponentially growing rate; suggest --lr."""
    from datetime import datetime

    from .engine.lr_find import lr_range_test
    from .fileio import refuse_out_inside_data, refuse_used_folder
    from .report.lr_find import save_lr_find

    cfg = TrainConfig(data_dir=data_dir, strategy=strategy, backbone=backbone, image_size=image_size,
                      batch_size=batch_size, augment=augment, val_fraction=val_fraction, seed=seed,
                      skip_bad_images=skip_bad_images, device=device, cache=cache, cache_dir=cache_dir,
                      progress="none" if quiet else "auto")
    folder = out or Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-lr-find"
    refuse_out_inside_data(folder, data_dir)
    refuse_used_folder(folder, "lr-find")  # a run folder's report would show a test that run never had
    result = lr_range_test(cfg, phase=phase, start_lr=start_lr, end_lr=end_lr, num_steps=steps)
    message = save_lr_find(result, folder, data_dir, strategy)
    typer.echo(message)
    typer.echo(f"plot and numbers → {folder / 'lr_find.png'}, {folder / 'lr_find.json'}")


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
    """Delete the cached decoded images and features graftkit wrote (they are recomputed when needed).

    Only a folder marked as graftkit's cache is touched, and in it only graftkit's own files."""
    from .cache import clear_cache
    from .config import default_cache_dir

    folder = cache_dir or default_cache_dir()
    freed, left = clear_cache(folder)
    typer.echo(f"freed {freed / 2**20:.1f} MiB in {folder}")
    if left:
        shown = ", ".join(left[:5]) + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        typer.echo(f"left alone (not written by graftkit): {shown}")


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


from . import cli_export, cli_scarce, cli_serve, cli_sweep  # noqa: E402

cli_scarce.register(app)  # subsample, label-efficiency, augment-preview, pretrain
cli_serve.register(app)  # serve
cli_export.register(app)  # export, ensemble
cli_sweep.register(app)  # sweep
opt.style_help(app)  # panels, defaults and value names in every command's --help (cli_options.py)


def main() -> None:
    from .hardware import tune_cpu_allocator, tune_openmp

    tune_openmp()  # before torch loads: idle OpenMP threads sleep instead of spinning (graftkit.hardware)
    tune_cpu_allocator()  # graft's own process: keep activation memory in the heap (graftkit.hardware)
    try:
        app()
    except GraftError as exc:
        if _state["debug"]:
            traceback.print_exc()
        rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "0"
        typer.echo(f"{'' if rank == '0' else f'[rank {rank}] '}error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug, not bad input: still one line unless --debug
        if _state["debug"]:
            raise
        if os.environ.get("RANK", "0") != "0" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            typer.echo(f"[rank {os.environ['RANK']}] stopped: {type(exc).__name__}: {str(exc)[:200]} (when another "
                       f"rank failed first, its message is the cause)", err=True)
            sys.exit(1)
        typer.echo(f"internal error: {type(exc).__name__}: {exc}. Rerun with 'graft --debug ...' for the "
                   f"traceback and report it.", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
