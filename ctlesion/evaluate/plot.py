"""FROC curves as a PNG (matplotlib, Agg; no pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ctlesion.evaluate.scoring import IMAGE_SUBSETS

#: Curves drawn: image subset name -> (label, colour).
PLOTTED_SUBSETS: dict[str, tuple[str, str]] = {
    name: (IMAGE_SUBSETS[name], colour)
    for name, colour in (("all", "black"), ("thin_le_2mm", "tab:blue"), ("thick_5mm", "tab:orange"))
}


def _step_points(fp_per_image: np.ndarray, sensitivity: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Points of the protocol's curve on [lo, hi] for a ``steps-post`` line.

    At each rate the curve's value is the top of its vertical run (the protocol's reading, see
    :mod:`ctlesion.evaluate.froc`); it only changes where the false-positive rate does, and
    rates beyond the curve's end keep its last value.
    """
    inside = fp_per_image[(fp_per_image > lo) & (fp_per_image < hi)]
    x = np.unique(np.concatenate(([lo], inside, [hi])))
    y = sensitivity[np.searchsorted(fp_per_image, x, side="right") - 1]
    return x, y


def froc_png(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], summary: dict, title: str) -> bytes:
    """Render FROC curves (all, thin, thick) with the operating points marked.

    Args:
        curves: image subset name -> ``(fp_per_image, sensitivity)`` (float64 arrays, fractions)
            from :func:`ctlesion.evaluate.froc.curve_from_matching`; names of
            :data:`PLOTTED_SUBSETS` are drawn.
        summary: the ``summary`` of the evaluation: ``fps_per_image`` and, per subset,
            ``sensitivity`` (marked at those rates) and ``ci95`` (vertical bars, the subsets'
            side by side, 4 % apart along the rate axis).
        title: plot title.

    Returns:
        PNG bytes: false positives per image on a log axis (from a quarter of the lowest rate to
        the highest), sensitivity in %.
    """
    rates = np.asarray(summary["fps_per_image"], dtype=np.float64)
    lo, hi = float(rates.min()) / 4 if rates.min() > 0 else 0.125, float(rates.max())
    figure = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for offset, (name, (label, colour)) in enumerate(PLOTTED_SUBSETS.items()):
        if name not in curves or name not in summary:
            continue
        beside = rates * 1.04 ** (offset - 1)  # intervals side by side, so that they do not hide each other
        x, y = _step_points(*curves[name], lo, hi)
        row = summary[name]
        axes.plot(x, 100 * y, drawstyle="steps-post", color=colour, linewidth=1.5,
                  label=f"{label}: {row['num_images']:,} images, avg[0.5-4] {100 * row['avg_0.5_4']:.1f} %")
        axes.plot(rates, 100 * np.asarray(row["sensitivity"]), "o", color=colour, markersize=4)
        ci = row.get("ci95")
        if ci is not None:  # percentile intervals need not be centred on the point: draw their ends
            bounds = 100 * np.array([[np.nan if v is None else v for v in pair] for pair in ci["sensitivity"]])
            axes.vlines(beside, bounds[:, 0], bounds[:, 1], color=colour, linewidth=1, alpha=0.7)
    axes.set_xscale("log")
    axes.set_xlim(lo, hi * 1.15)
    axes.set_xticks(rates, [f"{r:g}" for r in rates])
    axes.minorticks_off()
    axes.set_ylim(0, 100)
    axes.set_xlabel("false positives per image")
    axes.set_ylabel("sensitivity (%)")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
