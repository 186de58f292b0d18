"""Behaviour of ressearch.data on the real MNIST files and on deliberately broken copies."""

from __future__ import annotations

import gzip
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

from ressearch.data import (
    DATA_DIR_ENV,
    IDX_NAMES,
    MNISTData,
    Split,
    find_idx_files,
    load_mnist,
    make_splits,
    read_idx,
    resolve_data_dir,
    write_idx,
)
from ressearch.errors import DataError, UserError

# Published MNIST class counts; a loader that drops or shuffles records cannot match them.
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def real_data_dir() -> Path:
    """The real MNIST: $RESSEARCH_DATA_DIR if set, else <repo>/../shared/data (never skipped)."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def real_files() -> dict[str, Path]:
    return find_idx_files(real_data_dir())  # a DataError here fails loudly: CI has the data


@pytest.fixture(scope="module")
def real(real_files: dict[str, Path]) -> MNISTData:
    return load_mnist(real_data_dir())


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def indexed_data(n_train: int = 100, n_test: int = 10) -> MNISTData:
    """Synthetic data whose first two pixels encode each example's index in its file."""
    def split(n: int) -> Split:
        images = torch.zeros(n, 4, 4, dtype=torch.uint8)
        idx = torch.arange(n)
        images[:, 0, 0], images[:, 0, 1] = idx % 256, idx // 256
        return Split(images, idx % 10)
    return MNISTData(train=split(n_train), test=split(n_test), source="synthetic")


def indices(split: Split) -> list[int]:
    return (split.images[:, 0, 0].long() + 256 * split.images[:, 0, 1].long()).tolist()


def write_dataset(directory: Path, *, n_train: int = 30, n_test: int = 12, gz: bool = True) -> None:
    """Write a small, valid synthetic MNIST-format dataset into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("test", n_test)):
        write_idx(directory / (IDX_NAMES[f"{prefix}_images"] + ext),
                  rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        write_idx(directory / (IDX_NAMES[f"{prefix}_labels"] + ext),
                  rng.integers(0, 10, size=n, dtype=np.uint8))


def assert_one_line_error(exc: pytest.ExceptionInfo[DataError], name: str) -> None:
    message = str(exc.value)
    assert "\n" not in message, message
    assert name in message, message


# --- the real data ----------------------------------------------------------------------------

def test_real_mnist_shapes_dtypes_and_class_counts(real: MNISTData) -> None:
    assert real.train.images.shape == (60000, 28, 28)
    assert real.test.images.shape == (10000, 28, 28)
    for split in (real.train, real.test):
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.is_contiguous() and split.labels.is_contiguous()
        assert int(split.labels.min()) == 0 and int(split.labels.max()) == 9
        assert 0 < split.images.float().mean() < 255  # real pixels, not a zeroed buffer
    assert torch.bincount(real.test.labels).tolist() == TEST_COUNTS
    assert torch.bincount(real.train.labels).tolist() == TRAIN_COUNTS
    assert len(real.train) == 60000 and len(real.test) == 10000


def test_layouts_root_mnist_raw_and_raw(real_files: dict[str, Path], tmp_path: Path,
                                        real: MNISTData) -> None:
    raw = real_files["train_images"].parent
    for sub in (Path("MNIST") / "raw", Path("raw"), Path("flat")):
        (tmp_path / sub).mkdir(parents=True)
        for path in real_files.values():
            (tmp_path / sub / path.name).symlink_to(path)
    assert find_idx_files(raw) == real_files
    assert find_idx_files(tmp_path)["test_labels"].parent == tmp_path / "MNIST" / "raw"
    assert find_idx_files(tmp_path / "flat")["test_labels"].parent == tmp_path / "flat"
    (tmp_path / "MNIST" / "raw" / real_files["test_labels"].name).unlink()
    assert find_idx_files(tmp_path)["test_labels"].parent == tmp_path / "raw"
    loaded = load_mnist(tmp_path)
    assert loaded.source == str(tmp_path / "raw")
    assert torch.equal(loaded.test.labels, real.test.labels)


def test_uncompressed_copies_load_identically_and_are_preferred(real: MNISTData,
                                                               real_files: dict[str, Path],
                                                               tmp_path: Path) -> None:
    for key, split in (("train", real.train), ("test", real.test)):
        write_idx(tmp_path / IDX_NAMES[f"{key}_images"], split.images)
        write_idx(tmp_path / IDX_NAMES[f"{key}_labels"], split.labels)
    for path in real_files.values():  # a .gz beside each: the raw file must win
        (tmp_path / (path.name if path.suffix == ".gz" else path.name + ".gz")).symlink_to(path)
    files = find_idx_files(tmp_path)
    assert all(path.suffix != ".gz" for path in files.values())
    loaded = load_mnist(tmp_path)
    assert torch.equal(loaded.train.images, real.train.images)
    assert torch.equal(loaded.test.labels, real.test.labels)


def test_env_var_honoured_and_option_beats_it(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    write_dataset(tmp_path / "env", n_train=7)
    write_dataset(tmp_path / "opt", n_train=9)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert len(load_mnist().train) == 7
    assert resolve_data_dir(tmp_path / "opt") == tmp_path / "opt"
    assert len(load_mnist(str(tmp_path / "opt")).train) == 9
    monkeypatch.setenv(DATA_DIR_ENV, "")
    assert resolve_data_dir(None) is None


# --- splits -----------------------------------------------------------------------------------

def test_keras_split_takes_the_last_fraction(real: MNISTData) -> None:
    splits = make_splits(real)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (51000, 9000, 10000)
    assert torch.equal(splits.val.images, real.train.images[-9000:])
    assert torch.equal(splits.val.labels, real.train.labels[-9000:])
    assert torch.equal(splits.train.images, real.train.images[:51000])
    assert splits.train.images.is_contiguous() and splits.val.images.is_contiguous()


def test_zero_val_fraction_gives_empty_val(real: MNISTData) -> None:
    splits = make_splits(real, val_fraction=0.0, seed=3)
    assert len(splits.train) == 60000
    assert splits.val.images.shape == (0, 28, 28) and len(splits.val) == 0


def test_seeded_split_reproducible_disjoint_and_covering() -> None:
    data = indexed_data(1000)
    a, b, c = (make_splits(data, seed=s) for s in (7, 7, 8))
    assert len(a.train) == 850 and len(a.val) == 150
    assert indices(a.val) == indices(b.val) and indices(a.train) == indices(b.train)
    assert indices(a.val) != indices(c.val)
    assert not set(indices(a.train)) & set(indices(a.val))
    assert sorted(indices(a.train) + indices(a.val)) == list(range(1000))
    assert indices(a.val) != list(range(850, 1000))  # really shuffled, not the Keras tail
    assert torch.equal(a.val.labels, torch.tensor(indices(a.val)) % 10)  # labels follow images


def test_limits_cap_train_after_split_and_test(real: MNISTData) -> None:
    full = make_splits(real, seed=1)
    capped = make_splits(real, seed=1, train_limit=500, test_limit=100)
    assert len(capped.train) == 500 and len(capped.test) == 100
    assert torch.equal(capped.train.images, full.train.images[:500])
    assert torch.equal(capped.val.images, full.val.images)  # validation unchanged
    assert torch.equal(capped.test.labels, real.test.labels[:100])
    assert make_splits(real, train_limit=10**6).train.images.shape[0] == 51000


@pytest.mark.parametrize("kwargs", [{"val_fraction": 1.0}, {"val_fraction": -0.1},
                                    {"val_fraction": float("nan")}, {"train_limit": 0},
                                    {"test_limit": -5}])
def test_bad_split_options_are_user_errors(kwargs: dict) -> None:
    with pytest.raises(UserError):
        make_splits(indexed_data(), **kwargs)


def test_split_take() -> None:
    split = indexed_data(20).train
    assert split.take(50) is split and split.take(20) is split
    assert indices(split.take(5)) == [0, 1, 2, 3, 4]
    assert len(split.take(0)) == 0


# --- IDX round trip ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, compress", [("x.gz", None), ("x", None), ("x", True),
                                            ("x.gz", False)])
def test_write_then_read_round_trips(tmp_path: Path, name: str, compress: bool | None) -> None:
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / name, images, compress=compress)
    is_gzip = (tmp_path / name).read_bytes()[:2] == b"\x1f\x8b"
    assert is_gzip == (compress if compress is not None else name.endswith(".gz"))
    assert torch.equal(read_idx(tmp_path / name), torch.from_numpy(images))
    write_idx(tmp_path / name, torch.tensor([3, 1, 4]), compress=compress)
    assert read_idx(tmp_path / name).tolist() == [3, 1, 4]


def test_write_idx_rejects_values_outside_uint8(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.array([1, 256]))
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.array([0.5]))


# --- broken files -----------------------------------------------------------------------------

def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path / "nowhere")
    assert_one_line_error(exc, "nowhere")


def test_missing_file_names_it_and_the_places_looked(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    (tmp_path / (IDX_NAMES["test_labels"] + ".gz")).unlink()
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    assert_one_line_error(exc, IDX_NAMES["test_labels"])
    assert str(tmp_path / "MNIST" / "raw") in str(exc.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as exc:
        find_idx_files(tmp_path / "empty")
    assert_one_line_error(exc, IDX_NAMES["train_images"])


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_real_file(real_files: dict[str, Path], tmp_path: Path, gz: bool) -> None:
    write_dataset(tmp_path, gz=gz)
    data = gzip.decompress(real_files["test_images"].read_bytes())[:16 + 1234]
    name = IDX_NAMES["test_images"] + (".gz" if gz else "")
    (tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    assert_one_line_error(exc, name)
    assert "truncated" in str(exc.value) and "10000 images of 28x28" in str(exc.value)
    assert "1234 bytes" in str(exc.value)


@pytest.mark.parametrize("damage", ["cut stream", "flipped bytes", "garbage"])
def test_corrupt_gzip(real_files: dict[str, Path], tmp_path: Path, damage: str) -> None:
    blob = bytearray(real_files["train_labels"].read_bytes())
    if damage == "cut stream":
        blob = blob[: len(blob) // 2]
    elif damage == "flipped bytes":
        blob[len(blob) // 2: len(blob) // 2 + 64] = bytes(64)
    else:
        blob = bytearray(b"\x1f\x8b" + bytes(range(256)))
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert_one_line_error(exc, path.name)
    assert "gzip" in str(exc.value)


@pytest.mark.parametrize("magic, ndim, expected", [
    (b"\x00\x00\x08\x01", 3, "wrong magic number 0x00000801, expected 0x00000803"),  # labels
    (b"\x00\x00\x0d\x03", 3, "wrong magic number 0x00000d03"),  # float data
    (b"\x01\x00\x08\x03", None, "wrong magic number 0x01000803"),
    (b"\x00\x00\x08\x02", None, "expected 0x00000801 or 0x00000803"),
    (b"\x00\x00", None, "too short for an IDX header"),
    (b"\x00\x00\x08\x03\x00\x00", None, "the IDX header needs 16"),
])
def test_bad_header(tmp_path: Path, magic: bytes, ndim: int | None, expected: str) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(magic + (3).to_bytes(4, "big") * 3 + bytes(27) if len(magic) == 4 else magic)
    with pytest.raises(DataError) as exc:
        read_idx(path, expect_ndim=ndim)
    assert_one_line_error(exc, path.name)
    assert expected in str(exc.value)


def test_labels_file_in_place_of_images_is_wrong_magic(real_files: dict[str, Path],
                                                       tmp_path: Path) -> None:
    write_dataset(tmp_path)
    name = IDX_NAMES["train_images"] + ".gz"
    (tmp_path / name).write_bytes(real_files["train_labels"].read_bytes())
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    assert_one_line_error(exc, name)
    assert "0x00000801" in str(exc.value) and "0x00000803" in str(exc.value)


@pytest.mark.parametrize("gz", [True, False])
def test_trailing_bytes(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / ("train-labels-idx1-ubyte" + (".gz" if gz else ""))
    write_idx(path, np.arange(10, dtype=np.uint8), compress=False)
    data = path.read_bytes() + b"\x07" * 5
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert_one_line_error(exc, path.name)
    assert "5 trailing bytes" in str(exc.value)


def test_mismatched_image_and_label_counts(tmp_path: Path) -> None:
    write_dataset(tmp_path, n_train=30)
    write_idx(tmp_path / (IDX_NAMES["train_labels"] + ".gz"), np.zeros(29, dtype=np.uint8))
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    assert_one_line_error(exc, IDX_NAMES["train_labels"])
    assert "30 images" in str(exc.value) and "29 labels" in str(exc.value)


def test_label_out_of_range(tmp_path: Path) -> None:
    write_dataset(tmp_path, n_test=12)
    write_idx(tmp_path / (IDX_NAMES["test_labels"] + ".gz"), np.full(12, 10, dtype=np.uint8))
    with pytest.raises(DataError) as exc:
        load_mnist(tmp_path)
    assert_one_line_error(exc, IDX_NAMES["test_labels"])


# --- download path (no network in tests) ------------------------------------------------------

def test_failed_download_says_how_to_give_the_data(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path, no_env: None) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirror, got:\n"
                           + str(urllib.error.URLError("Name or service not known")))
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError) as exc:
        load_mnist(cache_dir=tmp_path / "cache")
    assert_one_line_error(exc, DATA_DIR_ENV)
    assert "--data-dir" in str(exc.value) and str(tmp_path / "cache") in str(exc.value)


def test_download_reads_the_raw_files_torchvision_leaves(monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path, no_env: None) -> None:
    calls: list[tuple[str, bool]] = []

    def fake_mnist(root: str, train: bool, download: bool) -> None:
        calls.append((root, download))
        write_dataset(Path(root) / "MNIST" / "raw", n_train=25, gz=False)
    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    data = load_mnist(cache_dir=tmp_path)
    assert len(data.train) == 25 and data.source == str(tmp_path / "MNIST" / "raw")
    assert calls and all(root == str(tmp_path) and download for root, download in calls)
    calls.clear()
    assert len(load_mnist(cache_dir=tmp_path).train) == 25  # cached: no second download
    assert not calls
