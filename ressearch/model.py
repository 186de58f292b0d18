"""The residual network a :class:`~ressearch.spec.ResNetSpec` describes.

Laid out like torchvision's ``models/resnet.py``: helpers first, then the blocks (one class per
BN/ReLU order, passed to the network as a class), then the network, then the public factory
:func:`build_model`. The norm layer is a callable so that "no BatchNorm" is just ``nn.Identity``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from ressearch.spec import ResNetSpec

NormLayer = Callable[[int], nn.Module]


# -- helpers -----------------------------------------------------------------------------------
def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """A conv with Keras's ``padding='same'`` output size (odd kernels: symmetric padding)."""
    return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=bias)


def conv_norm_relu(in_ch: int, out_ch: int, kernel: int, stride: int, bias: bool,
                   norm_layer: NormLayer) -> nn.Sequential:
    """The notebook's unit outside the blocks: conv, norm, ReLU."""
    return nn.Sequential(conv(in_ch, out_ch, kernel, stride, bias), norm_layer(out_ch),
                         nn.ReLU(inplace=True))


def make_norm_layer(spec: ResNetSpec) -> NormLayer:
    """BatchNorm with the spec's momentum and epsilon, or ``nn.Identity`` when ``norm='none'``."""
    if spec.norm == "none":
        return lambda _channels: nn.Identity()
    return partial(nn.BatchNorm2d, eps=spec.bn_eps, momentum=spec.bn_momentum)


# -- blocks ------------------------------------------------------------------------------------
class PostActBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, add the input, ReLU (He et al. 2015; the notebook's block)."""

    def __init__(self, width: int, kernel: int, bias: bool, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = conv(width, width, kernel, bias=bias)
        self.bn1 = norm_layer(width)
        self.conv2 = conv(width, width, kernel, bias=bias)
        self.bn2 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv, add the input (He et al. 2016, "Identity Mappings").

    The identity path carries no non-linearity, so the network ends with its own BN-ReLU.
    """

    def __init__(self, width: int, kernel: int, bias: bool, norm_layer: NormLayer) -> None:
        super().__init__()
        self.bn1 = norm_layer(width)
        self.conv1 = conv(width, width, kernel, bias=bias)
        self.bn2 = norm_layer(width)
        self.conv2 = conv(width, width, kernel, bias=bias)
        self.relu = nn.ReLU()  # not in place: the input is still needed for the shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + x


class ReLUNormBlock(nn.Module):
    """conv-ReLU-BN-conv-ReLU-BN, add the input: the ReLU before the BN."""

    def __init__(self, width: int, kernel: int, bias: bool, norm_layer: NormLayer) -> None:
        super().__init__()
        self.conv1 = conv(width, width, kernel, bias=bias)
        self.bn1 = norm_layer(width)
        self.conv2 = conv(width, width, kernel, bias=bias)
        self.bn2 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.bn2(self.relu(self.conv2(out)))
        return out + x


BLOCKS: dict[str, type[nn.Module]] = {
    "post": PostActBlock,
    "pre": PreActBlock,
    "relu_bn": ReLUNormBlock,
}


# -- the network -------------------------------------------------------------------------------
class ResNet(nn.Module):
    """stem -> down-sampling conv -> stages of residual blocks -> head; returns logits.

    Args:
        spec: The network to build; kept as ``self.spec`` so checkpoints can save it.
        block: The residual block class; defaults to the one ``spec.order`` names.
        norm_layer: Callable returning a norm module for a channel count; defaults to the spec's.
    """

    def __init__(self, spec: ResNetSpec, block: type[nn.Module] | None = None,
                 norm_layer: NormLayer | None = None) -> None:
        super().__init__()
        self.spec = spec
        block = block or BLOCKS[spec.order]
        norm_layer = norm_layer or make_norm_layer(spec)
        k, bias = spec.kernel_size, spec.bias

        body: OrderedDict[str, nn.Module] = OrderedDict()
        body["stem"] = conv_norm_relu(spec.in_channels, spec.stem_width, 3, 1, bias, norm_layer)
        in_ch = spec.stem_width
        for i, width in enumerate(spec.stage_widths()):
            stride = 2 if (i > 0 or spec.downsample) else 1
            body[f"down{i}"] = conv_norm_relu(in_ch, width, 3, stride, bias, norm_layer)
            body[f"stage{i}"] = nn.Sequential(
                *(block(width, k, bias, norm_layer) for _ in range(spec.blocks)))
            in_ch = width
        if spec.order == "pre" and spec.blocks > 0:
            body["final_norm"] = nn.Sequential(norm_layer(in_ch), nn.ReLU(inplace=True))
        self.body = nn.Sequential(body)

        head: OrderedDict[str, nn.Module] = OrderedDict()
        if spec.head == "conv":
            head["down"] = conv_norm_relu(in_ch, spec.head_width, 3, 2, bias, norm_layer)
            head["classifier"] = conv(spec.head_width, spec.num_classes, 1, bias=bias)
            head["norm"] = norm_layer(spec.num_classes)
            if spec.final_relu:
                head["relu"] = nn.ReLU(inplace=True)
            head["pool"] = nn.AdaptiveAvgPool2d(1)  # the notebook's 7x7 pool on a 7x7 map
            head["flatten"] = nn.Flatten()
        else:
            head["pool"] = nn.AdaptiveAvgPool2d(1)
            head["flatten"] = nn.Flatten()
            head["classifier"] = nn.Linear(in_ch, spec.num_classes)
            if spec.final_relu:
                head["relu"] = nn.ReLU(inplace=True)
        self.head = nn.Sequential(head)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise weights as Keras (Glorot-uniform, zero bias) or torchvision (Kaiming)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if self.spec.init == "keras":
                    nn.init.xavier_uniform_(m.weight)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                else:
                    m.reset_parameters()
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # gamma 1, beta 0, mean 0, var 1 in both frameworks

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


# -- public factories --------------------------------------------------------------------------
def build_model(spec: ResNetSpec) -> ResNet:
    """Build the network ``spec`` describes, freshly initialised."""
    return ResNet(spec)


def count_model_params(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, Keras-style count adding BatchNorm moving mean and variance)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    moving = sum(m.running_mean.numel() + m.running_var.numel() for m in model.modules()
                 if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None)
    return trainable, trainable + moving


def count_model_macs(model: nn.Module, image_size: int, in_channels: int = 1) -> int:
    """Multiply-accumulates of one image through the built model's convs and linears (hooks)."""
    total = 0

    def hook(module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_out = kh * kw * module.in_channels // module.groups
            total += per_out * output[0].numel()
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
