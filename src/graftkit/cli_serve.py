"""``graft serve`` and what ``graft evaluate`` prints about calibration and unknown detection.
Registered on the app of ``cli.py``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import ConfigError


def serve_command(model: Annotated[Path, typer.Argument(help="Run folder (or its model.json), or an .onnx file from 'graft export'.", metavar="MODEL")],
                  host: str = typer.Option("127.0.0.1", help="Address to bind. Keep 127.0.0.1 and put a reverse "
                                           "proxy with TLS and auth in front for other machines (docs/serve.md)."),
                  port: int = typer.Option(8000, help="TCP port."),
                  batching: bool = typer.Option(True, help="Batch concurrent requests into one forward pass "
                                                "(--no-batching: one forward per request, to compare)."),
                  max_body_mb: float = typer.Option(20.0, help="Largest request body accepted, in MB."),
                  max_images: int = typer.Option(16, help="Most images in one request.")) -> None:
    """Serve a trained model over HTTP: POST /predict, GET /health, GET /model, a page at /, docs at /docs."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError('graft serve needs FastAPI and uvicorn: pip install "graftkit[serve]"') from None
    from .serve import Limits, build_app, load_predictor

    app = build_app(load_predictor(model), Limits(max_body_bytes=int(max_body_mb * 1e6), max_images=max_images),
                    batching=batching)
    typer.echo(f"serving {model} on http://{host}:{port}/ (API docs at /docs); Ctrl-C stops")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def print_calibration(console: Any, figures: dict[str, Any]) -> None:
    """ECE and NLL before/after the temperature, on this split and as cross-fitted in training."""
    console.print(f"calibration: temperature {figures['temperature']:.3f} · ECE {figures['ece_before']:.4f} → "
                  f"{figures['ece_after']:.4f} · NLL {figures['nll_before']:.4f} → {figures['nll_after']:.4f} "
                  f"(this split; ECE over 15 equal-width bins of the max probability)")
    trained = figures.get("trained")
    if trained:
        console.print(f"  at training ({trained.get('scored', 'cross-fitted')}): ECE {trained['ece_before']:.4f} → "
                      f"{trained['ece_after']:.4f} · NLL {trained['nll_before']:.4f} → {trained['nll_after']:.4f}. "
                      f"The temperature was fitted on the run's validation images: on that same split the "
                      f"'after' figures above are optimistic, these are not.")
    else:
        console.print("  this model has no temperature (trained by an older graftkit): probabilities are uncalibrated")


def print_unknown(console: Any, result: dict[str, Any]) -> None:
    console.print(f"unknown detection against {result['ood_dir']} ({result['num_out']} images; in-distribution: "
                  f"the {result['num_in']} images above):")
    for name in ("feature_distance", "max_probability"):
        r = result[name]
        accepted = "–" if r["accepted_accuracy"] is None else f"{r['accepted_accuracy']:.4f}"
        console.print(f"  {name.replace('_', ' ')}: AUROC {r['auroc']:.4f} · FPR at 95% TPR {r['fpr_at_95_tpr']:.3f} "
                      f"· rejected {r['out_rejected']:.3f} of --ood, {r['in_rejected']:.3f} of in-distribution "
                      f"· accuracy of accepted {accepted}")


def register(app: typer.Typer) -> None:
    """Add these commands to ``app`` (called by ``cli.py``)."""
    app.command("serve")(serve_command)
