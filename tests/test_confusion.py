"""The confusion heatmap: laid out once, refilled and redrawn per matrix, with the pixels of a
whole drawing."""

from __future__ import annotations

import numpy as np
import pytest

from tlbench.tracking.confusion import confusion_figure, confusion_image


def drawn(fig, alpha: bool = True) -> np.ndarray:
    """The figure's pixels as Agg draws them, whole: RGBA, or RGB (alpha checked opaque)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba()).copy()
    if alpha:
        return rgba
    assert (rgba[..., 3] == 255).all()
    return rgba[..., :3]


def direct_figure(matrix: np.ndarray, labels: list[str], size: float = 4.0, counts: bool = True):
    """The heatmap drawn directly from the matrix, as plain matplotlib draws it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted",
           ylabel="true", title="Test confusion matrix")
    ax.set_xticklabels(labels, rotation=90)
    ax.set_yticklabels(labels)
    if counts:
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, int(value), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    return fig


def test_a_refilled_confusion_figure_draws_what_a_direct_drawing_does():
    """The figure laid out once per class names and refilled per run draws the same pixels as
    a heatmap drawn directly from the matrix, cell counts and colour scale included."""
    names = ("five", "six", "$x$")
    earlier = np.array([[9, 0, 1], [0, 3, 0], [2, 0, 40]])
    matrix = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 3]])
    confusion_figure(earlier, names)
    refilled = drawn(confusion_figure(matrix, names))
    assert np.array_equal(refilled, drawn(direct_figure(matrix, ["five", "six", r"\$x\$"])))
    assert not np.array_equal(refilled, drawn(confusion_figure(earlier, names)))
    with pytest.raises(ValueError, match=r"a \(3, 2\) confusion matrix for 3 classes"):
        confusion_figure(matrix[:, :2], names)


def test_the_image_redrawn_over_the_static_part_has_a_whole_drawings_pixels():
    """Per matrix only the heatmap, its frame and the counts are drawn again: every image of a
    sequence (the first, later ones, after other class names, without counts above 30 classes)
    has the pixels of a direct drawing."""
    rng = np.random.default_rng(0)
    three, four = ("a", "b", "c"), ("w", "x", "y", "z")
    for names in (three, three, four, three):
        matrix = rng.integers(0, 50, (len(names),) * 2)
        image = np.asarray(confusion_image(matrix, names))
        assert np.array_equal(image, drawn(direct_figure(matrix, list(names)), alpha=False))
    many = tuple(f"c{i}" for i in range(31))
    matrix = rng.integers(0, 9, (31, 31))
    size = 0.45 * 31 + 2
    assert np.array_equal(np.asarray(confusion_image(matrix, many)),
                          drawn(direct_figure(matrix, list(many), size, counts=False), alpha=False))
