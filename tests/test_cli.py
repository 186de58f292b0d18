"""The ``ressearch`` command line, run as a real subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_user_error, run_cli

from ressearch.checkpoint import load_checkpoint
from ressearch.counting import count
from ressearch.data import DATA_DIR_ENV
from ressearch.spec import PRESETS, ResNetSpec

METRICS_KEYS = {"test_accuracy", "val_accuracy", "params", "keras_params", "epochs", "train_seconds",
                "images_per_second", "recipe"}
QUICK = ["--epochs", "1", "--train-limit", "1000", "--test-limit", "500", "--threads", "1"]


# -- describe ----------------------------------------------------------------------------------
def test_describe_baseline_json(tmp_path: Path) -> None:
    proc = run_cli("describe", "baseline", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["params"] == 17462 and out["keras_params"] == 17946  # the notebook's figures
    assert out["macs"] == count(PRESETS["baseline"]).macs
    assert out["hash"] == PRESETS["baseline"].hash()
    assert ResNetSpec.from_dict(out["spec"]) == PRESETS["baseline"]
    assert len([r for r in out["layers"] if r["kind"] == "conv"]) == 24


def test_describe_baseline_table(tmp_path: Path) -> None:
    proc = run_cli("describe", "baseline", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "17,462" in proc.stdout and "17,946" in proc.stdout
    assert f"{count(PRESETS['baseline']).macs:,}" in proc.stdout
    assert "conv 3x3/2 32->8" in proc.stdout


def test_describe_a_spec_file(tmp_path: Path) -> None:
    spec = ResNetSpec(width=12, blocks=3, stages=2, order="pre", head="linear", bias=False)
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"spec": spec.to_dict(), "note": "a metrics.json-like file"}))
    proc = run_cli("describe", str(path), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    counts = count(spec)
    assert (out["params"], out["keras_params"], out["macs"]) == (
        counts.params, counts.keras_params, counts.macs)
    assert out["hash"] == spec.hash()


def test_describe_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"width": 8,\n')
    assert_user_error(run_cli("describe", str(path), cwd=tmp_path), str(path), "JSON")


def test_describe_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"width": 8, "widht": 8}))
    assert_user_error(run_cli("describe", str(path), "--json", cwd=tmp_path), str(path), "'widht'")


def test_describe_invalid_value(tmp_path: Path) -> None:
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"kernel_size": 4}))
    assert_user_error(run_cli("describe", str(path), cwd=tmp_path), str(path), "kernel_size=4")


def test_describe_unknown_name(tmp_path: Path) -> None:
    assert_user_error(run_cli("describe", "resnet50", cwd=tmp_path), "resnet50")


# -- baseline ----------------------------------------------------------------------------------
def test_baseline_writes_metrics_and_a_checkpoint(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "run"
    proc = run_cli("baseline", *QUICK, "--data-dir", str(data_dir), "--out", str(out), "--json",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(proc.stdout) == metrics
    assert metrics.keys() >= METRICS_KEYS
    assert metrics["params"] == 17462 and metrics["keras_params"] == 17946
    assert metrics["epochs"] == 1 and len(metrics["history"]) == 1
    assert 0 <= metrics["test_accuracy"] <= 1 and 0 <= metrics["val_accuracy"] <= 1
    assert metrics["train_seconds"] > 0 and metrics["images_per_second"] > 0
    assert metrics["recipe"]["name"] == "default" and metrics["train"]["precise_bn"] == 50
    assert metrics["train"]["threads"] == 1 and metrics["threads"] == 1
    model = load_checkpoint(out)
    assert model.spec == PRESETS["baseline"]
    assert "test accuracy" in proc.stderr and "epoch 1/1" in proc.stderr


def test_baseline_notebook_recipe_from_the_environment(tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "nb"
    proc = run_cli("baseline", *QUICK, "--recipe", "notebook", "--out", str(out), cwd=tmp_path,
                   env={DATA_DIR_ENV: str(data_dir)})
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"]["name"] == "notebook"
    assert metrics["train"]["precise_bn"] == 0 and metrics["train"]["optimizer"] == "adam"
    assert metrics["train"]["lr"] == 1e-3 and metrics["train"]["batch_size"] == 256
    assert Path(metrics["data"]).resolve().is_relative_to(data_dir.resolve())
    assert load_checkpoint(out).spec == PRESETS["baseline"]


def test_baseline_with_a_missing_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    proc = run_cli("baseline", *QUICK, "--data-dir", str(missing), "--out", str(tmp_path / "o"),
                   cwd=tmp_path)
    assert_user_error(proc, str(missing))
    assert not (tmp_path / "o").exists()


def test_baseline_with_a_missing_data_dir_from_the_environment(tmp_path: Path) -> None:
    missing = tmp_path / "env-dir"
    proc = run_cli("baseline", *QUICK, "--out", str(tmp_path / "o"), cwd=tmp_path,
                   env={DATA_DIR_ENV: str(missing)})
    assert_user_error(proc, str(missing))


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--recipe", "fast"], ["--train-limit", "0"]])
def test_baseline_rejects_bad_options(tmp_path: Path, args: list[str]) -> None:
    proc = run_cli("baseline", *args, "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
