"""Small image-classification data sets as pytrees of tensors: ``funcgrad.data.datasets``.

Each reader returns ``(train, test)``, two dicts ``{"image": (N, 1, H, W) floats in [0, 1],
"label": (N,) int64}`` ready for :func:`funcgrad.data.batches`. Nothing is ever downloaded:
:func:`digits` reads the copy that scikit-learn bundles, :func:`mnist` and :func:`fashion_mnist`
read the standard IDX files from a directory you give.

>>> from funcgrad.data import datasets
>>> train, test = datasets.digits()
>>> train["image"].shape, test["label"].shape
(torch.Size([1437, 1, 8, 8]), torch.Size([360]))

# NOTE [IDX files]
# The format of LeCun's MNIST files (also Fashion-MNIST's): a magic number of four bytes, 0x00
# 0x00, a type code (0x08: unsigned bytes) and the number of dimensions; then each dimension as
# a big-endian uint32; then the data in C order. Images are (N, rows, cols), labels (N,). The
# readers check the magic number, that the file holds exactly the bytes its header promises,
# that images and labels agree in number and that labels are classes 0-9, so a truncated
# download or a swapped file is reported by name instead of turning into garbage tensors.
"""

from __future__ import annotations

import gzip
import importlib
import math
import os
import struct
import zlib
from pathlib import Path

import torch

from ._api_util import describe

__all__ = ["digits", "fashion_mnist", "mnist"]

Split = dict[str, torch.Tensor]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: The digits split: the first 1437 examples train, the last 360 (20%) test.
_DIGITS_TRAIN = 1437

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_MNIST_URLS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/ (a mirror of http://yann.lecun.com/exdb/mnist/)"
)
_FASHION_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ (see "
    "https://github.com/zalandoresearch/fashion-mnist)"
)
_NUM_CLASSES = 10


def _check_dtype(name: str, dtype: object) -> torch.dtype:
    if dtype in _FLOATS:
        return dtype
    raise ValueError(
        f"funcgrad.data.datasets.{name}: dtype must be a floating dtype (float16, bfloat16, "
        f"float32 or float64) for the images, got {describe(dtype)}."
    )


def _split(images: torch.Tensor, labels: torch.Tensor, n_train: int) -> tuple[Split, Split]:
    train = {"image": images[:n_train].clone(), "label": labels[:n_train].clone()}
    test = {"image": images[n_train:].clone(), "label": labels[n_train:].clone()}
    return train, test


def digits(*, dtype: torch.dtype = torch.float32) -> tuple[Split, Split]:
    """scikit-learn's handwritten digits (8x8 pixels, 10 classes), split into train and test.

    The 1797 images of ``sklearn.datasets.load_digits`` (the test part of the UCI "Optical
    Recognition of Handwritten Digits" data), in their bundled order. The split is fixed: the
    first 1437 examples are ``train`` and the last 360 (20%) are ``test``; every class has 33 to
    37 test examples. Pixel values 0-16 are scaled to [0, 1]. Needs scikit-learn (an optional
    dependency), which ships the data: nothing is downloaded.

    Args:
        dtype: the floating dtype of the images.

    Returns:
        ``(train, test)``: dicts with ``"image"``, a ``(N, 1, 8, 8)`` tensor in [0, 1], and
        ``"label"``, a ``(N,)`` int64 tensor of classes 0-9.

    Raises:
        ImportError: if scikit-learn is not installed.
        ValueError: if ``dtype`` is not a floating dtype.

    >>> from funcgrad.data import datasets
    >>> train, test = datasets.digits()
    >>> train["image"].shape, train["image"].dtype, float(train["image"].max())
    (torch.Size([1437, 1, 8, 8]), torch.float32, 1.0)
    >>> test["label"].bincount()  # test examples per class
    tensor([35, 36, 35, 37, 37, 37, 37, 36, 33, 37])
    """
    dtype = _check_dtype("digits", dtype)
    try:
        sklearn_datasets = importlib.import_module("sklearn.datasets")
    except ImportError as e:
        raise ImportError(
            "funcgrad.data.datasets.digits reads the digits that scikit-learn bundles, but "
            "scikit-learn is not installed: pip install scikit-learn"
        ) from e
    bunch = sklearn_datasets.load_digits()
    images = (torch.as_tensor(bunch.images, dtype=torch.float64) / 16).to(dtype).unsqueeze(1)
    labels = torch.as_tensor(bunch.target).to(torch.int64)
    return _split(images, labels, _DIGITS_TRAIN)


# --------------------------------------------------------------------------------------------
# IDX files (NOTE [IDX files])
# --------------------------------------------------------------------------------------------


def _find_files(name: str, title: str, root: Path, urls: str) -> list[Path]:
    """The four IDX files in ``root``, gzipped or not; a clear error when any is missing."""
    found: list[Path] = []
    missing: list[str] = []
    for stem in _IDX_FILES:
        candidates = [root / f"{stem}.gz", root / stem]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(f"{stem}.gz")
        else:
            found.append(path)
    if missing:
        if root.is_dir():
            where = f"{root} lacks {', '.join(missing)}"
        else:
            where = f"{root} is not a directory"
        expected = ", ".join(f"{stem}.gz" for stem in _IDX_FILES)
        raise FileNotFoundError(
            f"funcgrad.data.datasets.{name}: cannot find the {title} files: {where}. The "
            f"directory must hold {expected} (or the same files un-gzipped, without .gz). "
            f"Download them from {urls}; funcgrad never downloads anything."
        )
    return found


def _read_bytes(name: str, path: Path, urls: str) -> bytearray:
    with path.open("rb") as raw:
        try:
            if path.suffix == ".gz":
                with gzip.GzipFile(fileobj=raw) as unzipped:
                    return bytearray(unzipped.read())
            return bytearray(raw.read())
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(
                f"funcgrad.data.datasets.{name}: {path} is corrupt or truncated ({e}). Delete it "
                f"and download it again from {urls}."
            ) from e


def _read_idx(name: str, path: Path, ndim: int, urls: str) -> torch.Tensor:
    """The uint8 tensor in an IDX file of ``ndim`` dimensions."""
    data = _read_bytes(name, path, urls)
    header = 4 + 4 * ndim
    expected_magic = 0x0800 + ndim
    magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if magic != expected_magic:
        got = "the file is shorter than 4 bytes" if magic is None else f"it is 0x{magic:08x}"
        raise ValueError(
            f"funcgrad.data.datasets.{name}: {path} is not an IDX file of {ndim}-d unsigned "
            f"bytes: its magic number should be 0x{expected_magic:08x}, but {got}. The file is "
            f"corrupt or not the right one: download it again from {urls}."
        )
    if len(data) < header:
        raise ValueError(
            f"funcgrad.data.datasets.{name}: {path} is truncated: {len(data)} bytes, shorter than "
            f"its {header}-byte header. Download it again from {urls}."
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    size = math.prod(shape)
    if len(data) != header + size:
        raise ValueError(
            f"funcgrad.data.datasets.{name}: {path} is truncated or corrupt: its header promises "
            f"shape {shape} ({header + size} bytes with the header), but it holds {len(data)} "
            f"bytes. Download it again from {urls}."
        )
    return torch.frombuffer(data, dtype=torch.uint8, count=size, offset=header).reshape(shape)


def _read_split(
    name: str, images_path: Path, labels_path: Path, urls: str, dtype: torch.dtype
) -> Split:
    images = _read_idx(name, images_path, 3, urls)
    labels = _read_idx(name, labels_path, 1, urls)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"funcgrad.data.datasets.{name}: {images_path} holds {images.shape[0]} images but "
            f"{labels_path} holds {labels.shape[0]} labels; one of them is not the right file. "
            f"Download them again from {urls}."
        )
    if labels.numel() and int(labels.max()) >= _NUM_CLASSES:
        raise ValueError(
            f"funcgrad.data.datasets.{name}: {labels_path} holds the label {int(labels.max())}, "
            f"but there are {_NUM_CLASSES} classes (0-9): the file is corrupt or not the right "
            f"one. Download it again from {urls}."
        )
    image = images.unsqueeze(1).to(dtype).div_(255)
    return {"image": image, "label": labels.to(torch.int64)}


def _read_idx_dataset(
    name: str, title: str, root: str | os.PathLike[str], urls: str, dtype: torch.dtype
) -> tuple[Split, Split]:
    dtype = _check_dtype(name, dtype)
    train_images, train_labels, test_images, test_labels = _find_files(
        name, title, Path(root).expanduser(), urls
    )
    train = _read_split(name, train_images, train_labels, urls, dtype)
    test = _read_split(name, test_images, test_labels, urls, dtype)
    return train, test


def mnist(
    root: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32
) -> tuple[Split, Split]:
    """MNIST handwritten digits (60000 train and 10000 test images, 28x28) from IDX files.

    ``root`` must hold ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``, gzipped or not (the gzipped
    file is read when both are there), from https://ossci-datasets.s3.amazonaws.com/mnist/ (a
    mirror of http://yann.lecun.com/exdb/mnist/). torchvision keeps them in
    ``<its root>/MNIST/raw``. Nothing is downloaded. The files are checked (NOTE [IDX files] in
    ``funcgrad/_datasets.py``); pixel values 0-255 are scaled to [0, 1].

    Args:
        root: the directory with the four files (``~`` is expanded).
        dtype: the floating dtype of the images.

    Returns:
        ``(train, test)``: dicts with ``"image"``, a ``(N, 1, 28, 28)`` tensor in [0, 1], and
        ``"label"``, a ``(N,)`` int64 tensor of classes 0-9.

    Raises:
        FileNotFoundError: if a file is missing; the message names the files and the URL.
        ValueError: if a file is corrupt or truncated (the message names it), or ``dtype`` is
            not a floating dtype.

    >>> from funcgrad.data import datasets
    >>> train, test = datasets.mnist("no/such/directory")
    Traceback (most recent call last):
    ...
    FileNotFoundError: funcgrad.data.datasets.mnist: cannot find the MNIST files: ... Download them from https://ossci-datasets.s3.amazonaws.com/mnist/ ...
    """
    return _read_idx_dataset("mnist", "MNIST", root, _MNIST_URLS, dtype)


def fashion_mnist(
    root: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32
) -> tuple[Split, Split]:
    """Zalando's Fashion-MNIST (60000 train and 10000 test images, 28x28) from IDX files.

    Ten classes of clothing: 0 T-shirt/top, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal,
    6 shirt, 7 sneaker, 8 bag, 9 ankle boot. ``root`` must hold the same four file names as
    :func:`mnist` (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``, gzipped or not), from
    http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ (see
    https://github.com/zalandoresearch/fashion-mnist). Nothing is downloaded.

    Args:
        root: the directory with the four files (``~`` is expanded).
        dtype: the floating dtype of the images.

    Returns:
        ``(train, test)``: dicts with ``"image"``, a ``(N, 1, 28, 28)`` tensor in [0, 1], and
        ``"label"``, a ``(N,)`` int64 tensor of classes 0-9.

    Raises:
        FileNotFoundError: if a file is missing; the message names the files and the URL.
        ValueError: if a file is corrupt or truncated (the message names it), or ``dtype`` is
            not a floating dtype.

    >>> from funcgrad.data import datasets
    >>> train, test = datasets.fashion_mnist("no/such/directory")
    Traceback (most recent call last):
    ...
    FileNotFoundError: funcgrad.data.datasets.fashion_mnist: cannot find the Fashion-MNIST files: ...
    """
    return _read_idx_dataset("fashion_mnist", "Fashion-MNIST", root, _FASHION_URLS, dtype)
