"""Writers of user-facing outputs: results.json, label maps, overlay pictures (SPEC section 9)."""

from ctlesion.atomic import atomic_write_bytes, atomic_write_text, staged_outputs
from ctlesion.report.overlays import render_overlay, write_overlay
from ctlesion.report.results import label_map, study_record, write_results_json

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "label_map",
    "render_overlay",
    "staged_outputs",
    "study_record",
    "write_overlay",
    "write_results_json",
]
