"""The built network: the notebook's layout, initialisation, block orders, final ReLU and biases."""

from __future__ import annotations

import math
import operator

import pytest
import torch
from torch import Tensor, fx, nn

from ressearch.model import (
    BLOCKS,
    PostActBlock,
    PreActBlock,
    ReLUNormBlock,
    build_model,
    count_model_params,
)
from ressearch.spec import PRESETS, ResNetSpec

SMALL = ResNetSpec(stem_width=8, width=6, blocks=3, head_width=8)


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def _output_sizes(model: nn.Module, modules: list[nn.Module], x: Tensor) -> list[tuple[int, ...]]:
    shapes: dict[nn.Module, tuple[int, ...]] = {}
    handles = [m.register_forward_hook(lambda mod, _i, out: shapes.__setitem__(mod, tuple(out.shape)))
               for m in modules]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [shapes[m] for m in modules]


# -- the notebook's network --------------------------------------------------------------------
def test_baseline_has_the_notebook_layout() -> None:
    model = build_model(PRESETS["baseline"]).eval()
    convs = _convs(model)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 32, (3, 3), (1, 1)),  # stem
        (32, 8, (3, 3), (2, 2)),  # stride-2 conv into the blocks
        *[(8, 8, (3, 3), (1, 1))] * 20,  # 10 blocks x 2 convs
        (8, 32, (3, 3), (2, 2)),  # stride-2 conv of the head
        (32, 10, (1, 1), (1, 1)),  # 1x1 conv to the classes
    ]
    assert all(c.bias is not None for c in convs)
    shapes = _output_sizes(model, convs, torch.zeros(1, 1, 28, 28))
    assert [s[2:] for s in shapes] == [(28, 28), (14, 14), *[(14, 14)] * 20, (7, 7), (7, 7)]
    blocks = [m for m in model.modules() if isinstance(m, tuple(BLOCKS.values()))]
    assert len(blocks) == 10 and all(isinstance(b, PostActBlock) for b in blocks)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [n.num_features for n in norms] == [32, 8, *[8] * 20, 32, 10]
    assert all(n.momentum == 0.01 and n.eps == 1e-3 for n in norms)  # Keras momentum 0.99
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    # The head ends with BN, ReLU and a global 7x7 average pool.
    head = list(model.head.children())
    assert isinstance(head[-4], nn.BatchNorm2d) and isinstance(head[-3], nn.ReLU)
    assert isinstance(head[-2], nn.AdaptiveAvgPool2d)
    assert model(torch.rand(4, 1, 28, 28)).shape == (4, 10)


def test_keras_init_is_glorot_uniform_with_zero_biases() -> None:
    torch.manual_seed(0)
    models = [build_model(PRESETS["baseline"]), build_model(PRESETS["baseline"].replace(head="linear"))]
    layers = [m for model in models for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 24 + 23
    assert isinstance(layers[-1], nn.Linear)
    for m in layers:
        w = m.weight.detach()
        receptive = w[0, 0].numel() if w.dim() == 4 else 1
        fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert w.abs().max() <= bound + 1e-7
        if w.numel() >= 200:  # a uniform sample spans its range and has std bound/sqrt(3)
            assert w.abs().max() > 0.9 * bound
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.2)
        assert m.bias is not None and torch.equal(m.bias, torch.zeros_like(m.bias))
    for bn in (m for model in models for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_torch_init_is_kaiming_normal_fan_out() -> None:
    torch.manual_seed(0)
    model = build_model(PRESETS["baseline"].replace(init="torch", stem_width=64))
    stem = model.body.stem[0].weight.detach()  # 64 x 1 x 3 x 3
    assert stem.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.15)
    glorot = math.sqrt(6 / (9 + 64 * 9))
    assert stem.abs().max() > glorot  # a normal sample exceeds the Glorot-uniform bound


# -- block orders ------------------------------------------------------------------------------
def _op_order(block: nn.Module) -> list[str]:
    graph = fx.symbolic_trace(block).graph
    ops = []
    for node in graph.nodes:
        if node.op == "call_module":
            ops.append(str(node.target))
        elif node.op == "call_function" and node.target in (operator.add, torch.add):
            ops.append("add")
    return ops


@pytest.mark.parametrize(("order", "cls", "expected"), [
    ("post", PostActBlock, ["conv1", "bn1", "relu", "conv2", "bn2", "add", "relu"]),
    ("pre", PreActBlock, ["bn1", "relu", "conv1", "bn2", "relu", "conv2", "add"]),
    ("relu_bn", ReLUNormBlock, ["conv1", "relu", "bn1", "conv2", "relu", "bn2", "add"]),
])
def test_block_op_order(order: str, cls: type, expected: list[str]) -> None:
    model = build_model(SMALL.replace(order=order))
    blocks = list(model.body.stage0.children())
    assert len(blocks) == 3 and all(type(b) is cls for b in blocks)
    assert isinstance(blocks[0].bn1, nn.BatchNorm2d)
    assert _op_order(blocks[0]) == expected


def _block_outputs(spec: ResNetSpec, seed: int = 0) -> list[Tensor]:
    torch.manual_seed(seed)
    model = build_model(spec).train()
    blocks = list(model.body.stage0.children())
    return [s for s in _output_tensors(model, blocks, torch.rand(8, 1, 28, 28))]


def _output_tensors(model: nn.Module, modules: list[nn.Module], x: Tensor) -> list[Tensor]:
    outs: dict[nn.Module, Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, _i, out: outs.__setitem__(mod, out.detach().clone()))
               for m in modules]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [outs[m] for m in modules]


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_post_activation_blocks_end_with_a_relu(norm: str) -> None:
    for out in _block_outputs(SMALL.replace(order="post", norm=norm)):
        assert out.min() >= 0
        assert (out == 0).any()  # the ReLU clipped something


@pytest.mark.parametrize(("order", "norm"), [("pre", "batch"), ("pre", "none"), ("relu_bn", "batch")])
def test_other_blocks_do_not_end_with_a_relu(order: str, norm: str) -> None:
    outs = _block_outputs(SMALL.replace(order=order, norm=norm))
    assert any(out.min() < 0 for out in outs)


def test_relu_bn_blocks_without_norm_add_a_relu_output_to_their_input() -> None:
    # conv-ReLU-conv-ReLU, add: negative only where the input is, and never below it.
    torch.manual_seed(0)
    block = ReLUNormBlock(4, 3, True, lambda _c: nn.Identity())
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        out = block(x)
    assert (out >= x).all() and (out > x).any()
    assert out.min() < 0


def test_preact_network_ends_its_body_with_bn_relu() -> None:
    model = build_model(SMALL.replace(order="pre"))
    assert isinstance(model.body.final_norm[0], nn.BatchNorm2d)
    assert isinstance(model.body.final_norm[1], nn.ReLU)
    (body_out,) = _output_tensors(model.train(), [model.body], torch.rand(4, 1, 28, 28))
    assert body_out.min() >= 0
    # Without blocks there is nothing to close: no extra BN.
    assert not hasattr(build_model(SMALL.replace(order="pre", blocks=0)).body, "final_norm")


def test_norm_none_has_no_batchnorm() -> None:
    model = build_model(SMALL.replace(norm="none"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert count_model_params(model)[0] == count_model_params(model)[1]


# -- final ReLU --------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["conv", "linear"])
@pytest.mark.parametrize("train_mode", [True, False])
def test_final_relu_controls_the_sign_of_the_logits(head: str, train_mode: bool) -> None:
    x = torch.rand(16, 1, 28, 28)
    torch.manual_seed(1)
    with_relu = build_model(SMALL.replace(head=head, final_relu=True)).train(train_mode)
    torch.manual_seed(1)
    without = build_model(SMALL.replace(head=head, final_relu=False)).train(train_mode)
    with torch.no_grad():
        a, b = with_relu(x), without(x)
    assert a.min() >= 0
    assert b.min() < 0
    if head == "linear":  # the ReLU is the last op: the only difference
        torch.testing.assert_close(a, b.clamp_min(0))
    else:  # the ReLU comes before the average pool, and mean(relu(z)) >= relu(mean(z))
        assert (a >= b.clamp_min(0) - 1e-6).all() and not torch.allclose(a, b.clamp_min(0))


# -- biases, widths, resolution ----------------------------------------------------------------
@pytest.mark.parametrize("head", ["conv", "linear"])
def test_bias_false_removes_every_conv_bias(head: str) -> None:
    spec = SMALL.replace(head=head, stages=2)
    with_bias, without = build_model(spec), build_model(spec.replace(bias=False))
    assert all(c.bias is not None for c in _convs(with_bias))
    assert all(c.bias is None for c in _convs(without))
    channels = sum(c.out_channels for c in _convs(with_bias))
    assert count_model_params(with_bias)[0] - count_model_params(without)[0] == channels
    linears = [m for m in without.modules() if isinstance(m, nn.Linear)]
    assert all(m.bias is not None for m in linears)  # a linear head keeps its bias: no BN follows


def test_stages_and_downsampling() -> None:
    spec = ResNetSpec(stem_width=4, width=4, blocks=1, stages=3, width_growth=1.5, head="linear")
    assert spec.stage_widths() == (4, 6, 9)
    model = build_model(spec).eval()
    stages = [model.body.stage0, model.body.stage1, model.body.stage2]
    shapes = _output_sizes(model, stages, torch.zeros(1, 1, 28, 28))
    assert shapes == [(1, 4, 14, 14), (1, 6, 7, 7), (1, 9, 4, 4)]
    flat = build_model(spec.replace(downsample=False)).eval()
    stages = [flat.body.stage0, flat.body.stage1, flat.body.stage2]
    assert _output_sizes(flat, stages, torch.zeros(1, 1, 28, 28)) == [
        (1, 4, 28, 28), (1, 6, 14, 14), (1, 9, 7, 7)]


def test_kernel_size_applies_to_block_convs_only() -> None:
    model = build_model(SMALL.replace(kernel_size=5))
    kernels = [c.kernel_size[0] for c in _convs(model)]
    assert kernels == [3, 3, *[5] * 6, 3, 1]


def test_build_model_is_deterministic_under_a_seed() -> None:
    torch.manual_seed(3)
    a = build_model(SMALL)
    torch.manual_seed(3)
    b = build_model(SMALL)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert a.spec is SMALL
