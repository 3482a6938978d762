"""Saving and loading a trained model: ``model.safetensors`` + ``model.json``, nothing pickled."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..fileio import atomic_write_bytes, atomic_write_text
from ..heads import Classifier

FORMAT_VERSION = 1


def save_model(out_dir: Path, model: Classifier, meta: dict[str, Any]) -> None:
    """Write ``model.safetensors`` (weights) and ``model.json`` (all that predicting needs)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out_dir / "model.safetensors", save(state))
    atomic_write_text(out_dir / "model.json", json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2))


def resolve_model_path(path: str | Path) -> Path:
    """A run folder, ``model.json`` or ``model.safetensors`` → the folder holding both."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / "model.json").is_file() or not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"no trained model at '{path}': expected model.json and model.safetensors "
                              f"(a run folder written by 'graft train').")
    return folder


def load_model(path: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the classifier from a run folder; weights must match exactly."""
    from safetensors.torch import load_file

    from ..backbones import create_backbone

    folder = resolve_model_path(path)
    try:
        meta = json.loads((folder / "model.json").read_text())
        classes, backbone_name = list(meta["classes"]), str(meta["backbone"])
        dropout = float(meta["head"]["dropout"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"'{folder / 'model.json'}' is damaged or not graftkit's ({exc}). "
                              f"Retrain, or restore the file from the run folder.") from None
    try:
        state = load_file(str(folder / "model.safetensors"))
    except Exception as exc:
        raise CheckpointError(f"'{folder / 'model.safetensors'}' cannot be read ({exc}). "
                              f"Retrain, or restore the file.") from None
    model = Classifier(create_backbone(backbone_name, pretrained=False), len(classes), dropout)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"'{folder / 'model.safetensors'}' does not match model.json "
                              f"({len(classes)} classes, backbone {backbone_name}): {first}") from None
    model.eval()
    return model, meta
