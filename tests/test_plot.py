"""The pillow line plot: its size, and lines, markers and the dashed reference where the data
put them (pixel positions computed here from the axes' box and limits, log10 on x, and on y
for a log-y panel)."""

import math

import numpy as np
import pytest
from PIL import Image

from jldm.eval import plot

FRECHET = {
    "ddpm/ddim": ([10, 20, 50, 100, 200], [40.0, 22.0, 12.0, 9.0, 8.0]),
    "vpsde/ode": ([9, 21, 53, 101], [60.0, 35.0, None, 15.0]),  # a missing figure is skipped
    "ncsn/als": ([21], [30.0]),
}
RECALL = {k: (xs, [None if y is None else 1 / y for y in ys]) for k, (xs, ys) in FRECHET.items()}


@pytest.fixture(scope="module")
def figure(tmp_path_factory):
    panels = [
        plot.Panel("Frechet distance", FRECHET, reference=5.0, reference_label="real data"),
        plot.Panel("recall", RECALL, reference=0.2, reference_label="real data"),
    ]
    path = plot.save_line_plot(panels, str(tmp_path_factory.mktemp("plot") / "sub" / "g.png"))
    image = Image.open(path)
    _, axes = plot.render(panels)
    return panels, np.asarray(image.convert("RGB")).astype(int), image, axes


@pytest.fixture(scope="module")
def log_figure():
    """One Frechet panel on a log y axis; a zero distance cannot be shown there."""
    series = {**FRECHET, "flow/euler": ([10, 40], [0.0, 120.0])}
    panels = [plot.Panel("Frechet distance", series, reference=5.0, ylog=True)]
    image, axes = plot.render(panels)
    return panels, np.asarray(image).astype(int), image, axes


def pixel(ax: plot.Axes, x: float, y: float) -> tuple[int, int]:
    """(row, column) of data (x, y), from the box and limits alone."""
    fx = (math.log10(x) - math.log10(ax.x_lo)) / (math.log10(ax.x_hi) - math.log10(ax.x_lo))
    if ax.y_log:
        fy = (math.log10(y) - math.log10(ax.y_lo)) / (math.log10(ax.y_hi) - math.log10(ax.y_lo))
    else:
        fy = (y - ax.y_lo) / (ax.y_hi - ax.y_lo)
    return round(ax.bottom - fy * (ax.bottom - ax.top)), round(ax.left + fx * (ax.right - ax.left))


def test_the_png_is_two_panels_and_a_legend_wide(figure):
    _, rgb, image, axes = figure
    assert image.format == "PNG" and image.mode == "RGB"
    assert image.size == (2 * plot.PANEL[0] + plot.LEGEND_WIDTH, plot.PANEL[1])
    assert axes[1].left - axes[0].left == plot.PANEL[0]
    # every point inside its box, the limits around all of them
    for panel, ax in zip(figure[0], axes, strict=True):
        ys = [y for _, v in panel.series.values() for y in v if y is not None]
        assert ax.y_lo < min(ys) and max(ys + [panel.reference]) < ax.y_hi
        assert ax.x_lo < 9 and ax.x_hi > 200


@pytest.mark.parametrize("name", ["figure", "log_figure"])
def test_markers_and_lines_are_drawn_where_the_data_say(name, request):
    panels, rgb, _, axes = request.getfixturevalue(name)
    colours = {label: colour for label, (colour, _) in plot.series_styles(panels).items()}
    assert len(set(colours.values())) == len(colours)
    for panel, ax in zip(panels, axes, strict=True):
        assert ax.y_log == panel.ylog
        for label, (xs, ys) in panel.series.items():
            want = np.array(colours[label])
            pts = [
                pixel(ax, x, y)
                for x, y in zip(xs, ys, strict=True)
                if y is not None and (y > 0 or not panel.ylog)
            ]
            for r, c in pts:
                assert (rgb[r, c] == want).all(), (label, r, c, rgb[r, c])
            for (r0, c0), (r1, c1) in zip(pts, pts[1:], strict=False):
                for f in (0.25, 0.5, 0.75):  # along the segment, within a pixel of it
                    r, c = round(r0 + f * (r1 - r0)), round(c0 + f * (c1 - c0))
                    near = rgb[r - 1 : r + 2, c - 1 : c + 2]
                    assert (near == want).all(-1).any(), (label, "segment", r, c)
            if label == "vpsde/ode":  # the missing point leaves no marker at its x
                r, c = pixel(ax, 53, 0.5 * (ax.y_lo + ax.y_hi))
                assert not (rgb[r - 8 : r + 9, c] == want).all(-1).any()


def test_equal_nfe_ratios_are_equal_distances(figure):
    _, _, _, axes = figure
    ax = axes[0]
    cols = [ax.to_pixel(x, 0.0)[0] for x in (10, 100, 1000)]
    assert cols[1] - cols[0] == pytest.approx(cols[2] - cols[1])
    assert pixel(ax, 20, 10.0)[1] == round(ax.to_pixel(20, 10.0)[0])


def test_a_log_y_axis_spaces_equal_ratios_equally_and_spans_the_data(log_figure):
    panels, _, _, (ax,) = log_figure
    rows = [ax.to_pixel(10, y)[1] for y in (2.0, 20.0, 200.0)]
    assert rows[0] - rows[1] == pytest.approx(rows[1] - rows[2]) and rows[0] > rows[1]
    assert pixel(ax, 20, 30.0)[0] == round(ax.to_pixel(20, 30.0)[1])
    # the limits hold every positive figure and the reference, with the same factor each side
    assert 0 < ax.y_lo < 5.0 and ax.y_hi > 120.0
    assert 5.0 / ax.y_lo == pytest.approx(ax.y_hi / 120.0)
    # y ticks are 1, 2 and 5 times powers of ten; a range without two of them gets even steps
    assert plot._y_ticks(ax) == [v for v in (5, 10, 20, 50, 100) if ax.y_lo <= v <= ax.y_hi]
    narrow = plot.Axes(0, 0, 100, 100, 1.0, 10.0, 15.0, 18.0, y_log=True)
    assert plot._y_ticks(narrow) == pytest.approx([15, 16, 17, 18])


@pytest.mark.parametrize("name", ["figure", "log_figure"])
def test_the_reference_is_a_dashed_line_at_its_level(name, request):
    panels, rgb, _, axes = request.getfixturevalue(name)
    for panel, ax in zip(panels, axes, strict=True):
        r, _ = pixel(ax, 10, panel.reference)
        row = rgb[r, ax.left + 2 : ax.right - 2]
        grey = (row == np.array(plot.REFERENCE)).all(-1)
        # dashes and gaps in the DASH ratio (series cross it at a few places)
        on, off = plot.DASH
        assert abs(grey.mean() - on / (on + off)) < 0.1, grey.mean()
        assert np.count_nonzero(np.diff(grey.astype(int)) == 1) > 10
        # nothing grey a few rows off the line, away from the series
        assert (
            not (rgb[r + 6, ax.left + 2 : ax.left + 40] == np.array(plot.REFERENCE)).all(-1).any()
        )


def test_the_legend_shows_every_series_and_the_reference(figure):
    panels, rgb, _, _ = figure
    legend = rgb[:, 2 * plot.PANEL[0] :]
    colours = [colour for colour, _ in plot.series_styles(panels).values()]
    for colour in [*colours, plot.REFERENCE]:
        assert (legend == np.array(colour)).all(-1).sum() > 20, colour
    assert (legend == np.array(plot.INK)).all(-1).sum() > 50  # the labels' text


def test_ticks_are_round_numbers_inside_the_range():
    assert plot.nice_ticks(0.13, 0.87) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert plot.nice_ticks(3.0, 61.0) == pytest.approx([20, 40, 60])
    assert plot.log_ticks(8, 250) == [10, 20, 50, 100, 200]


def test_series_past_the_palette_keep_its_colours_with_other_marker_shapes():
    n = 2 * len(plot.PALETTE) + 1  # circles, squares, then one triangle
    series = {f"s{i}": ([10 * 1.25**i], [float(i)]) for i in range(n)}
    panels = [plot.Panel("many", series)]
    image, (ax,) = plot.render(panels)
    rgb = np.asarray(image).astype(int)
    styles = plot.series_styles(panels)
    first, again, third = (styles[f"s{i}"] for i in (0, len(plot.PALETTE), n - 1))
    assert first[0] == again[0] == third[0] and (first[1], again[1], third[1]) == plot.MARKERS
    m = plot.MARKER_RADIUS
    for i, shape in ((0, "circle"), (len(plot.PALETTE), "square"), (n - 1, "triangle")):
        r, c = pixel(ax, 10 * 1.25**i, float(i))
        want = np.array(plot.PALETTE[0])
        painted = lambda dr, dc, r=r, c=c, want=want: bool((rgb[r + dr, c + dc] == want).all())
        assert painted(0, 0) and painted(m - 1, 0) and painted(0, 1 - m), shape
        # a square fills its corners, a circle does not; a triangle's tip is on top
        assert painted(-m, -m) == (shape == "square"), shape
        assert painted(m, -m) == (shape in ("square", "triangle")), shape
