"""Sample grids: many small images tiled into one uint8 picture and saved as PNG."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from jldm.data.paths import is_local, write_atomic
from jldm.errors import UserError

# Cells of tiny images (8x8 digits) are upscaled to at least this many pixels to be visible.
MIN_CELL_PX = 64


def _to_uint8(images01: np.ndarray) -> np.ndarray:
    """Images in [0, 1] (clipped; NaN -> 0) to uint8 [0, 255], same shape."""
    x = np.nan_to_num(np.asarray(images01, dtype=np.float32), nan=0.0)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def make_grid(
    images01: np.ndarray,
    ncols: int,
    pad: int = 1,
    scale: int = 1,
    pad_value: float = 0.5,
) -> np.ndarray:
    """Tile images01: [N, H, W, C] (C = 1 or 3) into uint8 [R*(H*s+p)+p, K*(W*s+p)+p, C].

    Row r holds images r*K .. r*K+K-1 with K = min(ncols, N) columns and R = ceil(N / K) rows;
    each image is upscaled s = scale times (nearest neighbour) and surrounded by p = pad pixels
    of pad_value, which also fills the empty cells of an incomplete last row.
    """
    images = np.asarray(images01)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise UserError(
            f"a grid needs images [N, H, W, 1 or 3], got shape {images.shape}: "
            "decode latents to images before saving a grid"
        )
    n, h, w, c = images.shape
    if n == 0:
        raise UserError("a grid needs at least one image, got none")
    if ncols < 1 or pad < 0 or scale < 1:
        raise ValueError(f"need ncols >= 1, pad >= 0, scale >= 1; got {ncols}, {pad}, {scale}")
    cells = _to_uint8(images)
    if scale > 1:
        cells = cells.repeat(scale, axis=1).repeat(scale, axis=2)
    ch, cw = h * scale, w * scale
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fill = _to_uint8(np.float32(pad_value))
    grid = np.full((nrows * (ch + pad) + pad, ncols * (cw + pad) + pad, c), fill, np.uint8)
    for i in range(n):
        r, k = divmod(i, ncols)
        y, x = pad + r * (ch + pad), pad + k * (cw + pad)
        grid[y : y + ch, x : x + cw] = cells[i]
    return grid


def readable_scale(images: np.ndarray) -> int:
    """The upscaling that makes each cell of a grid of images [N, H, W, C] at least MIN_CELL_PX
    pixels on its short side."""
    short = min(images.shape[1:3]) if images.ndim == 4 else 1
    return max(1, math.ceil(MIN_CELL_PX / max(short, 1)))


def save_grid(
    images01: np.ndarray,
    path: str,
    ncols: int,
    pad: int = 1,
    scale: int | None = None,
) -> str:
    """Write images01: [N, H, W, C] as a PNG grid (grayscale if C = 1, RGB if C = 3); returns path.

    scale=None upscales so that each cell is at least MIN_CELL_PX pixels on its short side.
    path may be local (its folder is created) or a cloud path (gs://...: one object upload).
    """
    images = np.asarray(images01)
    grid = make_grid(images, ncols, pad=pad, scale=scale or readable_scale(images))
    # uint8 [H, W] maps to mode "L" and [H, W, 3] to "RGB".
    return save_png(Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid), path)


def save_png(image: Image.Image, path: str) -> str:
    """Write image to path as PNG, atomically (jldm.data.paths.write_atomic): locally into its
    folder (created as needed), to a cloud path (gs://...) as one object upload. A failed write
    leaves the previous file at path as it was. Returns path."""
    if is_local(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda f: image.save(f, format="PNG"))
    return path
