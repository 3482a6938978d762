from .freeze import Phase, build_phases, phase_at, warmup_cosine
from .param_groups import build_optimizer, set_learning_rates

__all__ = ["Phase", "build_optimizer", "build_phases", "phase_at", "set_learning_rates", "warmup_cosine"]
