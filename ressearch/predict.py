"""Classify digit images with a saved model: PNG/JPEG files or IDX image files.

A model directory is either an export (``model.onnx``, run with ONNX Runtime alone) or a plain
checkpoint (``model.safetensors`` + ``spec.json``, run with PyTorch). Images are prepared as MNIST's
are: grayscale, white digit on black (a light background is inverted), padded to a square, resized
to the network's input size and scaled to [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ressearch.checkpoint import SPEC, WEIGHTS, load_checkpoint
from ressearch.data import read_idx
from ressearch.errors import CheckpointError, UserError

ONNX_FILE = "model.onnx"
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UINT8 = b"\x00\x00\x08"


@dataclass(frozen=True)
class Prediction:
    """The predicted class of one image.

    Attributes:
        path: The file the image came from.
        index: Position of the image in its file (0 for PNG/JPEG files).
        label: The predicted class.
        probability: Softmax probability of that class.
    """

    path: Path
    index: int
    label: int
    probability: float


# -- ONNX Runtime helpers (shared with ressearch.export) ---------------------------------------
def onnx_session(path: str | os.PathLike, *, threads: int | None = None):  # -> ort.InferenceSession
    """An ONNX Runtime CPU session for ``path``.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads (``None``: ONNX Runtime's default, all cores).

    Raises:
        CheckpointError: The file is missing or not a model ONNX Runtime can load.
    """
    import onnxruntime as ort  # imported late: only needed for ONNX models

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        text = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path}: cannot load the ONNX model ({text})") from None


def run_onnx(session, x: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Logits of ``session`` for float32 inputs ``x`` [N, C, H, W], in batches."""
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: x[i:i + batch_size]})[0]
               for i in range(0, len(x), batch_size)]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def images_to_input(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 images [N, H, W] as the network's float32 input [N, 1, H, W] in [0, 1]."""
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return (array.astype(np.float32) / np.float32(255.0))[:, None, :, :]


# -- reading images ----------------------------------------------------------------------------
def load_image_file(path: str | os.PathLike, image_size: int = 28) -> np.ndarray:
    """Read a PNG/JPEG (one image) or an IDX file (many) as uint8 [N, size, size], MNIST-style.

    Raises:
        UserError: Missing file, unreadable image, or IDX images of another size; the message
            names the file.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected an image or IDX file")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror or err})") from None
    if head.startswith(_GZIP_MAGIC) or head.startswith(_IDX_UINT8):
        images = read_idx(path, expect_ndim=3).numpy()  # DataError names the file
        if images.shape[1:] != (image_size, image_size):
            raise UserError(f"{path}: IDX images are {images.shape[1]}x{images.shape[2]}, the model "
                            f"expects {image_size}x{image_size}")
        return images
    return _read_picture(path, image_size)[None]


def _read_picture(path: Path, size: int) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if "A" in img.getbands() or "transparency" in img.info:
                # Transparent pixels become white: a digit drawn on a transparent background.
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
            gray = img.convert("L")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        reason = " ".join(str(err).split())[:120]
        raise UserError(f"{path}: not a readable image ({reason}); expected PNG, JPEG or an IDX "
                        f"image file") from None
    if np.asarray(gray).mean() > 127:  # dark digit on a light background: MNIST is the opposite
        gray = ImageOps.invert(gray)
    side = max(gray.size)
    if gray.size != (side, side):  # pad with black to a square, keeping the aspect ratio
        square = Image.new("L", (side, side), 0)
        square.paste(gray, ((side - gray.size[0]) // 2, (side - gray.size[1]) // 2))
        gray = square
    if side != size:
        gray = gray.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(gray, dtype=np.uint8).copy()


# -- the model ---------------------------------------------------------------------------------
class ModelRunner:
    """A saved model ready to classify: ONNX Runtime when ``model.onnx`` exists, else PyTorch.

    Args:
        model_dir: An export or a checkpoint directory.
        threads: ONNX Runtime intra-op threads (``None``: its default).

    Raises:
        CheckpointError: The directory holds neither an ONNX model nor a checkpoint.
    """

    def __init__(self, model_dir: str | os.PathLike, *, threads: int | None = None) -> None:
        root = Path(model_dir)
        if not root.is_dir():
            raise CheckpointError(f"{root}: not a model directory")
        self.session = None
        self.model = None
        if (root / ONNX_FILE).is_file():
            self.backend = "onnxruntime"
            self.session = onnx_session(root / ONNX_FILE, threads=threads)
            shape = self.session.get_inputs()[0].shape
            self.image_size = shape[-1] if isinstance(shape[-1], int) else 28
        elif (root / WEIGHTS).is_file() or (root / SPEC).is_file():
            self.backend = "pytorch"
            self.model = load_checkpoint(root)
            self.image_size = self.model.spec.image_size
        else:
            raise CheckpointError(f"{root}: holds neither {ONNX_FILE} nor {WEIGHTS} + {SPEC}")

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits [N, classes] of uint8 images [N, H, W]."""
        x = images_to_input(images)
        if self.session is not None:
            return run_onnx(self.session, x)
        assert self.model is not None
        with torch.no_grad():
            return torch.cat([self.model(torch.from_numpy(x[i:i + 512]))
                              for i in range(0, len(x), 512)]).numpy()


def predict_files(model_dir: str | os.PathLike, paths: Iterable[str | os.PathLike], *,
                  threads: int | None = None) -> list[Prediction]:
    """Classify every image of ``paths`` with the model saved in ``model_dir``.

    Args:
        model_dir: An export (``model.onnx``) or a checkpoint directory.
        paths: PNG/JPEG files (one image each) and IDX image files (every image in them).
        threads: ONNX Runtime intra-op threads (``None``: its default).

    Returns:
        One prediction per image, in the order of ``paths`` and of the images within a file.

    Raises:
        UserError: A missing or unreadable file (naming it), or a bad model directory.
    """
    runner = ModelRunner(model_dir, threads=threads)
    files = [Path(p) for p in paths]
    chunks = [load_image_file(p, runner.image_size) for p in files]  # all read before any runs
    if not chunks:
        return []
    logits = runner.logits(np.concatenate(chunks))
    probs = _softmax(logits)
    labels = probs.argmax(axis=1)
    owners: Sequence[tuple[Path, int]] = [(p, i) for p, c in zip(files, chunks, strict=True)
                                          for i in range(len(c))]
    return [Prediction(path=p, index=i, label=int(labels[k]), probability=float(probs[k, labels[k]]))
            for k, (p, i) in enumerate(owners)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted.astype(np.float64))
    return exp / exp.sum(axis=1, keepdims=True)
