"""Checkpoints: ``model.safetensors`` + ``spec.json`` (+ ``metrics.json``) in one directory.

Weights are stored with safetensors and the architecture as the spec's JSON, so any result can be
rebuilt from its spec and loading a checkpoint never unpickles anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from ressearch.errors import CheckpointError, SpecError
from ressearch.model import ResNet, build_model
from ressearch.spec import ResNetSpec

WEIGHTS = "model.safetensors"
SPEC = "spec.json"
METRICS = "metrics.json"


def save_checkpoint(directory: str | os.PathLike, model: ResNet,
                    metrics: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights, its spec and optionally its metrics into ``directory``.

    Args:
        directory: Created if missing.
        model: A network built by :func:`ressearch.build_model` (it carries its spec).
        metrics: JSON-compatible metrics to save as ``metrics.json``.

    Returns:
        The directory.
    """
    # Contiguous CPU copies: safetensors stores plain row-major buffers.
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = save_tensors(tensors, metadata={"format": "ressearch", "spec_hash": model.spec.hash()})
    return write_checkpoint(directory, weights, model.spec, metrics)


def write_checkpoint(directory: str | os.PathLike, weights: bytes, spec: ResNetSpec,
                     metrics: dict[str, Any] | None = None) -> Path:
    """Write serialised safetensors ``weights``, ``spec`` and ``metrics`` into ``directory``.

    Used directly by the study driver, which receives the weights as bytes from a Ray worker.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / WEIGHTS, lambda tmp: tmp.write_bytes(weights))
    _atomic_write(out / SPEC, lambda tmp: tmp.write_text(spec.to_json() + "\n"))
    if metrics is not None:
        text = json.dumps(metrics, indent=2) + "\n"
        _atomic_write(out / METRICS, lambda tmp: tmp.write_text(text))
    return out


def load_spec_file(path: str | os.PathLike) -> ResNetSpec:
    """Read a ``spec.json``; any problem is one :class:`CheckpointError` line naming the file."""
    path = Path(path)
    try:
        return ResNetSpec.from_json(path.read_text(), source=str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read ({err})") from None
    except SpecError as err:
        raise CheckpointError(str(err)) from None


def load_checkpoint(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> ResNet:
    """Rebuild the network saved in ``directory`` (eval mode).

    Raises:
        CheckpointError: A missing, truncated or tampered file, or weights that do not fit the
            spec; the message names the file.
    """
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a checkpoint directory")
    spec = load_spec_file(root / SPEC)
    weights = root / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        state = load_file(str(weights), device=str(device))
        with safe_open(str(weights), framework="pt") as f:
            saved_hash = (f.metadata() or {}).get("spec_hash")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({_one_line(err)})") from None
    # A spec.json edited in a way that keeps every shape (final_relu, order, bn_eps...) would
    # otherwise load silently into a different network.
    if saved_hash is not None and saved_hash != spec.hash():
        raise CheckpointError(f"{root / SPEC}: spec hash {spec.hash()} differs from {saved_hash}, "
                              f"the hash {weights} was saved with")
    model = build_model(spec)
    expected = model.state_dict()
    for key, value in state.items():  # load_state_dict would silently cast a retyped tensor
        if key in expected and value.dtype != expected[key].dtype:
            raise CheckpointError(f"{weights}: tensor {key!r} is {value.dtype}, expected "
                                  f"{expected[key].dtype}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"{weights}: weights do not match {root / SPEC} ({_one_line(err)})") from None
    return model.to(device).eval()


def load_metrics(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``metrics.json`` of a checkpoint (empty when absent)."""
    path = Path(directory) / METRICS
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({_one_line(err)})") from None


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def _atomic_write(path: Path, write: Any) -> None:
    # Write then rename, so an interrupted save never leaves a half-written file behind.
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
