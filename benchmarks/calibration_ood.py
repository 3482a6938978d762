"""Calibration and "unknown" detection on real photos, scored honestly (cross-fitted).

Trains (out dirs under /tmp; reused when already there) on hymenoptera (default `graft train`:
fine-tune, so the bank comes from the extra pass over train) and on flower_photos_1250 and
flower_photos_1250 without one class (a link tree under /tmp) with ``--flowers-strategy``
(default feature-extraction: the bank comes from the feature cache, and the second run reuses
the first one's cached features), then:

- calibration: k-fold over val (temperature fitted on k-1 folds, ECE/NLL on the held-out fold),
  repeated over fold seeds; mean and 95 % interval of the per-fold figures, before and after;
- the unknown threshold's retention: the reference distances from k-1 folds of val, the fraction
  of the held-out fold kept at p >= 0.05 (target 95 %);
- unknown detection: in = the run's val images, out = another dataset's val images (far), or the
  left-out flower class's val images (near): AUROC and FPR at 95 % TPR of the feature-distance
  score (the run's shipped bank) next to the max calibrated probability (MSP), the fraction of
  out images rejected, and the validation accuracy of the accepted images.

    GRAFTKIT_DATASETS=/path/to/datasets python benchmarks/calibration_ood.py [--folds 5] [--seeds 3]
        [--flowers-strategy fine-tune] [--append BENCHMARKS.md]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import dataset, graft, interval, machine, run_timed, table  # noqa: E402

RUNS = Path(os.environ.get("GRAFTKIT_BENCH_RUNS", "/tmp/graftkit-calibration-ood"))
LEFT_OUT = "tulips"


def train(name: str, data: Path, *options: str) -> Path:
    out = RUNS / name
    if (out / "metrics.json").is_file():
        print(f"reusing {out}", flush=True)
        return out
    seconds, _ = run_timed(graft("train", str(data), "--out", str(out), "--plain", *options))
    print(f"trained {name} in {seconds:.0f}s → {out}", flush=True)
    return out


def flowers_without(left_out: str) -> Path:
    """A link tree of flower_photos_1250 without one class (nothing is written into the dataset)."""
    root = RUNS / f"flowers-without-{left_out}-data"
    source = dataset("flower_photos_1250")
    for split in ("train", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for cls in sorted(p.name for p in (source / split).iterdir() if p.is_dir() and p.name != left_out):
            link = root / split / cls
            if not link.exists():
                link.symlink_to(source / split / cls, target_is_directory=True)
    return root


def val_outputs(classifier, data_dir: Path):
    from graftkit.data import scan_data

    scan = scan_data(data_dir, 0.2, 0)
    logits, features = classifier.predict_outputs([s.path for s in scan.val])
    labels = np.array([classifier.classes.index(scan.classes[s.label]) for s in scan.val])
    return logits, features, labels


def images_under(folder: Path) -> list[Path]:
    from graftkit.data.model_input import expand_image_paths

    return expand_image_paths([folder])


def calibration_rows(name: str, logits, labels, folds: int, seeds: int) -> list[list]:
    from graftkit.calibration import cross_fit

    per = {k: [] for k in ("ece_before", "ece_after", "nll_before", "nll_after", "temperature")}
    for seed in range(seeds):
        fold_figures = cross_fit(logits, labels, folds, seed)["per_fold"]
        for key in per:
            per[key].extend(fold_figures[key])
    return [[name, len(labels), interval(per["temperature"]), interval(per["ece_before"]), interval(per["ece_after"]),
             interval(per["nll_before"]), interval(per["nll_after"])]]


def retention(scorer, features, labels, folds: int, seeds: int) -> list[float]:
    """Per held-out fold: the fraction kept with the reference built from the other folds."""
    from graftkit.calibration import fold_indices
    from graftkit.ood import p_values

    distances = scorer.distances(features)
    kept = []
    for seed in range(seeds):
        fold = fold_indices(labels, folds, seed)
        for f in range(folds):
            held = fold == f
            kept.append(float(np.mean(p_values(distances[held], distances[~held]) >= scorer.threshold)))
    return kept


def detection_row(name: str, classifier, logits, features, labels, out_paths: list[Path]) -> list:
    from graftkit.ood import detection_figures, p_values

    scorer = classifier.ood
    _, out_probs, out_features = classifier._outputs_for_images(out_paths)
    probs = classifier.probabilities(logits)
    in_d, out_d = scorer.distances(features), scorer.distances(out_features)
    feature = detection_figures(-in_d, -out_d)
    msp = detection_figures(probs.max(1), out_probs.max(1))
    out_rejected = float(np.mean(p_values(out_d, scorer.reference) < scorer.threshold))
    msp_rejected = float(np.mean(out_probs.max(1) < scorer.msp_threshold))
    accepted = p_values(in_d, scorer.reference) >= scorer.threshold
    correct = probs.argmax(1) == labels
    return [name, f"{len(labels)} / {len(out_paths)}", f"{feature['auroc']:.4f}", f"{msp['auroc']:.4f}",
            f"{feature['fpr_at_95_tpr']:.3f}", f"{msp['fpr_at_95_tpr']:.3f}", f"{out_rejected:.3f}",
            f"{msp_rejected:.3f}", f"{correct.mean():.4f}", f"{correct[accepted].mean():.4f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3, help="fold assignments (seeds) per dataset")
    parser.add_argument("--append", type=Path, help="append the tables to this markdown file")
    parser.add_argument("--flowers-strategy", default="feature-extraction",
                        help="strategy of the two flower runs (fine-tune: the default of graft train, ~4x "
                             "hymenoptera's cost per run)")
    args = parser.parse_args()
    import graftkit

    print(machine(), flush=True)
    hymenoptera, flowers = dataset("hymenoptera"), dataset("flower_photos_1250")
    flower_options = ("--strategy", args.flowers_strategy)
    runs = {"flower_photos_1250": train("flowers", flowers, *flower_options),
            f"flowers without {LEFT_OUT}": train(f"flowers-without-{LEFT_OUT}", flowers_without(LEFT_OUT),
                                                 *flower_options),
            "hymenoptera": train("hymenoptera", hymenoptera)}
    data_of = {"hymenoptera": hymenoptera, "flower_photos_1250": flowers,
               f"flowers without {LEFT_OUT}": RUNS / f"flowers-without-{LEFT_OUT}-data"}
    far = {"hymenoptera": ("cats_and_dogs_filtered val", images_under(dataset("cats_and_dogs_filtered") / "val")),
           "flower_photos_1250": ("dtd10 val", images_under(dataset("dtd10") / "val")),
           f"flowers without {LEFT_OUT}": (f"{LEFT_OUT} val (near)", images_under(flowers / "val" / LEFT_OUT))}
    cal_rows, keep_rows, det_rows = [], [], []
    for name, run in runs.items():
        classifier = graftkit.load(run)
        logits, features, labels = val_outputs(classifier, data_of[name])
        if name != f"flowers without {LEFT_OUT}":
            cal_rows += calibration_rows(name, logits, labels, args.folds, args.seeds)
            keep_rows.append([name, len(labels), f"{1 - classifier.ood.threshold:.2f}",
                              interval(retention(classifier.ood, features, labels, args.folds, args.seeds))])
        out_name, out_paths = far[name]
        det_rows.append(detection_row(f"{name} vs {out_name}", classifier, logits, features, labels, out_paths))
        print(f"{name}: done", flush=True)
    text = "\n\n".join([
        machine(),
        f"Calibration, {args.folds}-fold cross-fitted over val, {args.seeds} fold seeds (mean [95 % interval] "
        "over the held-out folds; ECE: 15 equal-width bins):\n\n" + table(cal_rows, [
            "dataset", "val images", "temperature", "ECE before", "ECE after", "NLL before", "NLL after"]),
        "Unknown threshold's retention (reference from k-1 folds, kept fraction of the held-out fold):\n\n" +
        table(keep_rows, ["dataset", "val images", "target kept", "kept (held-out folds)"]),
        "Unknown detection (in = the run's val images; feature distance: shipped bank, k = 10 cosine):\n\n" +
        table(det_rows, ["in vs out", "in / out images", "AUROC feature", "AUROC MSP", "FPR@95TPR feature",
                         "FPR@95TPR MSP", "out rejected feature", "out rejected MSP", "val acc all",
                         "val acc accepted (feature)"]),
    ])
    print(text)
    (RUNS / "calibration_ood.md").write_text(text + "\n")
    if args.append:
        with args.append.open("a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
