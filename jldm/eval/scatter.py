"""2-D point clouds as density-shaded scatter plots with matplotlib (saved by
jldm.eval.plot.save_figure as PNG, PDF or SVG)."""

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from jldm.eval.plot import log_ticks, save_figure

MARK_COLOUR = "#dc1e1e"


def histogram(
    points: np.ndarray, extent: tuple[float, float, float, float], bins: int
) -> np.ndarray:
    """Counts [bins (y, bottom to top), bins (x)] of the finite points [N, 2] inside extent =
    (xmin, xmax, ymin, ymax), as imshow with origin="lower" draws them."""
    x0, x1, y0, y1 = extent
    pts = np.asarray(points, np.float64)
    pts = pts[np.all(np.isfinite(pts), axis=-1)]
    counts, _, _ = np.histogram2d(pts[:, 0], pts[:, 1], bins=bins, range=[[x0, x1], [y0, y1]])
    return counts.T  # histogram2d's rows are x; an image's rows are y


def scatter_figure(
    points: np.ndarray,
    extent: tuple[float, float, float, float],
    marks: np.ndarray | None = None,
    bins: int = 200,
) -> Figure:
    """points [N, 2] as a 2-D histogram on a log colour scale, empty bins white; marks [K, 2]
    drawn as red crosses. One Axes (fig.axes[0]) and its colour bar."""
    counts = histogram(points, extent, bins)
    # A histogram instead of one dot per point keeps dense regions readable at any N; the log
    # scale keeps light modes visible next to heavy ones, and one point gets the darkest colour.
    shown = np.ma.masked_equal(counts, 0)
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(
        shown,
        origin="lower",
        extent=extent,
        interpolation="nearest",
        cmap="viridis",
        norm=LogNorm(vmin=1, vmax=max(float(counts.max()), 1.0)),
    )
    if marks is not None:
        m = np.asarray(marks, np.float64)
        ax.plot(m[:, 0], m[:, 1], "x", color=MARK_COLOUR, ms=9, mew=2, label="marks")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    log_ticks(fig.colorbar(image, ax=ax, label="points per bin").ax.yaxis)
    return fig


def save_scatter(
    points: np.ndarray,
    path: str,
    extent: tuple[float, float, float, float],
    marks: np.ndarray | None = None,
    bins: int = 200,
) -> str:
    """Write scatter_figure(points [N, 2], extent, marks [K, 2], bins) to path (PNG, PDF or SVG
    by its suffix; local or cloud, atomically: see save_figure). Returns path."""
    return save_figure(scatter_figure(points, extent, marks, bins), path)
