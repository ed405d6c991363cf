"""Evaluate a trained sampler against a target: log Z estimates, ESS, EUBO, W2."""

from __future__ import annotations

import math
from typing import Any

import torch

from posterior.core import metrics
from posterior.core.grids import power_grid
from posterior.paths.path_target import BoltzmannPath
from posterior.samplers.sampler import DiffusionSampler


@torch.no_grad()
def evaluate(sampler: DiffusionSampler, path: BoltzmannPath, *, num_samples: int = 2000,
             steps: int = 100, grid_power: float = 1.0, seed: int = 12345, log_z: float | None = None,
             exact_samples: torch.Tensor | None = None,
             exact_reference: torch.Tensor | None = None) -> dict[str, Any]:
    """Metrics of ``sampler`` on ``path`` from ``num_samples`` trajectories on a ``steps``-step grid.

    Args:
        grid_power: the grid's power (:func:`posterior.core.grids.power_grid`; 1: uniform).
        log_z: the exact log Z, if known (adds delta_log_z and delta_log_z_rw).
        exact_samples: (K, d) exact target samples for W2 and the EUBO.
        exact_reference: (K, d) a second independent exact set, for the W2 noise floor.
    Returns:
        dict with log_z_elbo, log_z_rw, log_z_rw_stderr (delta-method standard error of log_z_rw), ess,
        delta_log_z, delta_log_z_rw, eubo, w2, w2_floor
        (None where not computable) and ``samples`` (K, d) on the CPU.
    """
    generator = torch.Generator(device=next(sampler.parameters()).device).manual_seed(seed)
    times = power_grid(steps, grid_power)
    traj = sampler.forward_trajectories(num_samples, times, path, generator=generator,
                                        track_gradients=False)
    log_w = traj.log_weight
    out: dict[str, Any] = {
        "log_z_elbo": float(metrics.log_z_elbo(log_w)),
        "log_z_rw": float(metrics.log_z_importance(log_w)),
        "log_z_rw_stderr": float(metrics.log_z_importance_stderr(log_w)),
        "ess": float(metrics.effective_sample_size(log_w)),
        "zero_density_share": float((~torch.isfinite(traj.log_reward)).float().mean()),
        "delta_log_z": None, "delta_log_z_rw": None, "eubo": None, "w2": None, "w2_floor": None,
    }
    if log_z is not None:
        out["delta_log_z"] = abs(log_z - out["log_z_elbo"])
        out["delta_log_z_rw"] = abs(log_z - out["log_z_rw"])
    samples = traj.samples
    if exact_samples is not None:
        exact = exact_samples[:num_samples]
        back = sampler.backward_trajectories(exact, times, path, generator=generator,
                                             track_gradients=False)
        out["eubo"] = float(metrics.eubo(back.log_weight))
        finite = torch.isfinite(samples).all(-1)
        out["w2"] = metrics.wasserstein2(samples[finite], exact) if bool(finite.any()) else math.inf
        if exact_reference is not None:
            out["w2_floor"] = metrics.wasserstein2(exact_reference[:num_samples], exact)
    out["samples"] = samples.cpu()
    return out


REPEATED_METRICS = ("log_z_elbo", "log_z_rw", "log_z_rw_stderr", "ess", "delta_log_z", "delta_log_z_rw", "eubo", "w2",
                    "w2_floor")


def summarize_repeats(results: list[dict[str, Any]],
                      keys: tuple[str, ...] = REPEATED_METRICS) -> dict[str, Any]:
    """Mean, standard deviation (ddof 1; 0 for one result) and values of each metric over independent evaluations.

    Args:
        results: R >= 1 dicts from :func:`evaluate`; a key that is None in any of them is left out.
    Returns:
        {"count": R, key: {"mean", "std", "values"} for each key present in every result}.
    """
    if not results:
        raise ValueError("results: expected at least one evaluation, got none")
    summary: dict[str, Any] = {"count": len(results)}
    for key in keys:
        values = [r.get(key) for r in results]
        if any(v is None for v in values):
            continue
        v = torch.tensor(values, dtype=torch.float64)
        std = float(v.std()) if len(values) > 1 else 0.0
        summary[key] = {"mean": float(v.mean()), "std": std, "values": [float(x) for x in values]}
    return summary
