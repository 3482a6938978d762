"""An exponential moving average of the weights (``--ema``), on timm's ``ModelEmaV3``.

After every optimizer step the average moves towards the weights: ``ema = d * ema + (1 - d) * w``
over the whole state dict (parameters and BatchNorm statistics). timm's warm-up keeps ``d`` small
at first (``d_k = 1 - k ** -0.75`` from the second step, capped at ``decay``; the first step copies
the weights), so the average follows the fast early changes and then settles. Validation of the
averaged weights swaps them into the model for the duration of a ``with`` block.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import torch
from torch import nn

WARMUP_POWER = 0.75  # timm's value for runs of fewer than ~10k steps


class WeightAverage:
    """The EMA of ``model``'s state dict, with the step count its warm-up needs."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        from timm.utils import ModelEmaV3

        self.model, self.steps = model, 0
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True, warmup_power=WARMUP_POWER)

    def decay_at(self, step: int) -> float:
        """The decay of update number ``step`` (1, 2, ...): 0 for the first (a copy)."""
        return self.ema.get_decay(step)

    def update(self) -> None:
        """Move the average towards the model's weights after an optimizer step."""
        self.steps += 1
        self.ema.update(self.model, step=self.steps)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the averaged weights and the step count."""
        return {"weights": self.ema.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state["weights"])
        self.steps = int(state["steps"])

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own weights again after it."""
        own = copy.deepcopy(self.model.state_dict())
        with torch.no_grad():
            self.model.load_state_dict(self.ema.module.state_dict())
        try:
            yield
        finally:
            with torch.no_grad():
                self.model.load_state_dict(own)
