"""Figures: samples against exact samples (2-D projections) and training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from posterior.core.optional import require


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use)."""
    matplotlib = require("matplotlib", "eval", "posterior.evaluation.plotting")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot", "eval", "posterior.evaluation.plotting")


def plot_samples(samples: torch.Tensor, exact: torch.Tensor | None, path: str | Path,
                 pairs: list[tuple[int, int]] | None = None, title: str = "") -> None:
    """Scatter 2-D projections of samples (K, d) and exact samples (M, d) side by side."""
    plt = _pyplot()
    d = samples.shape[1]
    pairs = pairs or ([(0, 1)] if d == 2 else [(0, 1), (0, 2), (d - 2, d - 1)])
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4.0), squeeze=False)
    x = samples.detach().cpu().numpy()
    y = None if exact is None else exact.detach().cpu().numpy()
    for ax, (i, j) in zip(axes[0], pairs):
        if y is not None:
            ax.scatter(y[:, i], y[:, j], s=2, alpha=0.3, c="tab:gray", label="exact")
        ax.scatter(x[:, i], x[:, j], s=2, alpha=0.4, c="tab:blue", label="sampler")
        ax.set_xlabel(f"x[{i}]")
        ax.set_ylabel(f"x[{j}]")
        finite = x[np.isfinite(x[:, [i, j]]).all(1)][:, [i, j]]
        if y is not None:
            finite = np.concatenate([finite, y[:, [i, j]]])
        lo, hi = np.percentile(finite, [0.5, 99.5], axis=0)
        pad = 0.1 * (hi - lo + 1e-9)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, markerscale=4, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(iterations: list[int], loss: list[float], log_z: list[float | None], path: str | Path,
                log_z_true: float | None = None) -> None:
    """Training loss (log scale) and the forward batches' log Z estimate against iteration (entries None, the
    replayed batches, are left out)."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    it = np.asarray(iterations)
    a.plot(it, np.abs(np.asarray(loss)) + 1e-12, lw=0.6)
    a.set_yscale("log")
    a.set_xlabel("iteration")
    a.set_ylabel("|loss|")
    kept = [(i, v) for i, v in zip(iterations, log_z) if v is not None]
    it = np.asarray([i for i, _ in kept])
    log_z = [v for _, v in kept]
    b.plot(it, log_z, lw=0.6, label="batch ELBO")
    if log_z_true is not None:
        b.axhline(log_z_true, c="k", ls="--", lw=0.8, label="log Z")
        lo = np.percentile(log_z, 5) if len(log_z) else log_z_true - 1
        b.set_ylim(min(lo, log_z_true - 1), log_z_true + 1)
    b.set_xlabel("iteration")
    b.set_ylabel("log Z estimate")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
