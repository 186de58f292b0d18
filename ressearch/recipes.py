"""Named training recipes for the baseline: the notebook's, and the default that reaches its bar.

A recipe is a spec change plus a :class:`~ressearch.train.TrainConfig`; both are recorded in
``metrics.json`` so that every figure says how it was obtained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ressearch.errors import UserError
from ressearch.spec import PRESETS, ResNetSpec
from ressearch.train import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """A way to train the baseline."""

    name: str
    description: str
    config: TrainConfig
    spec_changes: dict[str, Any] = field(default_factory=dict)

    def spec(self, base: ResNetSpec | None = None) -> ResNetSpec:
        """The network this recipe trains (the baseline unless ``base`` is given)."""
        base = base or PRESETS["baseline"]
        return base.replace(**self.spec_changes) if self.spec_changes else base

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form for ``metrics.json``."""
        return {"name": self.name, "description": self.description,
                "spec_changes": self.spec_changes}


RECIPES: dict[str, Recipe] = {
    "notebook": Recipe(
        "notebook",
        "The notebook's recipe, transcribed faithfully: Adam (lr 1e-3, eps 1e-7), batch 256, "
        "12 epochs, constant learning rate, Keras BN momentum 0.99, last 15% for validation.",
        TrainConfig()),
    "default": Recipe(
        "default",
        "The notebook's recipe with a one-cycle learning-rate schedule (peak 5e-3, annealed to ~0) "
        "instead of Adam's constant 1e-3, and BatchNorm statistics recomputed exactly over 50 "
        "training batches before each evaluation ('precise BN', which changes no weight).",
        TrainConfig(schedule="onecycle", lr=5e-3, precise_bn=50)),
}


def get_recipe(name: str) -> Recipe:
    """A recipe by name; :class:`UserError` for an unknown one."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    return RECIPES[name]
