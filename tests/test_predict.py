"""``predict_files`` on real MNIST digits saved as PNG, JPEG and IDX files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ressearch.checkpoint import save_checkpoint
from ressearch.data import DATA_DIR_ENV, load_mnist, make_splits, write_idx
from ressearch.errors import CheckpointError, DataError, UserError
from ressearch.export import export_model
from ressearch.predict import Prediction, load_image_file, predict_files
from ressearch.spec import ResNetSpec
from ressearch.train import TrainConfig, train

SPEC = ResNetSpec(blocks=1, bn_momentum=0.1)
CONFIG = TrainConfig(threads=1, epochs=1, batch_size=32, lr=3e-3, precise_bn=8, eval_batch_size=500)


def data_dir() -> Path:
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def splits():
    torch.set_num_threads(1)
    return make_splits(load_mnist(data_dir()), val_fraction=0.02, train_limit=2000, test_limit=200)


@pytest.fixture(scope="module")
def model_dirs(splits, tmp_path_factory):
    """(checkpoint directory, export directory, the trained model in eval mode)."""
    result = train(SPEC, splits, CONFIG)
    checkpoint = save_checkpoint(tmp_path_factory.mktemp("ckpt"), result.model, result.metrics())
    exported = tmp_path_factory.mktemp("export")
    export_model(checkpoint, exported, fold_bn=True, test_split=splits.test, threads=1)
    model = result.model.cpu().eval()
    return checkpoint, exported, model


def own_labels(model: torch.nn.Module, images: np.ndarray) -> list[int]:
    """The model's argmax on uint8 images [N, 28, 28], prepared as the trainer does."""
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    with torch.no_grad():
        return model(x).argmax(1).tolist()


@pytest.fixture(scope="module")
def digit_files(splits, tmp_path_factory):
    """Real test digits as files, with the uint8 pixels each should be read as."""
    root = tmp_path_factory.mktemp("digits")
    images = splits.test.images[:8].numpy()
    files: list[tuple[Path, np.ndarray]] = []
    for i in range(5):  # white on black, as MNIST
        path = root / f"digit{i}.png"
        Image.fromarray(images[i]).save(path)
        files.append((path, images[i]))
    inverted = root / "black-on-white.png"  # a scanned digit: dark ink on light paper
    Image.fromarray(255 - images[5]).save(inverted)
    files.append((inverted, images[5]))
    jpeg = root / "digit.jpg"
    Image.fromarray(images[6]).convert("RGB").save(jpeg, quality=95)
    files.append((jpeg, np.asarray(Image.open(jpeg).convert("L"))))
    transparent = root / "transparent.png"  # black ink on a transparent background
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = images[7]
    Image.fromarray(rgba, "RGBA").save(transparent)
    files.append((transparent, images[7]))
    return files


def test_png_jpeg_and_inverted_digits_are_read_as_mnist(digit_files):
    for path, pixels in digit_files:
        read = load_image_file(path)
        assert read.shape == (1, 28, 28) and read.dtype == np.uint8
        assert np.array_equal(read[0], pixels), path.name


@pytest.mark.parametrize("which", ["onnx", "checkpoint"])
def test_predictions_are_the_models_own(model_dirs, digit_files, splits, which):
    checkpoint, exported, model = model_dirs
    paths = [p for p, _ in digit_files]
    predictions = predict_files(exported if which == "onnx" else checkpoint, paths, threads=1)
    assert [p.path for p in predictions] == paths and {p.index for p in predictions} == {0}
    assert [p.label for p in predictions] == own_labels(model, np.stack([x for _, x in digit_files]))
    assert all(0.1 <= p.probability <= 1.0 for p in predictions)
    truth = splits.test.labels[:8].tolist()
    assert sum(p.label == t for p, t in zip(predictions, truth, strict=True)) >= 4  # mostly right


def test_both_backends_agree(model_dirs, digit_files):
    checkpoint, exported, _model = model_dirs
    paths = [p for p, _ in digit_files]
    a, b = predict_files(exported, paths, threads=1), predict_files(checkpoint, paths, threads=1)
    assert [p.label for p in a] == [p.label for p in b]
    assert [p.probability for p in a] == pytest.approx([p.probability for p in b], abs=1e-4)


def test_a_large_non_square_image_is_padded_and_resized(model_dirs, splits, tmp_path):
    _checkpoint, exported, _model = model_dirs
    digit = Image.fromarray(splits.test.images[0].numpy()).resize((84, 84), Image.Resampling.NEAREST)
    canvas = Image.new("L", (84, 120), 255)  # tall, light background, dark ink
    canvas.paste(Image.eval(digit, lambda v: 255 - v), (0, 18))
    canvas.save(tmp_path / "tall.png")
    read = load_image_file(tmp_path / "tall.png")
    assert read.shape == (1, 28, 28) and read.mean() < 127  # inverted to white on black
    [prediction] = predict_files(exported, [tmp_path / "tall.png"], threads=1)
    assert 0 <= prediction.label <= 9


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_files_give_one_prediction_per_image(model_dirs, splits, tmp_path, name):
    _checkpoint, exported, model = model_dirs
    images = splits.test.images[:100].numpy()
    write_idx(tmp_path / name, images)
    predictions = predict_files(exported, [tmp_path / name], threads=1)
    assert [p.index for p in predictions] == list(range(100))
    assert all(isinstance(p, Prediction) and p.path == tmp_path / name for p in predictions)
    labels = [p.label for p in predictions]
    assert labels == own_labels(model, images)
    assert np.mean(np.array(labels) == splits.test.labels[:100].numpy()) > 0.3  # far above chance


def test_bad_files_are_one_line_user_errors(model_dirs, tmp_path, digit_files):
    _checkpoint, exported, _model = model_dirs
    good = digit_files[0][0]
    (tmp_path / "notes.txt").write_text("not a digit\n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    write_idx(tmp_path / "labels-idx1-ubyte", np.arange(10, dtype=np.uint8))
    write_idx(tmp_path / "small-idx3-ubyte", np.zeros((2, 8, 8), np.uint8))
    cases = {tmp_path / "missing.png": UserError, tmp_path / "notes.txt": UserError,
             tmp_path / "broken.png": UserError, tmp_path / "labels-idx1-ubyte": DataError,
             tmp_path / "small-idx3-ubyte": UserError, tmp_path: UserError}
    for bad, kind in cases.items():
        with pytest.raises(kind) as info:
            predict_files(exported, [good, bad], threads=1)
        message = str(info.value)
        assert str(bad) in message and "\n" not in message, message


def test_a_bad_model_directory_is_a_checkpoint_error(tmp_path, digit_files):
    with pytest.raises(CheckpointError, match="not a model directory"):
        predict_files(tmp_path / "nowhere", [digit_files[0][0]])
    with pytest.raises(CheckpointError, match="neither"):
        predict_files(tmp_path, [digit_files[0][0]])
    (tmp_path / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot load the ONNX model"):
        predict_files(tmp_path, [digit_files[0][0]])
