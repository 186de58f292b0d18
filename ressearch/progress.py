"""Progress output for long work: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from ressearch.train import EpochMetrics


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def epoch_line(m: EpochMetrics, epochs: int) -> str:
    """One line of metrics after an epoch."""
    return (f"epoch {m.epoch}/{epochs}: loss {m.train_loss:.4f} train {_pct(m.train_accuracy)} "
            f"val {_pct(m.val_accuracy)} lr {m.lr:.2g} {m.seconds:.1f}s "
            f"{m.images_per_second:,.0f} img/s")


class EpochProgress:
    """A bar through each epoch with its running loss, then a line of metrics.

    When ``stream`` is not a terminal only the per-epoch lines are written, so logs stay readable.
    """

    def __init__(self, epochs: int, stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.epochs = epochs
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if enabled is None else enabled
        self.bar: tqdm | None = None
        self.epoch = 1

    def on_step(self, step: int, steps: int, running_loss: float) -> None:
        """Trainer hook: advance the bar."""
        if not self.interactive:
            return
        if self.bar is None:
            self.bar = tqdm(total=steps, desc=f"epoch {self.epoch}/{self.epochs}",
                            file=self.stream, leave=False, unit="batch", dynamic_ncols=True)
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix(loss=f"{running_loss:.4f}", refresh=False)

    def on_epoch(self, m: EpochMetrics) -> None:
        """After an epoch: close the bar and print the metrics line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.epoch = m.epoch + 1
        print(epoch_line(m, self.epochs), file=self.stream, flush=True)
