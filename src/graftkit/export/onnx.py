"""ONNX export (torch's ``torch.export``-based exporter) and int8 static quantisation (onnxruntime).

Both exporters of torch 2.14 export timm's ``Conv2dSame`` (TF-"same" padding computed from the input
size) correctly at a fixed input size with a dynamic batch; the ``torch.export``-based one
(``dynamo=True``) is torch's default and supported path and is used for opset 18 and up (its
default), the deprecated TorchScript-based one only for an older ``--opset``.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.model_input import normalize_squares
from ..errors import ConfigError
from ..onnx_classifier import METADATA_KEY, import_onnxruntime, session_options

INPUT_NAME, OUTPUT_NAMES = "input", ("logits", "features")
DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter writes no lower opset
CALIBRATION_BATCH = 16


def import_onnx():
    try:
        import onnx
    except ImportError:
        raise ConfigError('exporting to ONNX needs onnx and onnxruntime: pip install "graftkit[onnx]"') from None
    import_onnxruntime()
    return onnx


def set_metadata(path: Path, metadata: dict) -> None:
    """Write ``metadata`` (JSON) into the model's ``metadata_props["graftkit"]``."""
    onnx = import_onnx()
    model = onnx.load(str(path))
    for prop in [p for p in model.metadata_props if p.key == METADATA_KEY]:
        model.metadata_props.remove(prop)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))
    model.doc_string = f"graftkit {metadata['backbone']} classifier: {', '.join(metadata['classes'][:10])}"
    onnx.save(model, str(path))


def export_onnx(module: nn.Module, image_size: int, path: Path, opset: int | None, metadata: dict) -> None:
    """``module``: ``(B, 3, H, W)`` → (logits, features), exported with a dynamic batch dimension.
    Opsets below 18 go through the TorchScript-based exporter (the other one writes 18 at least)."""
    onnx = import_onnx()
    example = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
        warnings.simplefilter("ignore")
        if opset is not None and opset < DYNAMO_MIN_OPSET:
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                              dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
                              opset_version=opset, dynamo=False)
        else:
            batch = torch.export.Dim("batch", min=1, max=65536)
            program = torch.onnx.export(module, (example,), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes={"x": {0: batch}}, opset_version=opset, dynamo=True,
                                        verbose=False)
            program.save(str(path))
    written = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                    if o.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:
        raise ConfigError(f"torch's ONNX exporter wrote opset {written}, not the --opset {opset} asked for. "
                          f"Pass --opset {written} or leave it out.")
    set_metadata(path, metadata)


def onnx_runner(path: Path) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``inputs → (logits, features)`` with onnxruntime on the file just written."""
    ort = import_onnxruntime()
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    return lambda inputs: tuple(session.run(list(OUTPUT_NAMES), {INPUT_NAME: inputs}))


def quantize_int8(fp32_path: Path, out_path: Path, squares: np.ndarray, preprocessing: dict,
                  metadata: dict) -> None:
    """Static int8 quantisation: per-channel int8 weights, uint8 activations with ranges calibrated
    (min/max) on ``squares`` (decoded training images), QDQ format (faster than QOperator on the CPUs
    measured: benchmarks/export_speed.py)."""
    import_onnx()
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.starts = iter(range(0, len(squares), CALIBRATION_BATCH))

        def get_next(self):
            start = next(self.starts, None)
            if start is None:
                return None
            return {INPUT_NAME: normalize_squares(squares[start:start + CALIBRATION_BATCH], preprocessing)}

    prepared = out_path.with_name(out_path.name + ".prep.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        prepared.unlink(missing_ok=True)
    set_metadata(out_path, metadata)
