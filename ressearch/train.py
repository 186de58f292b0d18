"""A fast trainer for one network on preloaded tensors.

It knows nothing of Optuna or Ray: callers iterate :meth:`Trainer.epochs` (or pass a callback to
:func:`train`) and stop whenever they like. Speed comes from keeping the whole dataset as uint8
tensors on the device and indexing them per batch (no per-sample Python, no PIL, no DataLoader
workers), channels-last memory format, and bf16 autocast on CUDA (optional on the CPU).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ressearch.augment import augment_batch
from ressearch.data import Split, Splits
from ressearch.errors import UserError
from ressearch.model import ResNet, build_model
from ressearch.spec import ResNetSpec


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train one network. The defaults are the notebook's recipe.

    Attributes:
        epochs: Passes over the training split.
        batch_size: Images per optimisation step.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (SGD with Nesterov momentum).
        lr: Learning rate (the peak rate for ``onecycle``).
        weight_decay: L2 penalty (decoupled for ``adamw``).
        momentum: SGD momentum.
        adam_eps: Adam's epsilon; Keras's default is 1e-7 (PyTorch's 1e-8).
        schedule: ``constant``, ``cosine`` (to zero over all steps) or ``onecycle``.
        label_smoothing: Cross-entropy label smoothing.
        augment: ``none``, ``shift`` (random translations up to 2 px) or ``affine`` (small
            rotations, scalings and shifts), done on tensors on the device.
        precise_bn: Before every evaluation, recompute BatchNorm statistics as exact averages over
            ``precise_bn`` training batches (0: use the running averages).
        seed: Seeds initialisation, shuffling and augmentation.
        threads: CPU threads for PyTorch; ``None`` uses every CPU this process may run on (Ray sets
            OMP_NUM_THREADS per task, which torch does not re-read, so it is set explicitly).
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        bf16: bf16 autocast; ``None`` means on CUDA only.
        channels_last: Use the channels-last memory format.
        eval_batch_size: Images per evaluation step.
    """

    epochs: int = 12
    batch_size: int = 256
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    adam_eps: float = 1e-7
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    label_smoothing: float = 0.0
    augment: Literal["none", "shift", "affine"] = "none"
    precise_bn: int = 0
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    bf16: bool | None = None
    channels_last: bool = True
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        choices = {"optimizer": ("adam", "adamw", "sgd"),
                   "schedule": ("constant", "cosine", "onecycle"),
                   "augment": ("none", "shift", "affine")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}={getattr(self, name)!r} must be at least 1")
        if not self.lr > 0:
            raise UserError(f"lr={self.lr!r} must be positive")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"label_smoothing={self.label_smoothing!r} must be in [0, 1)")
        if self.precise_bn < 0:
            raise UserError(f"precise_bn={self.precise_bn!r} must be >= 0")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-compatible values."""
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of all options."""
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch measured."""

    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float  # wall time of the epoch, evaluation included
    images_per_second: float  # training images per second of training steps


@dataclass
class TrainResult:
    """The outcome of training one network."""

    spec: ResNetSpec
    config: TrainConfig
    model: ResNet = field(repr=False)
    history: list[EpochMetrics]
    val_accuracy: float | None
    val_loss: float | None
    test_accuracy: float | None
    test_loss: float | None
    train_seconds: float
    images_per_second: float
    device: str
    stopped_early: bool
    train_images: int = 0
    val_images: int = 0
    test_images: int = 0

    @property
    def epochs(self) -> int:
        """Epochs actually run."""
        return len(self.history)

    def metrics(self) -> dict[str, Any]:
        """A JSON-compatible summary (what ``metrics.json`` holds)."""
        from ressearch.counting import count

        counts = count(self.spec)
        return {
            "test_accuracy": self.test_accuracy, "test_loss": self.test_loss,
            "val_accuracy": self.val_accuracy, "val_loss": self.val_loss,
            "params": counts.params, "keras_params": counts.keras_params, "macs": counts.macs,
            "epochs": self.epochs, "stopped_early": self.stopped_early,
            "train_images": self.train_images, "val_images": self.val_images,
            "test_images": self.test_images,
            "train_seconds": round(self.train_seconds, 2),
            "images_per_second": round(self.images_per_second, 1), "device": self.device,
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "spec": self.spec.to_dict(), "spec_hash": self.spec.hash(),
            "train": self.config.to_dict(), "history": [asdict(h) for h in self.history],
        }


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name!r} but CUDA is not available on this machine")
    return torch.device(name)


def default_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Trainer:
    """Trains one network; iterate :meth:`epochs`, then call :meth:`finish`.

    Args:
        spec: The network.
        splits: Train, validation and test data as uint8 tensors.
        config: The recipe.
        on_step: Optional ``f(step, steps, running_loss)`` called every few steps for progress.
    """

    def __init__(self, spec: ResNetSpec, splits: Splits, config: TrainConfig = TrainConfig(),
                 on_step: Callable[[int, int, float], None] | None = None) -> None:
        if len(splits.train) == 0:
            raise UserError("the training split is empty")
        self.spec, self.splits, self.config, self.on_step = spec, splits, config, on_step
        torch.set_num_threads(config.threads or default_threads())
        self.device = resolve_device(config.device)
        self.bf16 = config.bf16 if config.bf16 is not None else self.device.type == "cuda"
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        torch.manual_seed(config.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.model = build_model(spec).to(self.device, memory_format=self.memory_format)
        self.train_x = splits.train.images.to(self.device)
        self.train_y = splits.train.labels.to(self.device)
        self.steps_per_epoch = math.ceil(len(splits.train) / config.batch_size)
        self.optimizer = _make_optimizer(self.model, config)
        self.scheduler = _make_scheduler(self.optimizer, config,
                                         self.steps_per_epoch * config.epochs)
        self.history: list[EpochMetrics] = []
        self.train_seconds = 0.0
        self.images_seen = 0

    # -- batches -------------------------------------------------------------------------------
    def _to_input(self, images: Tensor) -> Tensor:
        x = images.to(self.device, non_blocking=True).unsqueeze(1).float().div_(255.0)
        return x.contiguous(memory_format=self.memory_format)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    # -- training ------------------------------------------------------------------------------
    def epochs(self) -> Iterator[EpochMetrics]:
        """Train epoch by epoch, yielding each epoch's metrics; stop by not asking for more."""
        cfg = self.config
        for epoch in range(len(self.history) + 1, cfg.epochs + 1):
            started = time.perf_counter()
            self.model.train()
            order = torch.randperm(len(self.train_y), device=self.device, generator=self.generator)
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            lr = self.optimizer.param_groups[0]["lr"]
            for step in range(self.steps_per_epoch):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                x, y = self._to_input(self.train_x[idx]), self.train_y[idx]
                if cfg.augment != "none":
                    x = augment_batch(x, cfg.augment, self.generator)
                with self._autocast():
                    logits = self.model(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.argmax(1) == y).sum()
                if self.on_step is not None and (step % 10 == 9 or step == self.steps_per_epoch - 1):
                    seen = min((step + 1) * cfg.batch_size, len(self.train_y))
                    self.on_step(step + 1, self.steps_per_epoch, loss_sum.item() / seen)
            train_time = time.perf_counter() - started
            self.train_seconds += train_time
            self.images_seen += len(self.train_y)
            train_loss = loss_sum.item() / len(self.train_y)
            if not math.isfinite(train_loss):
                raise TrainingDiverged(f"training loss became {train_loss} in epoch {epoch}")
            val_loss, val_acc = self.evaluate(self.splits.val)
            metrics = EpochMetrics(
                epoch=epoch, train_loss=train_loss,
                train_accuracy=correct.item() / len(self.train_y),
                val_loss=val_loss, val_accuracy=val_acc, lr=lr,
                seconds=time.perf_counter() - started,
                images_per_second=len(self.train_y) / train_time)
            self.history.append(metrics)
            yield metrics

    @torch.no_grad()
    def evaluate(self, split: Split) -> tuple[float | None, float | None]:
        """(mean loss, accuracy) on ``split``; ``(None, None)`` when it is empty."""
        if len(split) == 0:
            return None, None
        if self.config.precise_bn:
            self.recompute_bn_statistics(self.config.precise_bn)
        self.model.eval()
        loss, correct = 0.0, 0
        bs = self.config.eval_batch_size
        for start in range(0, len(split), bs):
            x = self._to_input(split.images[start:start + bs])
            y = split.labels[start:start + bs].to(self.device)
            with self._autocast():
                logits = self.model(x).float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
        return loss / len(split), correct / len(split)

    @torch.no_grad()
    def recompute_bn_statistics(self, batches: int) -> None:
        """Replace BatchNorm running averages by exact averages over ``batches`` training batches.

        Running averages lag behind weights that move every step; averaging the statistics of the
        current weights removes that lag (as "precise BN" in Wu & Johnson 2021).
        """
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average = exact mean over the batches seen
        self.model.train()
        gen = torch.Generator(device=self.device).manual_seed(self.config.seed + 1)
        order = torch.randperm(len(self.train_y), device=self.device, generator=gen)
        bs = self.config.batch_size
        for step in range(min(batches, self.steps_per_epoch)):
            idx = order[step * bs:(step + 1) * bs]
            with self._autocast():
                self.model(self._to_input(self.train_x[idx]))
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum

    def finish(self) -> TrainResult:
        """Evaluate on the test split and return the result."""
        test_loss, test_acc = self.evaluate(self.splits.test)
        last = self.history[-1] if self.history else None
        return TrainResult(
            spec=self.spec, config=self.config, model=self.model, history=list(self.history),
            val_accuracy=last.val_accuracy if last else None,
            val_loss=last.val_loss if last else None,
            test_accuracy=test_acc, test_loss=test_loss, train_seconds=self.train_seconds,
            images_per_second=self.images_seen / self.train_seconds if self.train_seconds else 0.0,
            device=str(self.device), stopped_early=len(self.history) < self.config.epochs,
            train_images=len(self.splits.train), val_images=len(self.splits.val),
            test_images=len(self.splits.test))


def train(spec: ResNetSpec, splits: Splits, config: TrainConfig = TrainConfig(),
          callback: Callable[[EpochMetrics], bool | None] | None = None,
          on_step: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train ``spec`` on ``splits`` and evaluate it on the test split.

    Args:
        spec: The network.
        splits: Train, validation and test data.
        config: The recipe.
        callback: Called after every epoch with its metrics; returning ``True`` stops training.
        on_step: Optional progress callback ``f(step, steps, running_loss)``.

    Returns:
        The trained model with validation and test accuracy, curves and timings.
    """
    trainer = Trainer(spec, splits, config, on_step=on_step)
    for metrics in trainer.epochs():
        if callback is not None and callback(metrics):
            break
    return trainer.finish()


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True,
                           weight_decay=cfg.weight_decay)


def _make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps)
    return None
