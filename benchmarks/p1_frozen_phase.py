"""P1: graftkit feature extraction (10 epochs) vs the PyTorch tutorial's loop, whole processes timed.

Both start cold: graftkit gets an empty cache folder, so its time includes decoding every image and
the one backbone pass per image. Same backbone, weights, image size and data.

    python benchmarks/p1_frozen_phase.py [--datasets hymenoptera,cats_and_dogs_filtered] [--epochs 10]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dataset, fresh_dir, graft, read_metrics, run_timed, table, machine  # noqa: E402


def main() -> None:
    print(machine(), flush=True)
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default="hymenoptera,cats_and_dogs_filtered")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    rows = []
    for name in args.datasets.split(","):
        data = dataset(name)
        work = fresh_dir("p1")
        g_seconds, _ = run_timed(graft("train", str(data), "--strategy", "feature-extraction", "--epochs",
                                       str(args.epochs), "--out", str(work / "run"), "--cache-dir",
                                       str(work / "cache"), "--quiet"))
        g_acc = read_metrics(work / "run")["val_accuracy"]
        t_seconds, result = run_timed([sys.executable, str(Path(__file__).parent / "tutorial_baseline.py"),
                                       str(data), str(args.epochs)])
        t_acc = json.loads(result.stdout.strip().splitlines()[-1])["val_accuracy"]
        rows.append([name, f"{t_seconds:.1f}", f"{t_acc:.4f}", f"{g_seconds:.1f}", f"{g_acc:.4f}",
                     f"{t_seconds / g_seconds:.1f}x"])
        print(table(rows[-1:], HEADER), flush=True)
    print()
    print(table(rows, HEADER))


HEADER = ["data", "tutorial s", "tutorial acc", "graftkit s", "graftkit acc", "P1 time ratio"]

if __name__ == "__main__":
    main()
