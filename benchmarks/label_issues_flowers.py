"""Does `graft check-data --label-issues` find flipped labels? flower_photos_1250, 10 flips, 3 seeds.

For each seed: a link tree of the dataset under a temp folder (symlinks only; the shared dataset is
never touched), 10 training images chosen at random (seeded) and their links moved into another
class folder (also random), then

    graft check-data TREE --label-issues --top 30 --out OUT

and the flipped images are looked up in OUT/label_issues.csv (rank order). Prints, per seed and as the
mean over seeds: how many of the 10 are in the top 30 (and top 10) listed, precision and recall at
30 and at 10, how many images were flagged, and the wall time of the command. flowers has label
noise of its own: a natural mistake in the list counts against precision here. The pooled features
are cached after the first seed (a moved link has the same bytes), so later seeds time the probes.

    python benchmarks/label_issues_flowers.py               # ~1-2 min per seed on 2 cores, first one longer
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from common import dataset, fresh_dir, graft, machine, run_timed, table  # noqa: E402


def link_tree(data: Path, tree: Path) -> list[Path]:
    """``tree/<split>/<class>/<file>`` → symlinks to ``data``'s files; returns the training links."""
    links = []
    for source in sorted(data.glob("*/*/*")):
        if source.is_file() and source.parts[-3] in ("train", "val"):
            link = tree / source.relative_to(data)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(source.resolve(), link)
            if source.parts[-3] == "train":
                links.append(link)
    return links


def flip(links: list[Path], count: int, seed: int) -> dict[Path, str]:
    """Move ``count`` random training links into another class folder; ``{new path: true class}``."""
    rng = random.Random(seed)
    classes = sorted({p.parent.name for p in links})
    flipped = {}
    for link in rng.sample(links, count):
        target = rng.choice([c for c in classes if c != link.parent.name])
        moved = link.parent.parent / target / f"flipped-{link.name}"
        link.rename(moved)  # renames the link itself, never its target
        flipped[moved] = link.parent.name
    return flipped


def main() -> None:
    print(machine(), flush=True)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="flower_photos_1250")
    parser.add_argument("--flips", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    data = dataset(args.data)
    work = args.out or fresh_dir("label-issues")
    rows, results = [], []
    for seed in range(args.seeds):
        tree = work / f"tree-seed{seed}"
        flipped = flip(link_tree(data, tree), args.flips, seed)
        out = work / f"issues-seed{seed}"
        seconds, _ = run_timed(graft("check-data", str(tree), "--label-issues", "--top", str(args.top),
                                     "--out", str(out)))
        listed = [Path(r["path"]) for r in csv.DictReader((out / "label_issues.csv").open())]
        found = {k: len(set(listed[:k]) & set(flipped)) for k in (10, args.top)}
        result = {"seed": seed, "flagged": len(listed), "seconds": round(seconds, 1),
                  **{f"in_top{k}": n for k, n in found.items()},
                  **{f"precision_at_{k}": n / k for k, n in found.items()},
                  **{f"recall_at_{k}": n / args.flips for k, n in found.items()},
                  "missed": [f"{p.parent.name}/{p.name} (really {c})" for p, c in flipped.items()
                             if p not in listed[:args.top]]}
        results.append(result)
        rows.append([seed, f"{found[args.top]}/{args.flips}", f"{found[10]}/{args.flips}",
                     f"{found[args.top] / args.top:.2f}", f"{found[10] / 10:.2f}", len(listed), f"{seconds:.0f}s"])
        print(f"seed {seed}: {found[args.top]} of {args.flips} flips in the top {args.top}, "
              f"{found[10]} in the top 10; {len(listed)} flagged; {seconds:.0f}s", flush=True)

    print(table(rows, ["seed", f"in top {args.top}", "in top 10", f"precision@{args.top}", "precision@10",
                       "flagged", "check-data time"]))
    mean = {key: sum(r[key] for r in results) / len(results)
            for key in (f"in_top{args.top}", "in_top10", f"precision_at_{args.top}", "precision_at_10",
                        f"recall_at_{args.top}", "recall_at_10", "flagged", "seconds")}
    print(f"mean over {len(results)} seeds: {mean[f'in_top{args.top}']:.2f} of {args.flips} flips in the top "
          f"{args.top} (precision@{args.top} {mean[f'precision_at_{args.top}']:.3f}, recall@{args.top} "
          f"{mean[f'recall_at_{args.top}']:.3f}); top 10: {mean['in_top10']:.2f} (precision@10 "
          f"{mean['precision_at_10']:.3f}, recall@10 {mean['recall_at_10']:.3f}); target: at least 7 of 10 in the top "
          f"{args.top}")
    summary = {"data": str(data), "flips": args.flips, "top": args.top, "runs": results, "mean": mean}
    (work / "label_issues_flowers.json").write_text(json.dumps(summary, indent=2))
    print(f"→ {work}/label_issues_flowers.json")


if __name__ == "__main__":
    main()
