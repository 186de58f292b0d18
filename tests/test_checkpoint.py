"""Checkpoints: exact round trips, and one-line errors for every kind of broken file."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from ressearch.checkpoint import (
    METRICS,
    SPEC,
    WEIGHTS,
    load_checkpoint,
    load_metrics,
    load_spec_file,
    save_checkpoint,
)
from ressearch.errors import CheckpointError
from ressearch.model import ResNet, build_model
from ressearch.spec import ResNetSpec

SPEC_A = ResNetSpec(stem_width=8, width=6, blocks=2, stages=2, width_growth=1.5, order="pre",
                    head_width=12, bn_eps=1e-5)


def _trained_like(spec: ResNetSpec, seed: int = 0) -> ResNet:
    """A model whose weights and BN statistics are all non-default, as after training."""
    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.train()
    for _ in range(3):  # moves the running statistics and num_batches_tracked
        model(torch.rand(8, spec.in_channels, spec.image_size, spec.image_size))
    return model.eval()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "ckpt", _trained_like(SPEC_A), {"test_accuracy": 0.5})


def _error(directory: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(directory)
    message = str(err.value)
    assert message and "\n" not in message, message
    return message


# -- round trip --------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [SPEC_A, ResNetSpec(), ResNetSpec(norm="none", head="linear", bias=False)])
def test_save_then_load_gives_the_same_network(tmp_path: Path, spec: ResNetSpec) -> None:
    model = _trained_like(spec)
    out = save_checkpoint(tmp_path / "a" / "b", model, {"test_accuracy": 0.98, "epochs": 3})
    assert out == tmp_path / "a" / "b"
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS, SPEC, METRICS])  # no temp files
    loaded = load_checkpoint(out)
    assert loaded.spec == spec and loaded.spec.hash() == spec.hash()
    assert not loaded.training
    saved, back = model.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys()
    for key in saved:
        assert saved[key].dtype == back[key].dtype and torch.equal(saved[key], back[key]), key
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert load_metrics(out) == {"test_accuracy": 0.98, "epochs": 3}
    assert load_spec_file(out / SPEC) == spec


def test_saving_again_overwrites(checkpoint: Path) -> None:
    other = _trained_like(SPEC_A, seed=1)
    save_checkpoint(checkpoint, other)
    loaded = load_checkpoint(checkpoint)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), other(x))
    assert load_metrics(checkpoint) == {"test_accuracy": 0.5}  # not rewritten without metrics


def test_missing_pieces(tmp_path: Path, checkpoint: Path) -> None:
    assert str(tmp_path / "nowhere") in _error(tmp_path / "nowhere")
    (checkpoint / WEIGHTS).unlink()
    assert str(checkpoint / WEIGHTS) in _error(checkpoint)
    (checkpoint / SPEC).unlink()
    assert str(checkpoint / SPEC) in _error(checkpoint)
    assert load_metrics(tmp_path) == {}


# -- broken weights ----------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0, 4, 8, 100, -1])
def test_truncated_weights(checkpoint: Path, keep: int) -> None:
    path = checkpoint / WEIGHTS
    raw = path.read_bytes()
    path.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    assert str(path) in _error(checkpoint)


def _header(raw: bytes) -> tuple[int, bytes]:
    (length,) = struct.unpack("<Q", raw[:8])
    return length, raw[8:8 + length]


@pytest.mark.parametrize("tamper", ["json", "shape", "offset", "length", "dtype"])
def test_tampered_header(checkpoint: Path, tamper: str) -> None:
    path = checkpoint / WEIGHTS
    raw = bytearray(path.read_bytes())
    length, header = _header(bytes(raw))
    json.loads(header)  # the header is JSON: we tamper with something real
    if tamper == "json":
        raw[8] = ord("[")
    elif tamper == "shape":
        i = 8 + header.index(b'"shape":[') + len(b'"shape":[')
        raw[i:i] = b"7,"  # same tensor bytes, an extra dimension: the sizes no longer add up
        raw[:8] = struct.pack("<Q", length + 2)
    elif tamper == "offset":
        i = 8 + header.index(b'"data_offsets":[') + len(b'"data_offsets":[')
        raw[i] = ord("9") if raw[i] != ord("9") else ord("8")
    elif tamper == "length":
        raw[:8] = struct.pack("<Q", length + 3)
    else:  # a float32 weight relabelled int32: same size, so only the dtype check can tell
        i = 8 + header.index(b'"body.stem.0.weight":{"dtype":"')
        i = raw.index(b"F32", i)
        raw[i:i + 3] = b"I32"
    path.write_bytes(bytes(raw))
    assert str(path) in _error(checkpoint)


def test_a_tampered_tensor_payload_is_loaded_as_is(checkpoint: Path) -> None:
    # safetensors has no checksum: flipped payload bytes cannot be detected, only loaded.
    path = checkpoint / WEIGHTS
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert isinstance(load_checkpoint(checkpoint), ResNet)


class _Evil:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_pickle_named_model_safetensors_is_never_unpickled(tmp_path: Path, checkpoint: Path,
                                                             how: str) -> None:
    # First show that the payload does run code when unpickled...
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(probe))).close()
    assert probe.exists()
    # ...then that loading it as a checkpoint does not.
    marker = tmp_path / "marker"
    path = checkpoint / WEIGHTS
    path.unlink()
    if how == "pickle":
        path.write_bytes(pickle.dumps({"body.stem.0.weight": _Evil(marker)}))
    else:
        torch.save({"body.stem.0.weight": _Evil(marker)}, path)
    message = _error(checkpoint)
    assert str(path) in message
    assert not marker.exists()


# -- broken spec.json --------------------------------------------------------------------------
def test_spec_json_that_is_not_json(checkpoint: Path) -> None:
    (checkpoint / SPEC).write_text('{"width": 6,')
    message = _error(checkpoint)
    assert str(checkpoint / SPEC) in message and "JSON" in message


def test_spec_json_that_is_not_text(checkpoint: Path) -> None:
    (checkpoint / SPEC).write_bytes(b"\xff\xfe\x00garbage")
    assert str(checkpoint / SPEC) in _error(checkpoint)


def test_spec_json_with_an_unknown_key(checkpoint: Path) -> None:
    data = json.loads((checkpoint / SPEC).read_text())
    data["dropout"] = 0.1
    (checkpoint / SPEC).write_text(json.dumps(data))
    message = _error(checkpoint)
    assert str(checkpoint / SPEC) in message and "'dropout'" in message


@pytest.mark.parametrize("change", [{"width": 7}, {"blocks": 1}, {"stages": 1}, {"order": "post"},
                                    {"head": "linear"}, {"bias": False}])
def test_spec_json_that_does_not_fit_the_weights(checkpoint: Path, change: dict) -> None:
    (checkpoint / SPEC).write_text(SPEC_A.replace(**change).to_json())
    message = _error(checkpoint)
    assert str(checkpoint / SPEC) in message or str(checkpoint / WEIGHTS) in message


@pytest.mark.parametrize("change", [{"final_relu": False}, {"bn_eps": 1e-3}, {"init": "torch"}])
def test_spec_json_edited_without_changing_any_shape(checkpoint: Path, change: dict) -> None:
    # The weights would load, but into a different network; the saved spec hash catches it.
    (checkpoint / SPEC).write_text(SPEC_A.replace(**change).to_json())
    message = _error(checkpoint)
    assert str(checkpoint / SPEC) in message and "hash" in message


def test_an_equivalent_spec_json_still_loads(tmp_path: Path) -> None:
    # A linear head makes head_width irrelevant: editing it changes nothing, so it still loads.
    spec = ResNetSpec(stem_width=8, width=4, blocks=1, head="linear", head_width=32)
    model = _trained_like(spec)
    out = save_checkpoint(tmp_path / "lin", model)
    (out / SPEC).write_text(spec.replace(head_width=7).to_json())
    loaded = load_checkpoint(out)
    assert loaded.spec == spec.replace(head_width=7)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_broken_metrics_json(checkpoint: Path) -> None:
    (checkpoint / METRICS).write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        load_metrics(checkpoint)
    assert str(checkpoint / METRICS) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(load_checkpoint(checkpoint), ResNet)  # the network itself is fine
