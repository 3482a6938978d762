"""Predicting with an ONNX model graftkit exported, on onnxruntime, without importing torch.

The model's metadata (ONNX ``metadata_props["graftkit"]``, else the ``<file>.json`` written beside it)
gives the classes, the preprocessing and the calibration temperature. Images are decoded and
normalised in numpy (:mod:`graftkit.data.model_input`) exactly as the run folder's predict does.
Only ``.onnx`` files are taken: graftkit never loads TorchScript or pickled files it is handed
(both can run code).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .calibration import softmax
from .data.model_input import Prediction, check_tta, iter_predictions, normalize_squares
from .errors import CheckpointError, ConfigError
from .hardware import usable_cores
from .runfiles_schema import check_export_meta

METADATA_KEY = "graftkit"
BATCH_SIZE = 32


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError('running an ONNX model needs onnxruntime: pip install "graftkit[onnx]"') from None
    return onnxruntime


def session_options(threads: int | None = None):
    """onnxruntime session options: all graph optimisations, ``threads`` intra-op threads (default:
    every core this process may use)."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or usable_cores()
    options.log_severity_level = 3  # errors only: its warnings are for developers of the graph
    return options


def read_export_meta(path: Path, session) -> dict:
    """The graftkit metadata of ``path``: from the model, else from ``<path>.json``; one-line error when
    neither is there (an ONNX file graftkit did not export)."""
    text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    where: str | Path = f"{path} (metadata)"
    sidecar = Path(f"{path}.json")
    if text is None and sidecar.is_file():
        text, where = sidecar.read_text(errors="replace"), sidecar
    if text is None:
        raise CheckpointError(f"'{path}' was not exported by graftkit (no '{METADATA_KEY}' metadata and no "
                              f"'{sidecar.name}' beside it), so its classes and preprocessing are unknown. "
                              f"Export the model with 'graft export RUN_DIR --format onnx'.")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"'{where}' is not valid JSON ({exc}). Export the model again.") from None
    return check_export_meta(meta, where)


class OnnxClassifier:
    """An exported ``.onnx`` model ready to use, with the interface of ``ImageClassifier.predict``."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        path = Path(path)
        if path.suffix.lower() != ".onnx":
            raise CheckpointError(f"'{path}' is not an .onnx file. Pass a run folder or a model exported "
                                  f"with 'graft export'.")
        if not path.is_file():
            raise CheckpointError(f"'{path}' does not exist. Check the path, or export the model with "
                                  f"'graft export RUN_DIR --format onnx'.")
        ort = import_onnxruntime()
        try:
            self.session = ort.InferenceSession(str(path), session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a damaged or foreign file
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"'{path}' cannot be loaded as an ONNX model ({first}). Export the model "
                                  f"again with 'graft export'.") from None
        self.path = path
        self.meta = read_export_meta(path, self.session)
        self.classes: list[str] = list(self.meta["classes"])
        self.preprocessing = self.meta["preprocessing"]
        self.decode_size = int(self.preprocessing["resize"])  # the side of the decoded squares it takes
        self.temperature = float(self.meta["calibration"]["temperature"])
        self.input_name = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        if "logits" not in names:
            raise CheckpointError(f"'{path}' has no 'logits' output (outputs: {', '.join(names)}). "
                                  f"Export the model again with 'graft export'.")
        self.output_names = names

    def forward(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """``(N, 3, H, W)`` float32 model input → ``{"logits": (N, K), "features": (N, F)}``."""
        outputs: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        for start in range(0, len(inputs), BATCH_SIZE):
            for name, value in zip(self.output_names,
                                   self.session.run(None, {self.input_name: inputs[start:start + BATCH_SIZE]})):
                outputs[name].append(value)
        return {name: np.concatenate(values) for name, values in outputs.items()}

    def outputs_for_squares(self, squares: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(N, K)`` probabilities and ``(N, F)`` pooled features for decoded ``(S, S, 3)`` uint8
        squares (``S = decode_size``): what a server's unknown detector needs."""
        out = self.forward(normalize_squares(np.asarray(squares), self.preprocessing))
        return softmax(out["logits"], self.temperature), out["features"]

    def logits_squares(self, squares: np.ndarray) -> np.ndarray:
        """``(N, K)`` logits for decoded ``(N, S, S, 3)`` uint8 squares."""
        return self.forward(normalize_squares(squares, self.preprocessing))["logits"]

    def proba_squares(self, squares: np.ndarray) -> np.ndarray:
        """``(N, K)`` probabilities (softmax of the logits over the calibration temperature)."""
        return softmax(self.logits_squares(squares), self.temperature)

    def proba_squares_flip(self, squares: np.ndarray) -> np.ndarray:
        """``(N, K)`` probabilities averaged over the centre crop and its mirror image (``--tta``)."""
        inputs = normalize_squares(squares, self.preprocessing)
        mirrored = np.ascontiguousarray(inputs[..., ::-1])
        return (softmax(self.forward(inputs)["logits"], self.temperature) +
                softmax(self.forward(mirrored)["logits"], self.temperature)) / 2

    def iter_predict(self, paths: Sequence[str | Path] | str | Path, top_k: int = 1, on_skip=None,
                     on_progress=None, reject_unknown: bool = False, tta: bool = False,
                     tta_crops: int = 1) -> Iterator[Prediction]:
        """Top-k classes for every image under ``paths``, a chunk at a time (as ``ImageClassifier``);
        ``tta``: centre crop + mirror image (the ONNX model takes the centre crop only: no ``tta_crops``)."""
        if reject_unknown:
            raise ConfigError(f"'{self.path}' carries no unknown detector (the training features stay in the run "
                              f"folder): predict --reject-unknown with the run folder instead.")
        check_tta(tta, tta_crops)
        if tta_crops != 1:
            raise ConfigError(f"--tta-crops {tta_crops} needs the run folder ('{self.path}' predicts the centre "
                              f"crop only): predict with the run folder, or use --tta alone (centre + flip).")
        return iter_predictions(paths, int(self.preprocessing["resize"]), self.classes,
                                self.proba_squares_flip if tta else self.proba_squares, top_k, on_skip, on_progress)

    def predict(self, paths: Sequence[str | Path] | str | Path, top_k: int = 1, on_skip=None,
                on_progress=None, tta: bool = False, tta_crops: int = 1) -> list[Prediction]:
        return list(self.iter_predict(paths, top_k, on_skip, on_progress, tta=tta, tta_crops=tta_crops))
