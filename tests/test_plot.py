"""The pillow line plot: its size, and lines, markers and the dashed reference where the data
put them (pixel positions computed here from the axes' box and limits, log10 on x)."""

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


def pixel(ax: plot.Axes, x: float, y: float) -> tuple[int, int]:
    """(row, column) of data (x, y), from the box and limits alone."""
    fx = (math.log10(x) - math.log10(ax.x_lo)) / (math.log10(ax.x_hi) - math.log10(ax.x_lo))
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


def test_markers_and_lines_are_drawn_where_the_data_say(figure):
    panels, rgb, _, axes = figure
    colours = plot.series_colours(panels)
    assert len(set(colours.values())) == 3
    for panel, ax in zip(panels, axes, strict=True):
        for label, (xs, ys) in panel.series.items():
            want = np.array(colours[label])
            pts = [pixel(ax, x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
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


def test_the_reference_is_a_dashed_line_at_its_level(figure):
    panels, rgb, _, axes = figure
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
    for colour in [*plot.series_colours(panels).values(), plot.REFERENCE]:
        assert (legend == np.array(colour)).all(-1).sum() > 20, colour
    assert (legend == np.array(plot.INK)).all(-1).sum() > 50  # the labels' text


def test_ticks_are_round_numbers_inside_the_range():
    assert plot.nice_ticks(0.13, 0.87) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert plot.nice_ticks(3.0, 61.0) == pytest.approx([20, 40, 60])
    assert plot.log_ticks(8, 250) == [10, 20, 50, 100, 200]
