"""A multi-objective Optuna study whose trials run as Ray tasks.

Why an ask-and-tell driver over Ray generator tasks, and not Ray Tune's ``OptunaSearch``: measured
with optuna 5 and ray 2.60, ``OptunaSearch`` drops intermediate results when there are several
metrics, never sets metric names, and stores a trial stopped by a Ray scheduler as COMPLETE with its
partial accuracy, so it lands on the Pareto front. Here the driver alone asks Optuna for trials and
tells it their outcome (worker nodes need neither the database nor a shared disk); each trial is a
Ray generator task streaming one result per epoch, and a trial that successive halving stops is
cancelled with ``ray.cancel`` and stored as PRUNED.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ressearch.asha import SuccessiveHalving
from ressearch.checkpoint import write_checkpoint
from ressearch.counting import count
from ressearch.data import Splits, load_mnist, make_splits
from ressearch.errors import UserError
from ressearch.live import LiveView
from ressearch.space import SearchSpace
from ressearch.spec import ResNetSpec
from ressearch.storage import create_study, open_storage
from ressearch.train import TrainConfig

# Trials a killed driver left RUNNING are failed with this attribute and do not count as finished.
INTERRUPTED = "interrupted"


@dataclass
class _Running:
    trial: optuna.Trial
    spec: ResNetSpec
    params: int
    key: str
    curve: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.time)


@dataclass
class StudyRun:
    """What :func:`run_study` did."""

    study: optuna.Study
    seconds: float
    counts: dict[str, int]


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards the budget: everything finished except interrupted ones."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and not t.user_attrs.get(INTERRUPTED)))


def run_key(spec: ResNetSpec, config: TrainConfig, space: SearchSpace) -> str:
    """Identifies a training run: equal keys would train the same network the same way."""
    train = {k: v for k, v in config.to_dict().items() if k not in ("threads", "device")}
    data = [space.val_fraction, space.split_seed, space.train_limit, space.val_limit,
            space.test_limit]
    text = json.dumps([spec.hash(), train, data], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_splits(space: SearchSpace, data_dir: str | None) -> Splits:
    """The data the space asks for."""
    splits = make_splits(load_mnist(data_dir), val_fraction=space.val_fraction,
                         seed=space.split_seed, train_limit=space.train_limit,
                         test_limit=space.test_limit)
    if space.val_limit is not None:
        splits = Splits(splits.train, splits.val.take(space.val_limit), splits.test)
    return splits


def recover_interrupted(study: optuna.Study, storage: BaseStorage) -> list[int]:
    """Fail the trials a killed driver left RUNNING and queue their parameters again.

    Args:
        study: The study to repair.
        storage: Its storage. A trial this process did not ask for has no :class:`optuna.Trial`
            to set attributes on, so the mark goes through the storage's public interface.

    Returns:
        The numbers of the trials that were failed and queued again.
    """
    recovered = []
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        recovered.append(t.number)
    return recovered


class _Driver:
    """The ask-and-tell loop; one instance per :func:`run_study` call."""

    def __init__(self, space: SearchSpace, study: optuna.Study, trials: int, out: Path,
                 view: LiveView) -> None:
        import ray

        self.ray, self.space, self.study, self.trials, self.view = ray, space, study, trials, view
        self.trial_dir = out / study.study_name / "trials"
        self.running: dict[Any, _Running] = {}
        self.waiting: dict[str, list[optuna.Trial]] = {}
        # Counted once here, then kept up to date by every tell: no storage read per loop turn.
        self.finished = finished_count(study)
        self.done: dict[str, FrozenTrial] = {}
        self.asha = SuccessiveHalving(space.min_epochs, space.reduction_factor, space.max_epochs)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if "run_key" in t.user_attrs:
                self.done.setdefault(t.user_attrs["run_key"], t)
            for e, acc in enumerate(t.user_attrs.get("val_curve", []), start=1):
                self.asha.record(t.number, e, acc, t.user_attrs.get("params", 0))
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0) if space.gpus_per_trial > 0 else 0
        self.num_gpus = space.gpus_per_trial if gpus else 0
        capacity = int(resources.get("CPU", 1) // space.cpus_per_trial)
        if self.num_gpus:
            capacity = min(capacity, int(gpus // self.num_gpus))
        self.capacity = max(1, min(capacity, space.max_concurrent or capacity))
        self.threads = max(1, math.floor(space.cpus_per_trial))

    # -- launching ---------------------------------------------------------------------------
    def launch(self, data_ref: Any, task: Any) -> None:
        while (len(self.running) + self._waiting_count() < self.capacity
               and self.finished + len(self.running) + self._waiting_count()
               < self.trials):
            trial = self.study.ask()
            try:
                spec, config = self.space.suggest(trial)
            except UserError as err:  # a combination of values that builds no network
                self._fail(trial, f"invalid combination: {err}")
                continue
            counts = count(spec)
            for key, value in (("spec", spec.to_dict()), ("spec_hash", spec.hash()),
                               ("short", spec.short()), ("params", counts.params),
                               ("keras_params", counts.keras_params), ("macs", counts.macs),
                               ("train", config.to_dict())):
                trial.set_user_attr(key, value)
            if self.space.max_params is not None:
                trial.set_constraint("max_params", counts.params - self.space.max_params)
                if counts.params > self.space.max_params:
                    trial.set_user_attr("infeasible", f"params {counts.params} > max_params "
                                                      f"{self.space.max_params}")
                    self._tell(trial, [0.0, counts.params])
                    self.view.event(f"trial {trial.number}: {spec.short()} has {counts.params:,} "
                                    "parameters, over max_params: not trained")
                    continue
            key = run_key(spec, config, self.space)
            trial.set_user_attr("run_key", key)
            if key in self.done:
                self._reuse(trial, self.done[key])
                continue
            if any(r.key == key for r in self.running.values()):
                self.waiting.setdefault(key, []).append(trial)
                continue
            run_config = config.replace(threads=self.threads,
                                        device="cuda" if self.num_gpus else "cpu")
            gen = task.options(num_cpus=self.space.cpus_per_trial, num_gpus=self.num_gpus).remote(
                spec.to_dict(), run_config.to_dict(), data_ref)
            self.running[gen] = _Running(trial, spec, counts.params, key)
            self.view.event(f"trial {trial.number}: started {spec.short()} "
                            f"({counts.params:,} params)")

    def _waiting_count(self) -> int:
        return sum(len(v) for v in self.waiting.values())

    # -- outcomes ----------------------------------------------------------------------------
    def _fail(self, trial: optuna.Trial, reason: str) -> None:
        trial.set_user_attr("fail_reason", reason)
        self._tell(trial, state=TrialState.FAIL)
        self.view.event(f"trial {trial.number}: FAILED: {reason}")

    def _tell(self, trial: optuna.Trial, values: list[float] | None = None,
              state: TrialState | None = None) -> FrozenTrial:
        """Finish a trial that counts towards the budget (interrupted ones are told elsewhere)."""
        frozen = self.study.tell(trial, values, state=state)
        self.finished += 1
        return frozen

    def _reuse(self, trial: optuna.Trial, earlier: FrozenTrial) -> None:
        for k, v in earlier.user_attrs.items():
            if k not in trial.user_attrs and k not in ("retry_of", "baseline"):
                trial.set_user_attr(k, v)
        trial.set_user_attr("duplicate_of", earlier.number)
        if earlier.state == TrialState.COMPLETE:
            self._tell(trial, list(earlier.values))
        else:
            self._tell(trial, state=TrialState.PRUNED)
        self.view.event(f"trial {trial.number}: same network and training as trial "
                        f"{earlier.number}: result reused, not retrained")

    def _settle_waiting(self, key: str, finished: FrozenTrial | None, reason: str = "") -> None:
        for trial in self.waiting.pop(key, []):
            if finished is None:
                self._fail(trial, f"identical to a trial that failed: {reason}")
            else:
                self._reuse(trial, finished)

    def handle(self, gen: Any, item: dict[str, Any] | None, error: str | None) -> None:
        run = self.running[gen]
        trial = run.trial
        if error is not None or item is None or item["kind"] == "error":
            reason = error or (item or {}).get("reason", "the task ended without a result")
            del self.running[gen]
            trial.set_user_attr("val_curve", run.curve)
            self._fail(trial, reason)
            self._settle_waiting(run.key, None, reason)
            return
        if item["kind"] == "epoch":
            acc = item["val_accuracy"] if item["val_accuracy"] is not None else item["train_accuracy"]
            run.curve.append(acc)
            if self.space.early_stopping and self.asha.should_stop(trial.number, item["epoch"], acc,
                                                                   run.params):
                self.ray.cancel(gen)
                del self.running[gen]
                trial.set_user_attr("val_curve", run.curve)
                trial.set_user_attr("epochs", item["epoch"])
                trial.set_user_attr("train_seconds", round(time.time() - run.started, 2))
                frozen = self._tell(trial, state=TrialState.PRUNED)
                self.done[run.key] = frozen
                self.view.event(f"trial {trial.number}: pruned at epoch {item['epoch']} "
                                f"(val {100 * acc:.2f}%, {run.params:,} params)")
                self._settle_waiting(run.key, frozen)
            return
        del self.running[gen]
        m = item["metrics"]
        directory = self.trial_dir / str(trial.number)
        write_checkpoint(directory, item["weights"], run.spec, {**m, "trial": trial.number})
        attrs = {"test_accuracy": m["test_accuracy"], "val_accuracy": m["val_accuracy"],
                 "val_curve": run.curve, "epochs": m["epochs"],
                 "train_seconds": m["train_seconds"], "images_per_second": m["images_per_second"],
                 "checkpoint": str(directory), "node": m.get("node")}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        value = m[self.space.objective]
        frozen = self._tell(trial, [value, run.params])
        self.done[run.key] = frozen
        self.view.event(f"trial {trial.number}: complete: {self.space.objective} "
                        f"{100 * value:.2f}%, test {100 * m['test_accuracy']:.2f}%, "
                        f"{run.params:,} params, {m['train_seconds']:.0f}s")
        self._settle_waiting(run.key, frozen)

    def interrupt(self) -> None:
        """Ctrl-C: cancel the tasks, fail their trials as interrupted and queue them again."""
        for gen, run in list(self.running.items()):
            self.ray.cancel(gen)
            run.trial.set_user_attr(INTERRUPTED, True)
            self.study.tell(run.trial, state=TrialState.FAIL)
            self.study.enqueue_trial(run.trial.params, user_attrs={"retry_of": run.trial.number})
        self.running.clear()


def run_study(space: SearchSpace, *, data_dir: str | None = None, storage: str | None = None,
              trials: int | None = None, name: str | None = None, address: str | None = None,
              out: str | Path = "results", view: LiveView | None = None,
              timeout: float | None = None) -> StudyRun:
    """Run (or continue) the study a search space describes until it has ``trials`` trials.

    Args:
        space: The parsed search space.
        data_dir: MNIST directory (else ``$RESSEARCH_DATA_DIR``, else a download).
        storage: SQLAlchemy URL or journal file (default ``sqlite:///OUT/NAME.db``).
        trials: Total finished trials wanted, the baseline included (default: the space's).
        name: Study name (default: the space's).
        address: Ray cluster to join; ``None`` starts a local one.
        out: Directory for the default storage and the trials' checkpoints.
        view: Progress display (default: live on a terminal, log lines otherwise).
        timeout: Stop after this many seconds: running trials are cancelled, stored as FAIL
            (interrupted) and queued again, so rerunning continues where this run stopped.

    Returns:
        The study, the wall time and how many trials ended in each state.
    """
    import ray

    from ressearch.worker import run_trial, splits_to_arrays

    started = time.time()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the view reports every trial itself
    out = Path(out)
    name = name or space.name
    trials = trials or space.trials
    view = view or LiveView()
    # Data first: a bad data directory fails before a study file or Ray exists.
    splits = load_splits(space, data_dir)
    opened = open_storage(storage or space.storage, out=out, name=name)
    study = create_study(opened, name, space)
    for number in recover_interrupted(study, opened):
        view.event(f"trial {number} was left running by an interrupted run: failed and queued again")
    if not study.get_trials(deepcopy=False):
        params, notes = space.baseline_params()
        for note in notes:
            view.event(f"note: {note}; trial 0 is the closest the space can express")
        study.enqueue_trial(params, user_attrs={"baseline": True})
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    data_ref = ray.put(splits_to_arrays(splits))
    task = ray.remote(run_trial)
    driver = _Driver(space, study, trials, out, view)
    view.start(study, trials)
    try:
        while True:
            if timeout is not None and time.time() - started > timeout:
                if driver.running:
                    view.event(f"timeout after {timeout:.0f}s: {len(driver.running)} running "
                               "trials stopped and queued again")
                driver.interrupt()
                break
            driver.launch(data_ref, task)
            if not driver.running:
                break
            ready, _ = ray.wait(list(driver.running), num_returns=1, timeout=1.0)
            for gen in ready:
                item, error = None, None
                try:
                    item = ray.get(next(gen))
                except StopIteration:
                    pass
                except Exception as err:  # a dead worker fails one trial
                    error = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
                driver.handle(gen, item, error)
            view.refresh()
    except KeyboardInterrupt:
        driver.interrupt()
        raise
    finally:
        view.stop()
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    counts = {s: states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    return StudyRun(study=study, seconds=time.time() - started, counts=counts)
