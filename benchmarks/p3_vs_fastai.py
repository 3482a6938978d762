"""P3: time graftkit needs to reach fastai's final validation accuracy, over fastai's time.

fastai runs in a separate environment (``--fastai-python``, a Python with fastai and graftkit
installed); graftkit runs its defaults. graftkit's time to an accuracy is measured from its process
start to the end of the first epoch whose validation accuracy reaches fastai's final one.

    python benchmarks/p3_vs_fastai.py --fastai-python /path/to/venv-with-fastai/bin/python [--data hymenoptera]
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
    parser.add_argument("--fastai-python", required=True)
    parser.add_argument("--data", default="hymenoptera")
    parser.add_argument("--epochs", type=int, default=3, help="fastai fine_tune epochs after the frozen one")
    args = parser.parse_args()
    data = dataset(args.data)
    f_seconds, result = run_timed([args.fastai_python, str(Path(__file__).parent / "fastai_baseline.py"),
                                   str(data), str(args.epochs)])
    f_acc = json.loads(result.stdout.strip().splitlines()[-1])["val_accuracy"]
    work = fresh_dir("p3")
    g_seconds, _ = run_timed(graft("train", str(data), "--out", str(work / "run"), "--cache-dir",
                                   str(work / "cache"), "--quiet"))
    metrics = read_metrics(work / "run")
    startup = g_seconds - metrics["seconds_total"]  # interpreter start and imports
    history = [json.loads(line) for line in (work / "run" / "history.jsonl").read_text().splitlines()]
    reached = next((h for h in history if h["val_accuracy"] >= f_acc - 1e-9), None)
    to_acc = startup + reached["elapsed"] if reached else float("nan")
    print(table([["fastai fine_tune", f"{f_seconds:.1f}", f"{f_acc:.4f}", ""],
                 ["graftkit defaults", f"{g_seconds:.1f}", f"{metrics['val_accuracy']:.4f}",
                  f"{to_acc:.1f}" + (f" (epoch {reached['epoch']})" if reached else " (never)")]],
                ["run", "process s", "final val acc", "s to fastai's accuracy"]))
    print(f"P3 = {to_acc / f_seconds:.2f}")


if __name__ == "__main__":
    main()
