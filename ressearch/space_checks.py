"""Validation of a search-space document, value by value, into a :class:`SearchSpace`.

Kept apart from :mod:`ressearch.space` because it is long and only runs once per file: each check
names the file, the key and the offending value, so a user can fix the file from the message alone.
"""

from __future__ import annotations

import math
from typing import Any

from ressearch.errors import UserError
from ressearch.space import OBJECTIVES, SAMPLERS, Param, SearchSpace, SpaceError
from ressearch.spec import ResNetSpec
from ressearch.train import TrainConfig

_NUMBER = (int, float)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, _NUMBER) and not isinstance(v, bool) and math.isfinite(v)


def _is_float_field(section: str, name: str) -> bool:
    return isinstance(getattr(ResNetSpec() if section == "model" else TrainConfig(), name), float)


class _Checker:
    def __init__(self, src: str) -> None:
        self.src = src

    def fail(self, key: str, problem: str) -> SpaceError:
        return SpaceError(f"{self.src}: {key}: {problem}")

    def get(self, body: dict[str, Any], section: str, key: str, kind: str, default: Any,
            choices: tuple[str, ...] | None = None, minimum: float | None = None) -> Any:
        if key not in body or body[key] is None:
            return default
        value = body[key]
        ok = {"int": _is_int, "num": _is_num, "bool": lambda v: isinstance(v, bool),
              "str": lambda v: isinstance(v, str)}[kind](value)
        if not ok:
            expected = {"int": "an integer", "num": "a number", "bool": "true or false",
                        "str": "a string"}[kind]
            raise self.fail(f"{section}.{key}", f"{value!r} is not {expected}")
        if choices is not None and value not in choices:
            raise self.fail(f"{section}.{key}", f"{value!r} is not one of {', '.join(choices)}")
        if minimum is not None and value < minimum:
            raise self.fail(f"{section}.{key}", f"{value!r} must be at least {minimum:g}")
        return value

    def param(self, section: str, name: str, raw: Any) -> Param:
        key = f"{section}.{name}"
        if isinstance(raw, dict):
            extra = set(raw) - {"low", "high", "log", "step", "choices"}
            if extra:
                raise self.fail(key, f"unknown range key {sorted(extra)[0]!r} "
                                     "(a range is {low, high, log, step}; a set is {choices: [...]})")
            if "choices" in raw:
                if set(raw) != {"choices"}:
                    raise self.fail(key, "choices cannot be combined with low/high/log/step")
                choices = raw["choices"]
                if not isinstance(choices, list) or not choices:
                    raise self.fail(key, f"choices must be a non-empty list, got {choices!r}")
                for c in choices:
                    self.value_ok(section, name, c)
                return Param(name, section, choices=tuple(choices))
            if "low" not in raw or "high" not in raw:
                raise self.fail(key, f"a range needs both low and high, got {raw!r}")
            low, high = raw["low"], raw["high"]
            log, step = raw.get("log", False), raw.get("step")
            if not _is_num(low) or not _is_num(high):
                raise self.fail(key, f"range bounds must be numbers, got low={low!r} high={high!r}")
            if _is_float_field(section, name):  # `weight_decay: {low: 0, high: 1}` is continuous
                low, high = float(low), float(high)
            if low > high:
                raise self.fail(key, f"empty range: low={low!r} > high={high!r}")
            if not isinstance(log, bool):
                raise self.fail(key, f"log must be true or false, got {log!r}")
            if log and low <= 0:
                raise self.fail(key, f"a log range needs low > 0, got low={low!r}")
            if step is not None and (not _is_num(step) or step <= 0):
                raise self.fail(key, f"step must be a positive number, got {step!r}")
            if log and step is not None:
                raise self.fail(key, "log and step cannot be combined")
            if _is_int(low) and _is_int(high) and step is not None and not _is_int(step):
                raise self.fail(key, f"an integer range needs an integer step, got {step!r}")
            self.value_ok(section, name, low)
            self.value_ok(section, name, high)
            return Param(name, section, low=low, high=high, log=log, step=step)
        if isinstance(raw, list):
            raise self.fail(key, f"a list is not a value; write {{choices: {raw!r}}}")
        self.value_ok(section, name, raw)
        return Param(name, section, fixed=raw)

    def value_ok(self, section: str, name: str, value: Any) -> None:
        """The value must be accepted by the spec or the trainer on its own."""
        key = f"{section}.{name}"
        try:
            if section == "model":
                ResNetSpec.from_dict({name: value}, source=key)
            else:
                default = getattr(TrainConfig(), name)
                if isinstance(default, bool) or (default is None and name == "bf16"):
                    if not isinstance(value, bool):
                        raise UserError(f"{value!r} is not true or false")
                elif _is_int(default) and not _is_int(value):
                    raise UserError(f"{value!r} is not an integer")
                elif isinstance(default, float) and not _is_num(value):
                    raise UserError(f"{value!r} is not a number")
                elif isinstance(default, str) and not isinstance(value, str):
                    raise UserError(f"{value!r} is not a string")
                TrainConfig(**{name: value})
        except UserError as err:
            message = str(err).removeprefix(f"{key}: ")
            raise self.fail(key, f"invalid value {value!r} ({message})") from None


def check_space(src: str, doc: dict[str, dict[str, Any]], default_name: str) -> SearchSpace:
    """Validate the sections of a parsed space file; see :func:`ressearch.space.load_space`."""
    c = _Checker(src)
    study, data, res, es = (doc.get(s, {}) for s in ("study", "data", "resources",
                                                      "early_stopping"))
    kw: dict[str, Any] = {
        "name": c.get(study, "study", "name", "str", default_name),
        "sampler": c.get(study, "study", "sampler", "str", "tpe", choices=SAMPLERS),
        "trials": c.get(study, "study", "trials", "int", 60, minimum=1),
        "seed": c.get(study, "study", "seed", "int", 0),
        "objective": c.get(study, "study", "objective", "str", "val_accuracy", choices=OBJECTIVES),
        "max_params": c.get(study, "study", "max_params", "int", None, minimum=1),
        "storage": c.get(study, "study", "storage", "str", None),
        "val_fraction": c.get(data, "data", "val_fraction", "num", 0.15, minimum=0),
        "split_seed": c.get(data, "data", "split_seed", "int", None),
        "train_limit": c.get(data, "data", "train_limit", "int", None, minimum=1),
        "val_limit": c.get(data, "data", "val_limit", "int", None, minimum=1),
        "test_limit": c.get(data, "data", "test_limit", "int", None, minimum=1),
        "cpus_per_trial": c.get(res, "resources", "cpus_per_trial", "num", 1.0),
        "gpus_per_trial": c.get(res, "resources", "gpus_per_trial", "num", 0.0, minimum=0),
        "max_concurrent": c.get(res, "resources", "max_concurrent", "int", None, minimum=1),
        "early_stopping": c.get(es, "early_stopping", "enabled", "bool", True),
        "min_epochs": c.get(es, "early_stopping", "min_epochs", "int", 2, minimum=1),
        "reduction_factor": c.get(es, "early_stopping", "reduction_factor", "int", 3, minimum=2),
    }
    if not kw["name"].strip() or "/" in kw["name"]:
        raise c.fail("study.name", f"{kw['name']!r} must be a non-empty name without '/'")
    if not kw["val_fraction"] < 1:
        raise c.fail("data.val_fraction", f"{kw['val_fraction']!r} must be in [0, 1)")
    if kw["objective"] == "val_accuracy" and kw["val_fraction"] == 0:
        raise c.fail("study.objective", "val_accuracy needs data.val_fraction > 0")
    if not kw["cpus_per_trial"] > 0:
        raise c.fail("resources.cpus_per_trial", f"{kw['cpus_per_trial']!r} must be positive")

    params = [c.param(section, name, raw) for section in ("model", "train")
              for name, raw in doc.get(section, {}).items()]
    space = SearchSpace(source=src, params=tuple(params), **kw)
    # Every combination must build: catch fixed values that contradict each other now.
    try:
        space.build({p.name: p.smallest()[0] for p in params})
    except UserError as err:
        raise SpaceError(f"{src}: the fixed values do not build a network ({err})") from None
    if space.max_params is not None:
        smallest = space.min_params()
        if smallest > space.max_params:
            raise c.fail("study.max_params", f"{space.max_params} is below every architecture of "
                                             f"the space (the smallest has {smallest} parameters)")
    return space
