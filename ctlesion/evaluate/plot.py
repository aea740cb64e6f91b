"""FROC curves as a PNG (matplotlib, Agg; no pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ctlesion.evaluate.scan_froc import SCAN_SUBSETS
from ctlesion.evaluate.scoring import IMAGE_SUBSETS, KEY_SLICE_LAYOUT, ReportLayout


@dataclass(frozen=True)
class CurveStyle:
    """How one image subset's curve is drawn: every curve stays visible where curves coincide
    (a wide solid line under a dotted one under a thin dashed one, markers of decreasing size)."""

    label: str
    colour: str
    linestyle: str
    linewidth: float
    marker: str
    markersize: float


#: Curves drawn, bottom to top: image subset name -> style.
PLOTTED_SUBSETS: dict[str, CurveStyle] = {
    "all": CurveStyle(IMAGE_SUBSETS["all"], "black", "-", 3.0, "D", 8.0),
    "thick_5mm": CurveStyle(IMAGE_SUBSETS["thick_5mm"], "tab:orange", ":", 2.2, "s", 6.0),
    "thick_ge_5mm": CurveStyle(SCAN_SUBSETS["thick_ge_5mm"], "tab:orange", ":", 2.2, "s", 6.0),
    "thin_le_2mm": CurveStyle(IMAGE_SUBSETS["thin_le_2mm"], "tab:blue", "--", 1.3, "o", 4.5),
}


def _step_points(fp_per_image: np.ndarray, sensitivity: np.ndarray, lo: float, hi: float,
                 rates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points of the protocol's curve on [lo, hi] for a ``steps-post`` line, with the rates as vertices.

    At each rate the curve's value is the top of its vertical run (the protocol's reading, see
    :mod:`ctlesion.evaluate.froc`); it only changes where the false-positive rate does, and
    rates beyond the curve's end keep its last value. The curve starts at (0, 0).

    Returns:
        ``x``, ``y`` (fractions) and the indices of ``rates`` (those inside [lo, hi]) in ``x``.
    """
    inside = fp_per_image[(fp_per_image > lo) & (fp_per_image < hi)]
    x = np.unique(np.concatenate(([lo], inside, rates[(rates >= lo) & (rates <= hi)], [hi])))
    y = sensitivity[np.searchsorted(fp_per_image, x, side="right") - 1]
    return x, y, np.flatnonzero(np.isin(x, rates))


def froc_title(evaluation: dict) -> str:
    """The plot title of an evaluation: split, overlap rule, and the model's checkpoint (with its
    network) or the predictions file scored.

    Args:
        evaluation: the ``evaluation.json`` content (``split``, ``protocol``, ``weights``,
            ``model``, ``predictions_file``, ``test_time_augmentation``).
    """
    protocol = evaluation["protocol"]
    overlap = {"iou": "IoU", "iobb": "IoBB"}[protocol["criterion"]]
    if evaluation.get("weights"):
        network = f" ({evaluation['model']})" if evaluation.get("model") else ""
        augmentation = evaluation.get("test_time_augmentation") or "none"
        views = "" if augmentation == "none" else f", test-time {augmentation}"
        source = f"model {evaluation['weights']}{network}{views}"
    else:
        source = f"predictions: {Path(evaluation['predictions_file']).name}"
    return f"DeepLesion FROC, {evaluation['split']} split ({overlap} >= {protocol['iou_threshold']:g})\n{source}"


def froc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], summary: dict, title: str,
                layout: ReportLayout = KEY_SLICE_LAYOUT) -> Figure:
    """The FROC figure (all, thin, thick) with the operating points marked.

    Args:
        curves: image subset name -> ``(fp_per_image, sensitivity)`` (float64 arrays, fractions)
            from :func:`ctlesion.evaluate.froc.curve_from_matching`; names of
            :data:`PLOTTED_SUBSETS` are drawn.
        summary: the ``summary`` of the evaluation: ``fps_per_image`` (``fps_per_scan``) and, per subset,
            ``sensitivity`` (marked at those rates) and ``ci95`` (vertical bars, the subsets'
            side by side, 4 % apart along the rate axis).
        title: plot title (name the model or predictions file in it).
        layout: the report's names (:class:`~ctlesion.evaluate.scoring.ReportLayout`): key slices
            (DeepLesion, the default) or scans (lesion-level FROC per scan).

    Returns:
        A matplotlib Figure (Agg canvas, no pyplot state), 6.4 x 4.8 in at 120 dpi: false
        positives per image on a log axis from just below the first operating point to just
        above the last, sensitivity in % (from -3 so that a curve at 0 stays above the axis).
        One labelled line per subset: the protocol's curve as steps, with its own line style
        and its marker at each operating point (:data:`PLOTTED_SUBSETS`).
    """
    unit = layout.unit
    rates = np.asarray(summary[f"fps_per_{unit}"], dtype=np.float64)
    lo, hi = float(rates.min()) / 1.15 if rates.min() > 0 else 0.125, float(rates.max()) * 1.15
    figure = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    lines = {}
    for offset, (name, style) in enumerate(PLOTTED_SUBSETS.items()):
        if name not in curves or name not in summary:
            continue
        row = summary[name]
        # The operating points lie on the step curve (the protocol's reading at each rate): they are
        # vertices of the line, which carries its markers there.
        x, y, marks = _step_points(*curves[name], lo, hi, rates)
        (lines[name],) = axes.plot(
            x, 100 * y, drawstyle="steps-post", color=style.colour, linestyle=style.linestyle,
            linewidth=style.linewidth, marker=style.marker, markersize=style.markersize, markevery=marks.tolist(),
            zorder=2 + offset,
            label=f"{style.label}: {row[f'num_{unit}s']:,} {unit}s, {layout.mean_label} {100 * row[layout.mean_key]:.1f} %",
        )
        ci = row.get("ci95")
        if ci is not None:  # percentile intervals need not be centred on the point: draw their ends
            beside = rates * 1.04 ** (offset - 1)  # intervals side by side, so that they do not hide each other
            bounds = 100 * np.array([[np.nan if v is None else v for v in pair] for pair in ci["sensitivity"]])
            axes.vlines(beside, bounds[:, 0], bounds[:, 1], color=style.colour, linewidth=1, alpha=0.7,
                        zorder=1.5)
    axes.set_xscale("log")
    axes.set_xlim(lo, hi)
    axes.set_xticks(rates, [f"{r:g}" for r in rates])
    axes.minorticks_off()
    axes.set_ylim(-3, 101)
    axes.set_yticks(np.arange(0, 101, 20))
    axes.set_xlabel(f"false positives per {unit}")
    axes.set_ylabel("sensitivity (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    ordered = [lines[name] for name in summary if name in lines]  # the tables' order: all, thin, thick
    axes.legend(ordered, [line.get_label() for line in ordered], loc="best", fontsize=8)
    figure.tight_layout()
    return figure


def froc_png(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], summary: dict, title: str,
             layout: ReportLayout = KEY_SLICE_LAYOUT) -> bytes:
    """:func:`froc_figure` as PNG bytes (768 x 576 px)."""
    buffer = io.BytesIO()
    froc_figure(curves, summary, title, layout).savefig(buffer, format="png")
    return buffer.getvalue()
