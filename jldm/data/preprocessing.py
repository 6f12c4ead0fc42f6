"""Dataset images as model inputs: uint8 [B, H, W, C] -> float32 in [-1, 1] at the model's
resolution, and back to [0, 1] for viewing and scoring."""

from __future__ import annotations

from typing import Any

import numpy as np

from jldm.errors import UserError

# Images resized per einsum; bounds the float64 intermediates to a few hundred MB.
_RESIZE_CHUNK = 4096


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear resize matrix [n_out, n_in], half-pixel centres, equal to jax.image.resize's."""
    # The triangle kernel widens by the shrink factor when downsampling (antialiasing), and rows
    # are renormalised over in-bounds pixels, which clamps at the borders.
    scale = n_out / n_in
    width = max(1.0, 1.0 / scale)
    centres = (np.arange(n_out) + 0.5) / scale - 0.5
    w = np.maximum(0.0, 1.0 - np.abs(np.arange(n_in)[None, :] - centres[:, None]) / width)
    return w / w.sum(axis=1, keepdims=True)


def preprocess(images: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 images [B, H, W, C] -> float32 [B, R, R, C] in [-1, 1], bilinearly resized to R."""
    x = np.asarray(images)
    if x.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {x.shape}")
    if resolution < 1:
        raise UserError(f"data.resolution={resolution} must be a positive number of pixels")
    b, h, w, c = x.shape
    out = np.empty((b, resolution, resolution, c), np.float32)
    if (h, w) == (resolution, resolution):
        out[...] = x
    else:
        wh, ww = _resize_weights(h, resolution), _resize_weights(w, resolution)
        for s in range(0, b, _RESIZE_CHUNK):
            # Channels first so both passes are batched BLAS matmuls over [H, W].
            chunk = np.moveaxis(x[s : s + _RESIZE_CHUNK], -1, 1).astype(np.float64)
            out[s : s + _RESIZE_CHUNK] = np.moveaxis(wh @ chunk @ ww.T, 1, -1)
    out /= 127.5
    out -= 1.0
    # Resizing is a convex combination, so only rounding can leave [-1, 1].
    return np.clip(out, -1.0, 1.0, out=out)


def to_unit(x: Any) -> Any:
    """Model-space images [..] in [-1, 1] -> [0, 1], clipped; keeps numpy or jax array type."""
    return ((x + 1.0) / 2.0).clip(0.0, 1.0)
