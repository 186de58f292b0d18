"""Real (small) training runs on a slice of the real MNIST, and the augmentations."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ressearch.augment import MAX_SHIFT_PX, augment_batch
from ressearch.counting import count
from ressearch.data import Split, Splits
from ressearch.errors import UserError
from ressearch.recipes import RECIPES
from ressearch.spec import ResNetSpec
from ressearch.train import EpochMetrics, TrainConfig, Trainer, TrainingDiverged, train

# A very small network (about 1,500 parameters): a second or so per epoch on 1024 images.
TINY = ResNetSpec(stem_width=8, width=4, blocks=1, head_width=8, final_relu=False)
# Plain SGD at a high rate learns TINY quickly enough to tell behaviours apart in 2 epochs.
FAST = TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.1, threads=1, device="cpu")


@pytest.fixture(scope="module")
def tiny_splits(small_splits: Splits) -> Splits:
    return Splits(small_splits.train.take(1024), small_splits.val.take(500),
                  small_splits.test.take(500))


def _curve(history: list[EpochMetrics]) -> list[tuple]:
    """Everything in the history except wall-clock timings."""
    return [(m.epoch, m.train_loss, m.train_accuracy, m.val_loss, m.val_accuracy, m.lr)
            for m in history]


# -- learning ----------------------------------------------------------------------------------
def test_a_small_network_learns_mnist(small_splits: Splits) -> None:
    """The default recipe (one-cycle, precise BN) with a smaller batch and a peak of 1e-2.

    Measured on the CPU: test accuracy 0.656, 0.758, 0.800 (seeds 0, 1, 2); chance is 0.10.
    """
    spec = ResNetSpec(blocks=2, width=8)
    config = RECIPES["default"].config.replace(epochs=2, batch_size=64, lr=1e-2, threads=1,
                                               device="cpu")
    result = train(spec, small_splits, config)
    assert result.test_accuracy is not None and result.test_accuracy > 0.5
    assert result.val_accuracy is not None and result.val_accuracy > 0.5
    assert len(result.history) == 2 and not result.stopped_early
    assert result.history[1].train_loss < result.history[0].train_loss < math.log(10) + 0.1
    assert result.history[1].train_accuracy > result.history[0].train_accuracy
    assert result.images_per_second > 0 and result.train_seconds > 0
    assert result.device == "cpu"
    # The summary is JSON and agrees with the analytic counts.
    metrics = json.loads(json.dumps(result.metrics()))
    assert metrics["params"] == count(spec).params and metrics["macs"] == count(spec).macs
    assert metrics["test_accuracy"] == result.test_accuracy
    assert metrics["spec"] == spec.to_dict() and metrics["spec_hash"] == spec.hash()
    assert len(metrics["history"]) == 2 and metrics["train"]["precise_bn"] == 50


def test_same_seed_same_run_different_seed_different_run(tiny_splits: Splits) -> None:
    seen: list[EpochMetrics] = []
    a = train(TINY, tiny_splits, FAST, callback=seen.append)  # returns None: keep going
    b = train(TINY, tiny_splits, FAST)
    c = train(TINY, tiny_splits, FAST.replace(seed=1))
    assert [m.epoch for m in seen] == [1, 2]
    assert _curve(a.history) == _curve(b.history)
    assert (a.test_accuracy, a.test_loss) == (b.test_accuracy, b.test_loss)
    for (key, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), key
    assert _curve(a.history) != _curve(c.history)
    assert a.history[0].train_loss != c.history[0].train_loss


def test_callback_returning_true_stops_training(tiny_splits: Splits) -> None:
    calls: list[int] = []

    def stop_after_first(m: EpochMetrics) -> bool:
        calls.append(m.epoch)
        return True

    result = train(TINY, tiny_splits, FAST.replace(epochs=3), callback=stop_after_first)
    assert calls == [1]
    assert result.stopped_early and result.epochs == 1 and len(result.history) == 1
    assert result.test_accuracy is not None and 0 <= result.test_accuracy <= 1
    assert result.test_loss is not None and math.isfinite(result.test_loss)
    assert result.val_accuracy == result.history[0].val_accuracy


def test_trainer_can_be_driven_epoch_by_epoch(tiny_splits: Splits) -> None:
    trainer = Trainer(TINY, tiny_splits, FAST.replace(epochs=3))
    first = next(iter(trainer.epochs()))
    assert first.epoch == 1
    rest = list(trainer.epochs())  # resumes where it stopped
    assert [m.epoch for m in rest] == [2, 3]
    result = trainer.finish()
    assert result.epochs == 3 and not result.stopped_early


# -- optimizers and schedules ------------------------------------------------------------------
@pytest.mark.parametrize(("optimizer", "cls", "lr"), [
    ("adam", torch.optim.Adam, 1e-2), ("adamw", torch.optim.AdamW, 1e-2), ("sgd", torch.optim.SGD, 0.1)])
def test_each_optimizer_trains(tiny_splits: Splits, optimizer: str, cls: type, lr: float) -> None:
    config = FAST.replace(optimizer=optimizer, lr=lr, weight_decay=1e-4)
    trainer = Trainer(TINY, tiny_splits, config)
    assert type(trainer.optimizer) is cls
    group = trainer.optimizer.param_groups[0]
    assert group["lr"] == lr and group["weight_decay"] == 1e-4
    if optimizer == "sgd":
        assert group["momentum"] == 0.9 and group["nesterov"]
    else:
        assert group["eps"] == 1e-7  # Keras's epsilon
    before = [p.detach().clone() for p in trainer.model.parameters()]
    history = list(trainer.epochs())
    assert history[1].train_loss < history[0].train_loss
    assert all(not torch.equal(b, p) for b, p in zip(before, trainer.model.parameters(), strict=True))
    assert trainer.finish().test_accuracy is not None


def _schedule_run(tiny_splits: Splits, schedule: str) -> tuple[list[float], float, int]:
    # 256 images, batch 64: 4 steps per epoch, 12 steps in all.
    splits = Splits(tiny_splits.train.take(256), tiny_splits.val.take(0), tiny_splits.test.take(64))
    trainer = Trainer(TINY, splits, FAST.replace(epochs=3, batch_size=64, lr=0.05,
                                                 schedule=schedule))
    lrs = [m.lr for m in trainer.epochs()]
    return lrs, trainer.optimizer.param_groups[0]["lr"], trainer.steps_per_epoch


def test_constant_schedule(tiny_splits: Splits) -> None:
    lrs, last, _ = _schedule_run(tiny_splits, "constant")
    assert lrs == [0.05, 0.05, 0.05] and last == 0.05


def test_cosine_schedule(tiny_splits: Splits) -> None:
    lrs, last, steps = _schedule_run(tiny_splits, "cosine")
    total = 3 * steps
    expected = [0.05 * (1 + math.cos(math.pi * e * steps / total)) / 2 for e in range(3)]
    assert lrs == pytest.approx(expected, rel=1e-6)  # epoch starts: 0.05, 0.0375, 0.0125
    assert last == pytest.approx(0.0, abs=1e-9)  # annealed to zero over all steps


def test_onecycle_schedule(tiny_splits: Splits) -> None:
    lrs, last, steps = _schedule_run(tiny_splits, "onecycle")
    total, peak = 3 * steps, 0.05
    start, floor = peak / 25, peak / 25 / 1e4  # PyTorch's div_factor and final_div_factor
    warm_end = 0.3 * total - 1  # pct_start 0.3

    def expected(step: int) -> float:
        def anneal(a: float, b: float, pct: float) -> float:
            return b + (a - b) / 2 * (1 + math.cos(math.pi * pct))
        if step <= warm_end:
            return anneal(start, peak, step / warm_end)
        return anneal(peak, floor, (step - warm_end) / (total - 1 - warm_end))

    assert lrs == pytest.approx([expected(e * steps) for e in range(3)], rel=1e-6)
    assert lrs[0] == pytest.approx(peak / 25)
    assert lrs[1] > lrs[2] > 0
    assert last == pytest.approx(expected(total), rel=1e-6) and last < lrs[2]


# -- augmentation ------------------------------------------------------------------------------
def _digits(split: Split, n: int = 64) -> torch.Tensor:
    return split.images[:n].unsqueeze(1).float().div(255)


def _centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    ys, xs = torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype)
    mass = x.sum(dim=(1, 2, 3))
    cy = (x.sum(dim=(1, 3)) * ys).sum(1) / mass
    cx = (x.sum(dim=(1, 2)) * xs).sum(1) / mass
    return torch.stack([cy, cx], dim=1)


@pytest.mark.parametrize("kind", ["shift", "affine"])
def test_augment_batch_keeps_shape_and_moves_pixels(tiny_splits: Splits, kind: str) -> None:
    x = _digits(tiny_splits.train)
    out = augment_batch(x, kind, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    moved = (_centre_of_mass(out) - _centre_of_mass(x)).norm(dim=1)
    assert (moved > 0.05).float().mean() > 0.9  # nearly every image moved
    if kind == "shift":
        # A shift of <= 2 px loses no ink from a digit with a blank 2-px border (most of them),
        # and moves every centre of mass by at most the shift.
        border = x.clone()
        border[..., 2:-2, 2:-2] = 0
        inside = border.sum(dim=(1, 2, 3)) == 0
        assert inside.sum() > 32
        torch.testing.assert_close(out[inside].sum(dim=(1, 2, 3)), x[inside].sum(dim=(1, 2, 3)),
                                   rtol=1e-4, atol=1e-3)
        assert moved[inside].max() <= math.hypot(MAX_SHIFT_PX, MAX_SHIFT_PX) + 0.05
    # Reproducible under a seed, different under another.
    again = augment_batch(x, kind, torch.Generator().manual_seed(0))
    other = augment_batch(x, kind, torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_augment_batch_rejects_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_batch(torch.zeros(2, 1, 28, 28), "flip", torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["shift", "affine"])
def test_training_with_augmentation(tiny_splits: Splits, kind: str) -> None:
    plain = train(TINY, tiny_splits, FAST.replace(epochs=1))
    augmented = train(TINY, tiny_splits, FAST.replace(epochs=1, augment=kind))
    assert math.isfinite(augmented.history[0].train_loss)
    # Same seed and batches: only the augmentation can make the losses differ.
    assert augmented.history[0].train_loss != plain.history[0].train_loss
    assert augmented.test_accuracy is not None


# -- label smoothing, precise BN, bf16, divergence ---------------------------------------------
def test_label_smoothing_bounds_the_training_loss(tiny_splits: Splits) -> None:
    eps, k = 0.9, 10
    target = [1 - eps + eps / k] + [eps / k] * (k - 1)
    entropy = -sum(q * math.log(q) for q in target)  # cross-entropy to it is never below this
    smoothed = train(TINY, tiny_splits, FAST.replace(label_smoothing=eps))
    plain = train(TINY, tiny_splits, FAST)
    assert all(m.train_loss >= entropy - 1e-4 for m in smoothed.history)
    assert plain.history[-1].train_loss < entropy - 0.1  # so the bound above is not vacuous
    assert smoothed.test_accuracy is not None


def test_precise_bn_recomputes_exact_statistics_without_changing_training(tiny_splits: Splits) -> None:
    plain = train(TINY, tiny_splits, FAST)
    trainer = Trainer(TINY, tiny_splits, FAST.replace(precise_bn=3))
    history = list(trainer.epochs())
    precise = trainer.finish()
    # Training uses batch statistics: identical losses; evaluation uses the recomputed ones.
    assert [m.train_loss for m in history] == [m.train_loss for m in plain.history]
    assert [m.val_loss for m in history] != [m.val_loss for m in plain.history]
    assert precise.test_accuracy is not None

    # The stem's running mean is now the exact mean of its conv output over the 3 batches that
    # recompute_bn_statistics draws (a permutation seeded with seed + 1).
    model = trainer.model
    stem_conv, stem_bn = model.body.stem[0], model.body.stem[1]
    assert stem_bn.momentum == TINY.bn_momentum  # restored afterwards
    gen = torch.Generator().manual_seed(FAST.seed + 1)
    order = torch.randperm(len(tiny_splits.train), generator=gen)
    means, variances = [], []
    with torch.no_grad():
        for step in range(3):
            idx = order[step * FAST.batch_size:(step + 1) * FAST.batch_size]
            out = stem_conv(tiny_splits.train.images[idx].unsqueeze(1).float() / 255)
            means.append(out.mean(dim=(0, 2, 3)))
            variances.append(out.var(dim=(0, 2, 3), unbiased=True))
    torch.testing.assert_close(stem_bn.running_mean, torch.stack(means).mean(0), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(stem_bn.running_var, torch.stack(variances).mean(0), rtol=1e-3, atol=1e-4)
    assert int(stem_bn.num_batches_tracked) == 3


def test_bf16_autocast_runs_on_the_cpu(tiny_splits: Splits) -> None:
    fp32 = train(TINY, tiny_splits, FAST.replace(epochs=1, bf16=False))
    trainer = Trainer(TINY, tiny_splits, FAST.replace(epochs=1, bf16=True))
    assert trainer.bf16 and trainer.device.type == "cpu"
    history = list(trainer.epochs())
    result = trainer.finish()
    assert math.isfinite(history[0].train_loss)
    assert history[0].train_loss != fp32.history[0].train_loss  # autocast really was on
    assert history[0].train_loss == pytest.approx(fp32.history[0].train_loss, rel=0.05)
    assert result.test_accuracy is not None
    assert Trainer(TINY, tiny_splits, FAST).bf16 is False  # default: bf16 only on CUDA


def test_a_huge_learning_rate_raises_training_diverged(tiny_splits: Splits) -> None:
    # BatchNorm keeps the loss finite at lr 1e6 (about 1e5 after an epoch); 1e12 makes it NaN.
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        train(TINY.replace(final_relu=True), tiny_splits,
              FAST.replace(epochs=2, batch_size=64, lr=1e12))


# -- splits and options ------------------------------------------------------------------------
def test_an_empty_validation_split_gives_no_validation_accuracy(tiny_splits: Splits) -> None:
    splits = Splits(tiny_splits.train.take(256), tiny_splits.val.take(0), tiny_splits.test)
    assert len(splits.val) == 0
    result = train(TINY, splits, FAST)
    assert all(m.val_accuracy is None and m.val_loss is None for m in result.history)
    assert result.val_accuracy is None and result.val_loss is None
    assert result.test_accuracy is not None


def test_an_empty_training_split_is_a_user_error(tiny_splits: Splits) -> None:
    splits = Splits(tiny_splits.train.take(0), tiny_splits.val, tiny_splits.test)
    with pytest.raises(UserError, match="empty"):
        Trainer(TINY, splits, FAST)


@pytest.mark.parametrize("changes", [
    {"optimizer": "rmsprop"}, {"schedule": "step"}, {"augment": "flip"}, {"epochs": 0},
    {"batch_size": 0}, {"lr": 0.0}, {"lr": -1.0}, {"label_smoothing": 1.0}, {"precise_bn": -1},
])
def test_invalid_options_are_user_errors(changes: dict) -> None:
    with pytest.raises(UserError) as err:
        TrainConfig(**changes)
    key = next(iter(changes))
    assert key in str(err.value) and "\n" not in str(err.value)


def test_training_sets_the_thread_count(tiny_splits: Splits) -> None:
    Trainer(TINY, tiny_splits, FAST.replace(threads=1))
    assert torch.get_num_threads() == 1
    model = Trainer(TINY, tiny_splits, FAST).model
    assert isinstance(model, nn.Module) and model.spec == TINY
