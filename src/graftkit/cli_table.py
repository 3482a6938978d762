"""``graft predict``'s table: the file names as the user gave them, one column per top-k class;
rich's table on a terminal, plain aligned text when stdout is piped or redirected."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence


def shown_name(path: Path | None, given: Sequence[Path]) -> str:
    """``path`` as the user knows it: relative to the folder they passed it in, as typed for a file
    passed by a relative name, else the file name (never an absolute path that a column cuts)."""
    if path is None:
        return "(in memory)"
    for arg in given:
        if path == arg:
            return str(arg) if not arg.is_absolute() else path.name
        if path.is_relative_to(arg):
            return str(path.relative_to(arg))
    return path.name


def prediction_rows(results: Sequence, given: Sequence[Path]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): the image, then its class and probability, or for top-k one column per rank."""
    k = max(len(r.top) for r in results)
    headers = ["image", "class", "probability"] if k == 1 else ["image", *(f"top {i + 1}" for i in range(k))]
    rows = [[shown_name(r.path, given), r.label, f"{r.probability:.3f}"] if k == 1 else
            [shown_name(r.path, given), *(f"{c} {p:.3f}" for c, p in r.top)] for r in results]
    return headers, rows


def print_predictions(results: Sequence, given: Sequence[Path]) -> None:
    headers, rows = prediction_rows(results, [Path(p) for p in given])
    if not sys.stdout.isatty():  # a pipe or a file: plain columns, no box drawing, no colour
        widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]
        for row in [headers, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*headers)
    table.columns[0].overflow = "fold"  # a long name wraps, never loses its end
    for row in rows:
        table.add_row(*map(Text, row))  # names are text, not rich markup
    Console().print(table)
