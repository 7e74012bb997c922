"""Image data sets as tensors in [0, 1] pixel space, shaped (N, C, H, W), with seeded splits.

Every loader reads local files only (nothing is downloaded):

| name            | files under `data.root`                                          |
|-----------------|------------------------------------------------------------------|
| `digits`        | none: scikit-learn ships the 8x8 handwritten digits              |
| `mnist`         | `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,            |
| `fashion_mnist` | `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (each `.gz` or not) |
| `cifar10`       | `cifar-10-batches-py/` with `data_batch_1..5`, `test_batch`        |
| `cifar100`      | `cifar-100-python/` with `train`, `test`                          |
| `npz`           | one `.npz` with `x_train`, `y_train`, `x_test`, `y_test`           |
| `synthetic`     | none: seeded class-conditional images, for tests                   |
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from qrl.errors import ConfigError, DataError
from qrl.specs import checked_number

IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CHANNELS = (1, 3)  # grey or RGB images
MIN_SIZE = 8  # smallest height and width the models take (scikit-learn's digits)
DIGIT_NAMES = tuple(str(i) for i in range(10))
FASHION_NAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
CIFAR10_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def as_float(images: Tensor) -> Tensor:
    """Images in [0, 1] as float32: uint8 pixels are divided by 255, floats pass unchanged."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)  # the same float32 division numpy did
    return images


@dataclass(frozen=True)
class Split:
    """One split of a data set.

    Images read as bytes (MNIST, CIFAR, uint8 arrays) stay uint8, a quarter of float32's memory
    (CIFAR-10's 60,000 images: 184 MB instead of 737 MB), and become floats in [0, 1] per batch
    (`rows`, `batches`); `x` converts the whole split, for the small ones.

    Attributes:
        images: uint8 pixels (value x 255) or float32 in [0, 1], shaped (N, C, H, W).
        y: integer class labels, shaped (N,).
    """

    images: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def x(self) -> Tensor:
        """Every image as float32 in [0, 1], (N, C, H, W) (a new tensor when stored as uint8)."""
        return as_float(self.images)

    def head(self, n: int) -> Tensor:
        """The first `n` images as float32 in [0, 1] (an example batch)."""
        return as_float(self.images[:n])

    def rows(self, idx: Tensor) -> Tensor:
        """The images at `idx` as float32 in [0, 1]: only these are converted."""
        return as_float(self.images[idx])

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (x, y) mini-batches; with `shuffle`, in an order drawn from `generator`."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield self.rows(idx), self.y[idx]

    def subset(self, n: int | None, seed: int = 0) -> Split:
        """A seeded random subset of at most `n` examples (all of them when `n` is None)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return Split(self.images[idx], self.y[idx])

    def channel_stats(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and standard deviation of the images in [0, 1].

        uint8 images are summed exactly in int64 (no float copy of the split is made); float
        images are reduced as before, so results on float data sets are unchanged.
        """
        if self.images.dtype != torch.uint8:
            return self.images.mean(dim=(0, 2, 3)), self.images.std(dim=(0, 2, 3))
        n = self.images.shape[0] * self.images.shape[2] * self.images.shape[3]
        total = torch.zeros(self.images.shape[1], dtype=torch.int64)
        squares = torch.zeros_like(total)
        for start in range(0, self.images.shape[0], 4096):  # bounded int64 temporaries
            chunk = self.images[start : start + 4096].to(torch.int64)
            total += chunk.sum(dim=(0, 2, 3))
            squares += (chunk * chunk).sum(dim=(0, 2, 3))
        mean = total.double() / n
        var = (squares.double() - n * mean * mean) / max(n - 1, 1)  # unbiased, as Tensor.std
        return mean / 255.0, var.clamp(min=0).sqrt() / 255.0


@dataclass(frozen=True)
class ImageData:
    """A data set with train / val / test splits and what models need to know about it."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean of the training images (models normalize inside themselves)."""
        return tuple(float(v) for v in self.train.channel_stats()[0])

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation of the training images."""
        return tuple(max(float(v), 1e-3) for v in self.train.channel_stats()[1])

    def describe(self) -> str:
        c, (h, w) = self.channels, self.image_size
        return (
            f"{self.name}: {c}x{h}x{w}, {self.num_classes} classes, "
            f"train/val/test = {len(self.train)}/{len(self.val)}/{len(self.test)}"
        )


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def load_data(
    name: str = "digits",
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.25,
    train_limit: int | None = None,
    **options: int | float,
) -> ImageData:
    """Load a data set by name with a split that depends only on `seed`.

    Args:
        name: one of `digits`, `mnist`, `fashion_mnist`, `cifar10`, `cifar100`, `npz`,
            `synthetic`.
        root: folder (or, for `npz`, file) holding the data set's files; unused for
            `digits` and `synthetic`.
        seed: seed of the train/val (and, where the data set has no test split, test) split.
        val_fraction: share of the training pool held out for validation.
        test_fraction: share held out for test, for data sets without a standard test split.
        train_limit: keep at most this many training examples (seeded), for quick runs.
        **options: options of the `synthetic` generator (`n`, `channels`, `size`,
            `num_classes`, `noise`).

    Raises:
        ConfigError: unknown data set name or bad fractions.
        DataError: missing or malformed files, with the expected paths.
    """
    if name not in LOADERS:
        raise ConfigError(f"unknown data set {name!r}; choose one of {sorted(LOADERS)}")
    if not 0.0 <= val_fraction < 1.0 or not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"data.val_fraction must be in [0, 1) and data.test_fraction in (0, 1), "
            f"got {val_fraction} and {test_fraction}"
        )
    if train_limit is not None:
        train_limit = checked_number(train_limit, "data.train_limit (or null: all)", int, low=1)
    if options and name != "synthetic":
        raise ConfigError(f"options {sorted(options)} only apply to data=synthetic")
    needs_root = name not in ("digits", "synthetic")
    if needs_root and root in (None, ""):
        raise DataError(
            f"data.root is not set: data={name} reads local files and downloads nothing. "
            f"Set data.root to the folder that holds them ({_expected_files(name)})."
        )
    raw = LOADERS[name](Path(root) if root else None, seed, options)
    return _split(raw, seed, val_fraction, test_fraction, train_limit)


@dataclass(frozen=True)
class _Raw:
    name: str
    x_train: np.ndarray  # (N, C, H, W): uint8 pixels, or float32 in [0, 1]
    y_train: np.ndarray
    x_test: np.ndarray | None  # None: carve a test split out of the training pool
    y_test: np.ndarray | None
    num_classes: int
    class_names: tuple[str, ...]


def _split(
    raw: _Raw, seed: int, val_fraction: float, test_fraction: float, train_limit: int | None
) -> ImageData:
    rng = np.random.default_rng(seed)
    x, y = raw.x_train, raw.y_train
    if raw.x_test is None or raw.y_test is None:
        order = _stratified_order(y, rng)
        n_test = round(test_fraction * len(y))
        test_idx, order = order[:n_test], order[n_test:]
        x_test, y_test = x[test_idx], y[test_idx]
        x, y = x[order], y[order]
    else:
        x_test, y_test = raw.x_test, raw.y_test
    order = _stratified_order(y, rng)
    n_val = round(val_fraction * len(y))
    val_idx, train_idx = order[:n_val], order[n_val:]
    train = _to_split(x[train_idx], y[train_idx])
    return ImageData(
        name=raw.name,
        train=train.subset(train_limit, seed),
        val=_to_split(x[val_idx], y[val_idx]),
        test=_to_split(x_test, y_test),
        num_classes=raw.num_classes,
        class_names=raw.class_names,
    )


def _stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation whose every prefix holds the classes in (nearly) their overall shares."""
    perm = rng.permutation(len(y))
    # Rank each example within its class, then sort by relative rank: prefixes stay balanced.
    rank = np.empty(len(y), dtype=np.float64)
    for cls in np.unique(y):
        members = perm[y[perm] == cls]
        rank[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return perm[np.argsort(rank[perm], kind="stable")]


def _to_split(x: np.ndarray, y: np.ndarray) -> Split:
    """uint8 images stay uint8 (converted per batch); anything else becomes float32."""
    dtype = np.uint8 if x.dtype == np.uint8 else np.float32
    images = np.require(x, dtype=dtype, requirements=["C", "W"])  # writable: torch shares it
    return Split(torch.from_numpy(images), torch.from_numpy(y).long())


def from_tensors(
    x: Tensor,
    y: Tensor,
    *,
    name: str = "tensors",
    num_classes: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.25,
) -> ImageData:
    """Wrap a user's own (inputs, labels) pair as `ImageData` with seeded splits.

    Args:
        x: images in [0, 1] (uint8 images are scaled by 1/255), shaped (N, C, H, W) or
            (N, H, W, C) with C in {1, 3} and H, W >= 8.
        y: integer labels 0..K-1, shaped (N,).
        num_classes: K; default: the number of distinct labels.

    Raises:
        DataError: any of the above does not hold (the shape or values are named).
    """
    x_np = check_images(x.detach().cpu().numpy(), name)
    y_np = check_labels(y.detach().cpu().numpy(), len(x_np), name)
    k = class_count(y_np, name, num_classes)
    raw = _Raw(name, x_np, y_np, None, None, k, tuple(str(i) for i in range(k)))
    return _split(raw, seed, val_fraction, test_fraction, None)


def check_images(x: np.ndarray, what: str) -> np.ndarray:
    """Images as (N, C, H, W) from (N, C, H, W) or channels-last (N, H, W, C): uint8 pixels
    (kept as bytes; `Split` divides them by 255 per batch) or float32 in [0, 1].

    C must be 1 or 3 and H, W at least `MIN_SIZE`.

    Raises:
        DataError: naming `what` and the shape or the values that do not fit.
    """
    shape = tuple(x.shape)
    if x.ndim == 4 and x.shape[1] not in CHANNELS and x.shape[-1] in CHANNELS:
        x = x.transpose(0, 3, 1, 2)  # channels-last -> (N, C, H, W)
    if x.ndim != 4 or x.shape[1] not in CHANNELS or min(x.shape[2:]) < MIN_SIZE or not len(x):
        raise DataError(
            f"{what}: images must be shaped (N, C, H, W) or (N, H, W, C) with N >= 1, C in "
            f"{{1, 3}} and H, W >= {MIN_SIZE}, got {shape}"
        )
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{what}: images must be floats in [0, 1] or uint8, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise DataError(
            f"{what}: pixel values must be finite and in [0, 1] (uint8 images are scaled by "
            f"1/255), got the range [{np.nanmin(x):.4g}, {np.nanmax(x):.4g}]"
        )
    return x


def check_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    """Labels as int64 (N,): integers >= 0, one per image.

    Raises:
        DataError: naming `what` and the shape or the values that do not fit.
    """
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{what}: labels must be shaped ({n},), one per image, got {y.shape}")
    if y.dtype == np.bool_ or not (
        np.issubdtype(y.dtype, np.integer)
        or (np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == y.round()).all())
    ):
        raise DataError(f"{what}: labels must be integers 0..K-1, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise DataError(f"{what}: labels must be integers 0..K-1, got {int(y.min())}")
    return y


def class_count(y_train: np.ndarray, what: str, num_classes: int | None = None) -> int:
    """K, the number of distinct training labels (or `num_classes`); labels must be 0..K-1.

    Raises:
        DataError: a label outside 0..K-1 (e.g. 255 among ten classes), named with K.
    """
    k = int(num_classes) if num_classes is not None else len(np.unique(y_train))
    if k < 2:
        raise DataError(f"{what}: needs at least 2 classes, got {k}")
    check_in_classes(y_train, k, what)
    return k


def check_in_classes(y: np.ndarray, k: int, what: str) -> None:
    """`DataError` unless every label lies in 0..k-1."""
    if len(y) and int(y.max()) >= k:
        raise DataError(
            f"{what}: labels must be 0..{k - 1} for {k} classes (the distinct training labels), "
            f"got {int(y.max())}"
        )


def check_image_data(data: ImageData) -> ImageData:
    """The checks of `from_tensors` on a ready `ImageData`; channels-last splits are converted.

    Raises:
        DataError: naming the split and the shape or values that do not fit.
    """
    if data.num_classes < 2:
        raise DataError(f"{data.name}: needs at least 2 classes, got {data.num_classes}")
    splits: dict[str, Split] = {}
    for name in ("train", "val", "test"):
        part: Split = getattr(data, name)
        what = f"{data.name} {name} split"
        if name == "val" and len(part.x) == 0 and len(part.y) == 0:
            splits[name] = part  # no validation split is allowed
            continue
        x = check_images(part.images.detach().cpu().numpy(), what)
        y = check_labels(part.y.detach().cpu().numpy(), len(x), what)
        check_in_classes(y, data.num_classes, what)
        splits[name] = _to_split(x, y)
    shapes = {tuple(s.images.shape[1:]) for s in splits.values() if len(s)}
    if len(shapes) > 1:
        raise DataError(f"{data.name}: the splits' images differ in shape: {sorted(shapes)}")
    return dataclasses.replace(data, train=splits["train"], val=splits["val"], test=splits["test"])


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------


def _load_digits(root: Path | None, seed: int, options: dict) -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    return _Raw("digits", x, bunch.target.astype(np.int64), None, None, 10, DIGIT_NAMES)


def _load_synthetic(root: Path | None, seed: int, options: dict) -> _Raw:
    n = int(options.get("n", 600))
    channels = int(options.get("channels", 1))
    size = int(options.get("size", 8))
    k = int(options.get("num_classes", 4))
    noise = float(options.get("noise", 0.1))
    if n < 2 * k or channels not in (1, 3) or size < 4 or k < 2:
        raise ConfigError(
            "synthetic data needs n >= 2 * num_classes, channels 1 or 3, size >= 4, "
            f"num_classes >= 2; got n={n}, channels={channels}, size={size}, num_classes={k}"
        )
    rng = np.random.default_rng(seed + 7919)
    prototypes = rng.random((k, channels, size, size)).astype(np.float32)
    y = np.arange(n) % k
    x = prototypes[y] + noise * rng.standard_normal((n, channels, size, size)).astype(np.float32)
    return _Raw(
        "synthetic", np.clip(x, 0, 1), y.astype(np.int64), None, None, k, tuple(map(str, range(k)))
    )


def _idx_loader(name: str, subdir: str, class_names: tuple[str, ...]) -> Callable[..., _Raw]:
    def load(root: Path | None, seed: int, options: dict) -> _Raw:
        assert root is not None
        paths = {key: _find_idx(root, fname, name, subdir) for key, fname in IDX_FILES.items()}
        x_train, y_train = read_idx(paths["train_x"]), read_idx(paths["train_y"])
        x_test, y_test = read_idx(paths["test_x"]), read_idx(paths["test_y"])
        for xs, ys, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
            if xs.ndim != 3 or ys.ndim != 1 or len(xs) != len(ys):
                raise DataError(
                    f"{name}: {split} images {xs.shape} and labels {ys.shape} do not match "
                    f"(expected (N, H, W) images and (N,) labels) under {root}"
                )
        return _Raw(
            name,
            x_train[:, None],  # uint8, (N, 1, H, W): converted to floats per batch
            y_train.astype(np.int64),
            x_test[:, None],
            y_test.astype(np.int64),
            10,
            class_names,
        )

    return load


def _find_idx(root: Path, fname: str, name: str, subdir: str) -> Path:
    folders = [root, root / subdir / "raw", root / "raw"]
    for folder in folders:
        for candidate in (folder / fname, folder / f"{fname}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(
        f"{name}: cannot find {fname} (or {fname}.gz) in {root}; also looked in "
        f"{', '.join(str(f) for f in folders[1:])}. Set data.root to the folder holding "
        f"{_expected_files(name)}."
    )


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Raises:
        DataError: the file is truncated, not IDX, or not an unsigned-byte array.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            blob = f.read()
    except (OSError, EOFError) as exc:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise DataError(f"{path} cannot be read as an IDX file ({exc}); re-download it") from exc
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number); re-download it")
    dtype_code, ndim = blob[2], blob[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: IDX type 0x{dtype_code:02x} is not unsigned bytes (0x08)")
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DataError(f"{path} is truncated inside its header; re-download it")
    dims = [int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(blob) - header != expected:
        raise DataError(
            f"{path} is truncated or malformed: its header promises {dims} = {expected} bytes "
            f"of data, the file holds {len(blob) - header}; re-download it"
        )
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims)


def _cifar_loader(name: str) -> Callable[..., _Raw]:
    coarse = name == "cifar10"
    folder_name = "cifar-10-batches-py" if coarse else "cifar-100-python"
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if coarse else ["train"]
    label_key = b"labels" if coarse else b"fine_labels"

    def load(root: Path | None, seed: int, options: dict) -> _Raw:
        assert root is not None
        folder = root / folder_name if (root / folder_name).is_dir() else root
        missing = [
            f
            for f in [*train_files, "test_batch" if coarse else "test"]
            if not (folder / f).is_file()
        ]
        if missing:
            raise DataError(
                f"{name}: missing {', '.join(missing)} in {folder}. Set data.root to the folder "
                f"holding {_expected_files(name)}."
            )
        x_train, y_train = _read_cifar([folder / f for f in train_files], label_key)
        x_test, y_test = _read_cifar([folder / ("test_batch" if coarse else "test")], label_key)
        k = 10 if coarse else 100
        names = CIFAR10_NAMES if coarse else _cifar100_names(folder)
        return _Raw(name, x_train, y_train, x_test, y_test, k, names)

    return load


def _read_cifar(paths: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[label_key], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, OSError) as exc:
            raise DataError(
                f"{path} is truncated or not a CIFAR python batch ({type(exc).__name__}: {exc}); "
                "re-download the python version of the data set"
            ) from exc
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise DataError(
                f"{path}: expected data (N, 3072) and N labels, got {data.shape} and {labels.shape}"
            )
        xs.append(data.reshape(-1, 3, 32, 32))  # uint8: converted to floats per batch
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def _cifar100_names(folder: Path) -> tuple[str, ...]:
    try:
        with open(folder / "meta", "rb") as f:
            meta = pickle.load(f, encoding="bytes")
        names = tuple(n.decode() for n in meta[b"fine_label_names"])
        if len(names) == 100:
            return names
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, AttributeError):
        pass  # the class names are cosmetic; fall back to numbers
    return tuple(str(i) for i in range(100))


def _load_npz(root: Path | None, seed: int, options: dict) -> _Raw:
    assert root is not None
    if not root.is_file():
        raise DataError(f"npz: {root} is not a file; set data.root to a .npz file")
    try:
        with np.load(root) as arrays:
            parts = {k: arrays[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as exc:
        raise DataError(
            f"npz: {root} lacks array {exc}; it needs x_train, y_train, x_test, y_test"
        ) from exc
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"npz: {root} cannot be read ({exc})") from exc

    def images(key: str) -> np.ndarray:
        x = parts[key]
        return check_images(x[:, None] if x.ndim == 3 else x, f"npz {root}: {key}")

    x_train, x_test = images("x_train"), images("x_test")
    y_train = check_labels(parts["y_train"], len(x_train), f"npz {root}: y_train")
    y_test = check_labels(parts["y_test"], len(x_test), f"npz {root}: y_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"npz {root}: x_train images are {x_train.shape[1:]}, x_test's {x_test.shape[1:]}"
        )
    k = class_count(y_train, f"npz {root}: y_train")
    check_in_classes(y_test, k, f"npz {root}: y_test")
    return _Raw(root.stem, x_train, y_train, x_test, y_test, k, tuple(map(str, range(k))))


def _expected_files(name: str) -> str:
    if name in ("mnist", "fashion_mnist"):
        return ", ".join(f"{f}[.gz]" for f in IDX_FILES.values())
    if name == "cifar10":
        return "cifar-10-batches-py/{data_batch_1..5, test_batch}"
    if name == "cifar100":
        return "cifar-100-python/{train, test, meta}"
    if name == "npz":
        return "a .npz file with x_train, y_train, x_test, y_test"
    return "nothing"


LOADERS: dict[str, Callable[[Path | None, int, dict], _Raw]] = {
    "digits": _load_digits,
    "synthetic": _load_synthetic,
    "mnist": _idx_loader("mnist", "MNIST", DIGIT_NAMES),
    "fashion_mnist": _idx_loader("fashion_mnist", "FashionMNIST", FASHION_NAMES),
    "cifar10": _cifar_loader("cifar10"),
    "cifar100": _cifar_loader("cifar100"),
    "npz": _load_npz,
}
