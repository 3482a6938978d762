"""``graft predict``'s body: pick the model (a run folder, or an exported ``.onnx`` run without torch),
then write each row as it is produced.

Output formats: ``csv`` (a header, then one row per image), ``json`` (one JSON array, streamed: ``[``,
one object per line, ``]``), ``jsonl`` (JSON Lines: one object per line), ``table`` (a table at the end,
for a terminal). Rows are flushed chunk by chunk (256 images), so a large folder streams with bounded
memory; unreadable files are skipped, listed on stderr, and counted at the end.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TextIO

import typer

from .data.model_input import Prediction
from .errors import CheckpointError, GraftError

FORMATS = ("table", "json", "jsonl", "csv")
# Files that may hold TorchScript or pickles: graftkit never loads one it is handed (they run code).
CODE_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit", ".pkl", ".pickle", ".ckpt", ".bin", ".mar")


def load_predictor(path: Path, device: str = "cpu"):
    """A run folder → ``ImageClassifier`` (torch); an ``.onnx`` file → ``OnnxClassifier`` (no torch)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from .onnx_classifier import OnnxClassifier

        if device not in ("auto", "cpu"):
            raise GraftError(f"an .onnx model runs on onnxruntime's CPU provider here; --device {device} is for "
                             f"a run folder. Drop --device, or predict with the run folder.")
        return OnnxClassifier(path)
    if path.suffix.lower() in CODE_SUFFIXES and path.name != "model.safetensors":
        raise CheckpointError(f"'{path}' is not a model graft predict takes: it predicts with a run folder or an "
                              f".onnx file exported by 'graft export', and never loads TorchScript or pickle "
                              f"files (they can run code). Pass the run folder instead.")
    from .predict import ImageClassifier

    return ImageClassifier.from_run(path, device=device)


def _row(p: Prediction) -> dict:
    return {"path": str(p.path), "class": p.label, "probability": p.probability,
            "unknown_score": p.unknown_score, "is_unknown": p.is_unknown,
            "top": [{"class": c, "probability": q} for c, q in p.top]}


class RowWriter:
    """Writes predictions to ``stream`` as they come, in one of ``FORMATS``."""

    def __init__(self, stream: TextIO, fmt: str, top_k: int, given: Iterable[Path] = ()) -> None:
        if fmt not in FORMATS:
            raise GraftError(f"--format must be {', '.join(FORMATS[:-1])} or {FORMATS[-1]}; got {fmt!r}")
        self.stream, self.fmt, self.top_k, self.count = stream, fmt, top_k, 0
        self.given = list(given)  # the paths as typed: the table names files relative to them
        self.table_rows: list[Prediction] = []
        self.csv = csv.writer(stream) if fmt == "csv" else None

    def write(self, p: Prediction) -> None:
        if self.fmt == "table":
            self.table_rows.append(p)
        elif self.csv is not None:
            if self.count == 0:
                self.csv.writerow(["path", *[h for i in range(len(p.top))
                                             for h in (f"class_{i + 1}", f"probability_{i + 1}")]])
            self.csv.writerow([str(p.path), *[v for c, q in p.top for v in (c, f"{q:.6f}")]])
        else:
            prefix = "" if self.fmt == "jsonl" else ("[\n" if self.count == 0 else ",\n")
            self.stream.write(prefix + json.dumps(_row(p)) + ("\n" if self.fmt == "jsonl" else ""))
        self.count += 1

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("[]\n" if self.count == 0 else "\n]\n")
        elif self.fmt == "table" and self.table_rows:
            from .cli_table import print_predictions

            print_predictions(self.table_rows, self.given)
        self.stream.flush()


def write_predictions(predictions: Iterable[Prediction], writer: RowWriter, flush_every: int = 32) -> int:
    """Write every prediction, flushing every ``flush_every`` rows; returns how many."""
    for p in predictions:
        writer.write(p)
        if writer.count % flush_every == 0:
            writer.flush()
    writer.close()
    return writer.count


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


@contextmanager
def stderr_progress(description: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich bar on stderr while the block runs, only when stderr is a terminal (never in piped or
    redirected output); yields ``update(done, total)``, or None when there is no terminal."""
    if not stderr_is_terminal():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                  TimeRemainingColumn(), console=Console(stderr=True, force_terminal=True),
                  transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def predict_command(model: Path, paths: list[Path], top_k: int, fmt: str, reject_unknown: bool = False,
                    device: str = "cpu", tta: bool = False, tta_crops: int = 1) -> None:
    from .data.model_input import check_tta, describe_tta

    check_tta(tta, tta_crops)
    writer = RowWriter(sys.stdout, fmt, top_k, paths)
    predictor = load_predictor(model, device)
    if tta:  # on stderr: the rows on stdout keep their format
        typer.echo(f"test-time augmentation: {describe_tta(tta_crops)} per image, probabilities averaged", err=True)
    skipped: list[Path] = []

    def on_skip(path: Path, reason: str) -> None:
        skipped.append(path)
        typer.echo(f"skipped: {path}: {reason}", err=True)

    with stderr_progress("predicting") as on_progress:  # a bar on a terminal's stderr only
        write_predictions(predictor.iter_predict(paths, top_k=top_k, on_skip=on_skip, on_progress=on_progress,
                                                 reject_unknown=reject_unknown, tta=tta, tta_crops=tta_crops), writer)
    if skipped:
        typer.echo(f"{len(skipped)} file(s) skipped (listed above); {writer.count} predicted.", err=True)
