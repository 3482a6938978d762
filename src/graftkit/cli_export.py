"""``graft export``: registered on the app of ``cli.py``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def export_command(
    model: Annotated[Path, typer.Argument(help="Run folder (or its model.json).")],
    format: str = typer.Option("onnx", "--format", help="onnx | torchscript | onnx-int8."),
    out: Optional[Path] = typer.Option(None, "--out", help="File to write (default: model.onnx, "
                                       "model.int8.onnx or model.torchscript.pt in the run folder)."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset (default: torch's exporter's)."),
    check_images: Optional[Path] = typer.Option(None, help="Images to check the export on when the run's "
                                                "data folder is not readable here."),
) -> None:
    """Export a trained model, checked against PyTorch on real images before it is written."""
    from .export import export_model

    result = export_model(model, format, out, opset, check_images,
                          warn=lambda message: typer.echo(f"warning: {message}", err=True))
    check = result.check
    typer.echo(f"checked on {check['source']}: max abs logit difference {check['max_abs_logit_diff']:.2e}, "
               f"top-1 agreement {check['top1_agreement']:.2%}"
               + (f", accuracy {check['accuracy_export']:.2%} (PyTorch {check['accuracy_pytorch']:.2%})"
                  if "accuracy_export" in check else ""))
    typer.echo(f"note: {result.metadata['input']['note']}")
    typer.echo(f"{format} → {result.path} (metadata: {result.sidecar})")


def ensemble_command(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders trained on the same data and classes.",
                                              metavar="RUNS...")],
    out: Path = typer.Option(..., "--out", help="New folder for the joined model."),
    data: Optional[Path] = typer.Option(None, "--data", help="The members' data folder, when the path their "
                                        "config.json records is not readable from here."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Join trained runs into one model that averages their calibrated logits (each backbone at the size it
    was trained at); predict, evaluate, serve and export take its folder like a run's (docs/ensemble.md)."""
    from .workflows.ensemble import ensemble_runs

    metrics = ensemble_runs(runs, out, data, device, say=typer.echo)
    members = ", ".join(f"{m['backbone']} {m['val_accuracy']:.4f}" if isinstance(m.get("val_accuracy"), float)
                        else m["backbone"] for m in metrics["members"])
    typer.echo(f"val_accuracy {metrics['val_accuracy']:.4f} (members: {members}) → {out}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
    app.command("ensemble")(ensemble_command)
