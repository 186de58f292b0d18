"""ResNetSpec: JSON round trips, validation errors, the canonical hash and load_spec."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ressearch.errors import SpecError
from ressearch.model import build_model
from ressearch.spec import PRESETS, ResNetSpec, load_spec

SpecMaker = Callable[..., ResNetSpec]


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(err.value)
    assert message and "\n" not in message, f"not one line: {message!r}"
    return message


# -- JSON round trip ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name: str) -> None:
    spec = PRESETS[name]
    text = spec.to_json()
    back = ResNetSpec.from_json(text)
    assert back == spec
    assert back.hash() == spec.hash()
    assert back.to_json() == text
    assert json.loads(text) == spec.to_dict()


def test_random_specs_round_trip_through_json(make_random_spec: SpecMaker) -> None:
    rng = random.Random(1234)
    for _ in range(200):
        spec = make_random_spec(rng, vary_shape=True)
        for indent in (None, 2):
            back = ResNetSpec.from_json(spec.to_json(indent=indent))
            assert back == spec
            assert back.hash() == spec.hash()
            assert back.to_dict() == spec.to_dict()


def test_missing_fields_keep_the_baseline_defaults() -> None:
    assert ResNetSpec.from_dict({}) == PRESETS["baseline"]
    assert ResNetSpec.from_dict({"width": 4}) == PRESETS["baseline"].replace(width=4)


def test_integer_values_of_float_fields_give_the_same_spec_and_hash() -> None:
    # JSON writers may emit 2 for 2.0; the hash must not depend on it.
    a = ResNetSpec.from_dict({"stages": 2, "width_growth": 2, "bn_momentum": 1})
    b = ResNetSpec(stages=2, width_growth=2.0, bn_momentum=1.0)
    assert a == b
    assert a.hash() == b.hash()
    assert a.to_json() == b.to_json()


def test_baseline_is_the_notebook_network() -> None:
    spec = PRESETS["baseline"]
    assert (spec.stem_width, spec.width, spec.blocks, spec.stages, spec.head_width) == (32, 8, 10, 1, 32)
    assert (spec.order, spec.norm, spec.bias, spec.head, spec.final_relu, spec.init) == (
        "post", "batch", True, "conv", True, "keras")
    assert (spec.bn_momentum, spec.bn_eps) == (0.01, 1e-3)


# -- validation --------------------------------------------------------------------------------
def test_unknown_key_is_rejected_naming_it() -> None:
    with pytest.raises(SpecError) as err:
        ResNetSpec.from_dict({"width": 8, "widht": 9}, source="my.json")
    message = one_line(err)
    assert "'widht'" in message
    assert message.startswith("my.json")


@pytest.mark.parametrize(("key", "value"), [
    ("width", "8"), ("width", 8.0), ("width", True), ("blocks", None), ("stages", [1]),
    ("bias", 1), ("downsample", "yes"), ("final_relu", 0),
    ("width_growth", "2"), ("bn_eps", True), ("bn_momentum", None),
    ("order", 1), ("norm", None), ("head", ["conv"]), ("init", False),
])
def test_wrong_types_are_rejected_naming_key_and_value(key: str, value: Any) -> None:
    with pytest.raises(SpecError) as err:
        ResNetSpec.from_dict({key: value}, source="net.json")
    message = one_line(err)
    assert repr(key) in message or f"{key}=" in message
    assert repr(value) in message
    assert "net.json" in message


@pytest.mark.parametrize(("key", "value"), [
    ("width", 0), ("stem_width", -1), ("head_width", 0), ("stages", 0), ("blocks", -1),
    ("in_channels", 0), ("num_classes", 0), ("image_size", 0),
    ("kernel_size", 2), ("kernel_size", 0), ("kernel_size", -3),
    ("width_growth", 0.0), ("width_growth", -1.5), ("width_growth", math.inf), ("width_growth", math.nan),
    ("bn_momentum", 0.0), ("bn_momentum", 1.5), ("bn_momentum", math.nan),
    ("bn_eps", 0.0), ("bn_eps", -1e-3), ("bn_eps", math.inf),
    ("order", "middle"), ("norm", "layer"), ("head", "mlp"), ("init", "he"),
])
def test_invalid_values_are_rejected_naming_key_and_value(key: str, value: Any) -> None:
    with pytest.raises(SpecError) as err:
        ResNetSpec.from_dict({key: value}, source="net.json")
    message = one_line(err)
    assert f"{key}={value!r}" in message
    assert "net.json" in message
    # The constructor and replace() validate too, not only from_dict.
    with pytest.raises(SpecError):
        ResNetSpec(**{key: value})
    with pytest.raises(SpecError):
        PRESETS["baseline"].replace(**{key: value})


def test_booleans_are_not_accepted_as_integers_by_the_constructor() -> None:
    with pytest.raises(SpecError, match="kernel_size=True"):
        ResNetSpec(kernel_size=True)
    with pytest.raises(SpecError, match="width=True"):
        ResNetSpec(width=True)


@pytest.mark.parametrize("data", [[1, 2], "baseline", 3, None])
def test_from_dict_rejects_non_objects(data: Any) -> None:
    with pytest.raises(SpecError) as err:
        ResNetSpec.from_dict(data, source="x.json")
    assert one_line(err).startswith("x.json")


def test_from_json_rejects_malformed_text() -> None:
    with pytest.raises(SpecError) as err:
        ResNetSpec.from_json('{"width": 8,', source="broken.json")
    message = one_line(err)
    assert "broken.json" in message and "JSON" in message


def test_specs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["baseline"].width = 4  # type: ignore[misc]


# -- canonical hash ----------------------------------------------------------------------------
EQUIVALENT = [
    ("one stage ignores width_growth", {"stages": 1, "width_growth": 2.0},
     {"stages": 1, "width_growth": 3.0}),
    ("no norm ignores bn_eps", {"norm": "none", "bn_eps": 1e-3}, {"norm": "none", "bn_eps": 1e-5}),
    ("no norm ignores bn_momentum", {"norm": "none", "bn_momentum": 0.01},
     {"norm": "none", "bn_momentum": 0.1}),
    ("linear head ignores head_width", {"head": "linear", "head_width": 32},
     {"head": "linear", "head_width": 7}),
    ("no blocks ignore the order", {"blocks": 0, "order": "post"}, {"blocks": 0, "order": "pre"}),
    ("no blocks ignore the kernel", {"blocks": 0, "kernel_size": 3}, {"blocks": 0, "kernel_size": 5}),
]


@pytest.mark.parametrize(("why", "a", "b"), EQUIVALENT, ids=[e[0] for e in EQUIVALENT])
def test_equal_networks_hash_equal(why: str, a: dict, b: dict) -> None:
    sa, sb = ResNetSpec(**{"blocks": 2, **a}), ResNetSpec(**{"blocks": 2, **b})
    assert sa != sb
    assert sa.hash() == sb.hash(), why
    assert sa.canonical() == sb.canonical()
    # ... and they really are the same network: same modules, same initial weights, same outputs.
    torch.manual_seed(0)
    ma = build_model(sa)
    torch.manual_seed(0)
    mb = build_model(sb)
    assert str(ma) == str(mb)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(ma(x), mb(x), rtol=0, atol=0)


DIFFERENT = [
    {"width": 9}, {"stem_width": 16}, {"blocks": 3}, {"stages": 2}, {"downsample": False},
    {"order": "pre"}, {"order": "relu_bn"}, {"norm": "none"}, {"kernel_size": 5}, {"bias": False},
    {"head": "linear"}, {"head_width": 16}, {"final_relu": False}, {"init": "torch"},
    {"bn_momentum": 0.1}, {"bn_eps": 1e-5}, {"num_classes": 5}, {"image_size": 32},
    {"in_channels": 3},
]


def test_different_networks_hash_differently() -> None:
    base = ResNetSpec()
    two = base.replace(stages=2)
    specs = [base, *(base.replace(**change) for change in DIFFERENT),
             # width_growth matters once there are several stages.
             two.replace(width_growth=1.5), two.replace(width_growth=3.0)]
    hashes = [s.hash() for s in specs]
    assert len(set(hashes)) == len(specs)
    assert all(len(h) == 16 and int(h, 16) >= 0 for h in hashes)


def test_equal_hash_implies_the_same_network(make_random_spec: SpecMaker) -> None:
    """Random single-field mutations: whenever the hash stays equal, so does the network."""
    rng = random.Random(99)
    mutations = {
        "width_growth": [0.5, 1.0, 1.5, 2.0, 3.0], "bn_eps": [1e-5, 1e-3], "bn_momentum": [0.01, 0.1],
        "head_width": [1, 4, 32], "order": ["post", "pre", "relu_bn"], "kernel_size": [1, 3, 5],
        "blocks": [0, 1, 2], "stages": [1, 2], "norm": ["batch", "none"], "head": ["conv", "linear"],
    }
    equal_seen = different_seen = 0
    for _ in range(150):
        spec = make_random_spec(rng)
        key = rng.choice(sorted(mutations))
        other = spec.replace(**{key: rng.choice(mutations[key])})
        same_structure = str(build_model(spec)) == str(build_model(other))
        if spec.hash() == other.hash():
            equal_seen += 1
            assert same_structure, (spec, other)
            assert spec.canonical() == other.canonical()
        else:
            different_seen += 1
            assert spec.canonical() != other.canonical()
    assert equal_seen > 10 and different_seen > 10  # both branches were exercised


# -- load_spec ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_load_spec_by_preset_name(name: str) -> None:
    assert load_spec(name) == PRESETS[name]


def test_load_spec_from_a_json_file(tmp_path: Path) -> None:
    spec = ResNetSpec(width=5, blocks=3, order="relu_bn", head="linear")
    path = tmp_path / "net.json"
    path.write_text(spec.to_json())
    assert load_spec(path) == spec
    assert load_spec(str(path)) == spec


def test_load_spec_from_a_json_with_a_spec_key(tmp_path: Path) -> None:
    spec = ResNetSpec(width=5, stages=2, width_growth=1.5)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"test_accuracy": 0.99, "params": 1, "spec": spec.to_dict()}))
    assert load_spec(path) == spec


@pytest.mark.parametrize("text", ['{"width": 8', "", "[1, 2", "\x00\x01"])
def test_load_spec_rejects_a_malformed_file_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in one_line(err)


def test_load_spec_rejects_a_binary_file_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in one_line(err)


def test_load_spec_rejects_an_unknown_key_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"width": 8, "depth": 3}))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = one_line(err)
    assert str(path) in message and "'depth'" in message


def test_load_spec_rejects_an_invalid_value_naming_file_key_and_value(tmp_path: Path) -> None:
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"spec": {"kernel_size": 4}}))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = one_line(err)
    assert str(path) in message and "kernel_size=4" in message


def test_load_spec_rejects_an_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_spec("baseline-xl")
    message = one_line(err)
    assert "baseline-xl" in message and "baseline" in message
    with pytest.raises(SpecError):
        load_spec(tmp_path)  # a directory is not a spec file
