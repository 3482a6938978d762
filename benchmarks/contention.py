"""Speed on a busy machine: the head phase and one fine-tune epoch, quiet and beside one competing
process (a 2-thread torch training loop), for the old thread settings and the new ones, side by side.

  old: every phase with as many threads as cores (OMP_NUM_THREADS=<cores>), OpenMP's default wait
       policy (GRAFTKIT_OPENMP=default)
  new: what `graft` does now: one thread for a head on cached features, fine-tune epochs on the cores
       other programs leave free (read from /proc/stat before each epoch), OpenMP's default wait policy
  passive: new + OMP_WAIT_POLICY=PASSIVE (GRAFTKIT_OPENMP=passive; off by default: slower when quiet)

Each figure is the median over --repeats whole `graft train` processes (per process: the median
head epoch, or the one fine-tune epoch, from history.jsonl). The feature cache is filled first, so the
head figures time training on cached rows only. Data: generated colour images (~250 and ~1,400
training rows), or hymenoptera for the ~250 when GRAFTKIT_DATASETS points at its folder.

    python benchmarks/contention.py [--quick] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASETS, fresh_dir, graft, machine, run_timed, table  # noqa: E402

SETTINGS = {"old": {"OMP_NUM_THREADS": str(os.cpu_count()), "GRAFTKIT_OPENMP": "default"},
            "new": {}, "passive": {"GRAFTKIT_OPENMP": "passive"}}
COMPETITOR = """
import torch
from torch import nn
torch.set_num_threads(2)
net = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(), nn.Linear(32, 10))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
x, y = torch.randn(32, 3, 64, 64), torch.randint(0, 10, (32,))
while True:
    opt.zero_grad(); nn.functional.cross_entropy(net(x), y).backward(); opt.step()
"""


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def base_env() -> dict[str, str]:
    """This process's environment without the settings the two variants choose."""
    return {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GRAFTKIT_OPENMP")}


def make_data(work: Path, quick: bool, images: int) -> dict[str, Path]:
    """The data of each kind of process: "small" gives the ~250-row head and the fine-tune epoch."""
    from graftkit.data.synthetic import write_color_folder

    classes = {"red": (200, 40, 40), "blue": (40, 40, 200), "green": (40, 200, 40), "grey": (128, 128, 128)}
    hymenoptera = DATASETS / "hymenoptera"
    small = hymenoptera if "GRAFTKIT_DATASETS" in os.environ and hymenoptera.is_dir() else \
        write_color_folder(work / "small", classes, per_class=round(images / 0.8 / 4), image_size=64)  # 0.2 val
    if quick:
        return {"small": small}
    return {"small": small, "large": write_color_folder(work / "large", classes, per_class=438, image_size=64,
                                                        seed=1)}  # 1,752: 1,400 train


def train_args(kind: str, data: Path, work: Path, args) -> list[str]:
    common = ["train", str(data), "--image-size", str(args.image_size), "--cache-dir", str(work / "cache"),
              "--quiet", "--seed", "0"]
    if kind == "large":
        return [*common, "--strategy", "feature-extraction", "--epochs", str(args.head_epochs)]
    return [*common, "--strategy", "fine-tune", "--head-epochs", str(args.head_epochs), "--finetune-epochs", "1"]


def epoch_seconds(kind: str, run: Path) -> dict[str, float]:
    """The median head epoch (the first also opens the cache: left out) and the fine-tune epoch."""
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    head = statistics.median(r["seconds"] for r in rows if r["phase"] == "head" and r["phase_epoch"] > 1)
    images = json.loads((run / "metrics.json").read_text())["num_train"]
    if kind == "large":
        return {f"head, {images} rows": head}
    return {f"head, {images} rows": head,
            f"fine-tune epoch, {images} images": next(r["seconds"] for r in rows if r["phase"] == "finetune")}


def measure(kind: str, data: Path, setting: str, work: Path, args) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(prefix="run-", dir=work)) / "run"
    result = subprocess.run(graft(*train_args(kind, data, work, args), "--out", str(out)), capture_output=True,
                            text=True, env={**base_env(), **SETTINGS[setting]})
    if result.returncode != 0:
        sys.exit(f"graft train failed: {result.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    threads = sorted({(r["phase"], r["threads"]) for r in rows if "threads" in r})
    print(f"  {setting} {kind}: threads per phase {threads}", flush=True)  # graft's choice (history.jsonl)
    return epoch_seconds(kind, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~250 rows and the fine-tune epoch only, at 128 px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=None, help="default 160 (--quick: 128)")
    parser.add_argument("--head-epochs", type=int, default=5)
    parser.add_argument("--images", type=int, default=250, help="training images of the generated small set")
    args = parser.parse_args()
    args.image_size = args.image_size or (128 if args.quick else 160)
    print(machine(), flush=True)
    print(f"load average before: {load()}", flush=True)
    started = time.perf_counter()
    work = fresh_dir("contention")
    data = make_data(work, args.quick, args.images)
    for path in set(data.values()):  # fill the decoded-image and feature caches once
        run_timed(graft("train", str(path), "--image-size", str(args.image_size), "--cache-dir", str(work / "cache"),
                        "--strategy", "feature-extraction", "--epochs", "1", "--quiet", "--out",
                        str(Path(tempfile.mkdtemp(prefix="warm-", dir=work)) / "run")))
    times: dict[tuple[str, str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for condition in ("quiet", "contended"):
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=base_env()) \
                if condition == "contended" else None
            try:
                if competitor:
                    time.sleep(1.0)
                for setting in SETTINGS:
                    for kind, path in data.items():
                        for task, seconds in measure(kind, path, setting, work, args).items():
                            times.setdefault((task, setting, condition), []).append(seconds)
                            print(f"repeat {repeat + 1} {condition:9} {setting} {task}: {seconds:.3f}s", flush=True)
            finally:
                if competitor:
                    competitor.kill()
                    competitor.wait()
    print(f"load average after: {load()} ({time.perf_counter() - started:.0f}s in all)\n")
    shutil.rmtree(work, ignore_errors=True)
    rows = []
    for task in sorted({task for task, _, _ in times}):
        med = {(s, c): statistics.median(times[(task, s, c)]) for s in SETTINGS for c in ("quiet", "contended")}
        rows.append([task, *(f"{med[(s, c)]:.3f}" for s in SETTINGS for c in ("quiet", "contended")),
                     *(f"{med[(s, 'contended')] / med[(s, 'quiet')]:.2f}x" for s in SETTINGS),
                     *(f"{med[(s, 'quiet')] / med[('old', 'quiet')]:.2f}" for s in SETTINGS if s != "old")])
    print(table(rows, ["work (median s)", *(f"{s} {c}" for s in SETTINGS for c in ("quiet", "contended")),
                       *(f"{s} ratio" for s in SETTINGS), *(f"{s}/old quiet" for s in SETTINGS if s != "old")]))


if __name__ == "__main__":
    main()
