"""MNIST loading: IDX parsing, data-directory discovery and train/validation/test splits.

The IDX files are parsed with ``numpy.frombuffer`` (one pass, no per-sample Python), so the whole
of MNIST loads from its gzip files in well under a second. Anything wrong with the files raises a
one-line :class:`~ressearch.errors.DataError` naming the file, so the CLI can print it as is.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ressearch.errors import DataError, UserError

DATA_DIR_ENV = "RESSEARCH_DATA_DIR"

# Standard MNIST file names (without the optional .gz), keyed by their role.
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
NUM_CLASSES = 10
_UINT8 = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors with == is ambiguous
class Split:
    """One labelled set held as tensors.

    Attributes:
        images: uint8 tensor of shape ``[N, H, W]`` (``[N, 28, 28]`` for MNIST), contiguous.
        labels: int64 tensor of shape ``[N]``.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        # Caught here, a wrong dtype or length fails at construction rather than mid-training.
        ok = self.images.dtype == torch.uint8 and self.images.dim() == 3
        if not ok or self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"Split needs uint8 images [N, H, W] and int64 labels [N], got "
                             f"{self.images.dtype} {tuple(self.images.shape)} and "
                             f"{self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def take(self, n: int) -> Split:
        """Return the first ``n`` examples (``self`` when ``n >= len(self)``).

        Args:
            n: How many examples to keep; must not be negative.
        """
        if n < 0:
            raise ValueError(f"take(n) needs n >= 0, got {n}")
        if n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n])


@dataclass(frozen=True, eq=False)
class MNISTData:
    """The two MNIST files as loaded: full training set, test set and where they came from."""

    train: Split
    test: Split
    source: str


@dataclass(frozen=True, eq=False)
class Splits:
    """What the trainer consumes; ``val`` is empty (N = 0) when ``val_fraction == 0``."""

    train: Split
    val: Split
    test: Split


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """Pick the data directory: the option first, then ``$RESSEARCH_DATA_DIR``, else ``None``.

    Args:
        data_dir: The ``--data-dir`` option, or ``None`` when not given.

    Returns:
        The directory (``~`` expanded), or ``None`` meaning "download into the cache".
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV, "")
    return Path(env).expanduser() if env else None


def _pick(place: Path, name: str) -> Path | None:
    # The uncompressed file first: it skips decompression (torchvision leaves both).
    return next((p for p in (place / name, place / f"{name}.gz") if p.is_file()), None)


def find_idx_files(directory: Path) -> dict[str, Path]:
    """Locate the four MNIST IDX files under ``directory``.

    Looks in ``directory`` itself, in torchvision's ``directory/MNIST/raw`` and in
    ``directory/raw``, and uses the first of these holding all four files. Each file may be
    gzip-compressed; the uncompressed one is preferred when both exist (it reads faster).

    Args:
        directory: The data directory.

    Returns:
        Paths keyed by ``train_images``, ``train_labels``, ``test_images``, ``test_labels``.

    Raises:
        DataError: The directory does not exist, or no candidate place holds all four files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "data directory does not exist"
        raise DataError(f"{directory}: {what} (pass --data-dir or set {DATA_DIR_ENV})")
    places = [directory, directory / "MNIST" / "raw", directory / "raw"]
    by_place = {place: {key: path for key, name in IDX_NAMES.items()
                        if (path := _pick(place, name)) is not None} for place in places}
    for found in by_place.values():
        if len(found) == len(IDX_NAMES):
            return found
    looked = ", ".join(str(p) for p in places)
    place, found = max(by_place.items(), key=lambda item: len(item[1]))  # the nearest miss
    if not found:
        raise DataError(f"{directory}: no MNIST IDX files found (looked in {looked}; expected "
                        f"{', '.join(IDX_NAMES.values())}, optionally .gz)")
    missing = [f"{IDX_NAMES[key]}[.gz]" for key in IDX_NAMES if key not in found]
    raise DataError(f"{place}: missing {', '.join(missing)} (looked in {looked})")


def _describe(dims: tuple[int, ...]) -> str:
    return f"{dims[0]} labels" if len(dims) == 1 else f"{dims[0]} images of {dims[1]}x{dims[2]}"


def read_idx(path: Path, *, expect_ndim: int | None = None) -> torch.Tensor:
    """Parse one uint8 IDX file (gzip or raw) into a tensor.

    Args:
        path: The file; gzip is detected from its first bytes, not its name.
        expect_ndim: 1 (labels) or 3 (images) to insist on one kind; ``None`` accepts both.

    Returns:
        A contiguous uint8 tensor: images ``[N, H, W]`` or labels ``[N]``.

    Raises:
        DataError: Unreadable file, corrupt gzip stream, wrong magic number, short header,
            truncated payload or trailing bytes.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip stream ({exc})") from exc
    accepted = (expect_ndim,) if expect_ndim is not None else (1, 3)
    wanted = " or ".join(f"0x{0x0800 | n:08x}" for n in accepted)
    kinds = " or ".join("1-d labels" if n == 1 else "3-d images" for n in accepted)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    if raw[0] != 0 or raw[1] != 0 or raw[2] != _UINT8 or ndim not in accepted:
        raise DataError(f"{path}: wrong magic number 0x{magic:08x}, expected {wanted} "
                        f"(IDX uint8 {kinds})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, the IDX header needs {header}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)
    held = len(raw) - header
    if held < expected:
        raise DataError(f"{path}: truncated: header says {_describe(dims)} ({expected} bytes) but "
                        f"the file holds {held} bytes of data")
    if held > expected:
        raise DataError(f"{path}: {held - expected} trailing bytes after the {expected} bytes of "
                        f"data the header announces ({_describe(dims)})")
    # frombuffer over immutable bytes is read-only; the copy gives torch a writable, owned array.
    array = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()
    return torch.from_numpy(array)


def write_idx(path: Path, array: np.ndarray | torch.Tensor, *,
              compress: bool | None = None) -> None:
    """Write a uint8 IDX file (the inverse of :func:`read_idx`).

    Args:
        path: Destination; gzip-compressed when it ends with ``.gz`` unless ``compress`` says.
        array: Integer data with values in 0..255 and 1 to 255 dimensions.
        compress: Force (``True``) or suppress (``False``) gzip; ``None`` follows the suffix.

    Raises:
        ValueError: The array is not integer, has values outside 0..255 or a bad rank.
    """
    path = Path(path)
    data = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iub" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise ValueError(f"write_idx needs integers in 0..255, got {data.dtype}")
        data = data.astype(np.uint8)
    if not 1 <= data.ndim <= 255:
        raise ValueError(f"write_idx needs 1 to 255 dimensions, got {data.ndim}")
    header = bytes([0, 0, _UINT8, data.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in data.shape)
    payload = header + np.ascontiguousarray(data).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=6)  # 9 is much slower for ~1% smaller
    path.write_bytes(payload)


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "ressearch"


def _download(root: Path) -> dict[str, Path]:
    """Fetch MNIST into ``root/MNIST/raw`` with torchvision (unless already there)."""
    with contextlib.suppress(DataError):
        return find_idx_files(root)  # an earlier download: no network needed
    import filelock  # torch depends on it
    import torchvision.datasets  # imported late: slow, and only needed to download

    root.mkdir(parents=True, exist_ok=True)
    # Parallel trials may all start by downloading; the lock stops them clobbering each other.
    with filelock.FileLock(str(root / ".mnist-download.lock")):
        try:
            for train in (True, False):
                torchvision.datasets.MNIST(root=str(root), train=train, download=True)
        except Exception as exc:  # network errors come as URLError, RuntimeError, OSError...
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise DataError(f"{root}: could not download MNIST ({reason[:300]}); pass --data-dir "
                            f"DIR or set {DATA_DIR_ENV} to a directory holding the MNIST IDX "
                            f"files") from exc
    return find_idx_files(root)


def _load_split(images_path: Path, labels_path: Path) -> Split:
    images = read_idx(images_path, expect_ndim=3)
    labels = read_idx(labels_path, expect_ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path}: holds {images.shape[0]} images but {labels_path} "
                        f"holds {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: holds no images")
    top = int(labels.max())
    if top >= NUM_CLASSES:
        raise DataError(f"{labels_path}: label {top} out of range, expected 0..{NUM_CLASSES - 1}")
    return Split(images, labels.long())


def load_mnist(data_dir: str | os.PathLike | None = None, *,
               cache_dir: str | os.PathLike | None = None) -> MNISTData:
    """Load MNIST from a data directory, or download it when none is configured.

    Args:
        data_dir: The ``--data-dir`` option; falls back to ``$RESSEARCH_DATA_DIR``.
        cache_dir: Download root when neither is set (default ``~/.cache/ressearch``).

    Returns:
        The training and test sets and the directory they were read from.

    Raises:
        DataError: Missing or malformed files, mismatched counts, or a failed download.
    """
    directory = resolve_data_dir(data_dir)
    if directory is None:
        root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
        files = _download(root)
    else:
        files = find_idx_files(directory)
    train = _load_split(files["train_images"], files["train_labels"])
    test = _load_split(files["test_images"], files["test_labels"])
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f"{files['test_images']}: images are {tuple(test.images.shape[1:])} but "
                        f"the training images are {tuple(train.images.shape[1:])}")
    return MNISTData(train=train, test=test, source=str(files["train_images"].parent))


def make_splits(data: MNISTData, *, val_fraction: float = 0.15, seed: int | None = None,
                train_limit: int | None = None, test_limit: int | None = None) -> Splits:
    """Split the training file into train and validation; optionally cap train and test.

    Without a seed the split is Keras' ``validation_split``: the last ``N - int(N * (1 -
    val_fraction))`` training examples are validation (51000/9000 for 60000 and 0.15). With a
    seed, a seeded permutation picks that many validation examples; both parts keep file order.

    Args:
        data: The loaded data.
        val_fraction: Fraction of the training file used for validation, in [0, 1).
        seed: ``None`` for the Keras split, else the seed of the random split.
        train_limit: Keep only the first n training examples (after the split, so validation
            is unchanged).
        test_limit: Keep only the first n test examples.

    Raises:
        UserError: ``val_fraction`` outside [0, 1) or a limit below 1.
    """
    if not 0.0 <= val_fraction < 1.0:  # also rejects NaN
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    for name, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 1:
            raise UserError(f"{name} must be at least 1, got {limit}")
    full = data.train
    n = len(full)
    split_at = int(n * (1.0 - val_fraction))
    if seed is None:
        train = Split(full.images[:split_at], full.labels[:split_at])
        val = Split(full.images[split_at:], full.labels[split_at:])
    else:
        generator = torch.Generator().manual_seed(seed)
        perm = torch.randperm(n, generator=generator)
        # Sorting keeps file order within each part, so train_limit means "the first n".
        val_idx = perm[: n - split_at].sort().values
        train_idx = perm[n - split_at:].sort().values
        train = Split(full.images[train_idx], full.labels[train_idx])
        val = Split(full.images[val_idx], full.labels[val_idx])
    if train_limit is not None:
        train = train.take(train_limit)
    test = data.test.take(test_limit) if test_limit is not None else data.test
    return Splits(train=train, val=val, test=test)
