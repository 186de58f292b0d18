"""Data augmentation on batched tensors, on the training device.

One ``affine_grid``/``grid_sample`` call transforms the whole batch: no per-sample Python.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_SHIFT_PX = 2.0
MAX_ROTATION_DEG = 10.0
MAX_SCALE = 0.1


def augment_batch(x: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """Randomly shift (``shift``) or rotate, scale and shift (``affine``) a batch of images.

    Args:
        x: Float images, shape ``[N, C, H, W]``.
        kind: ``shift`` or ``affine``.
        generator: Source of randomness (seeded by the trainer, so runs are reproducible).

    Returns:
        The transformed batch, same shape and memory format; empty borders are zero (black).
    """
    n, _, h, w = x.shape
    dev = x.device

    def uniform(low: float, high: float) -> Tensor:
        return torch.rand(n, device=dev, generator=generator) * (high - low) + low

    # affine_grid works in normalised coordinates, where the image spans [-1, 1].
    tx = uniform(-MAX_SHIFT_PX, MAX_SHIFT_PX) * 2 / w
    ty = uniform(-MAX_SHIFT_PX, MAX_SHIFT_PX) * 2 / h
    if kind == "shift":
        cos, sin, scale = torch.ones(n, device=dev), torch.zeros(n, device=dev), 1.0
    elif kind == "affine":
        angle = uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG) * math.pi / 180
        cos, sin = torch.cos(angle), torch.sin(angle)
        scale = 1.0 / uniform(1 - MAX_SCALE, 1 + MAX_SCALE)
    else:
        raise ValueError(f"unknown augmentation {kind!r}")
    theta = torch.stack([
        torch.stack([cos * scale, -sin * scale, tx], dim=1),
        torch.stack([sin * scale, cos * scale, ty], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
        memory_format=torch.channels_last) and not x.is_contiguous() else out
