"""Atomic checkpoints and reports: write to a temporary file in the same folder, then rename.

A checkpoint carries a SHA-256 checksum of everything it holds (tensors byte for byte), verified when it
is loaded, and it is loaded with ``weights_only=True``: a corrupted file is refused and a crafted one
runs no code. Temporary files left by a write that was killed are removed by the next write.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

CHECKSUM_KEY = "__checksum__"


def _write_atomic(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{path.name}.*.tmp"):  # left by an interrupted write
        stale.unlink(missing_ok=True)
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
    """torch.save ``state`` (with its checksum) to ``path`` so that a crash never leaves a partial file."""
    stamped = {**state, CHECKSUM_KEY: checksum(state)}
    _write_atomic(path, lambda handle: torch.save(stamped, handle))


def checksum(state: Any) -> str:
    """SHA-256 of a nested structure of dicts, lists, tensors and plain values (tensors byte for byte)."""
    digest = hashlib.sha256()
    _digest(state, digest)
    return digest.hexdigest()


def _digest(value: Any, digest: "hashlib._Hash") -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(repr(key).encode())
            _digest(value[key], digest)
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[" if isinstance(value, list) else b"(")
        for item in value:
            _digest(item, digest)
        digest.update(b"]")
    else:
        digest.update(repr(value).encode())


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
    """Load a checkpoint written by :func:`save_atomic` without executing code (``weights_only=True``) and verify
    its checksum (ValueError naming the file if it does not match: the file was changed or corrupted)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # an unpicklable payload, a truncated or foreign file
        raise ValueError(f"checkpoint {path} cannot be loaded safely (weights_only=True): {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint written by posterior")
    stored = state.pop(CHECKSUM_KEY, None)
    if stored is not None and stored != checksum(state):
        raise ValueError(f"checkpoint {path} is corrupted: its contents do not match the checksum written with them")
    return state
