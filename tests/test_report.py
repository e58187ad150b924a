"""The class report's figure: the pass-rate chart gives every exercise its own readable line, however many a batch
graded (all eight labs in one batch: 43), and the histogram beside it keeps its shape."""

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from dslab.course.exercises import exercises, lab_packages
from dslab.course.report import FIGURE_HEIGHT, figure_height, summary_figure


def summary_of(n: int) -> dict:
    """A summary like ``report.summarize``'s for the first n exercises of the course (all eight labs: 43)."""
    every = [e for lab in sorted(lab_packages()) for e in exercises(lab)]
    assert len(every) >= n
    rows = [{"id": e.id, "number": e.number, "pass_rate": (i % 5) / 4} for i, e in enumerate(every[:n])]
    return {"submissions": 12, "scores": [(f"s{i}", i % 7, 6, 0) for i in range(12)], "exercises": rows}


def drawn_labels(fig) -> list:
    """The pass-rate chart's tick labels, laid out as they will be rendered."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[1]
    return [t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_text()]


def test_the_whole_course_has_43_exercises():
    assert sum(len(exercises(lab)) for lab in lab_packages()) == 43


@pytest.mark.parametrize("n", [5, 20, 43])
def test_every_label_has_its_own_line(n):
    fig = summary_figure(summary_of(n))
    boxes = sorted(drawn_labels(fig), key=lambda b: b.y0)
    assert len(boxes) == n
    gaps = [upper.y0 - lower.y1 for lower, upper in zip(boxes, boxes[1:])]
    assert min(gaps) > 0, f"labels overlap by up to {-min(gaps):.1f} px with {n} exercises"
    height_px = fig.get_figheight() * fig.dpi
    assert all(0 <= b.y0 and b.y1 <= height_px for b in boxes)  # none cut off at the top or bottom


def test_height_grows_with_the_exercises():
    assert figure_height(5) == FIGURE_HEIGHT  # a lab's worth keeps the usual size
    heights = [summary_figure(summary_of(n)).get_figheight() for n in (5, 20, 30, 43)]
    assert heights == sorted(heights) and heights[-1] > heights[1] > heights[0]
    fig = summary_figure(summary_of(43))
    assert fig.get_figheight() == pytest.approx(figure_height(43)) and fig.get_figheight() >= 10
    labels = drawn_labels(fig)
    text_px = max(b.height for b in labels)
    assert fig.get_figheight() * fig.dpi >= 43 * text_px * 1.2  # room for each label and a fifth of one between
