"""Training throughput of ressearch's Trainer against a plain PyTorch loop, on the CPU.

Both train the same network (the baseline preset, built by ``build_model``) with Adam, batch 256,
the same thread count and the same MNIST files, in fp32:

* ressearch: :class:`ressearch.train.Trainer` -- the whole split preloaded as uint8 tensors and
  indexed per batch, channels-last memory format; timed over one epoch of a training subset sized to
  take about ``--seconds`` (no validation or test split, so nothing but training is timed).
* plain: the usual way -- ``torchvision.datasets.MNIST(root, transform=transforms.ToTensor())``,
  ``DataLoader(batch_size=256, shuffle=True, num_workers=0)``, a contiguous (NCHW) model,
  ``nn.CrossEntropyLoss``, ``loss.item()`` every step; timed for ``--seconds`` after a warm-up.
* optionally ressearch again with bf16 autocast on the CPU.

Each measurement is preceded by a few warm-up steps. GFLOP/s uses the analytic MAC count of
:func:`ressearch.counting.count` with the usual convention: one training step costs about 3 forward
passes (forward, backward to the activations, backward to the weights) and a MAC is 2 FLOPs, i.e.
``3 x 2 x MACs`` FLOPs per training image.

    python scripts/bench_train.py --seconds 30 --threads 2 --data-dir ../shared/data [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ressearch.counting import count
from ressearch.data import MNISTData, Split, Splits, find_idx_files, load_mnist, resolve_data_dir
from ressearch.model import build_model
from ressearch.spec import PRESETS, ResNetSpec
from ressearch.train import TrainConfig, Trainer, default_threads

BATCH = 256
FLOP_CONVENTION = ("training FLOPs per image = 3 x forward MACs x 2 FLOPs/MAC "
                   "(forward + 2 backward passes; BN, ReLU, adds and the optimizer not counted)")


def default_data_dir() -> Path | None:
    """``$RESSEARCH_DATA_DIR``, else ``<repo>/../shared/data`` when it exists."""
    env = resolve_data_dir(None)
    if env is not None:
        return env
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    return shared if shared.is_dir() else None


# -- ressearch ---------------------------------------------------------------------------------
def bench_ressearch(spec: ResNetSpec, data: MNISTData, threads: int, seconds: float,
                    bf16: bool) -> dict[str, Any]:
    """Images per second of :class:`Trainer` over one epoch sized to take about ``seconds``."""
    train = data.train
    empty = Split(train.images[:0], train.labels[:0])

    def trainer(n: int, epochs: int) -> Trainer:
        config = TrainConfig(epochs=epochs, batch_size=BATCH, threads=threads, device="cpu",
                             bf16=bf16, seed=0)
        return Trainer(spec, Splits(train.take(n), empty, empty), config)

    # Warm-up and rate estimate: two epochs of 4 steps; the second one's rate sizes the real run.
    warm = trainer(4 * BATCH, 2)
    rate = [m.images_per_second for m in warm.epochs()][-1]
    steps = max(8, round(rate * seconds / BATCH))
    n = min(steps * BATCH, len(train))
    epochs = max(1, math.ceil(steps * BATCH / len(train))) if n == len(train) else 1
    timed = trainer(n, epochs)
    history = list(timed.epochs())
    elapsed = sum(len(timed.train_y) / m.images_per_second for m in history)
    images = len(timed.train_y) * len(history)
    return {"images": images, "seconds": elapsed, "images_per_second": images / elapsed}


# -- plain PyTorch -----------------------------------------------------------------------------
@contextlib.contextmanager
def torchvision_root(data_dir: Path) -> Iterator[tuple[Path, str]]:
    """A root that ``torchvision.datasets.MNIST(root, download=False)`` accepts.

    torchvision reads the *uncompressed* IDX files from ``root/MNIST/raw``; when the data
    directory only has the ``.gz`` files (as ``shared/data`` does, read-only), they are
    decompressed into a temporary root.
    """
    import torchvision.datasets

    try:
        torchvision.datasets.MNIST(str(data_dir), train=False, download=False)
        usable = True
    except RuntimeError:  # "Dataset not found": no uncompressed files under data_dir/MNIST/raw
        usable = False
    if usable:
        yield data_dir, "the data directory itself"
        return
    files = find_idx_files(data_dir)
    with tempfile.TemporaryDirectory(prefix="bench-mnist-") as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for path in files.values():
            name = path.name.removesuffix(".gz")
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        yield Path(tmp), "a temporary root with the .gz files decompressed"


def bench_plain(spec: ResNetSpec, root: Path, threads: int, seconds: float,
                workers: int) -> dict[str, Any]:
    """Images per second of the textbook loop, over ``seconds`` after 5 warm-up steps."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dataset = datasets.MNIST(str(root), train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    model = build_model(spec)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from loader

    images, running_loss, started = 0, 0.0, 0.0
    for step, (x, y) in enumerate(batches()):
        if step == 5:  # warm-up done: start the clock
            images, started = 0, time.perf_counter()
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        images += len(y)
        if step >= 5 and time.perf_counter() - started >= seconds:
            break
    elapsed = time.perf_counter() - started
    if not math.isfinite(running_loss):
        raise RuntimeError("the plain loop diverged")
    return {"images": images, "seconds": elapsed, "images_per_second": images / elapsed}


# -- main --------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0,
                   help="timed seconds per measurement (default 30: 2-3 minutes in all)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all available)")
    p.add_argument("--data-dir", default=None,
                   help="MNIST directory (default: $RESSEARCH_DATA_DIR, else ../shared/data)")
    p.add_argument("--workers", type=int, nargs="+", default=[0],
                   help="DataLoader num_workers values for the plain loop (default: 0)")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16-autocast measurement")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args()

    threads = args.threads or default_threads()
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if data_dir is None:
        sys.exit("no data directory: pass --data-dir or set RESSEARCH_DATA_DIR")
    spec = PRESETS["baseline"]
    macs = count(spec).macs
    flops_per_image = 3 * 2 * macs
    started = time.perf_counter()
    data = load_mnist(data_dir)

    rows: list[dict[str, Any]] = []

    def record(name: str, result: dict[str, Any]) -> None:
        result = {"name": name, **result,
                  "gflops_per_second": result["images_per_second"] * flops_per_image / 1e9}
        rows.append(result)
        if not args.json:
            print(f"{name:<72} {result['images_per_second']:8,.0f} img/s "
                  f"{result['gflops_per_second']:6.2f} GFLOP/s  ({result['images']:,} images in "
                  f"{result['seconds']:.1f}s)", flush=True)

    if not args.json:
        print(f"baseline ({spec.short()}), batch {BATCH}, {threads} thread(s), torch "
              f"{torch.__version__}, {args.seconds:g}s per measurement", flush=True)
    record("ressearch Trainer (fp32, channels-last, preloaded uint8 tensors)",
           bench_ressearch(spec, data, threads, args.seconds, bf16=False))
    with torchvision_root(data_dir) as (root, how):
        for workers in args.workers:
            record(f"plain loop (torchvision MNIST + DataLoader num_workers={workers}, fp32, NCHW)",
                   bench_plain(spec, root, threads, args.seconds, workers))
    if not args.no_bf16:
        record("ressearch Trainer (bf16 autocast on the CPU, channels-last)",
               bench_ressearch(spec, data, threads, args.seconds, bf16=True))

    ours = rows[0]["images_per_second"]
    plain = rows[1]["images_per_second"]
    summary = {
        "spec": spec.short(), "batch_size": BATCH, "threads": threads, "torch": torch.__version__,
        "seconds_per_measurement": args.seconds, "macs_per_image": macs,
        "train_flops_per_image": flops_per_image, "flop_convention": FLOP_CONVENTION,
        "torchvision_root": how, "results": rows,
        "ratio_ressearch_to_plain": ours / plain,
        "total_seconds": time.perf_counter() - started,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"ratio ressearch / plain (num_workers={args.workers[0]}): {ours / plain:.2f}x")
    print(f"GFLOP/s convention: {FLOP_CONVENTION}; {macs:,} MACs -> "
          f"{flops_per_image / 1e6:.1f} MFLOP per training image")
    print(f"torchvision root: {how}; total {summary['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
