"""``graft serve``: a trained model behind FastAPI (optional extra ``graftkit[serve]``)."""
from __future__ import annotations

from .app import Limits, build_app
from .predictor import Predictor, TorchPredictor, load_predictor

__all__ = ["Limits", "Predictor", "TorchPredictor", "build_app", "load_predictor"]
