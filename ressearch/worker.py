"""The Ray task that trains one trial and streams its epochs back to the driver.

It touches neither the study storage nor the disk: the dataset comes from Ray's object store and
the weights go back as safetensors bytes, so worker nodes need no database and no shared disk.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_tensors

from ressearch.data import Split, Splits
from ressearch.spec import ResNetSpec
from ressearch.train import TrainConfig, Trainer


def splits_to_arrays(splits: Splits) -> dict[str, np.ndarray]:
    """Numpy views of the splits, for ``ray.put`` (numpy arrays are zero-copy in the object store)."""
    out = {}
    for name in ("train", "val", "test"):
        split: Split = getattr(splits, name)
        out[f"{name}_images"] = split.images.numpy()
        out[f"{name}_labels"] = split.labels.numpy()
    return out


def splits_from_arrays(arrays: dict[str, np.ndarray]) -> Splits:
    """Tensors again; copied because arrays from the object store are read-only."""
    def split(name: str) -> Split:
        return Split(torch.from_numpy(np.array(arrays[f"{name}_images"])),
                     torch.from_numpy(np.array(arrays[f"{name}_labels"])))
    return Splits(train=split("train"), val=split("val"), test=split("test"))


def run_trial(spec: dict[str, Any], config: dict[str, Any],
              data: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    """Train one network, yielding ``{"kind": "epoch", ...}`` per epoch, then the result.

    The last item is ``{"kind": "result", "metrics": {...}, "weights": bytes}`` or, when training
    raised, ``{"kind": "error", "reason": "..."}``: the driver stores that trial as FAIL and goes on.
    The driver stops a pruned trial by cancelling the task.
    """
    try:
        trainer = Trainer(ResNetSpec(**spec), splits_from_arrays(data), TrainConfig(**config))
        for m in trainer.epochs():
            yield {"kind": "epoch", **asdict(m)}
        result = trainer.finish()
        state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
        metrics = result.metrics()
        metrics["node"] = _node_id()
        yield {"kind": "result", "metrics": metrics, "weights": save_tensors(state)}
    except Exception as err:  # any failure of one trial must not stop the study
        last = traceback.format_exception_only(type(err), err)[-1].strip()
        yield {"kind": "error", "reason": last, "node": _node_id()}


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray
        return None
