"""Test-time augmentation (``graft evaluate --tta``) and weight averaging (``graft train --ema``), measured.

For each dataset and seed, one ``graft train DATA --seed S --ema`` (otherwise the defaults). The average
of the weights never feeds back into training (no random draw, no weight is changed), so the run's
own weights follow exactly the trajectory of ``graft train DATA --seed S`` (tests/test_tta_ema.py
checks it): each fine-tune epoch validates both, history.jsonl has ``val_*`` (the average) and
``raw_val_*`` (the weights). The default run's result is the best epoch of the raw weights (by
accuracy, then loss, as ``fit`` picks it); the ``--ema`` run's is its metrics.json. Then ``graft
evaluate`` of the ``--ema`` run's model, without and with ``--tta`` (centre + horizontal flip).
Prints the means with 95 % Student-t intervals over the seeds and the paired differences (same seed,
same split). Run folders go under ``--runs`` and are reused when finished (stop and start again at will).
``--tta-of RUN...`` measures only TTA, on runs already trained (e.g. default runs of three seeds).

    GRAFTKIT_DATASETS=/path/to/datasets python benchmarks/tta_ema.py \\
        [--datasets flower_photos_1250,dtd10] [--seeds 0,1,2] [--crops 1]
    python benchmarks/tta_ema.py --datasets flower_photos_1250 --tta-of runs/fl-s0 runs/fl-s1 runs/fl-s2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dataset, graft, interval, machine, read_metrics, run_timed, table  # noqa: E402

RUNS = Path(os.environ.get("GRAFTKIT_BENCH_RUNS", "/tmp/graftkit-tta-ema"))


def train(data: Path, out: Path, seed: int, options: tuple[str, ...]) -> None:
    if (out / "metrics.json").is_file():
        print(f"reusing {out}", flush=True)
        return
    seconds, _ = run_timed(graft("train", str(data), "--seed", str(seed), "--out", str(out), "--quiet", *options))
    print(f"trained {out} in {seconds:.0f}s", flush=True)


def evaluate(run: Path, data: Path, tta: bool, crops: int, cache: Path) -> float:
    """Validation accuracy of ``run`` (``graft evaluate --json``), cached under ``cache`` (never in the run)."""
    name = f"evaluate-tta{crops}.json" if tta else "evaluate.json"
    path = cache / str(run.resolve()).strip("/").replace("/", "+") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        flags = ["--tta", "--tta-crops", str(crops)] if tta else []
        _, result = run_timed(graft("evaluate", str(run), str(data), "--json", "--device", "cpu", *flags))
        path.write_text(result.stdout)
    return float(json.loads(path.read_text())["accuracy"])


def raw_best(run: Path) -> float:
    """What ``graft train`` without ``--ema`` reports: the best epoch of the weights themselves."""
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    own = [(r.get("raw_val_accuracy", r["val_accuracy"]), -r.get("raw_val_loss", r["val_loss"])) for r in rows]
    return max(own)[0]


def tta_of(runs: list[Path], data: Path, crops: int, cache: Path) -> None:
    """Each finished run's validation accuracy without and with ``--tta``, and the paired gain."""
    plain = [read_metrics(run)["val_accuracy"] for run in runs]  # graft evaluate reproduces it
    tta = [evaluate(run, data, True, crops, cache) for run in runs]
    rows = [["without --tta", interval(plain), " ".join(f"{a:.4f}" for a in plain)],
            [f"--tta{'' if crops == 1 else f' --tta-crops {crops}'}", interval(tta), " ".join(f"{a:.4f}" for a in tta)],
            ["TTA gain", interval([b - a for a, b in zip(plain, tta)]), ""]]
    print(f"\n{data.name}, {len(runs)} runs ({', '.join(map(str, runs))}): val accuracy, mean [95 % interval]")
    print(table(rows, ["", "val accuracy", "per run"]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="flower_photos_1250,dtd10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--crops", type=int, default=1, help="--tta-crops of the TTA evaluation (1 or 5)")
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--tta-of", nargs="+", type=Path, metavar="RUN",
                        help="only the TTA part, on these finished runs (of one dataset, --datasets), e.g. default "
                             "runs of several seeds; nothing is trained")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(machine(), flush=True)
    if args.tta_of:
        return tta_of(args.tta_of, dataset(args.datasets.split(",")[0]), args.crops, args.runs / "evaluations")
    for name in args.datasets.split(","):
        data = dataset(name)
        runs = {s: args.runs / name / f"ema-seed{s}" for s in seeds}
        for seed in seeds:
            train(data, runs[seed], seed, ("--ema",))
        acc = {"default": [raw_best(runs[s]) for s in seeds],
               "--ema": [evaluate(runs[s], data, False, args.crops, args.runs / "evaluations") for s in seeds],
               "--ema + --tta": [evaluate(runs[s], data, True, args.crops, args.runs / "evaluations") for s in seeds]}
        tta_name = "centre + flip" if args.crops == 1 else f"{args.crops} crops + flips"

        def gain(a, b):
            return [y - x for x, y in zip(acc[a], acc[b])]

        rows = [[k, interval(v), " ".join(f"{a:.4f}" for a in v)] for k, v in acc.items()]
        rows += [[f"EMA gain (--ema - default)", interval(gain("default", "--ema")), ""],
                 [f"TTA gain ({tta_name}, on the --ema models)", interval(gain("--ema", "--ema + --tta")), ""],
                 ["both (--ema --tta - default)", interval(gain("default", "--ema + --tta")), ""]]
        print(f"\n{name}, seeds {args.seeds}: val accuracy, mean [95 % interval]")
        print(table(rows, ["", "val accuracy", "per seed"]), flush=True)


if __name__ == "__main__":
    main()
