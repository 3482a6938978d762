"""TorchScript export: traced at the model's input size, the batch dimension left free.

graftkit writes TorchScript and never loads one it is handed (a TorchScript file runs code): the check
loads only the file this process has just written. ``torch.jit`` is deprecated in torch 2.14 (it still
works; ONNX is the format to prefer).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn


def export_torchscript(module: nn.Module, image_size: int, path: Path,
                       metadata: dict) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Trace ``module``, save it to ``path`` (with the metadata as ``extra_files["graftkit.json"]``),
    and return ``inputs → (logits, features)`` of the module loaded back from that file."""
    example = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        traced = torch.jit.trace(module, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"graftkit.json": json.dumps(metadata)})
        written = torch.jit.load(str(path), map_location="cpu")  # the file this process just wrote

    def run(inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            logits, features = written(torch.from_numpy(inputs))
        return logits.numpy(), features.numpy()

    return run
