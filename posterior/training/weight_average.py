"""Exponential moving average of a model's weights, for sampling and evaluation.

The average is kept beside the trained parameters (no copy of the module, so a large frozen prior or
reward inside it is not duplicated) and swapped in only while it is used.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightAverage:
    """e_k = d * e_(k-1) + (1 - d) * theta_k after every update k, starting from e_1 = theta_1.

    Args:
        parameters: the trained parameters (any shapes, devices and floating dtypes).
        decay: d in (0, 1); the average spans about 1 / (1 - d) updates.
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.parameters = list(parameters)
        self.decay = float(decay)
        self.averaged = [p.detach().clone() for p in self.parameters]
        self.count = 0
        self._average = get_ema_multi_avg_fn(self.decay)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the parameters' current values into the average (after an optimizer step)."""
        current = [p.detach() for p in self.parameters]
        if self.count == 0:
            _copy(self.averaged, current)
        else:
            self._average(self.averaged, current, self.count)
        self.count += 1

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the parameters hold the average (unchanged before the first update);
        their trained values are restored on exit."""
        if self.count == 0:
            yield
            return
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.parameters]
            _copy(self.parameters, self.averaged)
        try:
            yield
        finally:
            with torch.no_grad():
                _copy(self.parameters, trained)

    @torch.no_grad()
    def copy_to_parameters(self) -> None:
        """Overwrite the parameters with the average for good (e.g. to hand a trained model to a user)."""
        if self.count:
            _copy(self.parameters, self.averaged)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "count": self.count, "averaged": [t.clone() for t in self.averaged]}

    def load_state_dict(self, state: dict) -> None:
        if float(state["decay"]) != self.decay or len(state["averaged"]) != len(self.averaged):
            raise ValueError(f"weight average of decay {state['decay']} over {len(state['averaged'])} tensors "
                             f"cannot be loaded into one of decay {self.decay} over {len(self.averaged)}")
        for index, (saved, own) in enumerate(zip(state["averaged"], self.averaged)):
            if saved.shape != own.shape:  # copy_ would broadcast a smaller tensor without a word
                raise ValueError(f"weight average tensor {index}: saved shape {tuple(saved.shape)}, "
                                 f"expected {tuple(own.shape)}")
        with torch.no_grad():
            _copy(self.averaged, state["averaged"])
        self.count = int(state["count"])


def _copy(destinations: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """destination.copy_(source) pairwise, in place (callers hold torch.no_grad())."""
    for destination, source in zip(destinations, sources, strict=True):
        destination.copy_(source)
