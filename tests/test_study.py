"""Studies on a real Ray runtime with a real SQLite file (or journal), training on MNIST slices."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from ressearch.live import LiveView
from ressearch.space import load_space
from ressearch.storage import load_study
from ressearch.study import finished_count, run_study

ray = pytest.importorskip("ray")

# Small enough that one trial trains in a few seconds on one core.
QUICK = {
    "data": {"train_limit": 600, "val_limit": 300, "test_limit": 300},
    "train": {"epochs": 3, "batch_size": 64, "precise_bn": 4},
    "resources": {"cpus_per_trial": 1},
}


def write_space(tmp_path: Path, **sections: dict) -> Path:
    doc = {k: dict(v) for k, v in QUICK.items()}
    for name, body in sections.items():
        doc.setdefault(name, {}).update(body)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def ray_runtime():
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def run(space_path: Path, tmp_path: Path, data_dir: Path, **kw) -> optuna.Study:
    space = load_space(space_path)
    return run_study(space, data_dir=str(data_dir), out=tmp_path / "results",
                     view=LiveView(interactive=False), **kw).study


def test_study_records_objectives_baseline_and_attributes(ray_runtime, tmp_path, data_dir):
    path = write_space(tmp_path, study={"name": "basic", "trials": 3, "sampler": "random"},
                       model={"blocks": {"low": 1, "high": 10}, "width": {"choices": [4, 8]}},
                       early_stopping={"enabled": False})
    run(path, tmp_path, data_dir)
    study = load_study(str(tmp_path / "results" / "basic.db"))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "params"]
    trials = study.get_trials()
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    first = trials[0]
    assert first.params == {"blocks": 10, "width": 8} and first.user_attrs["baseline"]
    assert first.values[1] == 17462 and first.user_attrs["keras_params"] == 17946
    for t in trials:
        a = t.user_attrs
        assert 0 < a["test_accuracy"] <= 1 and a["val_accuracy"] == t.values[0]
        assert len(a["val_curve"]) == 3 and a["macs"] > 0 and a["train_seconds"] > 0
        assert (Path(a["checkpoint"]) / "model.safetensors").is_file()
        assert Path(a["checkpoint"]) == tmp_path / "results" / "basic" / "trials" / str(t.number)
        assert a["spec"]["blocks"] == t.params["blocks"]


def test_early_stopping_prunes_and_stores_pruned(ray_runtime, tmp_path, data_dir):
    path = write_space(tmp_path, study={"name": "asha", "trials": 6, "sampler": "random", "seed": 3},
                       model={"blocks": {"low": 0, "high": 4}, "width": {"choices": [2, 4, 8]}},
                       early_stopping={"enabled": True, "min_epochs": 1, "reduction_factor": 2})
    study = run(path, tmp_path, data_dir)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert pruned, "no trial was pruned"
    for t in pruned:
        # Rungs at epochs 1 and 2 (min_epochs * 2**k below the 3 epochs of a full trial).
        assert t.user_attrs["epochs"] in (1, 2)
        assert len(t.user_attrs["val_curve"]) == t.user_attrs["epochs"]
        assert "checkpoint" not in t.user_attrs
    front_numbers = {t.number for t in study.best_trials}
    assert not front_numbers & {t.number for t in pruned}


def test_over_budget_costs_no_training(ray_runtime, tmp_path, data_dir):
    # Trial 0, the baseline's 10 blocks (at width 4: 6,266 params), is over the budget.
    path = write_space(tmp_path, study={"name": "budget", "trials": 3, "sampler": "random",
                                        "max_params": 6000},
                       model={"blocks": {"choices": [1, 10]}, "width": 4},
                       early_stopping={"enabled": False})
    started = time.time()
    study = run(path, tmp_path, data_dir)
    trials = study.get_trials()
    assert len(trials) == 3
    first = trials[0]
    assert first.params == {"blocks": 10} and first.user_attrs["infeasible"]
    assert first.constraints == {"max_params": 6266 - 6000}
    over = [t for t in trials if t.user_attrs.get("infeasible")]
    for t in over:
        assert t.values[1] > 6000 and t.constraints["max_params"] > 0
        assert "train_seconds" not in t.user_attrs and "checkpoint" not in t.user_attrs
        assert not (tmp_path / "results" / "budget" / "trials" / str(t.number)).exists()
    assert all(not t.user_attrs.get("infeasible") for t in study.best_trials)
    assert time.time() - started < 300


def test_duplicate_is_not_retrained(ray_runtime, tmp_path, data_dir):
    path = write_space(tmp_path, study={"name": "dups", "trials": 3},
                       model={"blocks": 1, "width": 4}, early_stopping={"enabled": False})
    study = run(path, tmp_path, data_dir)
    trials = study.get_trials()
    trained = [t for t in trials if "duplicate_of" not in t.user_attrs]
    dups = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(trained) == 1 and len(dups) == 2
    for d in dups:
        assert d.state == TrialState.COMPLETE and d.values == trained[0].values
        assert d.user_attrs["duplicate_of"] == trained[0].number
        assert not (tmp_path / "results" / "dups" / "trials" / str(d.number)).exists()
    assert sorted(p.name for p in (tmp_path / "results" / "dups" / "trials").iterdir()) == ["0"]


def test_raising_trial_fails_and_study_finishes(ray_runtime, tmp_path, data_dir):
    path = write_space(tmp_path, study={"name": "fails", "trials": 3, "sampler": "random"},
                       train={"optimizer": "sgd", "lr": {"choices": [0.01, 1.0e+9]}},
                       model={"blocks": 1, "width": 4, "norm": "none"},
                       early_stopping={"enabled": False})
    study = run(path, tmp_path, data_dir, trials=4)
    states = [t.state for t in study.get_trials()]
    assert len(states) == 4 and TrialState.FAIL in states and TrialState.COMPLETE in states
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert all("TrainingDiverged" in t.user_attrs["fail_reason"] for t in failed)


def test_journal_storage(ray_runtime, tmp_path, data_dir):
    path = write_space(tmp_path, study={"name": "journal", "trials": 2},
                       model={"blocks": {"low": 1, "high": 3}, "width": 4},
                       early_stopping={"enabled": False})
    journal = tmp_path / "study.log"
    run(path, tmp_path, data_dir, storage=str(journal))
    assert journal.is_file()
    study = load_study(str(journal))
    assert finished_count(study) == 2 and study.metric_names == ["val_accuracy", "params"]


def test_sigkill_then_rerun_finishes_exact_count(tmp_path, data_dir):
    path = write_space(tmp_path, study={"name": "killed", "trials": 5, "sampler": "random"},
                       train={"epochs": 4},
                       model={"blocks": {"low": 1, "high": 6}, "width": {"choices": [4, 6, 8]}},
                       early_stopping={"enabled": False})
    db = tmp_path / "results" / "killed.db"
    cmd = [sys.executable, "-m", "ressearch.cli", "run", "--space", str(path),
           "--data-dir", str(data_dir), "--out", str(tmp_path / "results")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    before = {}
    while time.time() < deadline:
        time.sleep(1)
        if db.exists():
            try:
                study = load_study(str(db))
            except Exception:  # the driver may still be creating the schema
                continue
            done = study.get_trials(states=(TrialState.COMPLETE,))
            running = study.get_trials(states=(TrialState.RUNNING,))
            if done and running:
                before = {t.number: (t.values, t.user_attrs["test_accuracy"]) for t in done}
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert before, "the driver finished no trial before the deadline"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr
    study = load_study(str(db))
    assert finished_count(study) == 5
    counted = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(counted) == 5
    interrupted = [t for t in study.get_trials() if t.user_attrs.get("interrupted")]
    assert interrupted and all(t.state == TrialState.FAIL for t in interrupted)
    retried = {t.user_attrs["retry_of"] for t in study.get_trials() if "retry_of" in t.user_attrs}
    assert retried == {t.number for t in interrupted}
    for number, (values, test_acc) in before.items():
        t = study.trials[number]
        assert (t.values, t.user_attrs["test_accuracy"]) == (values, test_acc)
