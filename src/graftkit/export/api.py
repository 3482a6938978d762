"""``export_model``: write a verified ONNX / int8 ONNX / TorchScript file and its ``<file>.json``.

The export is the plain eval model (no BatchNorm folding, no fused kernels: those exist only inside
graftkit's own training and predict), with two outputs, ``logits (B, K)`` and ``features (B, F)``
(the pooled features before the head). The input is ``(B, 3, H, W)`` float32, normalised as the
metadata says, at the model's own image size: the TF-"same" padding of the EfficientNet-Lite
backbones depends on the input size, so the size is fixed and only the batch is dynamic.

The file is written under a temporary name in the target folder, checked against the PyTorch model
(fp32, eager) on real images, and renamed only when the check passes: a failed check leaves nothing.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from .._version import __version__
from ..engine.checkpoint import load_model, resolve_model_path
from ..errors import ConfigError, GraftError
from ..fileio import atomic_write_text
from ..runfiles_schema import EXPORT_FORMAT_VERSION
from .check import compare_outputs, find_images

FORMATS = ("onnx", "torchscript", "onnx-int8")
DEFAULT_NAMES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "torchscript": "model.torchscript.pt"}
FP32_TOLERANCE = 1e-4  # max abs logit difference, fp32 export against PyTorch fp32 eager
INT8_MIN_AGREEMENT = 0.99  # top-1 agreement of an int8 export with PyTorch
FIXED_SIZE_NOTE = ("the input size is fixed at {size}x{size}: TF-'same' padding (EfficientNet-Lite) depends on it; "
                   "predict resizes every image (shorter side to {resize}, centre crop {size})")


class ExportCheckFailed(GraftError):
    """The exported model does not agree with the PyTorch model within tolerance."""


class ExportModule(nn.Module):
    """``(B, 3, H, W)`` normalised images → ``(logits (B, K), features (B, F))``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head

    def forward(self, x):
        features = self.backbone(x)
        return self.head(features), features


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sidecar: Path
    format: str
    check: dict
    metadata: dict


def export_metadata(meta: dict, fmt: str, source: Path) -> dict:
    """What a user of the file needs: classes, preprocessing, temperature, outputs, provenance."""
    pre = meta["preprocessing"]
    calibration = meta.get("calibration") if isinstance(meta.get("calibration"), dict) else {}
    temperature = calibration.get("temperature", 1.0)
    return {
        "format_version": EXPORT_FORMAT_VERSION, "format": fmt, "classes": list(meta["classes"]),
        "backbone": meta["backbone"], "num_features": meta.get("num_features"),
        "preprocessing": {k: pre[k] for k in ("image_size", "resize", "mean", "std") if k in pre}
        | {"crop": "center", "scale": "0-1 then normalise", "layout": "NCHW float32, RGB"},
        "input": {"name": "input", "shape": ["batch", 3, pre["image_size"], pre["image_size"]],
                  "fixed_size": True, "note": FIXED_SIZE_NOTE.format(size=pre["image_size"], resize=pre["resize"])},
        "outputs": ["logits", "features"],
        "calibration": {"temperature": float(temperature) if isinstance(temperature, (int, float)) else 1.0},
        "source_model": str(source), "weights_blake2b": meta.get("weights_blake2b"),
        "graftkit_version": __version__,
    }


def _target(model_folder: Path, fmt: str, out: Path | None) -> Path:
    out = Path(out) if out is not None else model_folder / DEFAULT_NAMES[fmt]
    if out.is_dir():
        raise ConfigError(f"--out '{out}' is a folder; pass a file name such as '{out / DEFAULT_NAMES[fmt]}'.")
    if fmt.startswith("onnx") and out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out '{out}' must end in .onnx for --format {fmt} (graft predict recognises "
                          f"ONNX models by it).")
    if not out.parent.is_dir():
        raise ConfigError(f"folder '{out.parent}' of --out does not exist. Create it or pass another --out.")
    return out


def _temp_beside(target: Path) -> Path:
    """A new empty file beside ``target``, mode 0666 less the umask (as ``open`` makes files; mkstemp's
    0600 would keep the exported model from being shared like the user's other files)."""
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _verdict(fmt: str, check: dict) -> str | None:
    """Why the check failed, or None."""
    if fmt == "onnx-int8":
        if check["top1_agreement"] < INT8_MIN_AGREEMENT:
            return f"top-1 agreement {check['top1_agreement']:.1%} < {INT8_MIN_AGREEMENT:.0%}"
    elif not check["max_abs_logit_diff"] <= FP32_TOLERANCE:  # NaN fails too
        return f"max abs logit difference {check['max_abs_logit_diff']:.2e} > {FP32_TOLERANCE:.0e}"
    return None


def export_model(model_path: str | Path, fmt: str = "onnx", out: str | Path | None = None,
                 opset: int | None = None, check_images: str | Path | None = None,
                 warn: Callable[[str], None] = lambda message: None) -> ExportResult:
    """Export the model of a run folder to ``fmt`` and check it; see the module docstring.

    Raises:
        ExportCheckFailed: the export disagrees with PyTorch beyond tolerance (no file is left).
        ConfigError: an unknown format or a bad ``out``.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if opset is not None and fmt == "torchscript":
        raise ConfigError("--opset applies to ONNX formats only; drop it for --format torchscript.")
    if fmt.startswith("onnx"):
        from .onnx import import_onnx

        import_onnx()  # a missing extra is named before any work
    folder = resolve_model_path(model_path)
    target = _target(folder, fmt, out)
    model, meta = load_model(folder)  # the plain eval model: fold_bn is a training-time speed-up only
    module = ExportModule(model).eval()
    metadata = export_metadata(meta, fmt, folder)
    pre, size = meta["preprocessing"], int(meta["preprocessing"]["image_size"])
    images = find_images(meta, folder, Path(check_images) if check_images else None, "val", warn)
    tmp = _temp_beside(target)
    try:
        if fmt == "torchscript":
            from .torchscript import export_torchscript

            run = export_torchscript(module, size, tmp, metadata)
        else:
            from .onnx import export_onnx, onnx_runner, quantize_int8

            export_onnx(module, size, tmp, opset, metadata)
            if fmt == "onnx-int8":
                calibration = find_images(meta, folder, Path(check_images) if check_images else None, "train", warn)
                metadata["int8"] = {"calibration_images": calibration.source, "quant_format": "QDQ",
                                    "weights": "int8 per channel", "activations": "uint8, min/max calibrated"}
                quantize_int8(tmp, tmp, calibration.squares, pre, metadata)
            run = onnx_runner(tmp)
        check = compare_outputs(module, run, images, pre)
        failure = _verdict(fmt, check)
        if failure is not None:
            raise ExportCheckFailed(f"the {fmt} export of '{folder}' disagrees with the PyTorch model on "
                                    f"{check['source']}: {failure}. Nothing was written. Try another --opset, "
                                    f"or report it with 'graft --debug export ...'.")
        os.replace(tmp, target)
        sidecar = Path(f"{target}.json")
        try:
            atomic_write_text(sidecar, json.dumps({**metadata, "check": check}, indent=2))
        except GraftError:
            target.unlink(missing_ok=True)
            raise
        return ExportResult(target, sidecar, fmt, check, metadata)
    finally:
        tmp.unlink(missing_ok=True)
