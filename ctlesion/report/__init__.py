"""Writers of user-facing outputs: results.json, label maps, overlay pictures and summary sheets (SPEC section 9)."""

from ctlesion.atomic import atomic_write_bytes, atomic_write_text, staged_outputs
from ctlesion.report.overlays import render_overlay, write_overlay
from ctlesion.report.results import format_score, label_map, study_record, write_results_json
from ctlesion.report.summary_sheet import render_summary_sheet, write_summary_sheet

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "format_score",
    "label_map",
    "render_overlay",
    "render_summary_sheet",
    "staged_outputs",
    "study_record",
    "write_overlay",
    "write_results_json",
    "write_summary_sheet",
]
