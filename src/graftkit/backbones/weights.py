"""Reading weight files safely: safetensors, or torch files with ``weights_only=True``.

Nothing a user hands graftkit is ever unpickled with arbitrary code execution.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pth``/``.pt``/``.bin`` without running code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file '{path}' does not exist. Check the path.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several types for a damaged header
            raise CheckpointError(f"'{path}' is not a readable safetensors file ({exc}). "
                                  f"Re-export it with safetensors.torch.save_file.") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except pickle.UnpicklingError as exc:  # weights_only refused something: maybe code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refused to load '{path}': it is not a plain tensor file ({first[:160]}). "
                              f"graftkit never unpickles code; save the weights with "
                              f"safetensors.torch.save_file or torch.save(model.state_dict()).") from None
    except Exception as exc:  # random bytes, text, a truncated zip: IndexError, KeyError, OSError ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"'{path}' is not a readable weights file ({type(exc).__name__}"
                              f"{': ' + first[:120] if first else ''}). Pass a .safetensors file or one "
                              f"saved with torch.save(model.state_dict()); graftkit never unpickles "
                              f"code.") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"'{path}' does not hold a state dict of tensors. "
                              f"Save one with torch.save(model.state_dict(), path).")
    return obj


def load_weights_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly; on mismatch say which keys differ and what to do."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    # A classifier of another task is expected in a downloaded file: drop it, the head is ours.
    state = {k: v for k, v in state.items() if k in own or not k.startswith(("classifier.", "fc.", "head."))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} of another shape (e.g. {wrong_shape[0]})")
        raise CheckpointError(f"weights from '{source}' do not fit this backbone: {', '.join(parts)}. "
                              f"Use weights saved from the same architecture (timm key names).")
    module.load_state_dict(state, strict=True)
