"""Test-time augmentation (``graft evaluate --tta``) and weight averaging (``graft train --ema``), measured.

For each dataset and seed: ``graft train DATA --seed S`` (the defaults) and the same with ``--ema``,
then ``graft evaluate`` of both runs on their validation images, without and with ``--tta`` (centre +
horizontal flip). Prints the mean validation accuracy of the four combinations with 95 % Student-t
intervals over the seeds, and the paired differences (same seed, same split): TTA's gain, EMA's
gain, and both together. Run folders go under ``--runs`` and are reused when finished, so the script
can be stopped and started again, or run one stage at a time.

    GRAFTKIT_DATASETS=/path/to/datasets python benchmarks/tta_ema.py \\
        [--datasets flower_photos_1250,dtd10] [--seeds 0,1,2] [--stage all|train|evaluate] [--crops 1]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dataset, graft, machine, run_timed, table  # noqa: E402

RUNS = Path(os.environ.get("GRAFTKIT_BENCH_RUNS", "/tmp/graftkit-tta-ema"))
VARIANTS = {"default": (), "ema": ("--ema",)}


def train(data: Path, out: Path, seed: int, options: tuple[str, ...]) -> None:
    if (out / "metrics.json").is_file():
        print(f"reusing {out}", flush=True)
        return
    seconds, _ = run_timed(graft("train", str(data), "--seed", str(seed), "--out", str(out), "--quiet", *options))
    print(f"trained {out} in {seconds:.0f}s", flush=True)


def evaluate(run: Path, data: Path, tta: bool, crops: int) -> float:
    """Validation accuracy of ``run`` (``graft evaluate --json``), cached beside the run."""
    name = f"evaluate-tta{crops}.json" if tta else "evaluate.json"
    path = run / name
    if not path.is_file():
        flags = ["--tta", "--tta-crops", str(crops)] if tta else []
        _, result = run_timed(graft("evaluate", str(run), str(data), "--json", "--device", "cpu", *flags))
        path.write_text(result.stdout)
    return float(json.loads(path.read_text())["accuracy"])


def interval(values: list[float]) -> str:
    from graftkit.report.summary import mean_interval

    m = mean_interval(values)
    low, high = m["interval"] if m["interval"] else (m["mean"], m["mean"])
    return f"{m['mean']:.4f} [{low:.4f}, {high:.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="flower_photos_1250,dtd10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--stage", choices=("all", "train", "evaluate"), default="all")
    parser.add_argument("--crops", type=int, default=1, help="--tta-crops of the TTA evaluation (1 or 5)")
    parser.add_argument("--runs", type=Path, default=RUNS)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(machine(), flush=True)
    for name in args.datasets.split(","):
        data = dataset(name)
        runs = {(v, s): args.runs / name / v / f"seed{s}" for v in VARIANTS for s in seeds}
        if args.stage in ("all", "train"):
            for seed in seeds:
                for variant, options in VARIANTS.items():
                    train(data, runs[variant, seed], seed, options)
        if args.stage == "train":
            continue
        acc = {(v, tta): [evaluate(runs[v, s], data, tta, args.crops) for s in seeds]
               for v in VARIANTS for tta in (False, True)}
        tta_name = "centre + flip" if args.crops == 1 else f"{args.crops} crops + flips"
        rows = [[f"{v}{' + TTA' if tta else ''}", interval(acc[v, tta]), " ".join(f"{a:.4f}" for a in acc[v, tta])]
                for v in VARIANTS for tta in (False, True)]

        def gain(a, b):
            return [y - x for x, y in zip(acc[a], acc[b])]

        rows += [["TTA gain (default runs)", interval(gain(("default", False), ("default", True))), ""],
                 ["TTA gain (--ema runs)", interval(gain(("ema", False), ("ema", True))), ""],
                 ["EMA gain (no TTA)", interval(gain(("default", False), ("ema", False))), ""],
                 ["EMA + TTA vs default", interval(gain(("default", False), ("ema", True))), ""]]
        print(f"\n{name}, seeds {args.seeds}, TTA = {tta_name}: val accuracy, mean [95 % interval]")
        print(table(rows, ["runs", "val accuracy", "per seed"]), flush=True)


if __name__ == "__main__":
    main()
