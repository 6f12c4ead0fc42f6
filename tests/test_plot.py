"""The matplotlib figures: their content (line data, scales, labels, legend, styles) read back
from the Figure objects, and the files they are saved to (PNG, PDF, SVG) opened and parsed."""

import errno
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from jldm.eval import plot, scatter

FRECHET = {
    "ddpm/ddim": ([10, 20, 50, 100, 200], [40.0, 22.0, 12.0, 9.0, 8.0]),
    "vpsde/ode": ([9, 21, 53, 101], [60.0, 35.0, None, 15.0]),  # a missing figure is skipped
    "ncsn/als": ([21], [30.0]),
}
RECALL = {k: (xs, [None if y is None else 1 / y for y in ys]) for k, (xs, ys) in FRECHET.items()}
# On a log axis a zero distance cannot be shown, and an unordered series is drawn sorted by x.
LOG_SERIES = {**FRECHET, "flow/euler": ([40, 10, 20], [120.0, 0.0, float("nan")])}


@pytest.fixture(scope="module")
def panels():
    return [
        plot.Panel("Frechet distance", LOG_SERIES, reference=5.0, reference_label="real data",
                   ylog=True),
        plot.Panel("recall", RECALL, ylabel="recall", reference=0.2, reference_label="real data"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fig(panels):
    return plot.line_figure(panels)


def _lines(ax) -> dict:
    """label -> Line2D of the series lines and reference lines of ax."""
    return {line.get_label(): line for line in ax.get_lines()}


def test_each_series_is_a_line_through_its_drawable_points(fig):
    log_ax, lin_ax = fig.axes[:2]
    want_log = {
        "ddpm/ddim": ([10, 20, 50, 100, 200], [40, 22, 12, 9, 8]),
        "vpsde/ode": ([9, 21, 101], [60, 35, 15]),
        "ncsn/als": ([21], [30]),
        "flow/euler": ([40], [120]),  # zero left out on the log axis, NaN everywhere
    }
    for label, (xs, ys) in want_log.items():
        line = _lines(log_ax)[label]
        np.testing.assert_allclose(line.get_xdata(), xs)
        np.testing.assert_allclose(line.get_ydata(), ys)
    line = _lines(lin_ax)["vpsde/ode"]
    np.testing.assert_allclose(line.get_xdata(), [9, 21, 101])
    np.testing.assert_allclose(line.get_ydata(), [1 / 60, 1 / 35, 1 / 15])
    assert plot.points([40, 10, 20], [120.0, 0.0, float("nan")]) == ([10.0, 40.0], [0.0, 120.0])


def test_axes_are_log_in_nfe_and_carry_titles_and_labels(fig):
    log_ax, lin_ax = fig.axes[:2]
    assert [ax.get_xscale() for ax in (log_ax, lin_ax)] == ["log", "log"]
    assert [ax.get_yscale() for ax in (log_ax, lin_ax)] == ["log", "linear"]
    assert [ax.get_title() for ax in (log_ax, lin_ax)] == ["Frechet distance", "recall"]
    assert [ax.get_xlabel() for ax in (log_ax, lin_ax)] == ["NFE", "NFE"]
    assert lin_ax.get_ylabel() == "recall"
    # every point and the reference inside the limits
    lo, hi = log_ax.get_ylim()
    assert lo < 5.0 and hi > 120.0
    lo, hi = log_ax.get_xlim()
    assert lo < 9 and hi > 200
    # NFE ticks are plain numbers at 1, 2 and 5 times powers of ten
    fig.canvas.draw()
    labels = [t.get_text() for t in log_ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
    assert labels == ["10", "20", "50", "100", "200"]


def test_the_reference_is_a_dashed_level_line(fig):
    for ax, level in zip(fig.axes[:2], (5.0, 0.2), strict=True):
        ref = _lines(ax)["real data"]
        assert ref.get_linestyle() == "--"
        assert list(ref.get_ydata()) == [level, level]
    # no reference where a log axis cannot show it
    figure = plot.line_figure([plot.Panel("d", FRECHET, reference=0.0, ylog=True)])
    assert "reference" not in _lines(figure.axes[0])


def test_one_legend_names_every_series_and_the_reference_once(fig):
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["ddpm/ddim", "vpsde/ode", "ncsn/als", "flow/euler", "real data"]
    # the legend's handles look like the lines they name
    log_lines = _lines(fig.axes[0])
    for handle, text in zip(legend.legend_handles, texts, strict=True):
        assert handle.get_color() == log_lines[text].get_color()
        assert handle.get_linestyle() == log_lines[text].get_linestyle()


def test_a_series_keeps_its_style_across_panels_and_styles_repeat_with_new_markers(fig):
    for label in RECALL:
        a, b = (_lines(ax)[label] for ax in fig.axes[:2])
        assert (a.get_color(), a.get_marker()) == (b.get_color(), b.get_marker())
    n = 2 * len(plot.PALETTE) + 1  # circles, squares, then one triangle
    series = {f"s{i}": ([10 * 1.25**i], [float(i)]) for i in range(n)}
    lines = _lines(plot.line_figure([plot.Panel("many", series)]).axes[0])
    colours = [lines[f"s{i}"].get_color() for i in range(len(plot.PALETTE))]
    assert len(set(colours)) == len(plot.PALETTE)
    for i, marker in ((0, "o"), (len(plot.PALETTE), "s"), (n - 1, "^")):
        assert (lines[f"s{i}"].get_color(), lines[f"s{i}"].get_marker()) == (colours[0], marker)


def test_png_pdf_and_svg_files_open_and_repeat_byte_for_byte(fig, tmp_path):
    paths = [plot.save_figure(fig, str(tmp_path / "sub" / f"g.{ext}")) for ext in plot.FORMATS]
    with Image.open(paths[0]) as image:
        assert image.format == "PNG"
        width, height = fig.get_size_inches() * plot.DPI
        assert image.size == (round(width), round(height))
        # drawn on: the series' colours appear in the picture
        rgb = np.asarray(image.convert("RGB")).reshape(-1, 3)
        for colour in plot.PALETTE[:4]:
            want = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
            assert (rgb == want).all(-1).sum() > 50, colour
    pdf = open(paths[1], "rb").read()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") == 1  # one page
    root = ET.parse(paths[2]).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    for path in paths[:2]:  # no timestamps: the same figure gives the same bytes
        again = plot.save_figure(fig, path + "." + path.rsplit(".", 1)[1])
        assert open(again, "rb").read() == open(path, "rb").read()


def test_an_unknown_format_or_a_failed_write_leaves_the_old_file(fig, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="png, pdf, svg"):
        plot.save_figure(fig, str(tmp_path / "g.jpeg"))
    assert os.listdir(tmp_path) == []
    path = plot.save_figure(fig, str(tmp_path / "g.png"))
    before = open(path, "rb").read()

    def broken(self, f, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="No space left"):
        plot.save_line_plot([plot.Panel("other", RECALL)], path)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["g.png"]


def test_the_nfe_figure_names_runs_that_share_an_objective(tmp_path):
    rows = [
        {"run": "a", "objective": "ddpm", "sampler": "ddim", "nfe": 10, "frechet": 9.0,
         "recall": 0.5},
        {"run": "a", "objective": "ddpm", "sampler": "ddim", "nfe": 20, "frechet": 4.0,
         "recall": 0.6},
        {"run": "b", "objective": "ddpm", "sampler": "ddim", "nfe": 10, "frechet": 7.0,
         "recall": None},
        {"run": "c", "objective": "flow", "sampler": "heun", "nfe": 10, "frechet": 8.0,
         "recall": 0.4},
    ]  # fmt: skip
    fig = plot.nfe_figure(rows, {"frechet": 1.5, "recall": 0.7})
    frechet, recall = fig.axes[:2]
    assert frechet.get_yscale() == "log" and recall.get_yscale() == "linear"
    lines = _lines(frechet)
    assert set(lines) == {"a/ddim", "b/ddim", "flow/heun", "real images (train split)"}
    np.testing.assert_allclose(lines["a/ddim"].get_ydata(), [9.0, 4.0])
    assert len(_lines(recall)["b/ddim"].get_xdata()) == 0  # recall not measured
    assert list(_lines(recall)["real images (train split)"].get_ydata()) == [0.7, 0.7]
    written = plot.nfe_plot(rows, None, str(tmp_path / "n.png"), str(tmp_path / "n.pdf"))
    assert all(os.path.getsize(p) > 1000 for p in written)


def test_the_scatter_shows_the_histogram_of_the_points_and_the_marks(tmp_path):
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(size=(500, 2)), [[np.nan, 0.0], [9.0, 0.0]]])
    marks = np.array([[0.0, 0.0], [1.0, -1.0]])
    fig = scatter.scatter_figure(pts, (-3, 3, -2, 2), marks, bins=12)
    ax = fig.axes[0]
    (image,) = ax.get_images()
    counts = np.ma.getdata(image.get_array())
    inside = pts[(np.abs(pts[:, 0]) <= 3) & (np.abs(pts[:, 1]) <= 2)]  # NaN, x=9 left out
    assert counts.shape == (12, 12) and counts.sum() == len(inside)
    # row i counts the points with y in the i-th band from the bottom, column j with x
    col = np.floor((inside[:, 0] + 3) / 0.5).clip(0, 11).astype(int)
    row = np.floor((inside[:, 1] + 2) / (4 / 12)).clip(0, 11).astype(int)
    np.testing.assert_array_equal(counts, np.histogram2d(row, col, bins=12, range=[[0, 12]] * 2)[0])
    assert (np.ma.getmaskarray(image.get_array()) == (counts == 0)).all()  # empty bins blank
    assert image.get_extent() == [-3, 3, -2, 2] and image.origin == "lower"
    (cross,) = ax.get_lines()
    np.testing.assert_array_equal(np.stack([cross.get_xdata(), cross.get_ydata()], -1), marks)
    assert cross.get_marker() == "x"
    path = scatter.save_scatter(pts, str(tmp_path / "s.png"), (-3, 3, -2, 2), marks)
    with Image.open(path) as picture:
        assert picture.format == "PNG"
