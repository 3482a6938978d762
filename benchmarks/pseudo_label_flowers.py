"""Does --pseudo-label help with 10 labelled images per class? flower_photos_1250, 3 seeds.

For each seed: `graft subsample` keeps 10 training images per class (the rest of train becomes
unlabeled/, the val split stays whole), then two runs with the same flags and seed:
  baseline:      graft train SUBSET ...
  pseudo-label:  graft train SUBSET ... --unlabeled SUBSET/unlabeled --pseudo-label
Prints each run, the mean ± 95% interval of both arms and of the paired difference, and how many
pseudo-labels were right (unlabeled_truth.csv from subsample). Writes pseudo_label_flowers.json.

    python benchmarks/pseudo_label_flowers.py                 # feature extraction, ~3 min on 2 cores
    python benchmarks/pseudo_label_flowers.py --strategy fine-tune --extra "--head-epochs 30 --finetune-epochs 2"
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from common import dataset, fresh_dir, graft, read_metrics, run_timed, table, machine  # noqa: E402

from graftkit.workflows.label_efficiency import mean_interval  # noqa: E402


def main() -> None:
    print(machine(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="flower_photos_1250")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategy", default="feature-extraction")
    parser.add_argument("--epochs", type=int, default=60, help="feature-extraction epochs (cached: cheap)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--extra", default="", help="more flags for both arms, e.g. \"--augment none\"")
    parser.add_argument("--pl-extra", default="", help="more flags for the pseudo-label arm only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    data = dataset(args.data)
    work = args.out or fresh_dir("pseudo-label")
    work.mkdir(parents=True, exist_ok=True)
    common = ["--strategy", args.strategy, "--epochs", str(args.epochs), "-q", *shlex.split(args.extra)]
    rows, results = [], []
    for seed in range(args.seeds):
        subset = work / f"subset-seed{seed}"
        run_timed(graft("subsample", str(data), "--per-class", str(args.per_class), "--seed", str(seed),
                        "--out", str(subset)))
        base_seconds, _ = run_timed(graft("train", str(subset), *common, "--seed", str(seed),
                                          "--out", str(work / f"baseline-seed{seed}")))
        pl_seconds, _ = run_timed(graft("train", str(subset), *common, "--seed", str(seed),
                                        "--unlabeled", str(subset / "unlabeled"), "--pseudo-label",
                                        "--rounds", str(args.rounds), *shlex.split(args.pl_extra),
                                        "--out", str(work / f"pseudo-label-seed{seed}")))
        base = read_metrics(work / f"baseline-seed{seed}")["val_accuracy"]
        pl_metrics = read_metrics(work / f"pseudo-label-seed{seed}")
        truth = {r["file"]: r["label"] for r in csv.DictReader((subset / "unlabeled_truth.csv").open())}
        chosen = list(csv.DictReader((work / f"pseudo-label-seed{seed}" / "pseudo_labels.csv").open()))
        last = [r for r in chosen if int(r["round"]) == args.rounds]
        correct = sum(truth[Path(r["path"]).name] == r["label"] for r in last)
        result = {"seed": seed, "baseline": base, "pseudo_label": pl_metrics["val_accuracy"],
                  "round0": pl_metrics["pseudo_label"]["baseline_val_accuracy"],
                  "rounds": [r["val_accuracy"] for r in pl_metrics["pseudo_label"]["rounds"]],
                  "pseudo_labels_last_round": len(last), "pseudo_label_precision": correct / max(len(last), 1),
                  "seconds": {"baseline": round(base_seconds, 1), "pseudo_label": round(pl_seconds, 1)}}
        results.append(result)
        rows.append([seed, f"{100 * base:.1f}", f"{100 * result['pseudo_label']:.1f}",
                     " → ".join(f"{100 * a:.1f}" for a in result["rounds"]),
                     f"{len(last)} ({100 * result['pseudo_label_precision']:.0f}% right)",
                     f"{base_seconds:.0f}s / {pl_seconds:.0f}s"])
        print(f"seed {seed}: baseline {base:.4f}, pseudo-label {result['pseudo_label']:.4f}", flush=True)

    print(table(rows, ["seed", "baseline %", "pseudo-label %", "rounds %", "pseudo-labels (last round)",
                       "time"]))
    summary = {"data": str(data), "per_class": args.per_class, "strategy": args.strategy, "epochs": args.epochs,
               "rounds": args.rounds, "extra": args.extra, "pl_extra": args.pl_extra, "runs": results}
    for arm in ("baseline", "pseudo_label"):
        summary[arm] = mean_interval([r[arm] for r in results])
    summary["difference"] = mean_interval([r["pseudo_label"] - r["baseline"] for r in results])
    for name in ("baseline", "pseudo_label", "difference"):
        s = summary[name]
        half = f" ± {100 * s['half_width']:.1f}" if s["half_width"] is not None else ""
        print(f"{name:<13} {100 * s['mean']:6.1f}{half} points (mean, 95% interval, {s['n']} seeds)")
    (work / "pseudo_label_flowers.json").write_text(json.dumps(summary, indent=2))
    print(f"→ {work}/pseudo_label_flowers.json")


if __name__ == "__main__":
    main()
