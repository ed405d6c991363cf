"""Atomic checkpoints and reports: write to a temporary file in the same folder, then rename."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def _write_atomic(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(state: dict[str, Any], path: str | os.PathLike) -> None:
    """torch.save ``state`` to ``path`` so that a crash never leaves a partial file."""
    _write_atomic(path, lambda handle: torch.save(state, handle))


def write_json(data: Any, path: str | os.PathLike) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (creating the folder)."""
    _write_atomic(path, lambda handle: handle.write(json.dumps(data, indent=2).encode()))


def restore_generator(generator: torch.Generator, state: torch.Tensor) -> None:
    """Set a generator's state from a checkpoint. ``set_state`` takes a CPU byte tensor for every
    generator, CUDA ones included, while ``load(map_location=cuda)`` moves the saved state there."""
    generator.set_state(state.to("cpu", torch.uint8))


def check_same_settings(saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any],
                        resumable: tuple[str, ...], source: str) -> None:
    """Refuse to resume a run whose settings differ from its checkpoint's.

    Args:
        saved: the settings stored in the checkpoint (a dataclass as a dict).
        current: the settings of the run that resumes.
        defaults: every setting's default; one missing from ``saved`` (added after the checkpoint
            was written) counts as its default there.
        resumable: settings that may change on resume (e.g. the budget).
        source: names the checkpoint in the error.

    Raises:
        ValueError: naming each differing setting with its saved and current value.
    """
    saved = {**defaults, **saved}
    changed = sorted(k for k in current if k not in resumable and saved.get(k) != current[k])
    if changed:
        raise ValueError(f"checkpoint {source} was written with different settings: "
                         + ", ".join(f"{k}={saved.get(k)!r} (now {current[k]!r})" for k in changed))


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` without executing code (``weights_only=True``)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)
