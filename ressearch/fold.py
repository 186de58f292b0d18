"""Fold inference-mode BatchNorm into the convolution in front of it.

In eval mode a BatchNorm is a per-channel affine map ``y = scale * (x - mean) + beta`` with
``scale = gamma / sqrt(var + eps)``. When ``x`` is a conv's output the map can be absorbed into the
conv: its kernel is multiplied by ``scale`` and its bias becomes ``scale * (b - mean) + beta``. The
folded network computes the same function with fewer parameters and one op less per pair.

Only a BatchNorm that *directly* follows a conv can be folded. In the networks of
:mod:`ressearch.model` these are the conv-norm-ReLU units (stem, down-sampling convs, conv head),
the head's classifier conv and its norm, both pairs of a :class:`~ressearch.model.PostActBlock`, and
the ``conv1 -> bn2`` pair inside a :class:`~ressearch.model.PreActBlock`. A
:class:`~ressearch.model.ReLUNormBlock` puts a ReLU between conv and BN, and a pre-activation block's
``bn1`` (like the pre-activation network's ``final_norm``) acts on the shortcut's input; those stay.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from ressearch.model import PostActBlock, PreActBlock, ResNet

# (parent module, attribute name of the conv, attribute name of the BN) for one foldable pair.
_Pair = tuple[nn.Module, str, str]


def _foldable_pairs(model: nn.Module) -> list[tuple[str, _Pair]]:
    """Every conv -> BatchNorm pair of ``model``, as (qualified BN name, pair)."""
    pairs: list[tuple[str, _Pair]] = []
    for prefix, parent in model.named_modules():
        if isinstance(parent, nn.Sequential):
            names = [name for name, _child in parent.named_children()]
            candidates = list(itertools.pairwise(names))
        elif isinstance(parent, PostActBlock):
            candidates = [("conv1", "bn1"), ("conv2", "bn2")]
        elif isinstance(parent, PreActBlock):
            candidates = [("conv1", "bn2")]  # bn2 normalises conv1's output and nothing else
        else:
            continue
        for conv_name, bn_name in candidates:
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                full = f"{prefix}.{bn_name}" if prefix else bn_name
                pairs.append((full, (parent, conv_name, bn_name)))
    return pairs


def foldable_norms(model: nn.Module) -> list[str]:
    """Qualified names of the BatchNorms of ``model`` that :func:`fold_batchnorm` would fold.

    Example:
        >>> from ressearch.model import build_model
        >>> from ressearch.spec import ResNetSpec
        >>> foldable_norms(build_model(ResNetSpec(blocks=1)))[:2]
        ['body.stem.1', 'body.down0.1']
    """
    return [name for name, _pair in _foldable_pairs(model)]


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv computing ``bn(conv(x))`` with ``bn`` in eval mode (computed in float64).

    Raises:
        ValueError: The BN has no running statistics or does not match the conv's channels.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm of {bn.num_features} channels after a conv of "
                         f"{conv.out_channels}")
    dtype = conv.weight.dtype
    mean, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    folded = copy.deepcopy(conv)
    if folded.bias is None:
        folded.bias = nn.Parameter(torch.empty(conv.out_channels, dtype=dtype,
                                               device=conv.weight.device))
    folded.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype))
    folded.bias.copy_(((bias - mean) * scale + beta).to(dtype))
    return folded


def fold_batchnorm(model: ResNet) -> nn.Module:
    """A copy of ``model`` in eval mode with every conv -> BatchNorm pair folded into the conv.

    The folded BNs become ``nn.Identity``; BNs that do not directly follow a conv are kept. The
    original model is not modified. :func:`foldable_norms` names the BNs folded (its length is
    their count).

    Args:
        model: A network built by :func:`ressearch.build_model` (or loaded from a checkpoint).

    Returns:
        The folded copy, in eval mode. It computes the same function as ``model.eval()``, up to
        float rounding; it no longer matches the spec's state-dict layout, so save the original.
    """
    folded = copy.deepcopy(model).eval()
    for _name, (parent, conv_name, bn_name) in _foldable_pairs(folded):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        setattr(parent, conv_name, fold_conv_bn(conv, bn))
        setattr(parent, bn_name, nn.Identity())
    return folded


def count_deployed_params(module: nn.Module) -> int:
    """Numbers a deployed copy of ``module`` must store: all parameters plus BN running stats.

    Unlike the trainable count this includes frozen parameters; like Keras's count it includes
    the BatchNorm moving mean and variance (but not PyTorch's ``num_batches_tracked`` counter,
    which inference never reads).
    """
    params = sum(p.numel() for p in module.parameters())
    stats = sum(m.running_mean.numel() + m.running_var.numel() for m in module.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
                and m.running_var is not None)
    return params + stats
