"""2-D point clouds as PNG scatter plots with pillow (no plotting library needed)."""

import numpy as np
from PIL import Image, ImageDraw

from jldm.eval.grid import save_png


def save_scatter(
    points: np.ndarray,
    path: str,
    extent: tuple[float, float, float, float],
    marks: np.ndarray | None = None,
    size: int = 512,
) -> str:
    """Write points [N,2] as a density-shaded scatter PNG; marks [K,2] drawn as red crosses.

    extent = (xmin, xmax, ymin, ymax); points outside it or not finite are left out. path may be
    local or a cloud path (see save_png). Returns path.
    """
    x0, x1, y0, y1 = extent
    pts = np.asarray(points, np.float64)
    pts = pts[np.all(np.isfinite(pts), axis=-1)]
    # A 2-D histogram instead of one dot per point: dense regions stay readable at any N.
    # Bins of 2x2 pixels, so one point is a visible dot.
    bins = size // 2
    counts, _, _ = np.histogram2d(pts[:, 0], pts[:, 1], bins=bins, range=[[x0, x1], [y0, y1]])
    counts = np.kron(counts, np.ones((2, 2)))
    size = 2 * bins
    # Log shading so that light modes stay visible next to heavy ones.
    shade = np.log1p(counts) / max(np.log1p(counts.max()), 1e-12)
    # Histogram rows are x and columns y; images index [row = -y, column = x].
    shade = shade.T[::-1]
    rgb = np.full((size, size, 3), 255.0)
    ink = np.array([20.0, 60.0, 160.0])
    rgb = rgb * (1 - shade[..., None]) + ink * shade[..., None]
    rgb[shade > 0] = np.minimum(rgb[shade > 0], 200.0)  # single points stay visible
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    if marks is not None:
        draw = ImageDraw.Draw(image)
        arm = max(size // 80, 3)
        for mx, my in np.asarray(marks, np.float64):
            px = (mx - x0) / (x1 - x0) * size
            py = (y1 - my) / (y1 - y0) * size
            draw.line([(px - arm, py), (px + arm, py)], fill=(220, 30, 30), width=2)
            draw.line([(px, py - arm), (px, py + arm)], fill=(220, 30, 30), width=2)
    return save_png(image, path)
