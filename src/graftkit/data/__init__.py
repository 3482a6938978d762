"""Finding, checking and decoding images, and turning them into model inputs.

The names load on first use (PEP 562): ``graftkit.data.images``, ``.decoded``, ``.scan`` and
``.model_input`` are torch-free, so the ONNX predict path (and a server) can decode and preprocess
images without importing torch; the transforms and datasets, which need torch, load when asked for.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DecodedImages": "decoded", "decode_square": "decoded",
    "DecodedDataset": "folders", "ImageBatches": "folders", "batch_order": "folders", "step_share": "folders",
    "view_schedule": "folders",
    "IMAGE_EXTENSIONS": "images", "load_image": "images",
    "BadFile": "scan", "DataScan": "scan", "Sample": "scan", "check_image": "scan", "scan_data": "scan",
    "find_unlabeled_images": "unlabeled",
    "AUGMENTS": "transforms", "augment_key": "transforms", "build_batch_mix": "transforms",
    "build_eval_transform": "transforms", "build_train_transform": "transforms", "decode_size_for": "transforms",
    "make_view": "transforms",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'graftkit.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
