"""Saving and loading a trained model: ``model.safetensors`` + ``model.json``, nothing pickled."""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..fileio import atomic_write_bytes, atomic_write_text
from ..heads import Classifier
from ..runfiles_schema import FORMAT_VERSION, check_checkpoint, check_model_meta


def save_model(out_dir: Path, model: Classifier, meta: dict[str, Any]) -> None:
    """Write ``model.safetensors`` (weights) and ``model.json`` (all that predicting needs)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save(state)
    # The two files are written one after the other: model.json names the weights it belongs to, so
    # a crash or a full disk between the writes is caught on load, never a silent mismatch.
    atomic_write_bytes(out_dir / "model.safetensors", weights)
    atomic_write_text(out_dir / "model.json", json.dumps({"format_version": FORMAT_VERSION, **meta,
                                                          "weights_blake2b": weights_digest(weights)}, indent=2))


def weights_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


CHECKPOINT_NAME = "checkpoint.pt"


def capture_rng() -> dict[str, Any]:
    """Every random state training consumes, as types ``torch.load(weights_only=True)`` accepts."""
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]}


def restore_rng(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` atomically: a kill at any moment leaves the previous one whole."""
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
    atomic_write_bytes(out_dir / CHECKPOINT_NAME, buffer.getvalue())


def load_checkpoint(out_dir: Path, classes: list[str]) -> dict[str, Any]:
    """Read ``checkpoint.pt`` (never unpickling code) and check it fits ``classes``."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file() and (Path(out_dir) / "model.safetensors").is_file():
        raise CheckpointError(f"'{out_dir}' has a model but no {CHECKPOINT_NAME} (written by an older graftkit, "
                              f"which had none before the first checkpoint): it cannot be resumed. Start a new "
                              f"run with another --out, or use its model as it is.")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in '{out_dir}' to resume from (expected {CHECKPOINT_NAME}); "
                              f"the run stopped before its first checkpoint: start it again without --resume.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged or foreign file
        raise CheckpointError(f"'{path}' cannot be read as a graftkit checkpoint ({type(exc).__name__}). "
                              f"Start the run again without --resume.") from None
    check_checkpoint(state, path)
    saved = list(state.get("classes", []))
    if saved != list(classes):
        only_data = sorted(set(classes) - set(saved))
        only_ckpt = sorted(set(saved) - set(classes))
        raise CheckpointError(f"'{path}' has {len(saved)} classes, the data has {len(classes)} "
                              f"(only in data: {', '.join(only_data) or '-'}; only in checkpoint: "
                              f"{', '.join(only_ckpt) or '-'}). Resume with the data it was trained on, "
                              f"or start a new run.")
    return state


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
    from safetensors.torch import load

    from ..backbones import create_backbone

    folder = resolve_model_path(path)
    try:
        meta = json.loads((folder / "model.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"'{folder / 'model.json'}' is damaged or not graftkit's ({exc}). "
                              f"Retrain, or restore the file from the run folder.") from None
    check_model_meta(meta, folder / "model.json")  # every field predict and report use, or one line
    classes, backbone_name, dropout = list(meta["classes"]), meta["backbone"], float(meta["head"]["dropout"])
    try:
        weights = (folder / "model.safetensors").read_bytes()
        expected = meta.get("weights_blake2b")
        if isinstance(expected, str) and weights_digest(weights) != expected:
            raise CheckpointError(f"'{folder / 'model.safetensors'}' is not the file '{folder / 'model.json'}' was "
                                  f"written with (an interrupted write, or a file from another run). Retrain, or "
                                  f"restore both files together.")
        state = load(weights)
    except CheckpointError:
        raise
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
