"""``graft train hymenoptera --nproc 2`` against one process, several seeds each, side by side.

Prints the CPU, then per configuration the validation accuracy (mean, 95% Student-t interval over
seeds) and the wall time of each whole command (interpreter start, torchrun's launch and the scan
included). The two configurations alternate seed by seed, so a change in the machine's load falls on
both. Run folders and caches go under a fresh /tmp folder.

    python benchmarks/ddp_hymenoptera.py [--seeds 3] [--nproc 2] [--configs one,ddp,one-thread]
        [-- extra graft train flags]

``one-thread``: one process with OMP_NUM_THREADS=1 (what each rank of ``--nproc N`` gets on a machine
of N cores): it separates the gain of running ranks in parallel from that of not sharing threads.
"""
from __future__ import annotations

import argparse
import sys

from common import dataset, fresh_dir, graft, machine, read_metrics, run_timed, table

from graftkit.report.summary import mean_interval


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--configs", default="one,ddp")
    parser.add_argument("extra", nargs="*", help="more graft train flags (after --)")
    args = parser.parse_args()
    print(machine(), flush=True)
    data, work = dataset("hymenoptera"), fresh_dir("ddp")
    known = {"one": ("1 process", [], {}), "ddp": (f"--nproc {args.nproc}", ["--nproc", str(args.nproc)], {}),
             "one-thread": ("1 process, 1 thread", [], {"OMP_NUM_THREADS": "1"})}
    configs = [known[name] for name in args.configs.split(",")]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in configs}
    for seed in range(args.seeds):
        for name, flags, env in configs:
            out = work / f"{name.replace(' ', '').replace('-', '').replace(',', '')}-seed{seed}"
            seconds, _ = run_timed(graft("train", str(data), "--seed", str(seed), "--out", str(out), "--quiet",
                                         "--cache-dir", str(work / "cache"), *flags, *args.extra), env=env)
            accuracy = read_metrics(out)["val_accuracy"]
            results[name].append((accuracy, seconds))
            print(f"{name} seed {seed}: val_accuracy {accuracy:.4f} in {seconds:.0f}s", flush=True)
    rows = []
    for name, values in results.items():
        accuracy = mean_interval([a for a, _ in values], bounds=(0, 1))
        low, high = accuracy["interval"] or (accuracy["mean"], accuracy["mean"])
        rows.append([name, f"{accuracy['mean']:.4f}", f"[{low:.4f}, {high:.4f}]",
                     " / ".join(f"{a:.4f}" for a, _ in values), " / ".join(f"{s:.0f}" for _, s in values),
                     f"{sum(s for _, s in values) / len(values):.0f}"])
    print(table(rows, ["configuration", "val acc mean", "95% interval", "per seed", "wall s per seed",
                       "mean wall s"]))
    print(f"runs in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
