"""The Markdown report of an evaluation (``evaluation.md``), in the layout of the paper's tables.

Published figures shown beside ours: AlignShift (Yang, He et al., MICCAI 2020, arXiv 2005.01969),
Table 2 (DeepLesion test split, IoU 0.5, sensitivity % at 0.5-16 false positives per image) and
the thin-minus-thick gaps of its Table 3 (SPEC section 8).
"""

from __future__ import annotations

from collections.abc import Sequence

from ctlesion.evaluate.scoring import IMAGE_SUBSETS, SIZE_BANDS

#: AlignShift paper, Table 2: method -> sensitivity % at 0.5, 1, 2, 4, 8, 16 FP/image and avg[0.5-4].
PAPER_TABLE_2: dict[str, tuple[float, ...]] = {
    "2.5D x3": (71.27, 79.82, 86.30, 90.61, 93.75, 95.70, 82.00),
    "TSM x7": (75.98, 83.65, 88.44, 92.14, 94.89, 96.50, 85.05),
    "AlignShift x3": (73.00, 81.17, 87.05, 91.78, 94.63, 95.48, 83.25),
    "AlignShift x7": (78.68, 85.69, 90.37, 93.49, 95.48, 97.05, 87.06),
}

#: AlignShift paper, Table 3: thin minus thick avg[0.5-4] sensitivity, percentage points.
PAPER_THIN_MINUS_THICK: dict[str, float] = {"2.5D x7": 4.10, "TSM x7": 3.54, "AlignShift x3": 0.19, "AlignShift x7": 1.30}

PAPER_FPS_PER_IMAGE = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)

_GROUP_LABELS = {"soft_tissue": "soft tissue", **SIZE_BANDS}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _with_ci(value: float, bounds: Sequence[float | None] | None) -> str:
    if bounds is None or bounds[0] is None:
        return _pct(value)
    return f"{_pct(value)} [{_pct(bounds[0])}, {_pct(bounds[1])}]"


def _cells(row: dict, ci_everywhere: bool) -> list[str]:
    ci = row.get("ci95")
    cells = [_with_ci(s, ci["sensitivity"][k] if ci and ci_everywhere else None) for k, s in enumerate(row["sensitivity"])]
    return cells + [_with_ci(row["avg_0.5_4"], ci["avg_0.5_4"] if ci else None)]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _comparable(evaluation: dict) -> list[str]:
    """Reasons why the paper's figures are not comparable with this evaluation (empty: comparable)."""
    protocol = evaluation["protocol"]
    reasons = []
    if evaluation["split"] != "test":
        reasons.append(f"the {evaluation['split']} split, not test")
    if protocol["criterion"] != "iou" or protocol["iou_threshold"] != 0.5:
        overlap = {"iou": "IoU", "iobb": "IoBB"}[protocol["criterion"]]
        reasons.append(f"{overlap} >= {protocol['iou_threshold']:g}, not IoU >= 0.5")
    if evaluation.get("key_slices_file"):
        reasons.append("a subset of the key slices")
    if tuple(evaluation["summary"]["fps_per_image"]) != PAPER_FPS_PER_IMAGE:
        reasons.append("other false-positive rates")
    return reasons


def _header(evaluation: dict) -> list[str]:
    protocol = evaluation["protocol"]
    if evaluation.get("weights"):
        network = f" ({evaluation['model']})" if evaluation.get("model") else ""
        source = (f"model `{evaluation['weights']}`{network}; its predictions are saved in "
                  f"`{evaluation['predictions_file']}`")
    else:
        source = f"predictions file `{evaluation['predictions_file']}`"
    overlap = ("IoU (intersection over union)" if protocol["criterion"] == "iou"
               else "IoBB (intersection over the detected box's area)")
    facts = [
        ("data", f"`{evaluation['dl_info']}`, split `{evaluation['split']}` (Train_Val_Test = "
                 f"{protocol['split_code']})" + (f", key slices listed in `{evaluation['key_slices_file']}`"
                                                 if evaluation.get("key_slices_file") else "")),
        ("images, lesions", (f"{protocol['num_images']:,} key slices, {protocol['num_lesions']:,} lesions "
                            "(lesions marked Possibly_noisy excluded)")),
        ("detections", source + (f"; {protocol['images_without_predictions']:,} key slices had no entry and "
                                 "count as images without detections" if protocol.get("images_without_predictions")
                                 else "")),
        ("hit", (f"{overlap} >= {protocol['iou_threshold']:g} with a lesion's box, DeepLesion inclusive-pixel "
                "boxes; detections of all images ranked together by score; a detection of an already-hit "
                "lesion is neither a true nor a false positive")),
    ]
    boot = evaluation.get("bootstrap")
    if boot:
        facts.append(("confidence intervals", (f"95 %, percentile bootstrap over images, {boot['resamples']:,} "
                                              f"resamples, seed {boot['seed']}")))
    facts.append(("ctlesion", evaluation["version"]))
    lines = [f"# DeepLesion evaluation: {evaluation['split']} split", ""]
    lines += _table(["", ""], [[name, text] for name, text in facts])
    if evaluation.get("model_note"):
        lines += ["", f"> **Note.** {evaluation['model_note']}"]
    return lines


def render_markdown(evaluation: dict, plot_name: str | None = "froc.png") -> str:
    """The ``evaluation.md`` report of an evaluation.

    Args:
        evaluation: the ``evaluation.json`` content written by
            :func:`ctlesion.evaluate.run.run_evaluation` (``summary``, ``lesion_types``,
            ``lesion_sizes``, ``protocol``, ...). Sensitivities are fractions; the report shows %.
        plot_name: file name of the FROC plot to embed, or None.

    Returns:
        Markdown text: the facts of the evaluation, the overall table with the paper's Table 2
        rows, the thin / thick table with the gap (paper's Table 3), per lesion type and size.
    """
    summary = evaluation["summary"]
    rates = [f"{fp:g}" for fp in summary["fps_per_image"]]
    lines = _header(evaluation)

    lines += ["", "## Sensitivity (%) at false positives per image", ""]
    reasons = _comparable(evaluation)
    if reasons:
        lines += ["The AlignShift paper's figures (Table 2) are not shown: this evaluation uses "
                  + ", ".join(reasons) + ".", ""]
    else:
        lines += [("Layout of Table 2 of the AlignShift paper (DeepLesion test split, IoU >= 0.5); the paper's rows "
                  "are its published figures, for reference. 95 % confidence intervals in brackets."), ""]
    rows = [["**this evaluation**", *_cells(summary["all"], ci_everywhere=True)]]
    if not reasons:
        rows += [[f"{name} (paper)", *(f"{v:.2f}" for v in values)] for name, values in PAPER_TABLE_2.items()]
    lines += _table(["method", *rates, "avg[0.5-4]"], rows)

    lines += ["", "## Thin vs thick slices", "",
              ("Each subset is scored on its own images: its false positives per image are counted over its "
              "own images (as in Table 3 of the paper)."), ""]
    subset_rows = [[IMAGE_SUBSETS[name], f"{summary[name]['num_images']:,}", f"{summary[name]['num_lesions']:,}",
                    *_cells(summary[name], ci_everywhere=False)] for name in IMAGE_SUBSETS if name in summary]
    lines += _table(["slice interval", "images", "lesions", *rates, "avg[0.5-4]"], subset_rows)
    if "thin_minus_thick_avg_0.5_4" in summary:
        gap = summary["thin_minus_thick_avg_0.5_4"]
        bounds = summary.get("thin_minus_thick_avg_0.5_4_ci95")
        ci = f" [{100 * bounds[0]:+.1f}, {100 * bounds[1]:+.1f}]" if bounds and bounds[0] is not None else ""
        paper = ", ".join(f"{name} {value:+.2f}" for name, value in PAPER_THIN_MINUS_THICK.items())
        lines += ["", (f"Thin minus thick, avg[0.5-4]: **{100 * gap:+.1f}**{ci} percentage points "
                      f"(paper: {paper}). A thickness-robust detector keeps the gap small.")]
    else:
        lines += ["", "Thin minus thick: not available (the split lacks thin or 5 mm images)."]

    for table, title, what in (
        ("lesion_types", "By lesion type", "coarse lesion type (DL_info `Coarse_lesion_type`)"),
        ("lesion_sizes", "By lesion size", ("band of the long RECIST diameter (`Lesion_diameters_Pixel_` x pixel "
                                           "spacing)")),
    ):
        groups = evaluation.get(table) or {}
        lines += ["", f"## {title}", "",
                  (f"Sensitivity over the lesions of each {what}; false positives per image are those of all "
                  f"{summary['all']['num_images']:,} images, so every row is read at the same operating points."), ""]
        rows = [[_GROUP_LABELS.get(name, name), f"{row['num_lesions']:,}", *_cells(row, ci_everywhere=False)]
                for name, row in groups.items()]
        lines += _table(["long diameter" if table == "lesion_sizes" else "type", "lesions", *rates, "avg[0.5-4]"], rows)
    if plot_name:
        lines += ["", "## FROC curves", "", f"![FROC curves: all, thin and thick]({plot_name})"]
    return "\n".join(lines) + "\n"
