"""Peak memory (RSS) of a default fine-tune run, measured from outside the process.

    python benchmarks/memory.py [--data cats_and_dogs_filtered]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import children_peak_rss_mib, dataset, fresh_dir, graft, read_metrics, run_timed, table, machine  # noqa: E402


def main() -> None:
    print(machine(), flush=True)
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="cats_and_dogs_filtered")
    args = parser.parse_args()
    work = fresh_dir("mem")
    seconds, _ = run_timed(graft("train", str(dataset(args.data)), "--out", str(work / "run"),
                                 "--cache-dir", str(work / "cache"), "--quiet"))
    metrics = read_metrics(work / "run")
    print(table([[args.data, metrics["num_train"], f"{seconds:.0f}", f"{children_peak_rss_mib():.0f}",
                  f"{metrics['val_accuracy']:.4f}"]],
                ["data", "train images", "seconds", "peak RSS MiB", "val accuracy"]))


if __name__ == "__main__":
    main()
