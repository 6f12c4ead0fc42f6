"""Line plots with matplotlib: a metric against network evaluations (NFE) on a log axis, the
metric on a linear or a log axis, one line per series, a dashed reference level, panels side by
side and one legend for all of them.

Figures are built as matplotlib.figure.Figure objects without pyplot: no display, no global
figure state, and rendering through the Agg canvas whatever backend the user has chosen. A
figure is saved as PNG, PDF or SVG (by the path's suffix), atomically and to local or cloud
paths alike (save_figure).
"""

import dataclasses
import math
import os
from collections.abc import Sequence

import matplotlib.colors
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from jldm.data.paths import is_local, write_atomic

# matplotlib's tab10 colours, fixed here so that a user's rcParams do not change the figure.
PALETTE = tuple(matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors)
# The first len(PALETTE) series are circles, the next as many squares, then triangles, so
# series that share a colour still differ.
MARKERS = ("o", "s", "^")
REFERENCE_COLOUR = "#6e6e6e"
PANEL_INCHES = (4.3, 3.6)  # one panel's width and height
LEGEND_INCHES = 2.3
DPI = 150  # raster resolution of PNG files
# Per format, metadata fields dropped so that the same figure gives the same bytes every time.
FORMATS = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}


@dataclasses.dataclass(frozen=True)
class Panel:
    """One plot: series label -> (x [n], y [n]) (None or non-finite points are left out), and an
    optional horizontal reference level drawn dashed. With ylog the y axis is log10 too (for
    metrics that span decades, such as Frechet distances); points with y <= 0 are left out."""

    title: str
    series: dict[str, tuple[Sequence[float], Sequence[float | None]]]
    ylabel: str = ""
    xlabel: str = "NFE"
    reference: float | None = None
    reference_label: str = "reference"
    ylog: bool = False


def points(xs, ys, ylog: bool = False) -> tuple[list[float], list[float]]:
    """The drawable points of a series sorted by x -> (x [m], y [m]): x > 0, both finite, and
    y > 0 on a log y axis."""
    kept = sorted(
        (float(x), float(y))
        for x, y in zip(xs, ys, strict=True)
        if x is not None and y is not None and x > 0 and math.isfinite(x) and math.isfinite(y)
    )
    kept = [(x, y) for x, y in kept if y > 0 or not ylog]
    return [x for x, _ in kept], [y for _, y in kept]


def series_styles(panels: Sequence[Panel]) -> dict[str, tuple[str, str]]:
    """One (colour, marker) per series label across all panels, in order of first appearance:
    PALETTE's colours in turn, then again with the next of MARKERS."""
    labels = list(dict.fromkeys(label for p in panels for label in p.series))
    n = len(PALETTE)
    return {
        label: (PALETTE[i % n], MARKERS[(i // n) % len(MARKERS)]) for i, label in enumerate(labels)
    }


def _reference(panel: Panel) -> float | None:
    """The reference level to draw: none where a log axis cannot show it."""
    ref = panel.reference
    return None if ref is None or (panel.ylog and not ref > 0) else ref


def log_ticks(axis) -> None:
    """Major ticks at 1, 2 and 5 times the powers of ten, written as plain numbers."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def line_figure(panels: Sequence[Panel]) -> Figure:
    """The figure: panels left to right (fig.axes in order) and one legend on the right naming
    every series once and each reference label once."""
    styles = series_styles(panels)
    width = PANEL_INCHES[0] * len(panels) + LEGEND_INCHES
    fig = Figure(figsize=(width, PANEL_INCHES[1]), layout="constrained")
    handles = {}
    for ax, panel in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for label, (xs, ys) in panel.series.items():
            colour, marker = styles[label]
            (line,) = ax.plot(
                *points(xs, ys, panel.ylog), color=colour, marker=marker, lw=2, ms=5, label=label
            )
            handles.setdefault(label, line)
        ref = _reference(panel)
        if ref is not None:
            line = ax.axhline(ref, color=REFERENCE_COLOUR, ls="--", lw=1.5)
            line.set_label(panel.reference_label)
            handles.setdefault(panel.reference_label, line)
        ax.set_xscale("log")
        log_ticks(ax.xaxis)
        if panel.ylog:
            ax.set_yscale("log")
            log_ticks(ax.yaxis)
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(True, color="0.9")
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", frameon=False)
    return fig


def save_figure(fig: Figure, path: str) -> str:
    """Write fig to path as PNG, PDF or SVG (by path's suffix), atomically
    (jldm.data.paths.write_atomic): local folders are made as needed, a cloud path (gs://...)
    is one object upload, and a failed write leaves the previous file as it was. Returns path."""
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(f"{path}: a figure is saved as one of {', '.join(FORMATS)}")
    if is_local(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, lambda f: fig.savefig(f, format=fmt, dpi=DPI, metadata=FORMATS[fmt]))
    return path


def save_line_plot(panels: Sequence[Panel], path: str) -> str:
    """Write line_figure(panels) to path (PNG, PDF or SVG: see save_figure). Returns path."""
    return save_figure(line_figure(panels), path)


def nfe_figure(rows: Sequence[dict], real: dict | None) -> Figure:
    """Frechet distance and recall of sampler rows against their NFE, one line per
    objective/sampler (run/sampler where runs share an objective), real's figures dashed.

    rows: dicts with run, objective, sampler, nfe, frechet and recall (None: not measured).
    """
    runs: dict[str, set] = {}
    for r in rows:
        runs.setdefault(r["objective"], set()).add(r["run"])
    lines: dict[str, list[dict]] = {}
    for r in rows:
        name = r["objective"] if len(runs[r["objective"]]) == 1 else r["run"]
        lines.setdefault(f"{name}/{r['sampler']}", []).append(r)
    real = real or {}
    panels = [
        Panel(
            title,
            {k: ([r["nfe"] for r in v], [r.get(key) for r in v]) for k, v in lines.items()},
            reference=real.get(key),
            reference_label="real images (train split)",
            ylog=key == "frechet",  # distances span decades across budgets
        )
        for key, title in (("frechet", "Frechet distance (lower is better)"), ("recall", "recall"))
    ]
    return line_figure(panels)


def nfe_plot(rows: Sequence[dict], real: dict | None, *paths: str) -> list[str]:
    """Write nfe_figure(rows, real) to each of paths (e.g. OUT.png and OUT.pdf). -> paths."""
    fig = nfe_figure(rows, real)
    return [save_figure(fig, p) for p in paths]
