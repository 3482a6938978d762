"""The search space of ``graft sweep``: the default one, a YAML file that changes it, and the
parameters one Optuna trial draws from it.

A space file maps ``TrainConfig`` field names (as in ``config.json``) to one of:

* a list: the choices (``backbone: [efficientnet_lite0, efficientnet_lite1]``);
* ``{low: A, high: B}``: a range, whole numbers when both ends are (``epochs: {low: 2, high: 8}``),
  ``log: true`` for a log scale (``lr: {low: 1.0e-4, high: 1.0e-2, log: true}``), ``step:`` optional;
* a single value: fixed in every trial (``image_size: 160``);
* ``null``: drop that key of the default space (the run's default is used).

Keys of the file replace the same keys of the default space; the other defaults stay.
``freeze`` and ``finetune_lr`` are drawn only in trials whose strategy is ``fine-tune``.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from pathlib import Path
from typing import Any

from ..config import FINE_TUNE_ONLY, TrainConfig
from ..errors import ConfigError

DEFAULT_SPACE: dict[str, Any] = {
    "backbone": ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
    "strategy": ["fine-tune", "feature-extraction"],
    "freeze": {"low": 0, "high": 6},
    "lr": {"low": 3e-4, "high": 3e-2, "log": True},
    "finetune_lr": {"low": 1e-5, "high": 1e-3, "log": True},
    "epochs": {"low": 2, "high": 8},
    "augment": ["light", "none", "strong"],
    "label_smoothing": {"low": 0.0, "high": 0.2},
}
# Where a trial runs and what it writes belong to the sweep, not to its space; the best's settings
# must be a `graft train` command, so fields without a flag are not swept either.
NOT_SWEPT = ("data_dir", "out_dir", "resume", "cache_dir", "progress", "track", "track_uri", "split_file",
             "max_seconds", "freeze_auto", "warmup_fraction", "channels_last")
RANGE_KEYS = {"low", "high", "log", "step"}


def load_space(path: Path | None) -> dict[str, Any]:
    """The default space changed by the YAML file at ``path`` (None: the default), validated."""
    space = dict(DEFAULT_SPACE)
    if path is not None:
        for key, spec in _read_yaml(Path(path)).items():
            if spec is None:
                space.pop(key, None)
            else:
                space[key] = spec
    for key, spec in space.items():
        check_spec(key, spec, path)
    return space


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # a dependency of optuna, so present with graftkit[sweep]

    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read space file '{path}' ({exc.strerror or exc}).") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"space file '{path}' is not valid YAML ({str(exc).splitlines()[0]}).") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"space file '{path}' must map setting names to choices, ranges or values "
                          f"(e.g. 'lr: {{low: 1.0e-4, high: 1.0e-2, log: true}}'); see docs/sweep.md.")
    return loaded


def check_spec(key: str, spec: Any, path: Path | None = None) -> None:
    """One-line ConfigError naming ``key`` when it is not a setting or its spec is malformed."""
    where = f"space file '{path}'" if path else "the search space"
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_SWEPT]
    if key not in fields:
        close = difflib.get_close_matches(str(key), fields, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: '{key}' is not a setting a sweep can vary.{hint}")
    if isinstance(spec, list):
        if not spec or not all(isinstance(c, (str, int, float, bool)) for c in spec):
            raise ConfigError(f"{where}: '{key}' must list one or more plain values (strings or numbers).")
    elif isinstance(spec, dict):
        if set(spec) - RANGE_KEYS or not {"low", "high"} <= set(spec):
            raise ConfigError(f"{where}: '{key}' must be a range {{low: A, high: B}} (optional log, step); "
                              f"got keys {sorted(spec)}.")
        low, high = spec["low"], spec["high"]
        if not all(_number(v) for v in (low, high)) or not low <= high:
            raise ConfigError(f"{where}: '{key}' needs numbers low <= high, got low {low!r}, high {high!r}.")
        if spec.get("log") and not low > 0:
            raise ConfigError(f"{where}: '{key}' on a log scale needs low > 0, got {low!r}.")
        if "step" in spec and not (_number(spec["step"]) and spec["step"] > 0):
            raise ConfigError(f"{where}: '{key}' step must be a number > 0, got {spec['step']!r}.")
    elif not isinstance(spec, (str, int, float, bool)):
        raise ConfigError(f"{where}: '{key}' must be a list of choices, a {{low, high}} range or one value.")


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int_range(spec: dict) -> bool:
    return all(isinstance(spec[k], int) for k in ("low", "high")) and isinstance(spec.get("step", 1), int)


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """The settings of one trial: drawn where the space varies, fixed values as given."""
    params: dict[str, Any] = {}
    for key, spec in _strategy_first(space):
        if key in FINE_TUNE_ONLY and params.get("strategy", fixed_strategy(space)) != "fine-tune":
            continue
        if isinstance(spec, list):
            params[key] = trial.suggest_categorical(key, spec)
        elif isinstance(spec, dict) and _is_int_range(spec):
            params[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1),
                                            log=bool(spec.get("log")))
        elif isinstance(spec, dict):
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), step=spec.get("step"),
                                              log=bool(spec.get("log")))
        else:
            params[key] = spec
    return params


def _strategy_first(space: dict[str, Any]) -> list[tuple[str, Any]]:
    """The space's items, ``strategy`` first (which settings apply depends on it)."""
    return sorted(space.items(), key=lambda item: item[0] != "strategy")


def fixed_strategy(space: dict[str, Any]) -> str:
    spec = space.get("strategy", TrainConfig.strategy)
    return spec if isinstance(spec, str) else "fine-tune"


def default_params(space: dict[str, Any], base: TrainConfig) -> dict[str, Any]:
    """Trial 0: the run's default for every drawn setting (``base``, resolved), or the nearest the
    space allows when the default lies outside it (the first choice, or the range end)."""
    params: dict[str, Any] = {}
    for key, spec in _strategy_first(space):
        if not isinstance(spec, (list, dict)):
            continue
        strategy = params.get("strategy", fixed_strategy(space))
        if key in FINE_TUNE_ONLY and strategy != "fine-tune":
            continue
        value = getattr(base.replace(strategy=strategy) if key == "epochs" else base, key)
        if isinstance(spec, list):
            params[key] = value if value in spec else spec[0]
        else:
            value = min(max(value, spec["low"]), spec["high"])
            params[key] = int(value) if _is_int_range(spec) else float(value)
    return params
