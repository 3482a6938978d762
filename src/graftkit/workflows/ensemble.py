"""``graft ensemble RUN RUN ... --out DIR``: trained runs joined into one model that averages them.

The members' backbones run side by side (:mod:`graftkit.backbones.ensemble`), each at the input size
it was trained at; one linear head averages their calibrated logits (each member's head divided by
its temperature, then by the number of members). The result is a plain classifier: ``graft
predict``, ``evaluate``, ``serve`` and ``export`` take its folder like a run's. Its own temperature
is fitted on the members' shared validation split (cross-fitted figures, as training does), and
``metrics.json`` holds its validation figures beside each member's. Nothing is chosen here: the
members are the ones the user names, so the validation figures are not selected on.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..backbones.ensemble import join_backbones, parse_ensemble_name
from ..calibration import calibrate
from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text
from ..heads import Classifier


def _member(path: Path) -> tuple[Classifier, dict[str, Any], Path, dict[str, Any]]:
    from ..engine.checkpoint import load_model, resolve_model_path

    model, meta = load_model(path)
    folder = resolve_model_path(path)
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    return model, meta, folder, metrics if isinstance(metrics, dict) else {}


def join_runs(runs: Sequence[Path]) -> tuple[Classifier, dict[str, Any], list[dict[str, Any]], list[Path]]:
    """The joined classifier, its model.json content (without calibration), one summary per member
    (with its ``split``) and the data folders the members were trained on. Raises ``ConfigError``
    (one line) when the members do not share classes and class order."""
    from ..predict import trained_on

    if len(runs) < 2:
        raise ConfigError(f"an ensemble needs at least two run folders; got {len(runs)}.")
    members = [_member(Path(r)) for r in runs]
    first_model, first, first_dir, _ = members[0]
    for _, meta, folder, _ in members:
        if parse_ensemble_name(meta["backbone"]) is not None:
            raise ConfigError(f"'{folder}' is an ensemble already: join the runs it was made of "
                              f"({', '.join(m['run'] for m in meta.get('members', [])) or 'see its model.json'}).")
    for _, meta, folder, _ in members[1:]:
        if list(meta["classes"]) != list(first["classes"]):
            raise ConfigError(f"'{folder}' was trained on classes {', '.join(meta['classes'])} but '{first_dir}' on "
                              f"{', '.join(first['classes'])}: join runs of the same classes, in the same order.")
    sizes = [int(meta["preprocessing"]["image_size"]) for _, meta, _, _ in members]
    backbone = join_backbones([model.backbone for model, _, _, _ in members], sizes)
    joined = Classifier(backbone, len(first["classes"]), dropout=0.0)
    with torch.no_grad():  # the mean of the members' calibrated logits
        scale = [float(meta.get("calibration", {}).get("temperature", 1.0)) * len(members) for _, meta, _, _ in members]
        joined.head[-1].weight.copy_(torch.cat([m.head[-1].weight / s for (m, *_), s in zip(members, scale)], 1))
        joined.head[-1].bias.copy_(sum(m.head[-1].bias / s for (m, *_), s in zip(members, scale)))
    largest = members[sizes.index(max(sizes))][1]
    meta = {"classes": list(first["classes"]), "backbone": backbone.name, "num_features": backbone.num_features,
            "head": {"type": "linear", "dropout": 0.0}, "preprocessing": dict(largest["preprocessing"]),
            "precision": "bf16" if all(m.get("precision") == "bf16" for _, m, _, _ in members) else "fp32",
            "fold_bn": all(bool(m.get("fold_bn", False)) for _, m, _, _ in members),
            **({"split": first["split"]} if "split" in first else {}), "strategy": "ensemble"}
    summaries = [{"run": str(folder), "backbone": m["backbone"], "image_size": size, "strategy": m.get("strategy"),
                  "split": m.get("split"), "val_accuracy": metrics.get("val_accuracy")}
                 for (_, m, folder, metrics), size in zip(members, sizes)]
    return joined, meta, summaries, [d for d in (trained_on(f) for _, _, f, _ in members) if d is not None]


def ensemble_runs(runs: Sequence[Path], out_dir: Path, data_dir: Path | None = None, device: str = "auto",
                  say: Callable[[str], None] = print, new_folder: bool = True,
                  skip_bad_images: bool = False) -> dict[str, Any]:
    """Join ``runs`` into ``out_dir`` (a new folder, unless ``new_folder`` is False: the planner's run
    folder, which holds plan.json and the members): model.json + model.safetensors, config.json (the
    data folder and the members) and metrics.json. Returns the metrics."""
    from .. import __version__
    from ..data import scan_data
    from ..engine.checkpoint import save_model
    from ..predict import ImageClassifier, scored_text

    out_dir = Path(out_dir)
    if new_folder and out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"'{out_dir}' already exists and is not an empty folder: pass a new --out.")
    model, meta, members, trained_on = join_runs(runs)
    if data_dir is None:
        known = {d.resolve() for d in trained_on if d.is_dir()}
        if len(known) != 1:
            where = ", ".join(sorted(str(d) for d in trained_on)) or "not recorded"
            raise ConfigError(f"which data scores the ensemble? The members' data folders ({where}) are not one "
                              f"folder readable from here: pass --data DIR (the members' data).")
        data_dir = known.pop()
    data_dir = Path(data_dir).resolve()
    split = meta.get("split", {})
    scan = scan_data(data_dir, float(split.get("val_fraction", 0.2)), int(split.get("seed", 0)),
                     skip_bad_images=skip_bad_images)
    unknown = sorted(set(scan.classes) - set(meta["classes"]))
    if unknown or not scan.val:
        raise DataError(f"'{data_dir}' is not the members' data: " + (f"it has classes they do not know "
                        f"({', '.join(unknown)})" if unknown else "it has no validation images") + ". Pass --data DIR.")
    if scan.layout != "splits":  # a hold-out of class folders: the members must have held out the same images
        for member in members[1:]:
            if member["split"] != members[0]["split"]:
                raise ConfigError(f"'{member['run']}' held out another validation split ({member['split']}) than "
                                  f"'{members[0]['run']}' ({members[0]['split']}): train the members with the same "
                                  f"--val-fraction and --split-seed, so none of them trained on the images that "
                                  f"score the ensemble.")
    out_dir.mkdir(parents=True, exist_ok=True)
    meta["graftkit_version"] = __version__
    meta["members"] = members
    classifier = ImageClassifier(model, meta, device, run_dir=out_dir)
    say(f"ensemble: {' + '.join(m['backbone'] for m in members)} on {len(scan.val)} validation images of {data_dir}")
    logits, features = classifier.predict_outputs([s.path for s in scan.val])  # one pass: calibration and scores
    labels = np.array([meta["classes"].index(scan.classes[s.label]) for s in scan.val])
    meta["calibration"] = calibrate(logits, labels)
    classifier.temperature = meta["calibration"]["temperature"]
    save_model(out_dir, model, meta)
    atomic_write_text(out_dir / "config.json", json.dumps({"data_dir": str(data_dir), "strategy": "ensemble",
                                                           "members": [m["run"] for m in members]}, indent=2))
    about = {"split": "val", "data_dir": str(data_dir), "scored": scored_text(
        data_dir, "val", scan.layout, True, float(split.get("val_fraction", 0.2)), int(split.get("seed", 0)))}
    result = classifier.score_outputs(logits, features, labels, about)
    metrics = {"val_accuracy": result["accuracy"], "val_balanced_accuracy": result.get("balanced_accuracy"),
               "val_macro_f1": result.get("macro_f1"), "members": members, "evaluation": result}
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
