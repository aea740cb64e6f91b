"""`ctlesion info PATH...`: the series each input holds and what was skipped, from headers only.

The work is :func:`ctlesion.io.discover`; this module only presents it: rich tables on stdout,
or JSON (``--json``) with exactly the keys of issue 3 per series (:data:`SERIES_KEYS`), the
series of all inputs in input order; at the top level ``skipped`` (``{path, reason}`` of every
input), ``inputs`` (per input: ``path``, ``series`` = indices into the series list, and
``warnings`` about files that belong to no series) and ``selection_rule``.

Headers only, with one exception: a NIfTI file whose values can be non-finite (a float data
type, or scaled by scl_slope / scl_inter) has its data block read, so that its NaN / inf voxels
(which ``detect`` sets to air) are counted in the series' warnings, and a volume without any
finite voxel is listed as unreadable (see :func:`ctlesion.io.nifti.describe_nifti`). DICOM pixel
data are never decoded here.

The description is never cut short: written to a file or pipe, the table is as wide as it needs;
on a terminal too narrow for it, a long description folds inside its cell (other cells are cut
with an ellipsis only when the terminal is narrower than the numbers need). The hints about ``--series`` / ``--all-series`` and
the selection rule are printed for DICOM inputs only: a NIfTI file or DeepLesion PNG series holds
one volume, which ``detect`` reads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ctlesion.io import SELECTION_RULE, Discovery, SeriesInfo, discover

#: The keys of each series in the JSON (issue 3); the table also shows number, modality and z extent.
SERIES_KEYS = ("series_uid", "description", "num_slices", "rows", "columns", "pixel_spacing_mm", "slice_interval_mm",
               "slice_thickness_mm", "gantry_tilt_deg", "warnings", "selected")
#: Skipped entries shown per input in the table view (all of them are in the JSON).
MAX_SKIPPED_ROWS = 20
#: Output width when stdout is not a terminal (a file or pipe has no width; rich would use 80);
#: wider when a table needs it, so that no cell is folded.
PIPE_WIDTH = 140


def info(paths: list[Path], json_output: bool) -> None:
    """Describe every input: tables on stdout, or JSON with ``json_output``.

    Args:
        paths: DICOM folders (searched recursively) and/or NIfTI files.
        json_output: print JSON (see the module docstring) instead of tables.

    Raises:
        CtlesionError: an input does not exist, is not a folder or NIfTI file (nor a lone
            Enhanced multi-frame DICOM file), is an empty folder, holds no DICOM file, or cannot
            be read (nothing is printed then).
    """
    discoveries = [discover(Path(p), scan_values=True) for p in paths]
    if json_output:
        sys.stdout.write(json.dumps(info_json(discoveries), indent=1) + "\n")
        return
    to_pipe = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    console = Console(width=_pipe_width(discoveries) if to_pipe else None)
    for discovery in discoveries:
        _print_discovery(console, discovery)
    if any(_is_dicom(d) for d in discoveries):
        console.print(f"selection rule: {escape(SELECTION_RULE)}")


def info_json(discoveries: list[Discovery]) -> dict[str, Any]:
    """The ``--json`` document for a list of discoveries (one per input path)."""
    series, skipped, inputs = [], [], []
    for discovery in discoveries:
        first = len(series)
        series += [{key: value for key, value in s.to_dict().items() if key in SERIES_KEYS} for s in discovery.series]
        skipped += [dict(entry) for entry in discovery.skipped]
        inputs.append({"path": discovery.path, "series": list(range(first, len(series))),
                       "warnings": list(discovery.warnings)})
    return {"series": series, "skipped": skipped, "inputs": inputs, "selection_rule": SELECTION_RULE}


def _is_dicom(discovery: Discovery) -> bool:
    """A DICOM input (folder or multi-frame file): the describers of the others list no images."""
    return bool(discovery.images)


def _table(discovery: Discovery) -> Table:
    """The series table of one input; the description is never cut short (it folds in its cell)."""
    caption = ("read: yes = by default, can = with --series / --all-series, no = cannot" if _is_dicom(discovery)
               else "read: yes = detect reads it, no = cannot")
    table = Table(title=escape(discovery.path), title_justify="left", box=box.SIMPLE_HEAD, caption=caption,
                  caption_justify="left")
    for name, justify in [("#", "right"), ("description", "left"), ("mod.", "left"), ("slices", "right"),
                          ("matrix", "right"), ("pixel mm", "right"), ("interval mm", "right"),
                          ("thickness mm", "right"), ("z extent mm", "right"), ("tilt deg", "right"), ("read", "center")]:
        table.add_column(name, justify=justify, overflow="fold" if name == "description" else "ellipsis")
    for series in discovery.series:
        table.add_row(*_cells(series))
    return table


def _pipe_width(discoveries: list[Discovery]) -> int:
    """Output width for a file or pipe: :data:`PIPE_WIDTH`, or wider when a table needs it whole."""
    wide = Console(width=10_000)
    widths = [wide.measure(_table(d)).maximum for d in discoveries if d.series]
    return max([PIPE_WIDTH, *widths])


def _print_discovery(console: Console, discovery: Discovery) -> None:
    if discovery.series:
        console.print(_table(discovery))
    else:
        console.print(f"[bold]{escape(discovery.path)}[/]: no axial image series")
    for series in discovery.series:
        for warning in series.warnings:
            console.print(f"  [yellow]warning[/] {_name(series)}: {escape(warning)}")
    for warning in discovery.warnings:
        console.print(f"  [yellow]warning[/] {escape(warning)}")
    chosen = discovery.selected
    if chosen is not None and not _is_dicom(discovery):
        console.print(f"  detect reads it ({escape(chosen.selection)})")
    elif chosen is not None:
        console.print(f"  detect reads {_name(chosen)} by default ({escape(chosen.selection)}); "
                      "choose another with --series, or all with --all-series")
    elif discovery.series:
        console.print("  [red]no series can be read[/]: " + "; ".join(
            f"{_name(s)}: {escape(s.selection)}" for s in discovery.series))
    _print_skipped(console, discovery)
    console.print()


def _print_skipped(console: Console, discovery: Discovery) -> None:
    if not discovery.skipped:
        console.print("  skipped: nothing")
        return
    table = Table(title=f"skipped ({len(discovery.skipped)})", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("path")
    table.add_column("reason")
    root = Path(discovery.path)
    for entry in discovery.skipped[:MAX_SKIPPED_ROWS]:
        path = Path(entry["path"])
        shown = path.relative_to(root).as_posix() if path.is_relative_to(root) and path != root else str(path)
        table.add_row(escape(shown), escape(entry["reason"]))
    console.print(table)
    if len(discovery.skipped) > MAX_SKIPPED_ROWS:
        console.print(f"  ... and {len(discovery.skipped) - MAX_SKIPPED_ROWS} more (see --json)")


def _name(series: SeriesInfo) -> str:
    return escape(f"#{series.series_number}" if series.series_number is not None else f"[{series.index + 1}]")


def _pixel_text(spacing_mm: tuple[float, float]) -> str:
    rows_mm, columns_mm = spacing_mm
    return f"{rows_mm:.3f}" if abs(rows_mm - columns_mm) < 5e-4 else f"{rows_mm:.3f}x{columns_mm:.3f}"


def _cells(series: SeriesInfo) -> list[str]:
    def mm(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return [
        _name(series),
        escape(series.description or "-"),
        escape(series.modality or "-"),
        str(series.num_slices) + (f" ({series.num_images} img)" if series.num_images != series.num_slices else ""),
        f"{series.rows}x{series.columns}",
        _pixel_text(series.pixel_spacing_mm),
        mm(series.slice_interval_mm, 3),
        mm(series.slice_thickness_mm),
        mm(series.z_extent_mm, 1),
        f"{series.gantry_tilt_deg:.2f}",
        "yes" if series.selected else ("can" if series.selectable else "no"),
    ]
