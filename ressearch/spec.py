"""``ResNetSpec``: a frozen description of one network, and its named presets.

A spec is plain data: it round-trips through JSON, is saved beside every checkpoint, and has a
canonical hash so that two specs describing the same network (differing only in fields that the
other fields make irrelevant) hash equal. ``build_model`` in :mod:`ressearch.model` turns a spec into
a ``torch.nn.Module``; :mod:`ressearch.counting` counts its parameters and MACs without building it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ressearch.errors import SpecError

BlockOrder = Literal["post", "pre", "relu_bn"]
Norm = Literal["batch", "none"]
Head = Literal["conv", "linear"]
Init = Literal["keras", "torch"]

ORDERS: tuple[str, ...] = ("post", "pre", "relu_bn")
NORMS: tuple[str, ...] = ("batch", "none")
HEADS: tuple[str, ...] = ("conv", "linear")
INITS: tuple[str, ...] = ("keras", "torch")


@dataclass(frozen=True)
class ResNetSpec:
    """Everything needed to build one residual network.

    The layout is ``stem -> down-sampling conv -> stages of residual blocks -> head``. Each stage holds
    ``blocks`` residual blocks of equal width (identity shortcuts, no projections); stage ``i`` has
    ``round(width * width_growth**i)`` channels and is entered through a stride-2 conv. The defaults
    are the 2018 notebook's network (see :data:`PRESETS` ``"baseline"``).

    Attributes:
        in_channels: Image channels (1 for MNIST).
        num_classes: Output classes.
        image_size: Input height and width.
        stem_width: Channels of the first 3x3 conv.
        downsample: Whether the conv from the stem into the first stage has stride 2 (the
            notebook's); otherwise it has stride 1 and the blocks run at full resolution.
        width: Channels of the residual blocks of the first stage.
        blocks: Residual blocks per stage.
        stages: Number of stages; stage ``i > 0`` is entered through a stride-2 conv.
        width_growth: Width multiplier from one stage to the next.
        order: Layer order inside a block: ``post`` (conv-BN-ReLU-conv-BN, add, ReLU; the
            notebook's and He et al. 2015's), ``pre`` (BN-ReLU-conv-BN-ReLU-conv, add; He et al.
            2016, "Identity Mappings"), ``relu_bn`` (conv-ReLU-BN-conv-ReLU-BN, add).
        norm: ``batch`` for BatchNorm everywhere, ``none`` for no normalisation at all.
        kernel_size: Kernel of the block convs (odd, so that "same" padding is symmetric).
        bias: Whether convs carry a bias. Keras adds one to every conv; in front of a BatchNorm it
            is redundant (the BN's shift absorbs it), so dropping it saves parameters for free.
        head: ``conv`` (the notebook's: stride-2 conv to ``head_width``, BN, ReLU, 1x1 conv to the
            classes, BN, [ReLU], global average pool) or ``linear`` (global average pool, linear).
        head_width: Channels of the conv head's stride-2 conv.
        final_relu: Whether the logits pass through the notebook's final ReLU.
        init: ``keras`` (Glorot-uniform kernels, zero biases; the notebook's) or ``torch``
            (Kaiming-normal, fan-out, as torchvision's ResNet).
        bn_momentum: BatchNorm running-statistics momentum in PyTorch's convention (Keras's
            default momentum 0.99 is PyTorch's 0.01).
        bn_eps: BatchNorm epsilon (Keras's default 1e-3; PyTorch's is 1e-5).
    """

    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 28
    stem_width: int = 32
    downsample: bool = True
    width: int = 8
    blocks: int = 10
    stages: int = 1
    width_growth: float = 2.0
    order: BlockOrder = "post"
    norm: Norm = "batch"
    kernel_size: int = 3
    bias: bool = True
    head: Head = "conv"
    head_width: int = 32
    final_relu: bool = True
    init: Init = "keras"
    bn_momentum: float = 0.01
    bn_eps: float = 1e-3

    def __post_init__(self) -> None:
        # Store float fields as floats: an int 2 would serialise as "2", not "2.0", and give the
        # same network a different hash.
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        validate(self)

    # -- derived -------------------------------------------------------------------------------
    def stage_widths(self) -> tuple[int, ...]:
        """Channels of each stage's blocks."""
        return tuple(max(1, round(self.width * self.width_growth**i)) for i in range(self.stages))

    def replace(self, **changes: Any) -> ResNetSpec:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def canonical(self) -> ResNetSpec:
        """The same network with every field that cannot matter reset to its default.

        Two specs build the same network exactly when their canonical forms are equal.
        """
        default = ResNetSpec()
        changes: dict[str, Any] = {}
        if self.stages == 1:
            changes["width_growth"] = default.width_growth
        if self.norm == "none":
            changes["bn_momentum"] = default.bn_momentum
            changes["bn_eps"] = default.bn_eps
        if self.head == "linear":
            changes["head_width"] = default.head_width
        if self.blocks == 0:
            # No blocks: the block order and kernel never appear in the network.
            changes["order"] = default.order
            changes["kernel_size"] = default.kernel_size
        return dataclasses.replace(self, **changes) if changes else self

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-compatible values."""
        return dataclasses.asdict(self)

    def to_json(self, *, indent: int | None = 2) -> str:
        """JSON text with keys sorted, so equal specs give equal text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "spec") -> ResNetSpec:
        """Build a spec from a mapping, rejecting unknown keys and wrong types.

        Args:
            data: Field values; missing fields keep the baseline's defaults.
            source: Where the mapping came from, named in error messages.

        Raises:
            SpecError: An unknown key, a value of the wrong type, or an invalid combination.
        """
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a JSON object of spec fields, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise SpecError(f"{source}: unknown spec field {key!r} (known: {', '.join(known)})")
            _check_type(key, value, source)
        try:
            return cls(**data)
        except SpecError as err:
            raise SpecError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, text: str, *, source: str = "spec") -> ResNetSpec:
        """Parse JSON text produced by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpecError(f"{source}: not valid JSON ({err.msg} at line {err.lineno})") from None
        return cls.from_dict(data, source=source)

    def hash(self) -> str:
        """Canonical hash: 16 hex digits, equal for equal networks."""
        text = self.canonical().to_json(indent=None)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def short(self) -> str:
        """A one-line readable form, e.g. ``10x8 post bn k3 bias conv-head``."""
        widths = "-".join(str(w) for w in self.stage_widths())
        parts = [f"{self.blocks}x{widths}", self.order if self.norm == "batch" else "no-bn"]
        parts.append(f"stem{self.stem_width}")
        if self.kernel_size != 3:
            parts.append(f"k{self.kernel_size}")
        parts.append("bias" if self.bias else "nobias")
        parts.append(f"conv{self.head_width}-head" if self.head == "conv" else "linear-head")
        if not self.final_relu:
            parts.append("no-final-relu")
        return " ".join(parts)


_INT_FIELDS = {"in_channels", "num_classes", "image_size", "stem_width", "width", "blocks",
               "stages", "kernel_size", "head_width"}
_BOOL_FIELDS = {"downsample", "bias", "final_relu"}
_FLOAT_FIELDS = {"width_growth", "bn_momentum", "bn_eps"}
_CHOICES = {"order": ORDERS, "norm": NORMS, "head": HEADS, "init": INITS}


def _check_type(key: str, value: Any, source: str) -> None:
    ok = True
    if key in _INT_FIELDS:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif key in _BOOL_FIELDS:
        ok = isinstance(value, bool)
    elif key in _FLOAT_FIELDS:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif key in _CHOICES:
        ok = isinstance(value, str)
    if not ok:
        raise SpecError(f"{source}: field {key!r} has value {value!r} of the wrong type")


def validate(spec: ResNetSpec) -> None:
    """Check that a spec describes a buildable network.

    Raises:
        SpecError: Naming the first offending field and its value.
    """
    for name, choices in _CHOICES.items():
        value = getattr(spec, name)
        if value not in choices:
            raise SpecError(f"{name}={value!r} is not one of {', '.join(choices)}")
    positive = ("in_channels", "num_classes", "image_size", "stem_width", "width", "stages",
                "head_width")
    for name in positive:
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpecError(f"{name}={value!r} must be a positive integer")
    if not isinstance(spec.blocks, int) or isinstance(spec.blocks, bool) or spec.blocks < 0:
        raise SpecError(f"blocks={spec.blocks!r} must be a non-negative integer")
    if (not isinstance(spec.kernel_size, int) or isinstance(spec.kernel_size, bool)
            or spec.kernel_size < 1 or spec.kernel_size % 2 == 0):
        raise SpecError(f"kernel_size={spec.kernel_size!r} must be a positive odd integer")
    if not 0 < spec.width_growth < math.inf:
        raise SpecError(f"width_growth={spec.width_growth!r} must be positive and finite")
    if not 0 < spec.bn_momentum <= 1:
        raise SpecError(f"bn_momentum={spec.bn_momentum!r} must be in (0, 1]")
    if not 0 < spec.bn_eps < math.inf:
        raise SpecError(f"bn_eps={spec.bn_eps!r} must be positive and finite")


#: Named specs. ``baseline`` is the 2018 notebook's network, layer for layer.
PRESETS: dict[str, ResNetSpec] = {
    "baseline": ResNetSpec(),
    # The baseline without the convs' redundant biases in front of BatchNorm.
    "baseline-nobias": ResNetSpec(bias=False),
    # A torchvision-flavoured variant: pre-activation blocks, linear head, PyTorch BN defaults.
    "preact-linear": ResNetSpec(order="pre", head="linear", final_relu=False, init="torch",
                                bias=False, bn_momentum=0.1, bn_eps=1e-5),
}


def load_spec(name_or_path: str | Path) -> ResNetSpec:
    """A preset by name, or a spec JSON file (a bare spec, or any JSON object with a ``spec`` key).

    Raises:
        SpecError: Unknown name, unreadable file or invalid spec; the message names the file.
    """
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if not path.is_file():
        raise SpecError(f"{text}: not a preset ({', '.join(PRESETS)}) nor a spec JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{path}: cannot read ({err})") from None
    except json.JSONDecodeError as err:
        raise SpecError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("spec"), dict):
        data = data["spec"]
    return ResNetSpec.from_dict(data, source=str(path))
