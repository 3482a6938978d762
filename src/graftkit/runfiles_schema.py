"""Checking run files when they are read: a small schema per file, naming the file and the field.

A run folder is plain JSON/CSV that anyone can edit. Every field graftkit reads back is checked for
its type and range here, so an edited or damaged file is refused with one line (what, which file,
which field, what to do), never a KeyError deep inside predict, report or --resume.

A schema is a dict ``{"dotted.field": (expected, predicate, required)}``; :func:`check` walks it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import CheckpointError, ConfigError, GraftError

Predicate = Callable[[Any], bool]

FORMAT_VERSION = 1  # of model.json and checkpoint.pt, written by engine.checkpoint (the schema is the source)


def is_int(low: int | None = None, high: int | None = None) -> Predicate:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and \
        (low is None or v >= low) and (high is None or v <= high)


def is_number(low: float | None = None, high: float | None = None, finite: bool = True) -> Predicate:
    def ok(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if math.isnan(v) or math.isinf(v):
            return not finite
        return (low is None or v >= low) and (high is None or v <= high)
    return ok


def is_str(v: Any) -> bool:
    return isinstance(v, str)


def is_name(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def is_list(item: Predicate, min_len: int = 0, max_len: int | None = None, unique: bool = False) -> Predicate:
    def ok(v: Any) -> bool:
        if not isinstance(v, list) or len(v) < min_len or (max_len is not None and len(v) > max_len):
            return False
        if unique and len({repr(x) for x in v}) != len(v):
            return False
        return all(item(x) for x in v)
    return ok


def one_of(*values: Any) -> Predicate:
    return lambda v: isinstance(v, str) and v in values


def optional(predicate: Predicate) -> Predicate:
    return lambda v: v is None or predicate(v)


Schema = Mapping[str, tuple[str, Predicate, bool]]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(data: Any, schema: Schema, path: Path | str, error: type[GraftError], fix: str,
          where: str = "") -> Any:
    """Raise ``error`` naming ``path`` (and ``where``, e.g. "line 3") and the first field of
    ``schema`` that is missing (when required) or fails its predicate; return ``data``."""
    at = f"'{path}'" + (f" ({where})" if where else "")
    if not isinstance(data, dict):
        raise error(f"{at} must hold a JSON object, got {type(data).__name__}. {fix}")
    for dotted, (expected, predicate, required) in schema.items():
        value: Any = data
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                value = _MISSING
                break
            value = value[part]
        if value is _MISSING:
            if required:
                raise error(f"{at} has no field '{dotted}' ({expected}). {fix}")
            continue
        if not predicate(value):
            raise error(f"{at}: field '{dotted}' must be {expected}, got {_show(value)}. {fix}")
    return data


_MISSING = object()

# ----------------------------------------------------------------------------------- model.json

MODEL_FIX = "Retrain, or restore the file from the run folder."


# Both blocks are optional (runs written before them load as before); present, they are whole.
_PROB = is_number(0, 1)
CALIBRATION_SCHEMA: Schema = {
    "calibration": ("an object {temperature, nll_before, nll_after, ece_before, ece_after}", is_dict, False),
    "calibration.temperature": ("a number from 0.01 to 100", is_number(0.01, 100), False),
    "calibration.nll_before": ("a number >= 0", is_number(0), False),
    "calibration.nll_after": ("a number >= 0", is_number(0), False),
    "calibration.ece_before": ("a number in [0, 1]", _PROB, False),
    "calibration.ece_after": ("a number in [0, 1]", _PROB, False),
}
OOD_SCHEMA: Schema = {
    "ood": ("an object {file, blake2b, k, threshold, num_features}", is_dict, False),
    "ood.file": ("a file name in the run folder", lambda v: is_name(v) and "/" not in v and "\\" not in v
                 and v not in (".", ".."), False),
    "ood.blake2b": ("a 32-digit hex digest", lambda v: isinstance(v, str) and len(v) == 32
                    and all(c in "0123456789abcdef" for c in v), False),
    "ood.k": ("an integer >= 1", is_int(1), False),
    "ood.threshold": ("a p-value threshold in [0, 1]", _PROB, False),
    "ood.msp_threshold": ("a probability in [0, 1] or null", optional(_PROB), False),
    "ood.num_features": ("an integer >= 1", is_int(1), False),
}
_REQUIRED_IN = {"calibration": ("calibration.temperature",),
                "ood": ("ood.file", "ood.blake2b", "ood.k", "ood.threshold", "ood.num_features")}


def check_model_meta(meta: Any, path: Path | str) -> dict[str, Any]:
    """``model.json``: everything that rebuilding and using the model reads."""
    schema: Schema = {
        "format_version": (f"an integer from 1 to {FORMAT_VERSION} (a newer graftkit wrote a higher one)",
                           is_int(1, FORMAT_VERSION), False),
        "classes": ("a list of at least 2 distinct class names", is_list(is_name, 2, unique=True), True),
        "backbone": ("a backbone name", is_name, True),
        "head.dropout": ("a number in [0, 1)", is_number(0, 0.999999), True),
        **_preprocessing_schema(),
        "precision": ("fp32 or bf16", one_of("fp32", "bf16"), False),
        "fold_bn": ("true or false", is_bool, False),
        "split.val_fraction": ("a number between 0 and 1", is_number(1e-9, 1 - 1e-9), False),
        "split.seed": ("an integer >= 0", is_int(0), False),
        "epoch": ("an integer >= 1", is_int(1), False),
        **CALIBRATION_SCHEMA, **OOD_SCHEMA,
    }
    check(meta, schema, path, CheckpointError, MODEL_FIX)
    for block, fields in _REQUIRED_IN.items():
        for dotted in fields if block in meta else ():
            if dotted.split(".")[1] not in meta[block]:
                expected = {**CALIBRATION_SCHEMA, **OOD_SCHEMA}[dotted][0]
                raise CheckpointError(f"'{path}' has no field '{dotted}' ({expected}). {MODEL_FIX}")
    return _check_resize(meta, path, MODEL_FIX)


def _preprocessing_schema() -> Schema:
    from .config import MAX_IMAGE_SIZE

    return {
        "preprocessing.image_size": (f"an integer from 16 to {MAX_IMAGE_SIZE}", is_int(16, MAX_IMAGE_SIZE), True),
        "preprocessing.resize": ("an integer at least image_size (the decoded square)", is_int(16, 4 * MAX_IMAGE_SIZE), True),
        "preprocessing.mean": ("a list of 3 numbers", is_list(is_number(), 3, 3), True),
        "preprocessing.std": ("a list of 3 numbers > 0", is_list(is_number(1e-12), 3, 3), True),
    }


def _check_resize(meta: dict[str, Any], path: Path | str, fix: str) -> dict[str, Any]:
    pre = meta["preprocessing"]
    if pre["resize"] < pre["image_size"]:
        raise CheckpointError(f"'{path}': field 'preprocessing.resize' must be at least "
                              f"preprocessing.image_size ({pre['image_size']}), got {pre['resize']}. {fix}")
    return meta


# ------------------------------------------------------------------------------- checkpoint.pt

def check_checkpoint(state: Any, path: Path | str) -> dict[str, Any]:
    """``checkpoint.pt`` (already read with ``weights_only=True``): the fields ``--resume`` uses."""
    fix = "Start the run again without --resume (in a new --out)."
    schema: Schema = {
        "epoch": ("an integer >= 0", is_int(0), True),
        "model": ("a state dict", is_dict, True),
        "optimizer": ("an optimizer state dict", is_dict, True),
        "history": ("a list of epoch rows", is_list(is_dict), True),
        "best": ("a dict", is_dict, True),
        "best.val_accuracy": ("a number", is_number(finite=False), True),
        "rng": ("a dict of random states", is_dict, True),
        "classes": ("a list of class names", is_list(is_str), True),
    }
    return check(state, schema, path, CheckpointError, fix)


# ------------------------------------------------------------------------ files `report` reads

REPORT_FIX = "Restore it from the run, or retrain."
_ACC = is_number(0, 1)
_NUM = is_number(finite=False)

METRICS_SCHEMA: Schema = {
    "val_accuracy": ("a number in [0, 1]", _ACC, True),
    "val_loss": ("a number", _NUM, False),
    "best_epoch": ("an integer or null", optional(is_int(0)), False),
    "best_phase": ("a phase name or null", optional(is_str), False),
    "final_epoch_val_accuracy": ("a number in [0, 1]", _ACC, False),
    "seconds_total": ("a number", _NUM, False),
    "classes": ("a list of class names", is_list(is_str), False),
    "strategy": ("a strategy name", is_str, False),
    "num_train": ("an integer >= 0", is_int(0), False),
    "num_val": ("an integer >= 0", is_int(0), False),
    "class_counts": ("{split: {class: count}}",
                     lambda v: isinstance(v, dict) and all(isinstance(c, dict) and all(is_int(0)(n) for n in c.values())
                                                           for c in v.values()), False),
    "diverged": ("a list of {phase, epoch}", is_list(lambda d: isinstance(d, dict) and "phase" in d and "epoch" in d), False),
    "stopped_early": ("null or a dict", optional(is_dict), False),
    "calibration": ("an object (temperature, ECE/NLL, reliability bins)", is_dict, False),
    "calibration.reliability_before": ("{confidence, accuracy, count} lists", is_dict, False),
    "calibration.reliability_after": ("{confidence, accuracy, count} lists", is_dict, False),
    "phases": ("a list of {name, epochs, seconds}",
               is_list(lambda p: isinstance(p, dict) and is_str(p.get("name")) and is_int(0)(p.get("epochs"))
                       and _NUM(p.get("seconds")) and optional(_ACC)(p.get("val_accuracy"))
                       and optional(_ACC)(p.get("best_val_accuracy"))), False),
}

HISTORY_SCHEMA: Schema = {
    "epoch": ("an integer >= 1", is_int(1), True),
    "phase": ("a phase name", is_str, True),
    "val_accuracy": ("a number in [0, 1]", _ACC, True),
    "val_loss": ("a number", _NUM, False),
    "train_loss": ("a number", _NUM, False),
    "train_accuracy": ("a number in [0, 1]", _ACC, False),
    "elapsed": ("a number", _NUM, False),
    "seconds": ("a number", _NUM, False),
}

COMPARE_SCHEMA: Schema = {"strategies": ("an object {strategy: summary}", is_dict, False)}

PREDICTION_COLUMNS = ("path", "label", "predicted", "confidence", "true_class_probability")
LABEL_ISSUE_COLUMNS = ("rank", "path", "split", "given_label", "suggested_label", "label_quality")

FREEZE_AUTO_SCHEMA: Schema = {
    "candidates": ("a list of {label, depth, val_accuracy, seconds}",
                   is_list(lambda r: isinstance(r, dict) and is_str(r.get("label")) and is_int()(r.get("depth"))
                           and _ACC(r.get("val_accuracy")) and _NUM(r.get("seconds")), 1), True),
    "chosen_depth": ("an integer or null", optional(is_int()), False),
}

PLAN_SCHEMA: Schema = {  # plan.json of --time-limit / --backbone auto (workflows/plan.py)
    "candidates": ("a list of {backbone, probe_accuracy (or null: skipped)}",
                   is_list(lambda r: isinstance(r, dict) and is_name(r.get("backbone"))
                           and optional(_ACC)(r.get("probe_accuracy")), 1), True),
    "chosen.backbone": ("a backbone name", is_name, True),
    "chosen.schedule": ("a text", is_str, True),
    "reason": ("a text", is_str, False),
    "time_limit_seconds": ("a number > 0 or null", optional(is_number(0)), False),
}

LR_FIND_SCHEMA: Schema = {
    "lrs": ("a list of numbers", is_list(_NUM, 1), True),
    "losses": ("a list of numbers", is_list(_NUM), True),
    "smoothed": ("a list of numbers", is_list(_NUM), True),
    "suggestion": ("a number > 0 or null", optional(is_number(0)), False),
}


def check_report_file(data: Any, schema: Schema, path: Path | str, where: str = "") -> Any:
    return check(data, schema, path, ConfigError, REPORT_FIX, where)


def parse_prediction_row(row: dict[str, Any], path: Path | str, line: int) -> dict[str, Any]:
    """A ``predictions.csv`` row with its probabilities as floats in [0, 1]."""
    for column in PREDICTION_COLUMNS:
        if row.get(column) is None:
            raise ConfigError(f"'{path}' (line {line}) has no column '{column}' (expected "
                              f"{', '.join(PREDICTION_COLUMNS)}). {REPORT_FIX}")
    for column in ("confidence", "true_class_probability"):
        try:
            value = float(row[column])
        except ValueError:
            value = math.nan
        if not 0 <= value <= 1:
            raise ConfigError(f"'{path}' (line {line}): column '{column}' must be a probability in [0, 1], "
                              f"got {_show(row[column])}. {REPORT_FIX}")
        row[column] = value
    return row


# ------------------------------------------------ exported models: ONNX metadata and <file>.json

EXPORT_FORMAT_VERSION = 1
EXPORT_FIX = "Export it again with 'graft export RUN_DIR --format onnx'."


def check_export_meta(meta: Any, path: Path | str) -> dict[str, Any]:
    """The ``graftkit`` metadata of an exported model (ONNX ``metadata_props``, and the sidecar
    ``<file>.json``): what predicting with it reads."""
    schema: Schema = {
        "format_version": (f"an integer from 1 to {EXPORT_FORMAT_VERSION}", is_int(1, EXPORT_FORMAT_VERSION), True),
        "classes": ("a list of at least 2 distinct class names", is_list(is_name, 2, unique=True), True),
        "backbone": ("a backbone name", is_name, True),
        **_preprocessing_schema(),
        "calibration.temperature": ("a number > 0", is_number(1e-6), True),
        "outputs": ("a list of output names", is_list(is_name, 1), True),
    }
    check(meta, schema, path, CheckpointError, EXPORT_FIX)
    return _check_resize(meta, path, EXPORT_FIX)
