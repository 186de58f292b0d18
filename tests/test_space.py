"""Search-space files: the shipped spaces, drawing from a space, and one-line errors for bad files."""

from __future__ import annotations

import itertools
import math
import subprocess
from dataclasses import fields
from pathlib import Path
from typing import Any

import optuna
import pytest
from cli_helpers import run_cli

from ressearch.counting import count
from ressearch.recipes import RECIPES
from ressearch.space import Param, SearchSpace, SpaceError, load_space
from ressearch.spec import ResNetSpec
from ressearch.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["tiny", "small", "gpu"]
MODEL_FIELDS = [f.name for f in fields(ResNetSpec)]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def space_error(path: Path) -> str:
    """Load ``path``, expecting a SpaceError; its message, checked to be one line naming the file."""
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


def check_error(path: Path, key: str | None, *values: str) -> str:
    """The error names the file and ``key``, and shows each offending value after the path."""
    message = space_error(path)
    rest = message.removeprefix(f"{path}: ")
    if key is not None:
        assert key in rest, (key, message)
    for value in values:
        assert value in rest, (value, message)
    return rest


def new_study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"],
                               sampler=optuna.samplers.RandomSampler(seed=seed))


def draw(space: SearchSpace, n: int, seed: int = 0) -> list[tuple[ResNetSpec, TrainConfig]]:
    study = new_study(seed)
    return [space.suggest(study.ask()) for _ in range(n)]


def value_of(spec: ResNetSpec, config: TrainConfig, p: Param) -> Any:
    return getattr(spec if p.section == "model" else config, p.name)


# -- the shipped spaces ------------------------------------------------------------------------
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads(name: str) -> None:
    path = REPO / "search_spaces" / f"{name}.yaml"
    space = load_space(path)
    assert space.name == name and space.source == str(path)
    assert space.searched(), "a shipped space searches something"
    assert space.max_params is None or space.min_params() <= space.max_params
    # The notebook's network must fit the budget, or the study's trial 0 is never trained.
    assert space.max_params is None or count(ResNetSpec()).params <= space.max_params


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_baseline_is_the_notebook_model(name: str) -> None:
    space = load_space(REPO / "search_spaces" / f"{name}.yaml")
    values, notes = space.baseline_params()
    assert notes == []
    assert values["blocks"] == 10 and values["width"] == 8 and values["order"] == "post"
    assert set(values) == {p.name for p in space.searched()}  # every searched value expressed
    for p in space.searched():
        assert p.contains(values[p.name]), p
    # build() with the fixed values added gives the notebook's network exactly.
    spec, config = space.build({**{p.name: p.fixed for p in space.params if p.is_fixed}, **values})
    assert spec == ResNetSpec()
    assert spec.hash() == ResNetSpec().hash()
    # The study enqueues these values as trial 0: Optuna must hand back the same network.
    study = new_study()
    study.enqueue_trial(values)
    spec2, config2 = space.suggest(study.ask())
    assert spec2 == ResNetSpec() and config2 == config
    for p in space.params:
        if p.section == "train" and p.is_fixed:
            assert getattr(config, p.name) == p.fixed


def test_baseline_notes_name_what_the_space_cannot_express(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "model:\n  width: {choices: [4, 6]}\n  order: pre\n"
                                       "  blocks: {low: 1, high: 12}\n"))
    values, notes = space.baseline_params()
    assert values == {"blocks": 10}
    assert any("model.width=8" in n and "searched without it" in n for n in notes), notes
    assert any("model.order='post'" in n and "fixed to 'pre'" in n for n in notes), notes
    assert len(notes) == 2


def test_empty_file_is_the_default_space(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, "", "plain.yaml"))
    assert space.name == "plain" and space.params == ()
    assert space.sampler == "tpe" and space.objective == "val_accuracy"
    assert space.base_config == RECIPES["default"].config
    assert space.build({}) == (ResNetSpec(), RECIPES["default"].config)


# -- drawing ------------------------------------------------------------------------------------
WIDE = """
study: {name: wide, seed: 3}
train:
  epochs: 3
  lr: {low: 1.0e-4, high: 1.0e-1, log: true}
  weight_decay: {low: 0, high: 1}
  label_smoothing: {low: 0.0, high: 0.2, step: 0.05}
  batch_size: {low: 16, high: 512, log: true}
  optimizer: {choices: [adam, sgd]}
  bf16: {choices: [true, false]}
model:
  blocks: {low: 0, high: 12}
  stem_width: {low: 4, high: 32, step: 4}
  width: {choices: [2, 4, 8, 16]}
  width_growth: {low: 1, high: 2}
  order: {choices: [post, pre, relu_bn]}
  stages: 2
  head: linear
"""


def test_suggest_stays_inside_every_range(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, WIDE))
    by_name = {p.name: p for p in space.params}
    drawn = draw(space, 300)
    seen: dict[str, list[Any]] = {p.name: [] for p in space.params}
    for spec, config in drawn:
        assert isinstance(spec, ResNetSpec) and isinstance(config, TrainConfig)
        for p in space.params:
            value = value_of(spec, config, p)
            seen[p.name].append(value)
            assert p.contains(value), (p, value)
            if p.choices is not None:
                assert value in p.choices
            elif not p.is_fixed:
                assert p.low <= value <= p.high, (p.name, value)
                if isinstance(p.low, int) and isinstance(p.high, int):
                    assert isinstance(value, int) and not isinstance(value, bool), (p.name, value)
                else:
                    assert isinstance(value, float), (p.name, value)
                if p.step is not None:
                    k = (value - p.low) / p.step
                    assert math.isclose(k, round(k), abs_tol=1e-9), (p.name, value)
    # Every choice comes up, and ranges are covered end to end.
    for name in ("width", "order", "optimizer", "bf16"):
        assert set(seen[name]) == set(by_name[name].choices), name
    assert set(seen["stem_width"]) == set(range(4, 33, 4))
    assert set(seen["blocks"]) == set(range(13))
    assert {round(v, 9) for v in seen["label_smoothing"]} == {0.0, 0.05, 0.1, 0.15, 0.2}
    # Log ranges are drawn log-uniformly: a third of the draws below 1e-3 (uniform: 1%).
    below = sum(v < 1e-3 for v in seen["lr"]) / len(seen["lr"])
    assert 0.2 < below < 0.5, below
    small_batches = sum(v < 64 for v in seen["batch_size"]) / len(seen["batch_size"])
    assert 0.3 < small_batches < 0.65, small_batches  # log2(64/16) / log2(512/16) = 0.4
    # A float option with integer bounds is still a continuous range, not {0, 1}.
    assert len(set(seen["weight_decay"])) > 100
    assert len(set(seen["width_growth"])) > 100


def test_suggest_records_log_and_step_with_optuna(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, WIDE))
    trial = new_study().ask()
    space.suggest(trial)
    dist = trial.distributions
    assert dist["lr"].log and dist["batch_size"].log
    assert not dist["weight_decay"].log
    assert dist["stem_width"].step == 4 and dist["label_smoothing"].step == 0.05
    assert isinstance(dist["blocks"], optuna.distributions.IntDistribution)
    assert isinstance(dist["width_growth"], optuna.distributions.FloatDistribution)
    assert isinstance(dist["width"], optuna.distributions.CategoricalDistribution)
    # Fixed values are not Optuna parameters.
    assert "stages" not in dist and "epochs" not in dist


def test_fixed_values_applied_and_unnamed_fields_keep_the_baseline(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, WIDE))
    named = {p.name for p in space.params}
    base_spec, base_config = ResNetSpec(), RECIPES["default"].config
    for spec, config in draw(space, 50, seed=1):
        assert spec.stages == 2 and spec.head == "linear" and config.epochs == 3
        for name in MODEL_FIELDS:
            if name not in named:
                assert getattr(spec, name) == getattr(base_spec, name), name
        for name in TrainConfig.field_names():
            if name not in named:
                assert getattr(config, name) == getattr(base_config, name), name
    assert base_config.precise_bn == 50  # the default recipe, not the notebook's bare one


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_spaces_draw_valid_networks(name: str) -> None:
    space = load_space(REPO / "search_spaces" / f"{name}.yaml")
    for spec, config in draw(space, 40, seed=2):
        for p in space.params:
            assert p.contains(value_of(spec, config, p)), (p, value_of(spec, config, p))
        assert count(spec).params >= space.min_params()


# -- min_params ----------------------------------------------------------------------------------
SMALL = """
model:
  blocks: {low: 0, high: 2}
  stages: {low: 1, high: 2}
  width: {choices: [3, 1, 2]}
  width_growth: {choices: [2.0, 0.5]}
  stem_width: {low: 2, high: 6, step: 2}
  kernel_size: {choices: [5, 3]}
  order: {choices: [relu_bn, post]}
  norm: {choices: [batch, none]}
  bias: {choices: [true, false]}
  head: {choices: [conv, linear]}
  head_width: {choices: [4, 2]}
  num_classes: {choices: [10, 3]}
"""


def every_value(p: Param) -> list[Any]:
    if p.is_fixed:
        return [p.fixed]
    if p.choices is not None:
        return list(p.choices)
    return list(range(p.low, p.high + 1, int(p.step or 1)))


def test_min_params_is_the_brute_force_minimum(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, SMALL))
    model = [p for p in space.params if p.section == "model"]
    combos = list(itertools.product(*(every_value(p) for p in model)))
    assert len(combos) > 1000
    best = min(count(ResNetSpec(**{p.name: v for p, v in zip(model, combo, strict=True)})).params
               for combo in combos)
    assert space.min_params() == best


def test_min_params_with_many_combinations_in_descending_order(tmp_path: Path) -> None:
    # 9 * 4 * 3 * 2 * 3 * 2 * 2 * 2 * 2 * 2 = 41,472 combinations, the small widths listed last.
    text = """
model:
  width: {choices: [32, 24, 16, 12, 8, 6, 4, 3, 2]}
  stem_width: {choices: [32, 16, 8, 4]}
  head_width: {choices: [32, 16, 8]}
  kernel_size: {choices: [5, 3]}
  order: {choices: [post, pre, relu_bn]}
  norm: {choices: [batch, none]}
  bias: {choices: [true, false]}
  downsample: {choices: [true, false]}
  head: {choices: [conv, linear]}
  final_relu: {choices: [true, false]}
"""
    space = load_space(write(tmp_path, text))
    tiny = ResNetSpec(width=2, stem_width=4, head_width=8, kernel_size=3, norm="none", bias=False,
                      head="linear")
    assert space.min_params() == count(tiny).params


def test_max_params_below_the_smallest_network(tmp_path: Path) -> None:
    model = "model:\n  blocks: {low: 1, high: 4}\n  width: {choices: [8, 4, 6]}\n"
    smallest = load_space(write(tmp_path, model, "free.yaml")).min_params()
    assert smallest == count(ResNetSpec(blocks=1, width=4)).params
    ok = load_space(write(tmp_path, f"study: {{max_params: {smallest}}}\n" + model, "ok.yaml"))
    assert ok.max_params == smallest
    path = write(tmp_path, f"study: {{max_params: {smallest - 1}}}\n" + model)
    check_error(path, "study.max_params", str(smallest - 1), str(smallest))


# -- bad files ---------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert "no such file" in space_error(path)


@pytest.mark.parametrize(("text", "line"), [
    ("study:\n  name: x\n bad: 1\n", 3),
    ("study:\n  name: x\ntrain:\n  lr: [1, 2\n", 5),
    ("study:\n  name: 'open\n", 3),
    ("study:\n\tname: x\n", 2),
])
def test_malformed_yaml(tmp_path: Path, text: str, line: int) -> None:
    message = check_error(write(tmp_path, text), None, "malformed YAML")
    assert f"line {line}" in message


@pytest.mark.parametrize(("text", "kind"), [("- study\n- model\n", "list"), ("3\n", "int"),
                                            ("just text\n", "str")])
def test_document_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    check_error(write(tmp_path, text), None, "mapping", kind)


def test_unknown_section(tmp_path: Path) -> None:
    check_error(write(tmp_path, "study: {}\nsearch: {width: 8}\n"), "search", "unknown section")


def test_section_not_a_mapping(tmp_path: Path) -> None:
    check_error(write(tmp_path, "model: [1, 2]\n"), "model", "[1, 2]")


@pytest.mark.parametrize("section", ["study", "data", "train", "model", "resources",
                                     "early_stopping"])
def test_unknown_key_in_each_section(tmp_path: Path, section: str) -> None:
    check_error(write(tmp_path, f"{section}:\n  bogus_key: 1\n"), f"{section}.bogus_key", "unknown")


@pytest.mark.parametrize("key", ["threads", "device"])
def test_reserved_train_keys_are_unknown(tmp_path: Path, key: str) -> None:
    check_error(write(tmp_path, f"train:\n  {key}: 1\n"), f"train.{key}", "unknown")


def test_unknown_range_key(tmp_path: Path) -> None:
    check_error(write(tmp_path, "model:\n  width: {low: 1, high: 4, lo: 2}\n"), "model.width",
                "'lo'")


@pytest.mark.parametrize(("text", "key", "value"), [
    ("study: {trials: ten}", "study.trials", "'ten'"),
    ("study: {trials: true}", "study.trials", "True"),
    ("study: {trials: 2.5}", "study.trials", "2.5"),
    ("study: {sampler: 3}", "study.sampler", "3"),
    ("study: {sampler: cmaes}", "study.sampler", "'cmaes'"),
    ("study: {objective: loss}", "study.objective", "'loss'"),
    ("study: {trials: 0}", "study.trials", "0"),
    ("study: {name: 'a/b'}", "study.name", "'a/b'"),
    ("early_stopping: {enabled: 'yes'}", "early_stopping.enabled", "'yes'"),
    ("early_stopping: {reduction_factor: 1}", "early_stopping.reduction_factor", "1"),
    ("data: {train_limit: 0}", "data.train_limit", "0"),
    ("data: {val_fraction: half}", "data.val_fraction", "'half'"),
    ("resources: {cpus_per_trial: 0}", "resources.cpus_per_trial", "0"),
    ("resources: {gpus_per_trial: -1}", "resources.gpus_per_trial", "-1"),
])
def test_wrong_setting_types_and_values(tmp_path: Path, text: str, key: str, value: str) -> None:
    check_error(write(tmp_path, text + "\n"), key, value)


@pytest.mark.parametrize(("text", "key", "values"), [
    ("model: {width: {low: 8, high: 4}}", "model.width", ["low=8", "high=4"]),
    ("train: {lr: {low: 0.1, high: 0.01}}", "train.lr", ["0.1", "0.01"]),
    ("train: {lr: {low: 0, high: 1, log: true}}", "train.lr", ["low=0"]),
    ("train: {lr: {low: -1.0, high: 1.0, log: true}}", "train.lr", ["low=-1.0"]),
    ("model: {blocks: {low: 0, high: 4, log: true}}", "model.blocks", ["low=0"]),
    ("train: {lr: {low: 0.1, high: 1.0, step: 0}}", "train.lr", ["0"]),
    ("model: {blocks: {low: 1, high: 9, step: -2}}", "model.blocks", ["-2"]),
    ("model: {blocks: {low: 1, high: 9, step: 1.5}}", "model.blocks", ["1.5"]),
    ("model: {blocks: {low: 1}}", "model.blocks", ["high"]),
    ("model: {blocks: {low: one, high: 3}}", "model.blocks", ["'one'"]),
    ("train: {lr: {low: 0.001, high: 0.01, log: 1}}", "train.lr", ["log"]),
    ("model: {order: {choices: []}}", "model.order", ["[]"]),
    ("model: {order: {choices: post}}", "model.order", ["'post'"]),
    ("model: {order: {choices: [post], low: 1}}", "model.order", ["choices"]),
    ("model: {order: {choices: [post, sideways]}}", "model.order", ["'sideways'"]),
    ("model: {width: {choices: [8, 0]}}", "model.width", ["value 0"]),
    ("model: {kernel_size: {choices: [3, 4]}}", "model.kernel_size", ["value 4"]),
    ("model: {blocks: {low: 1.5, high: 3}}", "model.blocks", ["1.5"]),
    ("model: {width: [4, 8]}", "model.width", ["[4, 8]", "choices"]),
    ("train: {optimizer: rmsprop}", "train.optimizer", ["'rmsprop'"]),
    ("train: {lr: -1}", "train.lr", ["-1"]),
    ("train: {epochs: 0}", "train.epochs", ["0"]),
    ("train: {epochs: 2.5}", "train.epochs", ["2.5"]),
    ("train: {bf16: 1}", "train.bf16", ["1"]),
    ("train: {lr: .nan}", "train.lr", ["nan"]),
    ("train: {label_smoothing: {low: 0.0, high: 1.0}}", "train.label_smoothing", ["1.0"]),
    ("train: {augment: {choices: [none, mixup]}}", "train.augment", ["'mixup'"]),
])
def test_bad_parameter(tmp_path: Path, text: str, key: str, values: list[str]) -> None:
    check_error(write(tmp_path, text + "\n"), key, *values)


def test_val_fraction_rules(tmp_path: Path) -> None:
    check_error(write(tmp_path, "data: {val_fraction: 0}\n"), "study.objective", "val_accuracy",
                "data.val_fraction")
    for bad in ("1", "1.5"):
        check_error(write(tmp_path, f"data: {{val_fraction: {bad}}}\n"), "data.val_fraction", bad)
    check_error(write(tmp_path, "data: {val_fraction: -0.1}\n"), "data.val_fraction", "-0.1")
    # Without a validation split the test accuracy is the objective: allowed.
    space = load_space(write(tmp_path, "study: {objective: test_accuracy}\n"
                                       "data: {val_fraction: 0}\n", "ok.yaml"))
    assert space.val_fraction == 0 and space.objective == "test_accuracy"


def test_settings_are_read(tmp_path: Path) -> None:
    space = load_space(write(tmp_path, """
study: {name: mine, sampler: nsga2, trials: 7, seed: 5, objective: test_accuracy, max_params: 90000}
data: {val_fraction: 0.2, split_seed: 1, train_limit: 100, val_limit: 50, test_limit: 60}
resources: {cpus_per_trial: 2, gpus_per_trial: 0.5, max_concurrent: 3}
early_stopping: {enabled: false, min_epochs: 3, reduction_factor: 4}
"""))
    assert (space.name, space.sampler, space.trials, space.seed, space.objective,
            space.max_params) == ("mine", "nsga2", 7, 5, "test_accuracy", 90000)
    assert (space.val_fraction, space.split_seed, space.train_limit, space.val_limit,
            space.test_limit) == (0.2, 1, 100, 50, 60)
    assert (space.cpus_per_trial, space.gpus_per_trial, space.max_concurrent) == (2, 0.5, 3)
    assert (space.early_stopping, space.min_epochs, space.reduction_factor) == (False, 3, 4)


# -- the CLI -------------------------------------------------------------------------------------
def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_no_study_created(out: Path) -> None:
    created = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert created == [], created  # no study database, journal or checkpoint


@pytest.mark.parametrize(("text", "key"), [
    ("model:\n  width: {choices: [8, 0]}\n", "model.width"),
    ("study:\n  trials: ten\n", "study.trials"),
    ("study:\n  name: x\n bad: 1\n", "line 3"),
])
def test_cli_run_rejects_a_bad_space(tmp_path: Path, data_dir: Path, text: str, key: str) -> None:
    bad = write(tmp_path, text, "bad.yaml")
    out = tmp_path / "results"
    proc = run_cli("run", "--space", str(bad), "--data-dir", str(data_dir), "--out", str(out),
                   cwd=tmp_path)
    assert_one_line_error(proc, str(bad), key)
    assert_no_study_created(out)


@pytest.fixture(scope="module")
def run_without_data(tmp_path_factory: pytest.TempPathFactory
                     ) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``ressearch run`` with a data directory that does not exist, once for the tests below."""
    cwd = tmp_path_factory.mktemp("no-data")
    out = cwd / "results"
    proc = run_cli("run", "--space", str(REPO / "search_spaces" / "tiny.yaml"), "--data-dir",
                   "/nonexistent", "--out", str(out), cwd=cwd)
    return proc, out


def test_cli_run_with_a_missing_data_dir_fails_cleanly(
        run_without_data: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, _ = run_without_data
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: /nonexistent") and "does not exist" in last, proc.stderr


def test_cli_run_with_a_missing_data_dir_creates_nothing(
        run_without_data: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = run_without_data
    assert_one_line_error(proc, "/nonexistent")
    assert_no_study_created(out)
