"""The summary sheet: one picture of all of a study's lesions, ``<study>_lesions.png`` (SPEC section 9).

A grid of tiles, the most confident lesion first (descending score; ties in label order). Each
tile is the lesion's key slice enlarged around its box (the same region as on its overlay,
:func:`~ctlesion.report.overlays.crop_window_px`) with the box, mask contour and RECIST axes,
and under it the label, score, long x short axis (mm), key slice, LPS z and a scale bar. The
header names the study, the window (W 400 / L 40 HU), the colours and the orientation (read from
the volume's direction matrix, as on the overlays: see :mod:`ctlesion.report.overlays`).

The grid is capped: at most :data:`MAX_TILES` tiles (the most confident lesions), with a line in
the header saying how many more were left out and that every lesion is in results.json and has
its own overlay. One file per study, no pagination. A study without lesions gets a sheet that
says so, with a few evenly spaced whole slices (:data:`OVERVIEW_SLICES`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ctlesion.postprocess import Lesion
from ctlesion.report.overlays import (
    BACKGROUND_RGB,
    BOX_RGB,
    CONTOUR_RGB,
    LONG_AXIS_RGB,
    MUTED_TEXT_RGB,
    SHORT_AXIS_RGB,
    SOFT_TISSUE_WINDOW_HU,
    Panel,
    TextItem,
    crop_window_px,
    draw_lesion_marks,
    draw_panel_image,
    draw_scale_bar,
    encode_png,
    format_mm,
    key_slice_u8,
    key_slice_z_lps_mm,
    make_panel,
    orientation_letters,
    render_with_text,
    window_to_uint8,
)
from ctlesion.report.results import format_score
from ctlesion.volume import Volume

#: At most this many tiles on a sheet (the most confident lesions); the rest are counted in the header.
MAX_TILES = 40
#: At most this many tiles per row.
MAX_COLUMNS = 8
#: Side of a tile's image (pixels); the caption under it, the gap between tiles.
TILE_PX = 240
CAPTION_PX = 76
GAP_PX = 18
#: Header height (title, conventions, legend), plus NOTE_PX when a "N more" line is needed;
#: a sheet is at least MIN_WIDTH_PX wide (the header's text).
HEADER_PX = 122
NOTE_PX = 28
MIN_WIDTH_PX = 1040
#: Colour of the "N more lesions not shown" line.
NOTE_RGB = (255, 180, 60)
#: Whole slices shown on the sheet of a study without lesions.
OVERVIEW_SLICES = 4
#: A tile's scale bar is at most this fraction of the tile (room for its label and the z value).
TILE_SCALE_BAR_FRACTION = 0.25


@dataclass(frozen=True)
class SheetGrid:
    """The grid of a summary sheet (:func:`sheet_grid`).

    Attributes:
        shown: number of tiles drawn (the most confident lesions); hidden: lesions left out.
        columns, rows: grid size (``rows * columns >= shown``).
        header_px: height of the header above the tiles.
        canvas_wh: picture size (width, height) in pixels.
    """

    shown: int
    hidden: int
    columns: int
    rows: int
    header_px: int
    canvas_wh: tuple[int, int]

    def tile_origin(self, index: int) -> tuple[int, int]:
        """Canvas pixel (x, y) of the top-left corner of tile ``index``'s image slot (row-major)."""
        row, column = divmod(index, self.columns)
        return GAP_PX + column * (TILE_PX + GAP_PX), self.header_px + row * (TILE_PX + CAPTION_PX + GAP_PX)


def sheet_grid(num_lesions: int, max_tiles: int = MAX_TILES) -> SheetGrid:
    """Grid layout for ``num_lesions`` lesions: ``min(n, max_tiles)`` tiles, about 3 columns per 2 rows.

    Raises:
        ValueError: if ``num_lesions`` is negative or ``max_tiles`` < 1.
    """
    if num_lesions < 0 or max_tiles < 1:
        raise ValueError(f"need num_lesions >= 0 and max_tiles >= 1, got {num_lesions} and {max_tiles}")
    shown = min(num_lesions, max_tiles)
    columns = max(1, min(shown, MAX_COLUMNS, math.ceil(math.sqrt(1.5 * shown))))
    rows = math.ceil(shown / columns)
    header = HEADER_PX + (NOTE_PX if num_lesions > shown else 0)
    width = max(MIN_WIDTH_PX, GAP_PX + columns * (TILE_PX + GAP_PX))
    height = header + rows * (TILE_PX + CAPTION_PX + GAP_PX)
    return SheetGrid(shown=shown, hidden=num_lesions - shown, columns=columns, rows=rows, header_px=header,
                     canvas_wh=(width, height))


def sheet_order(lesions: Sequence[Lesion]) -> list[int]:
    """Indices of ``lesions`` in sheet order: descending score, ties by index (label - 1); NaN scores last."""
    def key(i: int) -> tuple[bool, float, int]:
        score = float(lesions[i].score)
        return (not np.isfinite(score), -score if np.isfinite(score) else 0.0, i)

    return sorted(range(len(lesions)), key=key)


def tile_panel(volume: Volume, lesion: Lesion, origin_xy: tuple[int, int]) -> Panel:
    """The panel of one tile: the lesion's enlarged region fitted into the tile's image slot."""
    return make_panel(crop_window_px(volume, lesion), volume.spacing_zyx_mm[1:], origin_xy, TILE_PX,
                      bar_offset_px=CAPTION_PX - 20, bar_fraction=TILE_SCALE_BAR_FRACTION)


def render_summary_sheet(volume: Volume, lesions: Sequence[Lesion], *, study_name: str | None = None,
                         max_tiles: int = MAX_TILES, score_threshold: float | None = None) -> np.ndarray:
    """The study's summary sheet as an (H, W, 3) uint8 BGR image.

    Without lesions, the sheet says so (with the score threshold when given) and shows
    :data:`OVERVIEW_SLICES` evenly spaced whole slices, so that the reader sees what was read.

    Args:
        volume: the input volume (HU (Z, Y, X), spacing, LPS geometry).
        lesions: the study's lesions in label order (``lesions[i]`` has label ``i + 1``).
        study_name: shown in the title.
        max_tiles: at most this many tiles (the most confident lesions); the header counts the rest.
        score_threshold: the detection threshold, named on a sheet without lesions.

    Raises:
        ValueError: if a key slice is outside the volume, or ``max_tiles`` < 1.
    """
    grid = sheet_grid(len(lesions), max_tiles)
    if grid.shown == 0:
        return _no_lesion_sheet(volume, study_name, score_threshold)
    width, height = grid.canvas_wh
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[...] = BACKGROUND_RGB
    texts = _header(canvas, volume, len(lesions), grid, study_name)
    for tile, index in enumerate(sheet_order(lesions)[: grid.shown]):
        lesion = lesions[index]
        slot_x, slot_y = grid.tile_origin(tile)
        canvas[slot_y : slot_y + TILE_PX, slot_x : slot_x + TILE_PX] = 0
        panel = tile_panel(volume, lesion, (slot_x, slot_y))
        draw_lesion_marks(draw_panel_image(canvas, key_slice_u8(volume, lesion), panel), panel, volume, lesion)
        right, line1, line2 = slot_x + TILE_PX, slot_y + TILE_PX + 15, slot_y + TILE_PX + 37
        texts += [
            TextItem(slot_x, line1, f"lesion {index + 1}", size_px=17.0, bold=True),
            TextItem(right, line1, f"score {format_score(lesion.score)}", size_px=17.0, bold=True, ha="right"),
            TextItem(slot_x, line2, _axes_text(lesion), size_px=16.0),
            TextItem(right, line2, f"slice {lesion.key_slice}", size_px=15.0, rgb=MUTED_TEXT_RGB, ha="right"),
            TextItem(right, panel.bar_origin_xy[1] + 2, f"z {key_slice_z_lps_mm(volume, lesion):+.1f}",
                     size_px=15.0, rgb=MUTED_TEXT_RGB, ha="right"),
        ]
        draw_scale_bar(canvas, panel, texts, size_px=15.0)
    return render_with_text(canvas, texts)


def _no_lesion_sheet(volume: Volume, study_name: str | None, score_threshold: float | None) -> np.ndarray:
    """The sheet of a study without lesions: a header and evenly spaced whole slices."""
    num_z = volume.shape_zyx[0]
    slices = sorted({int(round((k + 1) * (num_z - 1) / (OVERVIEW_SLICES + 1))) for k in range(OVERVIEW_SLICES)})
    width = max(MIN_WIDTH_PX, GAP_PX + len(slices) * (TILE_PX + GAP_PX))
    canvas = np.empty((HEADER_PX + TILE_PX + CAPTION_PX + GAP_PX, width, 3), np.uint8)
    canvas[...] = BACKGROUND_RGB
    at = f" at score >= {score_threshold:g}" if score_threshold is not None else ""
    texts = [TextItem(GAP_PX, 26, (f"{study_name}: " if study_name else "") + f"no lesion found{at}",
                      size_px=26.0, bold=True),
             TextItem(GAP_PX, 60, f"{len(slices)} of the {num_z} slices, evenly spaced · soft-tissue window "
                      f"W {SOFT_TISSUE_WINDOW_HU[0]:g} / L {SOFT_TISSUE_WINDOW_HU[1]:g} HU · z: LPS mm",
                      size_px=16.0, rgb=MUTED_TEXT_RGB)]
    _, num_y, num_x = volume.shape_zyx
    for tile, z in enumerate(slices):
        slot_x, slot_y = GAP_PX + tile * (TILE_PX + GAP_PX), HEADER_PX
        canvas[slot_y : slot_y + TILE_PX, slot_x : slot_x + TILE_PX] = 0
        panel = make_panel((0, 0, num_x, num_y), volume.spacing_zyx_mm[1:], (slot_x, slot_y), TILE_PX,
                           bar_offset_px=CAPTION_PX - 20, bar_fraction=TILE_SCALE_BAR_FRACTION)
        draw_panel_image(canvas, window_to_uint8(volume.hu[z], *SOFT_TISSUE_WINDOW_HU), panel)
        z_lps = float(volume.voxel_to_lps(np.array([(num_x - 1) / 2, (num_y - 1) / 2, float(z)]))[2])
        texts += [TextItem(slot_x, slot_y + TILE_PX + 15, f"slice {z}", size_px=17.0, bold=True),
                  TextItem(slot_x + TILE_PX, slot_y + TILE_PX + 15, f"z {z_lps:+.1f}", size_px=15.0,
                           rgb=MUTED_TEXT_RGB, ha="right")]
        draw_scale_bar(canvas, panel, texts, size_px=15.0)
    return render_with_text(canvas, texts)


def _axes_text(lesion: Lesion) -> str:
    long_mm, short_mm = format_mm(lesion.long_axis_mm), format_mm(lesion.short_axis_mm)
    if long_mm == "n/a" and short_mm == "n/a":
        return "axes not measured"
    return f"{long_mm[:-3] if long_mm != 'n/a' else 'n/a'} \u00d7 {short_mm}"


def _header(canvas: np.ndarray, volume: Volume, num_lesions: int, grid: SheetGrid,
            study_name: str | None) -> list[TextItem]:
    """Queue the header's text (and draw its legend swatches)."""
    x = GAP_PX
    noun = "lesion" if num_lesions == 1 else "lesions"
    title = (f"{study_name}: " if study_name else "") + f"{num_lesions} {noun}" + (
        ", most confident first" if num_lesions > 1 else "")
    letters = orientation_letters(volume.direction_lps)
    standard = letters == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    view = (f"image left = patient {letters['left']}, top = {letters['top']} "
            + ("(radiological view)" if standard else "(NOT the standard radiological view)"))
    texts = [
        TextItem(x, 26, title, size_px=26.0, bold=True),
        TextItem(x, 60, "Each lesion's key slice, enlarged around it \u00b7 soft-tissue window "
                 f"W {SOFT_TISSUE_WINDOW_HU[0]:g} / L {SOFT_TISSUE_WINDOW_HU[1]:g} HU \u00b7 "
                 "long \u00d7 short axis (RECIST) \u00b7 z: LPS mm", size_px=16.0, rgb=MUTED_TEXT_RGB),
    ]
    y, item_x = 88, x
    for colour, name in ((BOX_RGB, "box"), (CONTOUR_RGB, "mask contour"), (LONG_AXIS_RGB, "long axis"),
                         (SHORT_AXIS_RGB, "short axis")):
        cv2.line(canvas, (item_x, y), (item_x + 26, y), colour, thickness=3)
        texts.append(TextItem(item_x + 34, y, name, size_px=16.0))
        item_x += 34 + 9 * len(name) + 30
    texts.append(TextItem(item_x + 10, y, view, size_px=16.0, rgb=MUTED_TEXT_RGB))
    if grid.hidden:
        texts.append(TextItem(x, HEADER_PX - 6, f"Showing the {grid.shown} most confident of {num_lesions} lesions; "
                              f"the other {grid.hidden} are in results.json and have their own overlays.",
                              size_px=16.0, rgb=NOTE_RGB))
    return texts


def write_summary_sheet(volume: Volume, lesions: Sequence[Lesion], path: Path, *, study_name: str | None = None,
                        max_tiles: int = MAX_TILES, score_threshold: float | None = None) -> Path:
    """Write the study's summary sheet (:func:`render_summary_sheet`) as a PNG, atomically.

    Args:
        volume: the input volume.
        lesions: the study's lesions in label order (``lesions[i]`` has label ``i + 1``).
        path: destination ``.png`` file (``detect`` names it ``<study>_lesions.png``).
        study_name: shown in the title.
        max_tiles: at most this many tiles; the header counts the lesions left out.

        score_threshold: the detection threshold, named on a sheet without lesions.

    Returns:
        ``path``.

    Raises:
        ValueError: if a key slice is outside the volume, or ``max_tiles`` < 1.
        OSError: if the PNG cannot be encoded or written.
    """
    image = render_summary_sheet(volume, lesions, study_name=study_name, max_tiles=max_tiles,
                                 score_threshold=score_threshold)
    encode_png(image, Path(path))
    return Path(path)
