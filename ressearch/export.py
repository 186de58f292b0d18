"""Export a checkpoint for deployment: ONNX model, weights, metrics and a model card.

:func:`export_model` writes into one directory ``model.onnx`` (dynamic batch; input ``"input"``,
float32 ``N x 1 x 28 x 28`` in [0, 1], white digit on black; output ``"logits"``), the PyTorch
checkpoint (``model.safetensors`` + ``spec.json``, so :func:`load` rebuilds the network),
``metrics.json`` and a ``README.md`` model card. It then checks itself: ONNX Runtime must agree with
PyTorch on real inputs, and the ONNX model alone must reproduce the recorded test accuracy.

The ONNX graph is exported with ``optimize=False``: torch's default ONNX optimizer silently fuses
Conv+BatchNorm, drops all-zero biases and merges equal initializers, so the graph would not be the
network asked for and its parameter count would not be predictable. Folding is explicit instead
(``fold_bn``, :func:`ressearch.fold.fold_batchnorm`); ONNX Runtime still optimises at load time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ressearch.checkpoint import METRICS, load_checkpoint, load_metrics, save_checkpoint
from ressearch.counting import count, layers
from ressearch.data import Split
from ressearch.errors import UserError
from ressearch.fold import count_deployed_params, fold_batchnorm, foldable_norms
from ressearch.model import ResNet
from ressearch.predict import ONNX_FILE, images_to_input, onnx_session, run_onnx
from ressearch.spec import ResNetSpec

OPSET = 18  # the torch.export-based exporter's lowest native opset; 17 needs a lossy conversion
MAX_ABS_DIFF = 1e-3


class ExportError(UserError):
    """The exported model does not reproduce the checkpoint (a wrong test split, or a bug)."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote and verified.

    Attributes:
        out_dir: The export directory.
        max_abs_diff: Largest |ONNX Runtime logit - PyTorch logit| on the check batch.
        onnx_test_accuracy: Test accuracy of the ONNX model under ONNX Runtime (``None``
            without a test split).
        test_images: Images that accuracy was measured on (0 without a test split).
        params: Trainable parameters of the network.
        keras_params: Parameters plus BatchNorm moving statistics.
        deployed_params: Numbers stored in the ONNX graph (elements of its float initializers).
        folded: BatchNorms folded into convs (0 unless ``fold_bn``).
    """

    out_dir: Path
    max_abs_diff: float
    onnx_test_accuracy: float | None
    test_images: int
    params: int
    keras_params: int
    deployed_params: int
    folded: int


def load(directory: str | os.PathLike) -> ResNet:
    """Rebuild the PyTorch network of an export or checkpoint directory (eval mode, CPU)."""
    return load_checkpoint(directory)


def export_onnx(module: nn.Module, path: str | os.PathLike, *, in_channels: int = 1,
                image_size: int = 28) -> Path:
    """Write ``module`` (eval mode) as an ONNX file with a dynamic batch axis."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    example = torch.rand(2, in_channels, image_size, image_size)  # batch 2: not specialised to 1
    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(tmp), input_names=["input"],
                          output_names=["logits"], opset_version=OPSET, dynamo=True,
                          external_data=False, optimize=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    os.replace(tmp, path)
    return path


def count_onnx_params(path: str | os.PathLike) -> int:
    """Elements of the floating-point initializers and non-scalar constants of an ONNX file.

    Scalar constants are literals, not stored weights: the exporter writes the missing bias of a
    bias-free conv as a scalar 0.0 expanded to the channel count.
    """
    import onnx

    model, kind = onnx.load(str(path)), onnx.TensorProto
    floats = {kind.FLOAT, kind.DOUBLE, kind.FLOAT16, kind.BFLOAT16}
    tensors = list(model.graph.initializer)
    tensors += [attr.t for node in model.graph.node if node.op_type == "Constant"
                for attr in node.attribute if attr.name == "value" and len(attr.t.dims) > 0]
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in tensors if t.data_type in floats)


def export_model(checkpoint_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                 fold_bn: bool = False, metrics: dict[str, Any] | None = None,
                 test_split: Split | None = None, source: str | None = None,
                 threads: int | None = None) -> ExportReport:
    """Export a checkpoint to ONNX with its weights, metrics and model card, and verify it.

    Args:
        checkpoint_dir: A directory written by :func:`ressearch.checkpoint.save_checkpoint`.
        out_dir: Where to write (created if missing; may be ``checkpoint_dir`` itself).
        fold_bn: Fold every BatchNorm that directly follows a conv into it in the ONNX graph
            (the saved PyTorch checkpoint stays unfolded).
        metrics: The checkpoint's metrics; default: its ``metrics.json``.
        test_split: The test images the recorded ``test_accuracy`` was measured on (their count
            must equal ``metrics["test_images"]`` when recorded). The ONNX model's accuracy on
            them (ONNX Runtime alone) must match within one image; when the record was measured
            under bf16 autocast it is checked against float32 PyTorch instead.
        source: Where the checkpoint came from, for the model card (default: its path).
        threads: ONNX Runtime intra-op threads (``None``: its default).

    Returns:
        The verified numbers.

    Raises:
        CheckpointError: An unreadable checkpoint.
        ExportError: ONNX Runtime disagrees with PyTorch by more than 1e-3, the ONNX test accuracy
            differs from the recorded one by more than one image, or the test split does not
            have the recorded number of images. ``model.onnx`` is removed in that case.
    """
    model = load_checkpoint(checkpoint_dir)
    metrics = dict(load_metrics(checkpoint_dir) if metrics is None else metrics)
    recorded_n = metrics.get("test_images")
    if test_split is not None and recorded_n is not None and recorded_n != len(test_split):
        raise ExportError(f"the test split has {len(test_split):,} images but the checkpoint's "
                          f"test accuracy was measured on {recorded_n:,}")
    spec = model.spec
    net = fold_batchnorm(model) if fold_bn else model
    out = Path(out_dir)
    save_checkpoint(out, model)
    onnx_path = export_onnx(net, out / ONNX_FILE, in_channels=spec.in_channels,
                            image_size=spec.image_size)
    try:
        diff, accuracy, reference = _verify(onnx_path, model, metrics, test_split, threads)
        deployed, held = count_onnx_params(onnx_path), count_deployed_params(net)
        if deployed != held:  # the graph must hold exactly the module's numbers
            raise ExportError(f"{onnx_path}: the graph stores {deployed:,} numbers, not {held:,}")
    except ExportError:
        onnx_path.unlink(missing_ok=True)
        raise
    counts = count(spec)
    report = ExportReport(out_dir=out, max_abs_diff=diff, onnx_test_accuracy=accuracy,
                          test_images=len(test_split) if test_split is not None else 0,
                          params=counts.params, keras_params=counts.keras_params,
                          deployed_params=deployed,
                          folded=len(foldable_norms(model)) if fold_bn else 0)
    import onnxruntime

    metrics["export"] = {
        "fold_bn": fold_bn, "folded_norms": report.folded, "params": counts.params,
        "keras_params": counts.keras_params, "deployed_params": deployed,
        "onnx_max_abs_diff": diff, "onnx_test_accuracy": accuracy,
        "onnx_test_images": report.test_images, "onnx_accuracy_checked_against": reference,
        "opset": OPSET, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "source": source or str(checkpoint_dir)}
    (out / METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
    write_model_card(out / "README.md", spec, metrics, report)
    return report


def _measured_in_fp32(metrics: dict[str, Any]) -> bool:
    """Whether the recorded accuracies come from float32 (not bf16-autocast) evaluation."""
    bf16 = (metrics.get("train") or {}).get("bf16")
    if bf16 is None:  # the trainer's default: bf16 on CUDA only
        bf16 = str(metrics.get("device", "cpu")).startswith("cuda")
    return not bf16


def _verify(onnx_path: Path, model: ResNet, metrics: dict[str, Any], test_split: Split | None,
            threads: int | None) -> tuple[float, float | None, str | None]:
    """(max |ONNX - PyTorch| logit difference, ONNX test accuracy, what it was checked against)."""
    spec = model.spec
    session = onnx_session(onnx_path, threads=threads)
    if test_split is not None and len(test_split) > 0:
        x = images_to_input(test_split.images[:256])
    else:  # no real images at hand: seeded uniform noise in the input range
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(64, spec.in_channels, spec.image_size, spec.image_size,
                       generator=generator).numpy()
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    diff = float(np.abs(run_onnx(session, x) - expected).max())
    if not diff <= MAX_ABS_DIFF:  # also catches NaN
        raise ExportError(f"{onnx_path}: ONNX Runtime and PyTorch logits differ by {diff:.3g} "
                          f"(more than {MAX_ABS_DIFF:g}); the export is not faithful")
    if test_split is None or len(test_split) == 0:
        return diff, None, None
    n, labels, recorded = len(test_split), test_split.labels.numpy(), metrics.get("test_accuracy")
    logits = run_onnx(session, images_to_input(test_split.images), batch_size=1000)
    correct = int((logits.argmax(axis=1) == labels).sum())
    if recorded is None:
        return diff, correct / n, None
    reference, expected_correct = "recorded test_accuracy", round(recorded * n)
    if not _measured_in_fp32(metrics):
        # bf16 autocast moves a few predictions; compare with the float32 PyTorch network.
        reference = "PyTorch float32 (the recorded accuracy was measured under bf16 autocast)"
        with torch.no_grad():
            expected_correct = sum(int((model(torch.from_numpy(images_to_input(
                test_split.images[i:i + 1000]))).argmax(1).numpy() == labels[i:i + 1000]).sum())
                for i in range(0, n, 1000))
    if abs(correct - expected_correct) > 1:
        raise ExportError(f"{onnx_path}: ONNX test accuracy {correct / n:.4%} ({correct:,}/{n:,}) "
                          f"differs from the {reference} ({expected_correct:,}/{n:,}) by more "
                          f"than one image; the export is not faithful (or the test split is not "
                          f"the one the checkpoint was evaluated on)")
    return diff, correct / n, reference


# -- the model card ----------------------------------------------------------------------------
_CARD_RECIPE_KEYS = ("optimizer", "lr", "batch_size", "schedule", "weight_decay", "label_smoothing",
                     "augment", "bf16", "seed")


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "n/a"


def write_model_card(path: Path, spec: ResNetSpec, metrics: dict[str, Any],
                     report: ExportReport) -> None:
    """Write the ``README.md`` of an export: architecture, size, accuracy, training, usage."""
    info = metrics["export"]
    name = report.out_dir.name or "model"
    rows = "\n".join(f"| {r.name} | {r.describe()} | {r.out_channels}x{r.out_size}x{r.out_size} "
                     f"| {r.params + r.moving:,} |" for r in layers(spec))
    graph = (f"BatchNorm folded: {report.folded} BatchNorm layers merged into the conv before them"
             if info["fold_bn"] else "BatchNorm kept as separate layers")
    onnx_acc = ("not measured (no test split given)" if report.onnx_test_accuracy is None else
                f"{_pct(report.onnx_test_accuracy)} on {report.test_images:,} test images")
    train = metrics.get("train") or {}
    recipe = ", ".join(f"{k}={train[k]}" for k in _CARD_RECIPE_KEYS if k in train)
    shape = f"{spec.in_channels}, {spec.image_size}, {spec.image_size}"
    spec_json = json.dumps(metrics.get("spec") or spec.to_dict(), indent=2, sort_keys=True)
    text = f"""# {name}: a small ResNet for MNIST digits

Exported by `ressearch` from `{info["source"]}`.

## Architecture

`{spec.short()}` (spec hash `{spec.hash()}`): stem conv, down-sampling conv, {spec.stages} stage(s) \
of {spec.blocks} `{spec.order}` residual block(s), {spec.head} head, {spec.num_classes} logits.

| layer | type | output | parameters (incl. BN statistics) |
|---|---|---|---|
{rows}

## Size

- trainable parameters: {report.params:,}
- Keras-style parameters (with BatchNorm moving mean and variance): {report.keras_params:,}
- numbers stored in `model.onnx`: {report.deployed_params:,} ({graph})

## Accuracy

- validation: {_pct(metrics.get("val_accuracy"))}
- test (PyTorch, at the end of training): {_pct(metrics.get("test_accuracy"))}
- test (`model.onnx` under ONNX Runtime {info["onnxruntime"]}): {onnx_acc}
- largest logit difference between ONNX Runtime and PyTorch: {report.max_abs_diff:.2g}

## Training

{metrics.get("epochs", train.get("epochs", "?"))} epoch(s) on {metrics.get("device", "?")} \
({metrics.get("train_seconds", "?")} s, torch {metrics.get("torch", "?")}); {recipe or "recipe not recorded"}.
Spec:
```json
{spec_json}
```

## Usage

Input: float32 `N x {spec.in_channels} x {spec.image_size} x {spec.image_size}` named `input`, \
values in [0, 1] (white digit on black, as MNIST); output: `logits`, `N x {spec.num_classes}`.

```python
import numpy as np
import onnxruntime as ort

session = ort.InferenceSession("{name}/model.onnx", providers=["CPUExecutionProvider"])
images = np.zeros((8, {shape}), np.float32)  # your digits, scaled to [0, 1]
labels = session.run(None, {{"input": images}})[0].argmax(axis=1)
```

```python
import torch
import ressearch

model = ressearch.load("{name}")  # the PyTorch network, eval mode
with torch.no_grad():
    labels = model(torch.zeros(8, {shape})).argmax(dim=1)
```

```bash
ressearch predict {name} digit.png t10k-images-idx3-ubyte.gz
```
"""
    path.write_text(text)
