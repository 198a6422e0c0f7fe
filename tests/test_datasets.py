"""funcgrad.data.datasets: the IDX readers (MNIST, Fashion-MNIST) and scikit-learn's digits."""

from __future__ import annotations

import gzip
import math
import re
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import funcgrad as fg
from funcgrad import data, random
from funcgrad.data import datasets
from funcgrad.testing import assert_trees_allclose

# --------------------------------------------------------------------------------------------
# datasets: IDX files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------

IDX_NAMES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
READERS = {"mnist": datasets.mnist, "fashion_mnist": datasets.fashion_mnist}


def idx_bytes(array: torch.Tensor) -> bytes:
    """An IDX file of unsigned bytes, written from the format's definition."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + bytes(array.flatten().tolist())


def write_idx_dir(
    root: Path, gz: list[bool] | None = None, n_train: int = 6, n_test: int = 4
) -> dict[str, torch.Tensor]:
    """Small IDX files (4x3 images, so a transposition shows), gzipped as ``gz`` says."""
    gen = torch.Generator().manual_seed(0)
    arrays = {
        IDX_NAMES[0]: torch.randint(0, 256, (n_train, 4, 3), generator=gen),
        IDX_NAMES[1]: torch.randint(0, 10, (n_train,), generator=gen),
        IDX_NAMES[2]: torch.randint(0, 256, (n_test, 4, 3), generator=gen),
        IDX_NAMES[3]: torch.randint(0, 10, (n_test,), generator=gen),
    }
    for name, zipped in zip(IDX_NAMES, gz or [True] * 4):
        write_file(root, name, idx_bytes(arrays[name]), zipped)
    return arrays


def write_file(root: Path, name: str, content: bytes, zipped: bool = True) -> Path:
    path = root / (name + ".gz" if zipped else name)
    path.write_bytes(gzip.compress(content) if zipped else content)
    return path


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize(
    "gz", [[True] * 4, [False] * 4, [True, False, False, True]], ids=["gz", "raw", "mixed"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_idx_reader(tmp_path: Path, reader: str, gz: list[bool], dtype: torch.dtype) -> None:
    """Images come back as (N, 1, rows, cols) values / 255 in ``dtype``, labels as int64."""
    arrays = write_idx_dir(tmp_path, gz)
    train, test = READERS[reader](tmp_path, dtype=dtype)
    for split, first in [(train, 0), (test, 2)]:
        images, labels = IDX_NAMES[first : first + 2]
        assert split["image"].dtype == dtype
        assert split["label"].dtype == torch.int64
        expected = arrays[images].to(torch.float64).unsqueeze(1) / 255
        assert_trees_allclose(split["image"].to(torch.float64), expected, rtol=1e-7, atol=0)
        assert torch.equal(split["label"], arrays[labels])


def test_idx_reader_prefers_gzip_and_accepts_str_root(tmp_path: Path) -> None:
    """When both forms of a file exist the gzipped one is read; root may be a str."""
    arrays = write_idx_dir(tmp_path)
    write_file(tmp_path, IDX_NAMES[1], idx_bytes(torch.zeros(6, dtype=torch.int64)), zipped=False)
    train, _ = datasets.mnist(str(tmp_path))
    assert torch.equal(train["label"], arrays[IDX_NAMES[1]])


def test_idx_files_feed_batches(tmp_path: Path) -> None:
    """A reader's split is a tree that batches directly."""
    write_idx_dir(tmp_path, n_train=10)
    train, _ = datasets.fashion_mnist(tmp_path)
    shapes = [tuple(b["image"].shape) for b in data.batches(train, 4, key=random.key(0))]
    assert shapes == [(4, 1, 4, 3), (4, 1, 4, 3), (2, 1, 4, 3)]


@pytest.mark.parametrize(
    ("reader", "url"),
    [
        ("mnist", r"https://ossci-datasets\.s3\.amazonaws\.com/mnist/"),
        ("fashion_mnist", r"http://fashion-mnist\.s3-website\.eu-central-1\.amazonaws\.com/"),
    ],
)
def test_missing_files(tmp_path: Path, reader: str, url: str) -> None:
    """A missing file is named, with every expected file and where to download them."""
    write_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        READERS[reader](tmp_path)
    message = str(info.value)
    assert f"funcgrad.data.datasets.{reader}: cannot find the " in message
    assert f"{tmp_path} lacks train-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz." in message
    for name in IDX_NAMES:
        assert f"{name}.gz" in message
    assert "un-gzipped" in message
    assert re.search(r"Download them from " + url, message)


def test_missing_directory(tmp_path: Path) -> None:
    """A root that does not exist is said to be no directory."""
    with pytest.raises(FileNotFoundError, match=r"nowhere is not a directory\. The directory"):
        datasets.mnist(tmp_path / "nowhere")


def corrupt_cases() -> list[Any]:
    good_images = idx_bytes(torch.zeros(6, 4, 3, dtype=torch.int64))
    good_labels = idx_bytes(torch.zeros(6, dtype=torch.int64))
    return [
        pytest.param(
            0,
            good_labels,
            True,
            r"is not an IDX file of 3-d unsigned bytes: its magic number "
            r"should be 0x00000803, but it is 0x00000801",
            id="labels-as-images",
        ),
        pytest.param(
            0,
            b"\x00\x00",
            False,
            r"magic number should be 0x00000803, but the file is shorter "
            r"than 4 bytes",
            id="tiny",
        ),
        pytest.param(
            0,
            good_images[:10],
            True,
            r"is truncated: 10 bytes, shorter than its 16-byte header",
            id="short-header",
        ),
        pytest.param(
            0,
            good_images[:-5],
            True,
            r"is truncated or corrupt: its header promises shape "
            r"\(6, 4, 3\) \(88 bytes with the header\), but it holds 83 bytes",
            id="truncated",
        ),
        pytest.param(
            1,
            good_labels + b"\x00",
            False,
            r"promises shape \(6,\) \(14 bytes with the "
            r"header\), but it holds 15 bytes",
            id="trailing-bytes",
        ),
    ]


@pytest.mark.parametrize(("which", "content", "zipped", "match"), corrupt_cases())
def test_corrupt_files(
    tmp_path: Path, which: int, content: bytes, zipped: bool, match: str
) -> None:
    """A damaged file is named, with what is wrong and where to get it again."""
    write_idx_dir(tmp_path)
    for suffix in ["", ".gz"]:
        (tmp_path / (IDX_NAMES[which] + suffix)).unlink(missing_ok=True)
    path = write_file(tmp_path, IDX_NAMES[which], content, zipped)
    with pytest.raises(ValueError, match=r"funcgrad\.data\.datasets\.mnist: ") as info:
        datasets.mnist(tmp_path)
    assert str(path) in str(info.value)
    assert re.search(r"[Dd]ownload it again from https://ossci-datasets", str(info.value))
    assert re.search(match, str(info.value)), str(info.value)


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_damaged_gzip(tmp_path: Path, damage: str) -> None:
    """A cut or bit-flipped gzip stream is reported as corrupt, naming the file."""
    write_idx_dir(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    if damage == "cut":
        raw = raw[: len(raw) // 2]
    else:
        raw[-6] ^= 0xFF  # inside the CRC-32 trailer
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz is corrupt or truncated"):
        datasets.mnist(tmp_path)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    """Images and labels of one split must agree in number."""
    write_idx_dir(tmp_path)
    write_file(tmp_path, IDX_NAMES[3], idx_bytes(torch.zeros(5, dtype=torch.int64)))
    with pytest.raises(
        ValueError, match=r"holds 4 images but .*t10k-labels-idx1-ubyte\.gz holds 5"
    ):
        datasets.fashion_mnist(tmp_path)


def test_label_out_of_range(tmp_path: Path) -> None:
    """A label outside 0-9 marks a wrong or damaged labels file."""
    write_idx_dir(tmp_path)
    write_file(tmp_path, IDX_NAMES[1], idx_bytes(torch.tensor([0, 1, 2, 3, 200, 5])))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz holds the label 200, but"):
        datasets.mnist(tmp_path)


@pytest.mark.parametrize("reader", ["digits", "mnist", "fashion_mnist"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, "float32"])
def test_dataset_dtype_errors(tmp_path: Path, reader: str, dtype: Any) -> None:
    """Images must be floating point."""
    args = () if reader == "digits" else (tmp_path,)
    with pytest.raises(ValueError, match=rf"datasets\.{reader}: dtype must be a floating dtype"):
        getattr(datasets, reader)(*args, dtype=dtype)


# --------------------------------------------------------------------------------------------
# datasets: digits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_digits(dtype: torch.dtype) -> None:
    """The documented split of scikit-learn's digits: first 1437 train, last 360 test, / 16."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    bunch = sklearn_datasets.load_digits()
    train, test = datasets.digits(dtype=dtype)
    assert train["image"].shape == (1437, 1, 8, 8)
    assert test["image"].shape == (360, 1, 8, 8)
    images = torch.cat([train["image"], test["image"]]).to(torch.float64)
    labels = torch.cat([train["label"], test["label"]])
    assert train["image"].dtype == dtype
    assert torch.equal(images * 16, torch.as_tensor(bunch.images).unsqueeze(1))
    assert labels.dtype == torch.int64
    assert torch.equal(labels, torch.as_tensor(bunch.target))
    assert float(images.min()) == 0.0
    assert float(images.max()) == 1.0


def test_digits_label_balance() -> None:
    """Every class has a fair share of both splits."""
    pytest.importorskip("sklearn")
    train, test = datasets.digits()
    test_counts = torch.bincount(test["label"], minlength=10)
    train_counts = torch.bincount(train["label"], minlength=10)
    assert int(test_counts.min()) >= 33
    assert int(test_counts.max()) <= 37
    assert int(train_counts.min()) >= 140
    assert int(train_counts.max()) <= 146
    assert int(test_counts.sum()) == 360


def test_digits_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without scikit-learn the error says how to install it."""
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(
        ImportError, match=r"scikit-learn is not installed: pip install scikit-learn"
    ):
        datasets.digits()


def test_digits_train_a_classifier() -> None:
    """Real data end to end: a few epochs of softmax regression beat 85% test accuracy."""
    pytest.importorskip("sklearn")
    train, test = datasets.digits()

    def loss_fn(params: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = batch["image"].flatten(1) @ params["w"] + params["b"]
        return fg.nn.cross_entropy(logits, batch["label"])

    params = {"w": torch.zeros(64, 10), "b": torch.zeros(10)}
    opt = fg.optim.adam(0.05)
    state = opt.init(params)
    key = random.key(0)
    for _ in range(5):
        key, sub = random.split(key)
        for batch in data.prefetch(data.batches(train, 64, key=sub), "cpu"):
            grads = fg.grad(loss_fn)(params, batch)
            updates, state = opt.update(grads, state, params)
            params = fg.optim.apply_updates(params, updates)
    logits = test["image"].flatten(1) @ params["w"] + params["b"]
    accuracy = (logits.argmax(-1) == test["label"]).to(torch.float64).mean()
    assert float(accuracy) > 0.85
    assert math.isfinite(float(loss_fn(params, test)))
