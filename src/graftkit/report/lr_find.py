"""The files of a learning-rate range test: ``lr_find.json`` (every step, the suggestion and how it
was chosen) and ``lr_find.png``; the test itself is ``graftkit.engine.lr_find.lr_range_test``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes, atomic_write_text
from .plots import lr_find_png


def save_lr_find(result: Any, out_dir: str | Path, data_dir: str | Path, strategy: str) -> str:
    """Write ``lr_find.json`` and ``lr_find.png`` into ``out_dir`` for an
    :class:`graftkit.engine.lr_find.LRFindResult`; return the one-line message."""
    out_dir = Path(out_dir)
    steepest = f"; steepest descent at {result.steepest_lr:.1e}" if result.steepest_lr else ""
    message = (f"suggested learning rate {result.suggestion:.1e} (the smoothed-loss minimum at "
               f"{result.minimum_lr:.1e}, divided by 10{steepest}) for the {result.phase} phase. Use it: "
               f"graft train {data_dir} --strategy {strategy} {result.flag} {result.suggestion:.1e}  "
               f"(or pass --lr-find to graft train)")
    if result.stopped == "completed" and result.minimum_lr >= result.lrs[int(0.95 * (len(result.lrs) - 1))]:
        message += (f". Warning: the loss was lowest at the end of the tested range ({result.lrs[-1]:.1e}) and never "
                    f"diverged, so the suggestion is uncertain; rerun with a higher --end-lr, or keep the default")
    payload = {**result.to_dict(), "message": message, "data_dir": str(data_dir), "strategy": strategy,
               "usage": f"{result.flag} {result.suggestion:.1e}"}
    atomic_write_text(out_dir / "lr_find.json", json.dumps(payload, indent=2))
    atomic_write_bytes(out_dir / "lr_find.png", lr_find_png(payload))
    return message
