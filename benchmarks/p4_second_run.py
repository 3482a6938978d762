"""P4: a second run on the same data starts from the cache.

Runs the same feature-extraction training twice with one (initially empty) cache folder and
compares the frozen phase's seconds (backbone pass + head epochs) and the whole processes.

    python benchmarks/p4_second_run.py [--data hymenoptera] [--epochs 10]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dataset, fresh_dir, graft, read_metrics, run_timed, table, machine  # noqa: E402


def main() -> None:
    print(machine(), flush=True)
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="hymenoptera")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    work = fresh_dir("p4")
    rows, results = [], []
    for name in ("first", "second"):
        seconds, _ = run_timed(graft("train", str(dataset(args.data)), "--strategy", "feature-extraction",
                                     "--epochs", str(args.epochs), "--out", str(work / name), "--cache-dir",
                                     str(work / "cache"), "--quiet"))
        metrics = read_metrics(work / name)
        results.append((seconds, metrics["phases"][0]["seconds"], metrics["val_accuracy"]))
        rows.append([name, f"{seconds:.1f}", f"{metrics['phases'][0]['seconds']:.2f}",
                     f"{metrics['val_accuracy']:.4f}"])
    print(table(rows, ["run", "process s", "frozen phase s", "val accuracy"]))
    print(f"P4 = {results[0][1] / results[1][1]:.1f}x (frozen phase), "
          f"{results[0][0] / results[1][0]:.1f}x (whole process)")


if __name__ == "__main__":
    main()
