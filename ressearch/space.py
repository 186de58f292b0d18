"""Search-space files: what a study varies, how it trains and where it runs.

A space is a YAML file with the sections ``study``, ``data``, ``train``, ``model``, ``resources``
and ``early_stopping``. Every value under ``train:`` (:class:`~ressearch.train.TrainConfig` options)
and ``model:`` (:class:`~ressearch.spec.ResNetSpec` fields) is a fixed value, a range
``{low, high}`` with optional ``log`` and ``step``, or ``{choices: [...]}``. Everything is checked
before anything runs; a problem is one :class:`SpaceError` line naming the file, key and value.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ressearch.counting import count
from ressearch.errors import UserError
from ressearch.recipes import RECIPES
from ressearch.spec import ResNetSpec
from ressearch.train import TrainConfig

SAMPLERS = ("tpe", "nsga2", "gp", "random")
OBJECTIVES = ("val_accuracy", "test_accuracy")
# Set by the study itself, so not searchable.
_RESERVED_TRAIN = {"threads", "device"}


class SpaceError(UserError):
    """An invalid search-space file."""


@dataclass(frozen=True)
class Param:
    """One searched or fixed value."""

    name: str
    section: str  # "train" or "model"
    fixed: Any = None
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def is_fixed(self) -> bool:
        return self.low is None and self.choices is None

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter from an Optuna trial (or return the fixed value)."""
        if self.is_fixed:
            return self.fixed
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step,
                                   log=self.log)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` can be drawn."""
        if self.is_fixed:
            return value == self.fixed
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step:
            k = (value - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return not (isinstance(self.low, int) and isinstance(self.high, int)) or value == int(value)

    def smallest(self) -> list[Any]:
        """Candidate values for the smallest network (counts grow with every numeric field)."""
        if self.is_fixed:
            return [self.fixed]
        if self.choices is not None:
            if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in self.choices):
                return [min(self.choices)]
            return list(self.choices)
        return [self.low]


@dataclass(frozen=True)
class SearchSpace:
    """A parsed, validated search-space file."""

    source: str
    name: str
    sampler: str = "tpe"
    trials: int = 60
    seed: int = 0
    objective: str = "val_accuracy"
    max_params: int | None = None
    storage: str | None = None
    val_fraction: float = 0.15
    split_seed: int | None = None
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    params: tuple[Param, ...] = ()
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    early_stopping: bool = True
    min_epochs: int = 2
    reduction_factor: int = 3
    base_config: TrainConfig = field(default_factory=lambda: RECIPES["default"].config)

    def searched(self) -> list[Param]:
        """The parameters that vary from trial to trial."""
        return [p for p in self.params if not p.is_fixed]

    def build(self, values: dict[str, Any]) -> tuple[ResNetSpec, TrainConfig]:
        """The spec and training config for one assignment of every parameter."""
        model = {p.name: values[p.name] for p in self.params if p.section == "model"}
        train = {p.name: values[p.name] for p in self.params if p.section == "train"}
        return ResNetSpec(**model), self.base_config.replace(**train)

    def suggest(self, trial: Any) -> tuple[ResNetSpec, TrainConfig]:
        """Draw a spec and a training config from an Optuna trial."""
        return self.build({p.name: p.suggest(trial) for p in self.params})

    def baseline_params(self) -> tuple[dict[str, Any], list[str]]:
        """Values of the searched parameters that give the notebook's network and recipe.

        Returns:
            The values the space can express, and a note for each it cannot.
        """
        base_spec, base_train = ResNetSpec(), self.base_config
        values, notes = {}, []
        for p in self.params:
            value = getattr(base_spec if p.section == "model" else base_train, p.name)
            if p.contains(value):
                if not p.is_fixed:
                    values[p.name] = value
            elif p.section == "model":  # training settings are the space's by design
                kind = "fixed to " + repr(p.fixed) if p.is_fixed else "searched without it"
                notes.append(f"the baseline's model.{p.name}={value!r} is {kind}")
        return values, notes

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial can train (the last rung of successive halving)."""
        for p in self.params:
            if p.name == "epochs":
                return int(max(p.choices) if p.choices else p.fixed if p.is_fixed else p.high)
        return self.base_config.epochs

    def min_params(self) -> int:
        """The fewest trainable parameters any network of the space has."""
        model = [p for p in self.params if p.section == "model"]
        candidates = [p.smallest() for p in model]
        best: int | None = None
        for combo in itertools.islice(itertools.product(*candidates), 20000):
            try:
                n = count(ResNetSpec(**{p.name: v for p, v in zip(model, combo, strict=True)})).params
            except UserError:
                continue
            best = n if best is None else min(best, n)
        return best if best is not None else 0


# -- parsing -----------------------------------------------------------------------------------
_SECTIONS = {
    "study": {"name", "sampler", "trials", "seed", "objective", "max_params", "storage"},
    "data": {"val_fraction", "split_seed", "train_limit", "val_limit", "test_limit"},
    "train": set(TrainConfig.field_names()) - _RESERVED_TRAIN,
    "model": {f.name for f in fields(ResNetSpec)},
    "resources": {"cpus_per_trial", "gpus_per_trial", "max_concurrent"},
    "early_stopping": {"enabled", "min_epochs", "reduction_factor"},
}


def load_space(path: str | os.PathLike) -> SearchSpace:
    """Parse and validate a search-space YAML file.

    Raises:
        SpaceError: One line naming the file, the key and the problem.
    """
    path = Path(path)
    src = str(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"{src}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpaceError(f"{src}: cannot read ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpaceError(f"{src}: malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SpaceError(f"{src}: expected a mapping of sections, got {type(doc).__name__}")
    for section, body in doc.items():
        if section not in _SECTIONS:
            raise SpaceError(f"{src}: unknown section {section!r} (known: {', '.join(_SECTIONS)})")
        if body is not None and not isinstance(body, dict):
            raise SpaceError(f"{src}: section {section!r} must be a mapping, got {body!r}")
        for key in body or {}:
            if key not in _SECTIONS[section]:
                raise SpaceError(f"{src}: unknown key {section}.{key}")
    from ressearch.space_checks import check_space

    return check_space(src, {k: (v or {}) for k, v in doc.items()}, path.stem)
