"""Analytic counts from a spec against the notebook's figures and against built models."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ressearch.counting import count, layers
from ressearch.model import build_model, count_model_macs, count_model_params
from ressearch.spec import PRESETS, ResNetSpec

SpecMaker = Callable[..., ResNetSpec]

# The notebook's model.summary(): 17,462 trainable parameters, 17,946 in total (Keras counts the
# BatchNorm moving mean and variance as non-trainable parameters).
NOTEBOOK_TRAINABLE = 17462
NOTEBOOK_KERAS = 17946


def test_baseline_matches_the_notebook_parameter_counts() -> None:
    counts = count(PRESETS["baseline"])
    assert counts.params == NOTEBOOK_TRAINABLE
    assert counts.keras_params == NOTEBOOK_KERAS
    trainable, keras = count_model_params(build_model(PRESETS["baseline"]))
    assert (trainable, keras) == (NOTEBOOK_TRAINABLE, NOTEBOOK_KERAS)


def test_baseline_macs_by_hand() -> None:
    # kernel^2 * in * out * output pixels, for each conv of the notebook's network.
    stem = 3 * 3 * 1 * 32 * 28 * 28
    down = 3 * 3 * 32 * 8 * 14 * 14
    blocks = 20 * 3 * 3 * 8 * 8 * 14 * 14
    head_down = 3 * 3 * 8 * 32 * 7 * 7
    classifier = 1 * 1 * 32 * 10 * 7 * 7
    assert count(PRESETS["baseline"]).macs == stem + down + blocks + head_down + classifier == 3063872


def test_baseline_layer_table_is_the_notebooks() -> None:
    rows = layers(PRESETS["baseline"])
    convs = [(r.kernel, r.stride, r.in_channels, r.out_channels, r.out_size) for r in rows
             if r.kind == "conv"]
    assert convs == [(3, 1, 1, 32, 28), (3, 2, 32, 8, 14), *[(3, 1, 8, 8, 14)] * 20,
                     (3, 2, 8, 32, 7), (1, 1, 32, 10, 7)]
    bns = [r.out_channels for r in rows if r.kind == "bn"]
    assert bns == [32, 8, *[8] * 20, 32, 10]
    assert not any(r.kind == "linear" for r in rows)
    for r in rows:
        if r.kind == "bn":
            assert (r.params, r.moving, r.macs) == (2 * r.out_channels, 2 * r.out_channels, 0)
        else:
            weights = r.kernel**2 * r.in_channels * r.out_channels
            assert r.params == weights + r.out_channels  # Keras puts a bias on every conv
            assert r.macs == weights * r.out_size**2
    assert rows[0].describe() == "conv 3x3/1 1->32"
    assert rows[1].describe() == "batchnorm 32"


def test_dropping_biases_saves_one_parameter_per_conv_output_channel() -> None:
    with_bias, without = count(PRESETS["baseline"]), count(PRESETS["baseline-nobias"])
    assert with_bias.params - without.params == 32 + 8 + 20 * 8 + 32 + 10
    assert with_bias.macs == without.macs
    assert with_bias.keras_params - with_bias.params == without.keras_params - without.params


def test_linear_head_counts() -> None:
    spec = PRESETS["baseline"].replace(head="linear", final_relu=False)
    rows = layers(spec)
    assert rows[-1].kind == "linear"
    assert (rows[-1].in_channels, rows[-1].out_channels, rows[-1].params, rows[-1].macs) == (
        8, 10, 8 * 10 + 10, 80)
    conv_head = 3 * 3 * 8 * 32 + 32 + 2 * 32 + 32 * 10 + 10 + 2 * 10
    assert count(spec).params == NOTEBOOK_TRAINABLE - conv_head + 90


def _model_layers(model: nn.Module, spec: ResNetSpec) -> list[tuple[str, int, int, int, int, int]]:
    """(kind, in, out, kernel, stride, output size) of the built model's layers, in forward order."""
    sizes: dict[nn.Module, int] = {}

    def hook(module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        sizes[module] = output.shape[-1] if output.dim() == 4 else 1

    wanted = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, wanted)]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size))
    for h in handles:
        h.remove()
    rows = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            rows.append(("conv", m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], sizes[m]))
        elif isinstance(m, nn.BatchNorm2d):
            rows.append(("bn", m.num_features, m.num_features, 1, 1, sizes[m]))
        elif isinstance(m, nn.Linear):
            rows.append(("linear", m.in_features, m.out_features, 1, 1, 1))
    return rows


def _check_against_model(spec: ResNetSpec) -> None:
    model = build_model(spec)
    counts = count(spec)
    trainable, keras = count_model_params(model)
    assert (counts.params, counts.keras_params) == (trainable, keras), spec
    assert counts.macs == count_model_macs(model, spec.image_size, spec.in_channels), spec
    assert [(r.kind, r.in_channels, r.out_channels, r.kernel, r.stride, r.out_size)
            for r in layers(spec)] == _model_layers(model, spec), spec
    model.train()
    out = model(torch.rand(2, spec.in_channels, spec.image_size, spec.image_size))
    assert out.shape == (2, spec.num_classes), spec
    assert torch.isfinite(out).all()


def test_counts_match_built_models_for_random_specs(make_random_spec: SpecMaker) -> None:
    rng = random.Random(2024)
    seen: dict[str, set] = {}
    for _ in range(220):
        spec = make_random_spec(rng)
        assert (spec.in_channels, spec.image_size, spec.num_classes) == (1, 28, 10)
        _check_against_model(spec)
        for name, value in spec.to_dict().items():
            seen.setdefault(name, set()).add(value)
    # Every field and every choice was covered.
    assert seen["order"] == {"post", "pre", "relu_bn"}
    assert seen["norm"] == {"batch", "none"}
    assert seen["head"] == {"conv", "linear"}
    assert seen["init"] == {"keras", "torch"}
    for flag in ("bias", "final_relu", "downsample"):
        assert seen[flag] == {True, False}
    assert seen["stages"] == {1, 2, 3}
    assert seen["blocks"] == set(range(7))
    assert seen["kernel_size"] == {1, 3, 5}
    assert len(seen["width_growth"]) >= 4
    assert len(seen["stem_width"]) >= 4 and len(seen["head_width"]) >= 4


def test_counts_match_built_models_for_other_image_shapes(make_random_spec: SpecMaker) -> None:
    rng = random.Random(7)
    sizes = set()
    for _ in range(60):
        spec = make_random_spec(rng, vary_shape=True)
        sizes.add(spec.image_size)
        _check_against_model(spec)
    assert {5, 17, 31} <= sizes  # odd sizes exercise the "same"-padding output rounding


def test_bias_false_drops_exactly_the_conv_output_channels(make_random_spec: SpecMaker) -> None:
    rng = random.Random(5)
    for _ in range(40):
        spec = make_random_spec(rng).replace(bias=True)
        model = build_model(spec)
        conv_channels = sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
        nobias = spec.replace(bias=False)
        assert count(spec).params - count(nobias).params == conv_channels
        assert count(spec).keras_params - count(nobias).keras_params == conv_channels
        assert count(spec).macs == count(nobias).macs
