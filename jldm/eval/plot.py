"""Line plots as PNG with pillow (no plotting library needed): a metric against network
evaluations on a log axis (the metric on a linear or a log axis), one line per series, a dashed
reference level, panels side by side and one legend for all of them."""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jldm.eval.grid import save_png

PALETTE = (
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (23, 190, 207),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (0, 0, 128),
)
REFERENCE = (110, 110, 110)
GRID = (232, 232, 232)
INK = (0, 0, 0)
PAPER = (255, 255, 255)
PANEL = (430, 360)  # pixels of one panel
LEGEND_WIDTH = 230
MARGIN = {"left": 64, "right": 16, "top": 34, "bottom": 48}
DASH = (9, 6)  # pixels drawn, pixels left out
# Marker shapes: the first len(PALETTE) series are circles, the next as many squares, then
# triangles, so series that share a colour still differ.
MARKERS = ("circle", "square", "triangle")
MARKER_RADIUS = 4


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


@dataclasses.dataclass(frozen=True)
class Axes:
    """A panel's plotting box in pixels (left, top, right, bottom) and its data limits; x is on
    a log10 scale, y linear (log10 with y_log)."""

    left: int
    top: int
    right: int
    bottom: int
    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    y_log: bool = False

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """Data (x > 0, y; y > 0 with y_log) -> pixel (column, row)."""
        fx = (math.log10(x) - math.log10(self.x_lo)) / (math.log10(self.x_hi / self.x_lo))
        if self.y_log:
            fy = math.log10(y / self.y_lo) / math.log10(self.y_hi / self.y_lo)
        else:
            fy = (y - self.y_lo) / (self.y_hi - self.y_lo)
        return self.left + fx * (self.right - self.left), self.bottom - fy * (
            self.bottom - self.top
        )


def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _points(xs, ys, ylog: bool = False) -> list[tuple[float, float]]:
    pts = [
        (float(x), float(y))
        for x, y in zip(xs, ys, strict=True)
        if x is not None and y is not None and x > 0 and math.isfinite(x) and math.isfinite(y)
    ]
    return sorted((x, y) for x, y in pts if y > 0 or not ylog)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About count round values (1, 2 or 5 times a power of ten apart) within [lo, hi]."""
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(float(v), 12) for v in np.arange(first, hi + step * 1e-9, step)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2 and 5 times the powers of ten within [lo, hi]."""
    ticks = []
    for p in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10.0**p for m in (1, 2, 5) if lo <= m * 10.0**p <= hi]
    return ticks


def _reference(panel: Panel) -> float | None:
    """The reference level to draw: none where a log axis cannot show it."""
    ref = panel.reference
    return None if ref is None or (panel.ylog and not ref > 0) else ref


def _y_ticks(axes: Axes) -> list[float]:
    """Round values for the y axis: 1, 2 and 5 times powers of ten on a log axis, or evenly
    spaced ones where its range holds fewer than two of those."""
    if axes.y_log:
        ticks = log_ticks(axes.y_lo, axes.y_hi)
        if len(ticks) >= 2:
            return ticks
        return [v for v in nice_ticks(axes.y_lo, axes.y_hi) if v > 0]
    return nice_ticks(axes.y_lo, axes.y_hi)


def _limits(panel: Panel) -> tuple[float, float, float, float]:
    pts = [p for xs, ys in panel.series.values() for p in _points(xs, ys, panel.ylog)]
    xs = [p[0] for p in pts] or [1.0]
    ys = [p[1] for p in pts]
    if _reference(panel) is not None:
        ys.append(panel.reference)
    x_lo, x_hi = min(xs) / 1.25, max(xs) * 1.25  # a margin of a quarter on the log axis
    if panel.ylog:
        ys = ys or [1.0]
        pad = (max(ys) / min(ys)) ** 0.06 if max(ys) > min(ys) else 2.0
        return x_lo, x_hi, min(ys) / pad, max(ys) * pad
    ys = ys or [0.0]
    pad = 0.06 * (max(ys) - min(ys)) or 0.5 * abs(ys[0]) or 1.0
    return x_lo, x_hi, min(ys) - pad, max(ys) + pad


def _dashed(draw: ImageDraw.ImageDraw, x0: float, x1: float, y: float) -> None:
    on, off = DASH
    x = x0
    while x < x1:
        draw.line([(x, y), (min(x + on - 1, x1), y)], fill=REFERENCE, width=2)
        x += on + off


def _text(draw, xy, text, font, anchor="la", fill=INK) -> None:
    draw.text(xy, text, fill=fill, font=font, anchor=anchor)


def _label(v: float) -> str:
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.0e}"


def _draw_panel(draw, box: tuple[int, int], panel: Panel, styles: dict, font) -> Axes:
    ox, oy = box
    w, h = PANEL
    axes = Axes(
        ox + MARGIN["left"], oy + MARGIN["top"], ox + w - MARGIN["right"],
        oy + h - MARGIN["bottom"], *_limits(panel), panel.ylog,
    )  # fmt: skip
    for v in _y_ticks(axes):
        _, r = axes.to_pixel(axes.x_lo, v)
        draw.line([(axes.left, r), (axes.right, r)], fill=GRID)
        _text(draw, (axes.left - 6, r), _label(v), font, "rm")
    for v in log_ticks(axes.x_lo, axes.x_hi):
        c, _ = axes.to_pixel(v, axes.y_lo)
        draw.line([(c, axes.top), (c, axes.bottom)], fill=GRID)
        _text(draw, (c, axes.bottom + 6), _label(v), font, "ma")
    draw.rectangle([axes.left, axes.top, axes.right, axes.bottom], outline=INK)
    _text(draw, ((axes.left + axes.right) / 2, oy + 10), panel.title, font, "ma")
    _text(draw, ((axes.left + axes.right) / 2, axes.bottom + 26), panel.xlabel, font, "ma")
    if panel.ylabel:
        _text(draw, (ox + 6, oy + 10), panel.ylabel, font)
    if _reference(panel) is not None:
        _dashed(draw, axes.left + 1, axes.right - 1, axes.to_pixel(axes.x_lo, panel.reference)[1])
    for label, (xs, ys) in panel.series.items():
        pix = [axes.to_pixel(x, y) for x, y in _points(xs, ys, panel.ylog)]
        colour, shape = styles[label]
        if len(pix) > 1:
            draw.line(pix, fill=colour, width=3, joint="curve")
        for c, r in pix:
            _marker(draw, c, r, shape, colour)
    return axes


def _marker(draw, c: float, r: float, shape: str, colour) -> None:
    """A filled marker centred on the pixel nearest (column c, row r), MARKER_RADIUS pixels from
    centre to edge, so every marker of a shape has the same pixels around its centre."""
    m, c, r = MARKER_RADIUS, round(c), round(r)
    if shape == "square":
        draw.rectangle([c - m, r - m, c + m, r + m], fill=colour)
    elif shape == "triangle":
        draw.polygon([(c, r - m - 1), (c - m - 1, r + m), (c + m + 1, r + m)], fill=colour)
    else:
        draw.ellipse([c - m, r - m, c + m, r + m], fill=colour)


def series_styles(panels: Sequence[Panel]) -> dict[str, tuple[tuple[int, int, int], str]]:
    """One (colour, marker shape) per series label across all panels, in order of first
    appearance: PALETTE's colours in turn, then again with the next of MARKERS."""
    labels = list(dict.fromkeys(label for p in panels for label in p.series))
    n = len(PALETTE)
    return {
        label: (PALETTE[i % n], MARKERS[(i // n) % len(MARKERS)]) for i, label in enumerate(labels)
    }


def render(panels: Sequence[Panel]) -> tuple[Image.Image, list[Axes]]:
    """The figure: panels left to right and the legend on the right. -> (RGB image, axes)."""
    styles, font = series_styles(panels), _font()
    refs = list(dict.fromkeys(p.reference_label for p in panels if _reference(p) is not None))
    rows = len(styles) + len(refs)
    height = max(PANEL[1], 40 + 20 * rows)
    image = Image.new("RGB", (PANEL[0] * len(panels) + LEGEND_WIDTH, height), PAPER)
    draw = ImageDraw.Draw(image)
    axes = [_draw_panel(draw, (i * PANEL[0], 0), p, styles, font) for i, p in enumerate(panels)]
    x, y = PANEL[0] * len(panels) + 8, MARGIN["top"]
    for label, (colour, shape) in styles.items():
        draw.line([(x, y), (x + 24, y)], fill=colour, width=2)
        _marker(draw, x + 12, y, shape, colour)
        _text(draw, (x + 32, y), label, font, "lm")
        y += 20
    for label in refs:
        _dashed(draw, x, x + 24, y)
        _text(draw, (x + 32, y), label, font, "lm")
        y += 20
    return image, axes


def save_line_plot(panels: Sequence[Panel], path: str) -> str:
    """Write render(panels) to path as PNG (local folders made as needed; a cloud path is one
    object upload). Returns path."""
    image, _ = render(panels)
    return save_png(image, path)


def nfe_plot(rows: Sequence[dict], real: dict | None, path: str) -> str:
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
    return save_line_plot(panels, path)
