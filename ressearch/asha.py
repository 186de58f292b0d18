"""Asynchronous successive halving for two objectives (accuracy up, parameters down).

Neither Optuna (its pruners need ``trial.report``, which raises for multi-objective studies) nor
Ray Tune (its schedulers compare one metric) prunes on two objectives, so this module does: at rung
epochs ``min_epochs * reduction_factor**k`` a trial goes on only if it is among the best
``1/reduction_factor`` of the trials that reached the same rung, ranked by non-dominated sorting on
(accuracy at that rung, parameters). Like Optuna's ``SuccessiveHalvingPruner``, a trial never
waits for competitors: while a rung holds fewer than ``reduction_factor`` trials, only its first
front goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether point ``a`` (accuracy, params) is at least as good as ``b`` in both and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def non_dominated_ranks(points: Sequence[tuple[float, float]]) -> list[int]:
    """Front index of each point: 0 for the Pareto front, 1 for the front once 0 is removed, ...

    O(n^2) per front, which is nothing next to training one network.
    """
    ranks = [-1] * len(points)
    remaining = set(range(len(points)))
    rank = 0
    while remaining:
        front = {i for i in remaining
                 if not any(dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


@dataclass
class SuccessiveHalving:
    """Decides, epoch by epoch, which trials go on.

    Args:
        min_epochs: The first rung.
        reduction_factor: Keep the best ``1/reduction_factor`` at every rung.
        max_epochs: Trials end here anyway; no rung at or beyond it.
    """

    min_epochs: int
    reduction_factor: int
    max_epochs: int
    rungs: dict[int, dict[int, tuple[float, float]]] = field(default_factory=dict)

    def rung_epochs(self) -> list[int]:
        """The epochs at which trials are compared."""
        epochs, e = [], self.min_epochs
        while e < self.max_epochs:
            epochs.append(e)
            e *= self.reduction_factor
        return epochs

    def record(self, trial: int, epoch: int, accuracy: float, params: int) -> None:
        """Add an earlier result to a rung without deciding (used when resuming a study)."""
        if epoch in self.rung_epochs():
            self.rungs.setdefault(epoch, {})[trial] = (accuracy, float(params))

    def should_stop(self, trial: int, epoch: int, accuracy: float, params: int) -> bool:
        """Record ``trial``'s result at ``epoch`` and say whether it should stop here."""
        if epoch not in self.rung_epochs():
            return False
        rung = self.rungs.setdefault(epoch, {})
        rung[trial] = (accuracy, float(params))
        ids = list(rung)
        ranks = non_dominated_ranks([rung[i] for i in ids])
        keep = max(1, len(ids) // self.reduction_factor)
        mine = ranks[ids.index(trial)]
        # Go on if fewer than `keep` trials sit in strictly better fronts: the front that straddles
        # the cut goes on whole, since its members are incomparable.
        better = sum(1 for r in ranks if r < mine)
        return better >= keep
