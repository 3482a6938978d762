"""Class imbalance: `--balance` on long-tailed flowers (issue 15, item 2).

For each seed: `graft subsample flower_photos_1250 --long-tail 10 --seed S` (train 200/112/63/36/20
images per class in a seeded class order; val untouched, 50 per class), then `graft train` on it with
each `--balance` mode and the same seed, scored on that val. Prints the balanced accuracy per run, the
mean with its 95 % Student-t interval per mode, and the paired difference of each mode to `none`.

    python benchmarks/long_tail_balance.py [--seeds 0,1,2] [--modes none,auto] [--ratio 10]
        [--data flower_photos_1250] [--train-args "--epochs 6"] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dataset, fresh_dir, graft, interval, machine, read_metrics, run_timed, table  # noqa: E402



def main() -> None:
    print(machine(), flush=True)
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="flower_photos_1250")
    parser.add_argument("--ratio", type=float, default=10.0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default="none,auto")
    parser.add_argument("--train-args", default="", help="More `graft train` flags, e.g. '--epochs 6'.")
    parser.add_argument("--cache-dir", help="graftkit's cache folder (default: a new one under the work folder).")
    args = parser.parse_args()
    seeds, modes = [int(s) for s in args.seeds.split(",")], args.modes.split(",")
    work = fresh_dir("long-tail")
    cache = args.cache_dir or str(work / "cache")
    scores: dict[str, list[float]] = {m: [] for m in modes}
    rows = []
    for seed in seeds:
        data = work / f"long-tail-{seed}"
        _, made = run_timed(graft("subsample", str(dataset(args.data)), "--long-tail", str(args.ratio),
                                  "--seed", str(seed), "--out", str(data)))
        print(made.stdout.strip(), flush=True)
        for mode in modes:
            out = work / f"run-{seed}-{mode}"
            seconds, _ = run_timed(graft("train", str(data), "--balance", mode, "--seed", str(seed), "--out", str(out),
                                         "--cache-dir", cache, "--quiet", *shlex.split(args.train_args)))
            metrics = read_metrics(out)
            scores[mode].append(metrics["val_balanced_accuracy"])
            rows.append([seed, mode, metrics["balance"]["method"], f"{metrics['val_balanced_accuracy']:.4f}",
                         f"{metrics['val_macro_f1']:.4f}", f"{metrics['val_accuracy']:.4f}", metrics["best_epoch"],
                         f"{seconds:.0f}"])
            print(table(rows[-1:], ["seed", "--balance", "used", "balanced acc", "macro-F1", "accuracy",
                                    "best epoch", "process s"]), flush=True)
    print(f"\n{args.data} --long-tail {args.ratio:g}, seeds {args.seeds}, `graft train` defaults {args.train_args}")
    print(table(rows, ["seed", "--balance", "used", "balanced acc", "macro-F1", "accuracy", "best epoch",
                       "process s"]))
    summary = [[m, len(scores[m]), interval(scores[m]),
                interval([a - b for a, b in zip(scores[m], scores["none"])]) if "none" in scores and m != "none"
                else ""] for m in modes]
    print(table(summary, ["--balance", "runs", "balanced accuracy, mean [95% interval]",
                          "minus none (paired), mean [95% interval]"]))


if __name__ == "__main__":
    main()
