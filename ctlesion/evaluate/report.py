"""The Markdown report of an evaluation (``evaluation.md``), in the layout of the paper's tables.

Published figures shown beside ours: AlignShift (Yang, He et al., MICCAI 2020, arXiv 2005.01969),
Table 2 (DeepLesion test split, IoU 0.5, sensitivity % at 0.5-16 false positives per image) and
the thin-minus-thick gaps of its Table 3 (SPEC section 8).
"""

from __future__ import annotations

from collections.abc import Sequence

from ctlesion.evaluate.scoring import IMAGE_SUBSETS, SIZE_BANDS
from ctlesion.predict import TestTimeAugmentation

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

#: The official DeepLesion test split (``DL_info.csv``, ``Train_Val_Test`` = 3; checked against
#: ``../shared/data/deeplesion_tables/DL_info_niftiID_test.csv``): key slices and lesions in the
#: table, and those the protocol scores once the 15 lesions marked ``Possibly_noisy`` are left out.
OFFICIAL_TEST_SPLIT: dict[str, int] = {"key_slices": 4831, "lesions": 4927, "scored_key_slices": 4817,
                                       "scored_lesions": 4912}

#: The paper's test-time detection settings (SPEC section 6): at most 50 boxes per image, score
#: >= 0.001, NMS at IoU 0.5.
PAPER_DETECTIONS: dict[str, float] = {"cap": 50, "score_threshold": 0.001, "nms_iou_threshold": 0.5}

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


def paper_comparison(evaluation: dict) -> dict:
    """Whether this evaluation's figures are comparable with the paper's Table 2 rows, and why not.

    The rows are the AlignShift paper's figures on the whole official DeepLesion test split
    (4,817 key slices and 4,912 lesions scored), IoU >= 0.5, at 0.5-16 false positives per
    image, each key slice seen with its real neighbour slices. Any difference makes them not
    comparable: another split, overlap criterion or rates (``protocol_matches`` False: the
    report leaves the rows out), other image or lesion counts (a subset, a key-slice list, a
    sample), or images scored with neighbour slices absent from their series folder (the rows
    are then shown for reference only, with a sentence saying they are not comparable).

    Args:
        evaluation: the ``evaluation.json`` content (``split``, ``protocol``, optionally
            ``summary``, ``key_slices_file`` and ``neighbour_slices``).

    Returns:
        ``{"comparable": bool, "protocol_matches": bool, "reasons": [str], "official_test_split":
        OFFICIAL_TEST_SPLIT}``; ``reasons`` are phrases ("the val split, not test", ...) in the
        order split / overlap / rates / counts / neighbours.
    """
    protocol = evaluation["protocol"]
    rates = protocol.get("fps_per_image") or evaluation["summary"]["fps_per_image"]
    protocol_reasons = []
    if evaluation["split"] != "test":
        protocol_reasons.append(f"the {evaluation['split']} split, not test")
    if protocol["criterion"] != "iou" or protocol["iou_threshold"] != 0.5:
        overlap = {"iou": "IoU", "iobb": "IoBB"}[protocol["criterion"]]
        protocol_reasons.append(f"{overlap} >= {protocol['iou_threshold']:g}, not IoU >= 0.5")
    if tuple(float(r) for r in rates) != PAPER_FPS_PER_IMAGE:
        protocol_reasons.append("other false-positive rates")
    set_reasons = []
    official = OFFICIAL_TEST_SPLIT
    counts = (protocol["num_images"], protocol["num_lesions"])
    if evaluation["split"] == "test" and counts != (official["scored_key_slices"], official["scored_lesions"]):
        listed = " listed in the key-slice file" if evaluation.get("key_slices_file") else ""
        set_reasons.append(f"{counts[0]:,} key slices{listed} with {counts[1]:,} lesions, not the official test "
                           f"split's {official['scored_key_slices']:,} with {official['scored_lesions']:,}")
    neighbours = evaluation.get("neighbour_slices") or {}
    if neighbours.get("images_with_absent_neighbours"):
        set_reasons.append(f"{neighbours['images_with_absent_neighbours']:,} of {counts[0]:,} images scored with "
                           "neighbour slices absent from their series folder")
    reasons = protocol_reasons + set_reasons
    return {"comparable": not reasons, "protocol_matches": not protocol_reasons, "reasons": reasons,
            "official_test_split": dict(official)}


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _detections_fact(evaluation: dict) -> str | None:
    """The "detections per image" line of the facts table (None for reports without the entry)."""
    limits = evaluation.get("detections_per_image")
    if not limits:
        return None
    found = f"up to {limits['max_found']:,} per image, {limits['mean_found']:.1f} on average"
    if limits.get("cap") is None:
        return (f"as found in the predictions file: {found}; the detector's cap per image and score threshold "
                "are not known")
    settings = [f"at most {limits['cap']:,} per image"]
    if limits.get("score_threshold") is not None:
        settings.append(f"score >= {limits['score_threshold']:g}")
    if limits.get("nms_iou_threshold") is not None:
        settings.append(f"NMS at IoU {limits['nms_iou_threshold']:g}")
    paper = PAPER_DETECTIONS
    return (", ".join(settings) + f" (the paper: {paper['cap']}, {paper['score_threshold']:g}, "
            f"{paper['nms_iou_threshold']:g}); scored: {found}")


def _neighbours_fact(evaluation: dict) -> str | None:
    """The "neighbour slices" line of the facts table (None for reports without the entry)."""
    if "neighbour_slices" not in evaluation:
        return None
    context = evaluation["neighbour_slices"]
    if context is None:
        return "not known: the detections come from a predictions file"
    depth = context["window_slices"]
    images = evaluation["protocol"]["num_images"]
    text = f"window of {depth} slices (key slice +/- {depth // 2}); "
    absent, single = context["images_with_absent_neighbours"], context["images_single_slice_context"]
    if absent:
        text += (f"**{absent:,} of {images:,} images were scored with neighbour slices absent from their series "
                 f"folder** (the nearest present slice used instead), {single:,} of them with single-slice "
                 "context (every neighbour is the key slice itself: no 3D context)")
    elif single:
        text += f"{_count(single, 'image', 'images')} of one-slice series (single-slice context)"
    else:
        text += "every neighbour slice was in its series folder"
    beyond = context["images_beyond_series_ends"]
    return text + (f"; {_count(beyond, 'window reaches', 'windows reach')} past its series' ends (edge slice "
                   "replicated, as in the protocol)" if beyond else "")


def _split_codes(codes: int | list[int]) -> str:
    """``Train_Val_Test`` code(s) of the split scored: "3", or "1 or 2 or 3" for ``--split all``."""
    return " or ".join(map(str, codes)) if isinstance(codes, list) else str(codes)


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
                 f"{_split_codes(protocol['split_code'])})" + (f", key slices listed in `{evaluation['key_slices_file']}`"
                                                 if evaluation.get("key_slices_file") else "")),
        ("images, lesions", (f"{protocol['num_images']:,} key slices, {protocol['num_lesions']:,} lesions "
                            "(lesions marked Possibly_noisy excluded)"
                            + (f"; the official test split scores {OFFICIAL_TEST_SPLIT['scored_key_slices']:,} key "
                               f"slices and {OFFICIAL_TEST_SPLIT['scored_lesions']:,} lesions "
                               f"({OFFICIAL_TEST_SPLIT['key_slices']:,} and {OFFICIAL_TEST_SPLIT['lesions']:,} in "
                               "its table)" if evaluation["split"] == "test" else ""))),
        ("detections", source + (f"; {protocol['images_without_predictions']:,} key slices had no entry and "
                                 "count as images without detections" if protocol.get("images_without_predictions")
                                 else "")),
    ]
    facts += [(name, text) for name, text in (("detections per image", _detections_fact(evaluation)),
                                              ("neighbour slices", _neighbours_fact(evaluation))) if text]
    augmentation = evaluation.get("test_time_augmentation") or "none"
    if augmentation != "none":
        facts.append(("test-time augmentation", TestTimeAugmentation.from_name(augmentation).description))
    facts += [
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
        Markdown text: the facts of the evaluation (data, counts against the official test split,
        detection source, cap and score threshold, neighbour slices absent or replicated, hit
        rule, intervals), the overall table with the paper's Table 2 rows (left out when the
        protocol differs; with a sentence saying they are not comparable when anything differs,
        :func:`paper_comparison`), the thin / thick table with the gap (paper's Table 3), per
        lesion type and size.
    """
    summary = evaluation["summary"]
    rates = [f"{fp:g}" for fp in summary["fps_per_image"]]
    lines = _header(evaluation)

    lines += ["", "## Sensitivity (%) at false positives per image", ""]
    comparison = paper_comparison(evaluation)
    official = comparison["official_test_split"]
    if not comparison["protocol_matches"]:
        lines += [("These figures are **not comparable with the paper's rows** (AlignShift Table 2, not shown): "
                   "this evaluation uses " + "; ".join(comparison["reasons"]) + "."), ""]
    elif not comparison["comparable"]:
        lines += [("These figures are **not comparable with the paper's rows**, its published figures on the whole "
                   "official test split with each key slice's real neighbour slices (layout of Table 2 of the "
                   "AlignShift paper, IoU >= 0.5), shown for reference only: this evaluation scores "
                   + "; ".join(comparison["reasons"]) + ". 95 % confidence intervals in brackets."), ""]
    else:
        lines += [("Layout of Table 2 of the AlignShift paper (DeepLesion test split, IoU >= 0.5); the paper's rows "
                  f"are its published figures on the same {official['scored_key_slices']:,} key slices and "
                  f"{official['scored_lesions']:,} lesions. 95 % confidence intervals in brackets."), ""]
    rows = [["**this evaluation**", *_cells(summary["all"], ci_everywhere=True)]]
    if comparison["protocol_matches"]:
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
        caveat = "" if comparison["comparable"] else ", not comparable, see above"
        lines += ["", (f"Thin minus thick, avg[0.5-4]: **{100 * gap:+.1f}**{ci} percentage points "
                      f"(paper{caveat}: {paper}). A thickness-robust detector keeps the gap small.")]
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
