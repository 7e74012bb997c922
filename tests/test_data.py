"""Data loaders: real on-disk formats written by the tests, seeded splits, clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from qrl.data import from_tensors, load_data, read_idx
from qrl.errors import ConfigError, DataError
from tests.formats import truncate, write_cifar10, write_cifar100, write_idx, write_mnist


def test_digits_split_is_seeded_disjoint_and_in_pixel_range() -> None:
    a, b, c = load_data("digits", seed=0), load_data("digits", seed=0), load_data("digits", seed=1)
    assert a.train.x.shape[1:] == (1, 8, 8) and a.num_classes == 10
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.test.x, c.test.x)
    assert float(a.train.x.min()) >= 0.0 and float(a.train.x.max()) <= 1.0
    # No image of the test split also sits in the training split.
    train_rows = {bytes(r.numpy().tobytes()) for r in a.train.x}
    overlap = sum(bytes(r.numpy().tobytes()) in train_rows for r in a.test.x)
    assert overlap <= 5  # digits holds a handful of exact duplicate images
    # Stratified: every class is in the test split in roughly its overall share.
    counts = torch.bincount(a.test.y, minlength=10)
    assert int(counts.min()) >= 40 and int(counts.max()) <= 50


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, n_train=60, n_test=20, gz=gz)
    data = load_data("mnist", root=tmp_path, seed=0, val_fraction=0.1)
    assert data.train.x.shape[1:] == (1, 28, 28)
    assert len(data.train) == 54 and len(data.val) == 6 and len(data.test) == 20
    raw = read_idx(tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else "")))
    assert torch.allclose(data.test.x[:, 0], torch.from_numpy(raw.astype(np.float32) / 255))


def test_fashion_mnist_finds_torchvision_layout(tmp_path: Path) -> None:
    write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    data = load_data("fashion_mnist", root=tmp_path)
    assert data.class_names[0] == "t-shirt" and len(data.test) == 20


def test_cifar10_and_cifar100_read_pickle_batches(tmp_path: Path) -> None:
    c10 = load_data("cifar10", root=write_cifar10(tmp_path / "c10", per_batch=10, n_test=10))
    assert c10.train.x.shape[1:] == (3, 32, 32) and len(c10.train) + len(c10.val) == 50
    c100 = load_data("cifar100", root=write_cifar100(tmp_path / "c100"))
    assert c100.num_classes == 100 and c100.class_names[3] == "class3"
    # Pixel (channel 0, row 0, col 1) of image 0 is byte 1 of its row-major 3072-byte record.
    with open(tmp_path / "c100" / "cifar-100-python" / "test", "rb") as f:
        first = pickle.load(f, encoding="bytes")[b"data"][0]
    assert float(c100.test.x[0, 0, 0, 1]) == pytest.approx(first[1] / 255)


def test_npz_loader_accepts_channels_last_uint8(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8),
        y_train=np.arange(40) % 4,
        x_test=rng.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8),
        y_test=np.arange(8) % 4,
    )
    data = load_data("npz", root=path)
    assert data.test.x.shape == (8, 3, 12, 12) and data.num_classes == 4


def test_unknown_name_and_missing_root_name_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown data set 'imagenet'"):
        load_data("imagenet")
    with pytest.raises(DataError, match=r"data\.root is not set.*train-images-idx3-ubyte"):
        load_data("mnist")
    with pytest.raises(DataError, match=r"cannot find train-images-idx3-ubyte .* in "):
        load_data("mnist", root=tmp_path)
    with pytest.raises(DataError, match="missing data_batch_1"):
        load_data("cifar10", root=tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_file_is_reported(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    truncate(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")), keep=0.6)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*(truncated|cannot be read)"):
        load_data("mnist", root=tmp_path)


def test_idx_with_wrong_magic_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(path)
    write_idx(tmp_path / "ok", np.arange(6).reshape(2, 3))
    assert read_idx(tmp_path / "ok").shape == (2, 3)


def test_truncated_cifar_pickle_is_reported(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    truncate(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(DataError, match="data_batch_3 is truncated or not a CIFAR python batch"):
        load_data("cifar10", root=tmp_path)


def test_synthetic_options_and_validation() -> None:
    data = load_data("synthetic", n=90, channels=3, size=10, num_classes=3)
    assert data.train.x.shape[1:] == (3, 10, 10) and data.num_classes == 3
    with pytest.raises(ConfigError, match="synthetic data needs"):
        load_data("synthetic", channels=2)
    with pytest.raises(ConfigError, match="only apply to data=synthetic"):
        load_data("digits", n=10)


def test_from_tensors_validates_pixel_range() -> None:
    x, y = torch.rand(50, 1, 8, 8), torch.arange(50) % 5
    assert from_tensors(x, y).num_classes == 5
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        from_tensors(x * 255, y)
    with pytest.raises(DataError, match="shaped"):
        from_tensors(x[:, 0], y)


def test_train_limit_and_batches_cover_the_split() -> None:
    data = load_data("digits", train_limit=100)
    assert len(data.train) == 100
    seen = torch.cat(
        [y for _, y in data.train.batches(32, shuffle=True, generator=torch.Generator())]
    )
    assert sorted(seen.tolist()) == sorted(data.train.y.tolist())


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    parts = {
        "x_train": rng.random((40, 1, 8, 8), dtype=np.float32),
        "y_train": np.arange(40) % 4,
        "x_test": rng.random((12, 1, 8, 8), dtype=np.float32),
        "y_test": np.arange(12) % 4,
        **arrays,
    }
    path = tmp_path / "mine.npz"
    np.savez(path, **parts)
    return path


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"y_train": np.r_[np.arange(39) % 4, 255]}, r"y_train: labels must be 0..4 for 5 classes"),
        ({"y_train": np.r_[np.arange(39) % 4, -1]}, r"y_train: labels must be integers 0..K-1"),
        ({"y_test": np.arange(12) % 6}, r"y_test: labels must be 0..3 for 4 classes .*got 5"),
        ({"y_train": np.arange(39) % 4}, r"y_train: labels must be shaped \(40,\)"),
        ({"y_test": np.arange(5) % 4}, r"y_test: labels must be shaped \(12,\)"),
        ({"y_train": (np.arange(40) % 4) + 0.5}, r"y_train: labels must be integers"),
        ({"x_train": np.zeros((40, 2, 8, 8), np.float32)}, r"x_train: .*got \(40, 2, 8, 8\)"),
        ({"x_train": np.zeros((40, 1, 4, 4), np.float32)}, r"H, W >= 8, got \(40, 1, 4, 4\)"),
        ({"x_test": np.full((12, 1, 8, 8), 2.0, np.float32)}, r"x_test: pixel values .*\[0, 1\]"),
    ],
)
def test_own_npz_data_is_checked_at_load(tmp_path: Path, arrays: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_data("npz", root=_npz(tmp_path, **arrays))


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.rand(50, 2, 8, 8), torch.arange(50) % 5, r"got \(50, 2, 8, 8\)"),
        (torch.rand(50, 1, 4, 4), torch.arange(50) % 5, r"H, W >= 8"),
        (torch.rand(50, 1, 8, 8), torch.arange(49) % 5, r"labels must be shaped \(50,\)"),
        (
            torch.rand(50, 1, 8, 8),
            torch.cat([torch.arange(49) % 5, torch.tensor([255])]),
            "0..5 for 6 classes",
        ),
        (torch.rand(50, 1, 8, 8), torch.full((50,), -1), "integers 0..K-1"),
    ],
)
def test_own_tensors_are_checked(x: torch.Tensor, y: torch.Tensor, match: str) -> None:
    with pytest.raises(DataError, match=match):
        from_tensors(x, y)


def test_channels_last_tensors_are_converted() -> None:
    x = torch.rand(50, 8, 8, 3)
    data = from_tensors(x, torch.arange(50) % 5)
    assert data.channels == 3 and data.image_size == (8, 8)
    first = data.test.x[0]  # (C, H, W): one of the originals, moved channels-first
    assert any(torch.equal(first, img.permute(2, 0, 1)) for img in x)


def test_byte_images_stay_uint8_and_become_the_same_floats_per_batch(tmp_path: Path) -> None:
    c10 = load_data("cifar10", root=write_cifar10(tmp_path / "c10", per_batch=40, n_test=20))
    for split in (c10.train, c10.val, c10.test):
        assert split.images.dtype == torch.uint8  # 1 byte a pixel: 4x less than float32
        assert split.images.nbytes == len(split) * 3 * 32 * 32
    # Per batch, exactly the floats the old loader kept: float32(byte) / 255 in float32.
    expected = c10.train.images.numpy().astype(np.float32) / 255.0
    x, _ = next(c10.train.batches(7))
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(expected[:7]))
    assert torch.equal(c10.train.rows(torch.tensor([3, 1])), torch.from_numpy(expected[[3, 1]]))
    assert torch.equal(c10.test.head(2), c10.test.x[:2])
    # Normalization statistics from exact integer sums agree with the float computation.
    ref = torch.from_numpy(expected)
    assert c10.mean == pytest.approx(ref.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert c10.std == pytest.approx(ref.std(dim=(0, 2, 3)).tolist(), abs=1e-6)
    # User arrays of bytes stay bytes too; float data sets stay float (their numbers unchanged).
    mine = from_tensors(torch.from_numpy(expected[:40] * 0).to(torch.uint8), torch.arange(40) % 4)
    assert mine.train.images.dtype == torch.uint8
    assert load_data("digits").train.images.dtype == torch.float32
