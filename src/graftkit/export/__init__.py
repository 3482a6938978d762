"""Exporting a trained model to ONNX, int8 ONNX or TorchScript, checked against PyTorch."""
from .api import FORMATS, ExportCheckFailed, ExportResult, export_model

__all__ = ["FORMATS", "ExportCheckFailed", "ExportResult", "export_model"]
