"""Startup: the whole-process time of `graft --version` and `graft --help` (target < 1 s on 2 cores).

Neither imports torch, torchvision or timm: the package root and the CLI load those only inside the
commands that train or predict (tests/test_layers.py checks sys.modules). Each command runs
``--repeats`` times; the table shows the best and the median, interpreter start included.

    python benchmarks/startup.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import graft, machine, run_timed, table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine())
    rows = []
    for flags in (["--version"], ["--help"]):
        run_timed(graft(*flags))  # warm the file cache: later runs measure start-up, not the disk
        seconds = [run_timed(graft(*flags))[0] for _ in range(args.repeats)]
        rows.append([f"graft {' '.join(flags)}", f"{min(seconds):.2f}", f"{statistics.median(seconds):.2f}"])
    print(table(rows, ["command", "best s", "median s"]))


if __name__ == "__main__":
    main()
