"""Export to ONNX and BatchNorm folding, on a model really trained on real MNIST images."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from ressearch.checkpoint import save_checkpoint
from ressearch.counting import count, layers
from ressearch.data import DATA_DIR_ENV, load_mnist, make_splits
from ressearch.export import ExportError, ExportReport, count_onnx_params, export_model, load
from ressearch.fold import count_deployed_params, fold_batchnorm, foldable_norms
from ressearch.model import build_model
from ressearch.spec import ResNetSpec
from ressearch.train import TrainConfig, train

# Momentum 0.1 and precise BN: after 63 steps Keras's momentum (0.01) leaves the BN statistics
# near their initial values and the eval-mode network near chance.
SPEC = ResNetSpec(blocks=2, bn_momentum=0.1)
CONFIG = TrainConfig(threads=1, epochs=1, batch_size=32, lr=3e-3, precise_bn=8, eval_batch_size=500)


def data_dir() -> Path:
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def splits():
    torch.set_num_threads(1)
    return make_splits(load_mnist(data_dir()), val_fraction=0.02, train_limit=2000, test_limit=500)


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory):
    result = train(SPEC, splits, CONFIG)
    directory = save_checkpoint(tmp_path_factory.mktemp("ckpt"), result.model, result.metrics())
    return directory, result


@pytest.fixture(scope="module")
def exports(trained, splits, tmp_path_factory) -> dict[bool, ExportReport]:
    directory, _result = trained
    return {fold: export_model(directory, tmp_path_factory.mktemp(f"export-fold{fold}"),
                               fold_bn=fold, test_split=splits.test, threads=1)
            for fold in (False, True)}


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def inputs(images: torch.Tensor) -> np.ndarray:
    return (images.numpy().astype(np.float32) / 255.0)[:, None]


def expected_folded(spec: ResNetSpec) -> list[str]:
    """Names (counting's) of the BNs that directly follow a conv, from the spec's rules alone."""
    if spec.norm == "none":
        return []
    names = [r.name for r in layers(spec) if r.kind == "bn"]
    in_block = re.compile(r"stage\d+\.\d+\.bn\d")
    if spec.order == "post":
        return names
    if spec.order == "relu_bn":  # conv-ReLU-BN: the ReLU sits in between
        return [n for n in names if not in_block.match(n)]
    # pre: BN-ReLU-conv1-BN-ReLU-conv2: only bn2 directly follows a conv (conv1).
    pre_bn1 = re.compile(r"stage\d+\.\d+\.bn1")
    return [n for n in names if not pre_bn1.match(n) and n != "final_norm"]


def expected_deployed_after_fold(spec: ResNetSpec) -> int:
    bn = {r.name: r for r in layers(spec)}
    folded = [bn[n].out_channels for n in expected_folded(spec)]
    # Each folded BN takes gamma, beta, mean, var with it; a bias-free conv gains a bias.
    return count(spec).keras_params - 4 * sum(folded) + (0 if spec.bias else sum(folded))


# -- export ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fold", [False, True])
def test_onnx_alone_reproduces_the_recorded_test_accuracy(exports, trained, splits, fold):
    _directory, result = trained
    report = exports[fold]
    logits = np.concatenate([session(report.out_dir / "model.onnx").run(
        None, {"input": inputs(splits.test.images[i:i + 200])})[0] for i in range(0, 500, 200)])
    correct = int((logits.argmax(1) == splits.test.labels.numpy()).sum())
    assert result.test_accuracy > 0.3  # really trained: well above chance
    assert abs(correct - round(result.test_accuracy * 500)) <= 1
    assert report.onnx_test_accuracy == pytest.approx(correct / 500)
    assert report.test_images == 500
    assert report.max_abs_diff < 1e-4


def test_fold_drops_exactly_the_folded_batchnorm_numbers(exports):
    plain, folded = exports[False], exports[True]
    assert plain.params == count(SPEC).params
    assert plain.keras_params == plain.deployed_params == count(SPEC).keras_params
    assert plain.folded == 0
    assert folded.folded == len(expected_folded(SPEC)) == 8
    assert folded.deployed_params == expected_deployed_after_fold(SPEC)
    assert count_onnx_params(folded.out_dir / "model.onnx") == folded.deployed_params
    ops = {n for n in _op_types(plain.out_dir / "model.onnx")}
    assert "BatchNormalization" in ops
    assert "BatchNormalization" not in _op_types(folded.out_dir / "model.onnx")


def _op_types(path: Path) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_exports_agree_and_the_batch_axis_is_dynamic(exports, trained, splits):
    _directory, result = trained
    model = result.model.cpu().eval()
    for batch in (1, 7):
        x = inputs(splits.test.images[:batch])
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        for report in exports.values():
            got = session(report.out_dir / "model.onnx").run(None, {"input": x})[0]
            assert got.shape == (batch, 10)
            np.testing.assert_allclose(got, expected, atol=1e-4)


def test_load_rebuilds_the_unfolded_network(exports, trained, splits):
    _directory, result = trained
    x = torch.from_numpy(inputs(splits.test.images[:16]))
    trained_state = result.model.state_dict()
    with torch.no_grad():
        # The trained model is channels-last, whose conv kernels round differently: allclose.
        expected = result.model.cpu().eval()(x)
        for report in exports.values():
            loaded = load(report.out_dir)
            assert loaded.spec == SPEC
            assert any(isinstance(m, nn.BatchNorm2d) for m in loaded.modules())
            state = loaded.state_dict()
            assert state.keys() == trained_state.keys()
            assert all(torch.equal(state[k], trained_state[k].cpu()) for k in state)
            torch.testing.assert_close(loaded(x), expected, atol=1e-5, rtol=1e-5)


def test_metrics_and_model_card_hold_the_numbers(exports, trained):
    _directory, result = trained
    for fold, report in exports.items():
        metrics = json.loads((report.out_dir / "metrics.json").read_text())
        assert metrics["test_accuracy"] == result.test_accuracy
        info = metrics["export"]
        assert info["fold_bn"] is fold and info["folded_norms"] == report.folded
        assert info["deployed_params"] == report.deployed_params
        assert info["onnx_test_accuracy"] == report.onnx_test_accuracy
        assert info["onnx_max_abs_diff"] == report.max_abs_diff
        card = (report.out_dir / "README.md").read_text()
        for text in (SPEC.short(), f"{report.params:,}", f"{report.keras_params:,}",
                     f"{report.deployed_params:,}", f"{100 * result.test_accuracy:.2f}%",
                     f"{100 * result.val_accuracy:.2f}%", "onnxruntime", "ressearch.load(",
                     "ressearch predict", "optimizer=adam", "stage0.1.conv2"):
            assert text in card, text
        assert (f"{report.folded} BatchNorm layers merged" in card) is fold


def test_an_unfaithful_export_is_rejected(trained, splits, tmp_path):
    directory, result = trained
    wrong = {**result.metrics(), "test_accuracy": result.test_accuracy + 2 / 500}
    with pytest.raises(ExportError, match="not faithful"):
        export_model(directory, tmp_path, metrics=wrong, test_split=splits.test, threads=1)
    assert not (tmp_path / "model.onnx").exists()
    other_size = {**result.metrics(), "test_images": 10_000}
    with pytest.raises(ExportError, match="10,000"):
        export_model(directory, tmp_path, metrics=other_size, test_split=splits.test, threads=1)


def test_a_bf16_accuracy_is_checked_against_float32_pytorch(trained, splits, tmp_path):
    directory, result = trained
    metrics = result.metrics()
    # Under bf16 autocast (the default on CUDA) a few predictions move; the recorded number is
    # then not what a float32 ONNX model can reproduce exactly.
    metrics["train"] = {**metrics["train"], "bf16": True}
    metrics["test_accuracy"] = result.test_accuracy + 3 / 500
    report = export_model(directory, tmp_path, metrics=metrics, test_split=splits.test, threads=1)
    assert report.onnx_test_accuracy == pytest.approx(result.test_accuracy, abs=1.01 / 500)
    info = json.loads((tmp_path / "metrics.json").read_text())["export"]
    assert "float32" in info["onnx_accuracy_checked_against"]


def test_export_without_test_split_checks_noise_inputs(trained, tmp_path):
    directory, _result = trained
    report = export_model(directory, tmp_path, fold_bn=True, threads=1)
    assert report.onnx_test_accuracy is None and report.test_images == 0
    assert report.max_abs_diff < 1e-4
    assert "not measured" in (tmp_path / "README.md").read_text()


# -- folding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [
    ResNetSpec(blocks=2, order="post", bias=False, stem_width=8, head_width=8),
    ResNetSpec(blocks=2, order="pre", stem_width=8, head_width=8),
    ResNetSpec(blocks=2, order="pre", bias=False, head="linear", final_relu=False, stem_width=8),
    ResNetSpec(blocks=2, order="relu_bn", stem_width=8, head_width=8),
    ResNetSpec(blocks=1, order="post", norm="none", stem_width=8, head_width=8),
], ids=["post-nobias", "pre", "pre-linear", "relu_bn", "no-bn"])
def test_fold_matches_the_eval_model_on_real_images(spec, splits):
    torch.manual_seed(0)
    model = build_model(spec)
    x = torch.from_numpy(inputs(splits.test.images[:64]))
    with torch.no_grad():  # real, non-trivial BN statistics: one batch of real images
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 1.0
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
        model.train()(x)
        model.eval()
        expected = model(x)
        folded = fold_batchnorm(model)
        got = folded(x)
    assert not folded.training and model.training is False
    assert (got - expected).abs().max().item() <= 1e-4
    assert len(foldable_norms(model)) == len(expected_folded(spec))
    bn_total = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    remaining = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert remaining == bn_total - len(expected_folded(spec))
    assert count_deployed_params(model) == count(spec).keras_params
    assert count_deployed_params(folded) == expected_deployed_after_fold(spec)
    # The original is untouched.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn_total
