"""Shared fixtures: the real MNIST files, a small slice of them, and random network specs."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ressearch.data import DATA_DIR_ENV, MNISTData, Splits, find_idx_files, load_mnist, make_splits
from ressearch.spec import HEADS, INITS, NORMS, ORDERS, ResNetSpec

# The machines running the suite are small and shared: one thread avoids OpenMP oversubscription
# (many times slower than one thread for these tiny models). The trainer sets its own count.
torch.set_num_threads(1)


def locate_data_dir() -> Path:
    """``$RESSEARCH_DATA_DIR`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory holding the real MNIST files; fails (never skips) when they are missing."""
    path = locate_data_dir()
    if not path.is_dir():
        pytest.fail(f"MNIST data directory {path} does not exist; set {DATA_DIR_ENV} to the "
                    f"directory holding MNIST/raw/*.gz")
    find_idx_files(path)  # raises a DataError naming what is missing
    return path


@pytest.fixture(scope="session")
def mnist(data_dir: Path) -> MNISTData:
    """The real MNIST, loaded once per session."""
    return load_mnist(data_dir)


@pytest.fixture(scope="session")
def small_splits(mnist: MNISTData) -> Splits:
    """2000 training, 1000 validation and 1000 test images of the real MNIST."""
    splits = make_splits(mnist, train_limit=2000, test_limit=1000)
    return Splits(train=splits.train, val=splits.val.take(1000), test=splits.test)


def random_spec(rng: random.Random, *, vary_shape: bool = False) -> ResNetSpec:
    """A random, small spec touching every architectural field.

    Args:
        rng: The source of randomness (seeded by the caller).
        vary_shape: Also vary image size, input channels and classes.
    """
    stages = rng.randint(1, 3)
    changes: dict = {
        "stem_width": rng.randint(1, 6),
        "downsample": rng.random() < 0.5,
        "width": rng.randint(1, 6),
        "blocks": rng.randint(0, 6) if stages < 3 else rng.randint(0, 3),
        "stages": stages,
        "width_growth": rng.choice([0.5, 1.0, 1.5, 2.0, 2.5]),
        "order": rng.choice(ORDERS),
        "norm": rng.choice(NORMS),
        "kernel_size": rng.choice([1, 3, 5]),
        "bias": rng.random() < 0.5,
        "head": rng.choice(HEADS),
        "head_width": rng.randint(1, 8),
        "final_relu": rng.random() < 0.5,
        "init": rng.choice(INITS),
        "bn_momentum": rng.choice([0.01, 0.1, 0.5, 1.0]),
        "bn_eps": rng.choice([1e-5, 1e-3, 0.1]),
    }
    if vary_shape:
        changes.update(image_size=rng.choice([5, 16, 17, 28, 31]), in_channels=rng.randint(1, 3),
                       num_classes=rng.randint(1, 12))
    return ResNetSpec(**changes)


@pytest.fixture
def make_random_spec() -> Callable[..., ResNetSpec]:
    """:func:`random_spec` as a fixture, so test modules need not import conftest."""
    return random_spec
