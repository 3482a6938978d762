from .fit import Run, fit

__all__ = ["Run", "fit"]
