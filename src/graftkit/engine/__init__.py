from .fit import Run, fit
from .prepare import Prepared, TrainingData, prepare

__all__ = ["Prepared", "Run", "TrainingData", "fit", "prepare"]
