"""Parameter and multiply-accumulate counts computed from a spec alone.

A search rejects an over-budget architecture before allocating it, so the counts come from the
spec, not from a built model. They walk the same layout as :class:`ressearch.model.ResNet`; the test
suite checks them against built models of hundreds of random specs.

Conventions: ``params`` counts trainable parameters (as ``sum(p.numel())``); ``keras_params`` adds
the BatchNorm moving mean and variance, as Keras's ``count_params()`` does; ``macs`` counts the
multiply-accumulates of convolutions and linear layers for one image (BN, ReLU, additions and
pooling are not counted, as is usual).
"""

from __future__ import annotations

from dataclasses import dataclass

from ressearch.spec import ResNetSpec


@dataclass(frozen=True)
class Layer:
    """One parameterised layer of a network."""

    name: str
    kind: str  # "conv", "bn" or "linear"
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    out_size: int  # output height (= width)
    params: int  # trainable
    moving: int  # BatchNorm moving statistics (Keras counts them as parameters)
    macs: int

    def describe(self) -> str:
        """A short text such as ``conv 3x3/2 8->32``."""
        if self.kind == "conv":
            return f"conv {self.kernel}x{self.kernel}/{self.stride} {self.in_channels}->{self.out_channels}"
        if self.kind == "linear":
            return f"linear {self.in_channels}->{self.out_channels}"
        return f"batchnorm {self.out_channels}"


@dataclass(frozen=True)
class Counts:
    """Totals for one network."""

    params: int
    keras_params: int
    macs: int


def _out_size(size: int, stride: int) -> int:
    # "same" padding with an odd kernel: ceil(size / stride).
    return (size - 1) // stride + 1


class _Walker:
    """Accumulates layers while tracking channels and spatial size."""

    def __init__(self, spec: ResNetSpec) -> None:
        self.spec = spec
        self.layers: list[Layer] = []
        self.size = spec.image_size

    def conv(self, name: str, cin: int, cout: int, kernel: int, stride: int = 1,
             bias: bool | None = None) -> None:
        bias = self.spec.bias if bias is None else bias
        self.size = _out_size(self.size, stride)
        weights = kernel * kernel * cin * cout
        self.layers.append(Layer(name, "conv", cin, cout, kernel, stride, self.size,
                                 weights + (cout if bias else 0), 0, weights * self.size**2))

    def norm(self, name: str, channels: int) -> None:
        if self.spec.norm == "none":
            return
        self.layers.append(Layer(name, "bn", channels, channels, 1, 1, self.size,
                                 2 * channels, 2 * channels, 0))

    def linear(self, name: str, cin: int, cout: int) -> None:
        self.size = 1
        self.layers.append(Layer(name, "linear", cin, cout, 1, 1, 1, cin * cout + cout, 0,
                                 cin * cout))

    def conv_norm_relu(self, name: str, cin: int, cout: int, stride: int) -> None:
        self.conv(f"{name}.conv", cin, cout, 3, stride)
        self.norm(f"{name}.norm", cout)


def layers(spec: ResNetSpec) -> list[Layer]:
    """The parameterised layers of ``spec``'s network, in forward order."""
    w = _Walker(spec)
    w.conv_norm_relu("stem", spec.in_channels, spec.stem_width, 1)
    in_ch = spec.stem_width
    k = spec.kernel_size
    for i, width in enumerate(spec.stage_widths()):
        w.conv_norm_relu(f"down{i}", in_ch, width, 2 if (i > 0 or spec.downsample) else 1)
        for j in range(spec.blocks):
            block = f"stage{i}.{j}"
            if spec.order == "pre":
                w.norm(f"{block}.bn1", width)
                w.conv(f"{block}.conv1", width, width, k)
                w.norm(f"{block}.bn2", width)
                w.conv(f"{block}.conv2", width, width, k)
            else:
                w.conv(f"{block}.conv1", width, width, k)
                w.norm(f"{block}.bn1", width)
                w.conv(f"{block}.conv2", width, width, k)
                w.norm(f"{block}.bn2", width)
        in_ch = width
    if spec.order == "pre" and spec.blocks > 0:
        w.norm("final_norm", in_ch)
    if spec.head == "conv":
        w.conv_norm_relu("head.down", in_ch, spec.head_width, 2)
        w.conv("head.classifier", spec.head_width, spec.num_classes, 1)
        w.norm("head.norm", spec.num_classes)
    else:
        w.linear("head.classifier", in_ch, spec.num_classes)
    return w.layers


def count(spec: ResNetSpec) -> Counts:
    """Trainable parameters, Keras-style parameters and MACs per image of ``spec``'s network.

    Example:
        >>> count(ResNetSpec()).params, count(ResNetSpec()).keras_params
        (17462, 17946)
    """
    rows = layers(spec)
    params = sum(r.params for r in rows)
    return Counts(params=params, keras_params=params + sum(r.moving for r in rows),
                  macs=sum(r.macs for r in rows))
