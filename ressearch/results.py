"""Reading a finished (or running) study: the Pareto front, tables, and picking a model.

Works on what :mod:`ressearch.study` stores: two objectives (accuracy, trainable parameters) and
user attributes per trial (test accuracy, Keras-style count, MACs, curve, spec, checkpoint).
"""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from ressearch.errors import UserError

FRONT_COLUMNS = ["trial", "params", "keras_params", "macs", "val_accuracy", "test_accuracy",
                 "epochs", "architecture", "baseline", "checkpoint"]


def objective_name(study: optuna.Study) -> str:
    """The accuracy objective the study maximised (``val_accuracy`` or ``test_accuracy``)."""
    return study.user_attrs.get("objective", "val_accuracy")


def is_feasible(trial: FrozenTrial) -> bool:
    """Trained and within the parameter budget."""
    return trial.state == TrialState.COMPLETE and not trial.user_attrs.get("infeasible")


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated feasible trials, smallest first (duplicates of a network collapsed)."""
    front = [t for t in study.best_trials if is_feasible(t)]
    seen, unique = set(), []
    for t in sorted(front, key=lambda t: (t.values[1], -t.values[0], t.number)):
        key = t.user_attrs.get("run_key", t.number)
        if key not in seen:
            seen.add(key)
            unique.append(t)
    return unique


def baseline_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's trial 0 when it ran the notebook's network."""
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("baseline") and t.state.is_finished():
            return t
    return None


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One trial as a flat dict of the columns users compare."""
    a = trial.user_attrs
    return {
        "trial": trial.number, "state": trial.state.name,
        "params": a.get("params"), "keras_params": a.get("keras_params"), "macs": a.get("macs"),
        "val_accuracy": a.get("val_accuracy", (a.get("val_curve") or [None])[-1]),
        "test_accuracy": a.get("test_accuracy"), "epochs": a.get("epochs"),
        "architecture": a.get("short"), "baseline": bool(a.get("baseline")),
        "infeasible": bool(a.get("infeasible")), "duplicate_of": a.get("duplicate_of"),
        "train_seconds": a.get("train_seconds"), "checkpoint": a.get("checkpoint"),
        "fail_reason": a.get("fail_reason"),
        **{f"param_{k}": v for k, v in trial.params.items()},
    }


def front_table(study: optuna.Study) -> pd.DataFrame:
    """The Pareto front as a DataFrame, with the baseline's row added (marked) when off the front."""
    trials = pareto_front(study)
    base = baseline_trial(study)
    if base is not None and base.number not in {t.number for t in trials}:
        trials.append(base)
    rows = [trial_row(t) for t in trials]
    frame = pd.DataFrame(rows, columns=[*FRONT_COLUMNS, "state"])
    return frame.sort_values(["params", "trial"]).reset_index(drop=True)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """Every trial as a DataFrame (for CSV export and pandas analysis)."""
    return pd.DataFrame([trial_row(t) for t in study.get_trials(deepcopy=False)])


def select_trial(study: optuna.Study, *, trial: int | None = None, max_params: int | None = None,
                 min_accuracy: float | None = None) -> FrozenTrial:
    """Pick one trained model.

    Args:
        study: The study.
        trial: This trial number (any completed trial, on the front or not).
        max_params: The most accurate front model with at most this many trainable parameters.
        min_accuracy: The smallest front model reaching this accuracy (a fraction, e.g. 0.99,
            or a percentage such as 99) on the study's objective split.

    Raises:
        UserError: Nothing qualifies, or not exactly one selection mode was given.
    """
    given = [x is not None for x in (trial, max_params, min_accuracy)]
    if sum(given) != 1:
        raise UserError("choose exactly one of --trial, --max-params, --min-accuracy")
    if trial is not None:
        matches = [t for t in study.get_trials(deepcopy=False) if t.number == trial]
        if not matches:
            raise UserError(f"study {study.study_name!r} has no trial {trial}")
        chosen = matches[0]
        if not is_feasible(chosen) or not chosen.user_attrs.get("checkpoint"):
            raise UserError(f"trial {trial} is {chosen.state.name.lower()}"
                            f"{' and infeasible' if chosen.user_attrs.get('infeasible') else ''}: "
                            "it has no trained model to export")
        return chosen
    front = [t for t in pareto_front(study) if t.user_attrs.get("checkpoint")]
    if max_params is not None:
        fits = [t for t in front if t.values[1] <= max_params]
        if not fits:
            smallest = min((int(t.values[1]) for t in front), default=None)
            raise UserError(f"no model on the front has at most {max_params:,} parameters "
                            f"(the smallest has {smallest:,})" if smallest else "the front is empty")
        return max(fits, key=lambda t: (t.values[0], -t.values[1]))
    assert min_accuracy is not None
    target = min_accuracy / 100 if min_accuracy > 1 else min_accuracy
    good = [t for t in front if t.values[0] >= target]
    if not good:
        best = max((t.values[0] for t in front), default=None)
        raise UserError(f"no model on the front reaches {objective_name(study)} {100 * target:.2f}%"
                        + (f" (the best has {100 * best:.2f}%)" if best is not None else ""))
    return min(good, key=lambda t: (t.values[1], -t.values[0]))
