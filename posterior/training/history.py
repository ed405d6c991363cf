"""Per-iteration records of a training run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class TrainingHistory:
    """One entry per iteration.

    Attributes:
        iteration: the iteration's index.
        loss: the loss the optimizer stepped on.
        log_z_batch: mean(log Q - log p_F) over the iteration's forward batch (an ELBO of log Z when
            the batch is on-policy); None for iterations that trained on replayed or pooled
            trajectories, which estimate nothing.
        log_z_learned: the objective's learned log Z after the step (None if it has none).
        seconds: wall-clock seconds of the step.
    """

    iteration: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    log_z_batch: list[float | None] = field(default_factory=list)
    log_z_learned: list[float | None] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def append(self, iteration: int, loss: float, log_z_batch: float | None, log_z_learned: float | None,
               seconds: float) -> None:
        self.iteration.append(iteration)
        self.loss.append(loss)
        self.log_z_batch.append(log_z_batch)
        self.log_z_learned.append(log_z_learned)
        self.seconds.append(seconds)

    def median_seconds(self, skip: int = 5) -> float:
        """Median seconds per iteration after the first ``skip`` (warm-up) iterations."""
        times = self.seconds[skip:] if len(self.seconds) > skip else self.seconds
        return statistics.median(times) if times else float("nan")

    def recent_log_z_batch(self, last: int = 50) -> float | None:
        """Median of the last ``last`` forward batches' log Z estimates (None if there were none)."""
        values = [v for v in self.log_z_batch if v is not None][-last:]
        return statistics.median(values) if values else None

    def log_z_batch_curve(self, window: int = 100) -> list[tuple[int, float]]:
        """(iterations done, median forward-batch log Z estimate in that window) for each complete
        window of ``window`` iterations."""
        curve = []
        for end in range(window, len(self.log_z_batch) + 1, window):
            values = [v for v in self.log_z_batch[end - window:end] if v is not None]
            if values:
                curve.append((end, statistics.median(values)))
        return curve

    def mean_recent(self, name: str, last: int) -> float | None:
        """Mean of the last ``last`` non-None entries of the record ``name`` (None if none)."""
        values = [v for v in getattr(self, name)[-last:] if v is not None]
        return sum(values) / len(values) if values else None
