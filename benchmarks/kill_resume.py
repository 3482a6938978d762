"""Kill `graft train` with SIGKILL at three moments, resume each time, compare with an uninterrupted run.

Moments: between the two phases (right after the head phase's last epoch), in the middle of writing
a checkpoint (as soon as its temporary file appears), and in the middle of a fine-tune epoch.
The resumed run must end with the same validation accuracy and bit-identical weights.

    python benchmarks/kill_resume.py [--data hymenoptera] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dataset, fresh_dir, graft, read_metrics, run_timed, table, machine  # noqa: E402


def history_lines(run: Path) -> int:
    try:
        return len((run / "history.jsonl").read_text().splitlines())
    except OSError:
        return 0


def kill_when(cmd: list[str], ready, what: str, timeout: float = 900) -> None:
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.perf_counter()
    while process.poll() is None and time.perf_counter() - start < timeout:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            print(f"killed {what} after {time.perf_counter() - start:.1f}s", flush=True)
            return
        time.sleep(0.0005)
    sys.exit(f"the run ended before the moment '{what}' was reached (exit {process.returncode})")


def main() -> None:
    print(machine(), flush=True)
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="hymenoptera")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)
    data, work = dataset(args.data), fresh_dir("kill")
    common = ["--cache-dir", str(work / "cache"), "--checkpoint-every", "0", "--quiet"]
    whole_s, _ = run_timed(graft("train", str(data), "--out", str(work / "whole"), *common))
    run = work / "killed"
    first = graft("train", str(data), "--out", str(run), *common)
    again = graft("train", "--resume", str(run), *common[:4], "--quiet")
    # 1. between phases: the head phase (2 epochs) has just finished and been checkpointed
    kill_when(first, lambda: history_lines(run) >= 2 and (run / "checkpoint.pt").exists(), "between phases")
    # 2. mid-checkpoint-write: a temporary checkpoint file exists
    kill_when(again, lambda: any(p.name.startswith(".checkpoint.pt.") for p in run.iterdir()),
              "mid-checkpoint-write")
    # 3. mid-epoch: a random moment inside the next fine-tune epoch
    done = history_lines(run)
    deadline = {}

    def mid_epoch() -> bool:
        if history_lines(run) > done and "t" not in deadline:
            deadline["t"] = time.perf_counter() + random.uniform(1.0, 4.0)
        return "t" in deadline and time.perf_counter() >= deadline["t"]

    kill_when(again, mid_epoch, "mid-epoch")
    run_timed(again)
    whole, killed = read_metrics(work / "whole"), read_metrics(run)
    same_best = (work / "whole" / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    # The last epoch's weights and every epoch's losses, not only the best model.
    import torch

    last_whole = torch.load(work / "whole" / "checkpoint.pt", weights_only=True)
    last_killed = torch.load(run / "checkpoint.pt", weights_only=True)
    same_last = all(torch.equal(v, last_killed["model"][k]) for k, v in last_whole["model"].items())
    same_history = [h["val_loss"] for h in last_whole["history"]] == [h["val_loss"] for h in last_killed["history"]]
    same_weights = same_best and same_last and same_history
    print(table([["uninterrupted", f"{whole['val_accuracy']:.4f}", whole["best_epoch"], f"{whole_s:.0f}"],
                 ["killed 3x + resumed", f"{killed['val_accuracy']:.4f}", killed["best_epoch"], ""]],
                ["run", "val accuracy", "best epoch", "seconds"]))
    print(f"identical best model: {same_best}; identical last-epoch weights: {same_last}; "
          f"identical per-epoch losses: {same_history}")
    sys.exit(0 if same_weights and whole["val_accuracy"] == killed["val_accuracy"] else 1)


if __name__ == "__main__":
    main()
