"""Overlay pictures: each lesion's key slice, enlarged, with its box, contour and RECIST axes (SPEC section 9).

One PNG per lesion (:func:`write_overlay`); the study's summary sheet of all lesions is in
:mod:`ctlesion.report.summary_sheet`. Both are built the same way: the slice images and every
geometric mark (box, contour, axes, scale bars, legend swatches) are drawn with OpenCV onto an
RGB canvas at exact pixel positions (which the tests measure), then the text is set over that
canvas with matplotlib's Agg renderer (no display; DejaVu Sans, shipped with matplotlib), which
places the canvas unresampled. An overlay takes about 0.1 s to draw and as long to encode (CPU).

Display conventions, the same on every picture:

* **Orientation.** Slices are shown as stored: column x to the right, row y down, the pixel
  coordinates of ``box_vox`` and results.json. For a standard axial DICOM volume (LPS direction
  matrix = identity) that is the **radiological convention**: the patient's right on the
  image's left, anterior at the top, seen from the feet. The letters at the image edges are read
  from :attr:`Volume.direction_lps <ctlesion.volume.Volume>` (:func:`orientation_letters`), so a
  volume stored flipped or rotated shows the true patient directions (R/L, A/P, S/I; two letters
  on an oblique axis).
* **Square display pixels.** An anisotropic pixel spacing is stretched so that one millimetre
  is the same number of display pixels along x and y; scale bars are in mm.
* **Window.** Soft tissue, W 400 / L 40 HU (:data:`SOFT_TISSUE_WINDOW_HU`), named on the picture.
* **Colours.** Detector box green, mask contour red, RECIST long axis magenta, short axis cyan,
  enlarged region (on the full slice) yellow, scale bars white.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ctlesion.atomic import atomic_write_bytes
from ctlesion.postprocess import Lesion
from ctlesion.report.results import format_score
from ctlesion.volume import Volume

#: Soft-tissue display window (width, level) in HU.
SOFT_TISSUE_WINDOW_HU = (400.0, 40.0)

# Colours (RGB).
BOX_RGB = (0, 255, 0)  # green
CONTOUR_RGB = (255, 0, 0)  # red
LONG_AXIS_RGB = (255, 0, 255)  # magenta
SHORT_AXIS_RGB = (0, 255, 255)  # cyan
CROP_FRAME_RGB = (255, 255, 0)  # yellow: the enlarged region, on the full slice
SCALE_BAR_RGB = (255, 255, 255)  # white
TEXT_RGB = (255, 255, 255)
MUTED_TEXT_RGB = (175, 175, 175)
BACKGROUND_RGB = (28, 28, 28)  # the picture around the (black-letterboxed) images

#: The full key slice is fitted into a square of this many pixels (longer side exactly this).
FULL_PANEL_PX = 600
#: The enlarged region is fitted into a square of this many pixels.
CROP_PANEL_PX = 600
#: Space on the left, top and right of each image: orientation letters and captions.
MARGIN_PX = 36
#: Space under each image: the bottom orientation letter, then the scale bar.
BOTTOM_MARGIN_PX = 68
#: Width of the text column (measurements, legend, orientation note) on the right.
INFO_WIDTH_PX = 400
#: Scale bar: thickness, and its top row's distance below the image's slot.
SCALE_BAR_THICKNESS_PX = 5
SCALE_BAR_OFFSET_PX = 42
#: Scale bar lengths to choose from (mm): the longest that fits :data:`SCALE_BAR_FRACTION`.
NICE_SCALE_BAR_MM = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)
#: A scale bar is at most this fraction of its image's width.
SCALE_BAR_FRACTION = 0.3
#: Enlarged region: a square of side CROP_CONTEXT x the box's longer side, at least
#: MIN_CROP_MM and MIN_CROP_PX pixels (context around small lesions), at most the slice.
CROP_CONTEXT = 2.5
MIN_CROP_MM = 40.0
MIN_CROP_PX = 24

_DPI = 100.0
_FONT = "DejaVu Sans"  # ships with matplotlib: the same glyphs on every machine
_LINE_PX = 26  # info column line height
_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))  # (negative, positive) LPS x, y, z


def window_to_uint8(hu: np.ndarray, width_hu: float, level_hu: float) -> np.ndarray:
    """Map HU to uint8 grey levels through a display window (level +/- width / 2 -> 0..255)."""
    low = level_hu - width_hu / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - low) * (255.0 / width_hu)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Geometry helpers (pure; the tests check their numbers)


def direction_letters(vector_lps: Sequence[float], min_component: float = 0.25) -> str:
    """Patient-direction letters of an LPS direction vector, dominant first.

    Args:
        vector_lps: (3,) direction in LPS (any length > 0).
        min_component: components with a smaller absolute value (after normalising) get no
            letter; the dominant one always does.

    Returns:
        For example ``"L"`` for (1, 0, 0), ``"A"`` for (0, -1, 0), ``"LP"`` for a 30-degree
        oblique (0.87, 0.5, 0).
    """
    v = np.asarray(vector_lps, dtype=np.float64).reshape(3)
    v = v / np.linalg.norm(v)
    order = sorted(range(3), key=lambda i: -abs(v[i]))
    return "".join(_AXIS_LETTERS[i][int(v[i] > 0)] for k, i in enumerate(order)
                   if k == 0 or abs(v[i]) >= min_component)


def orientation_letters(direction_lps: np.ndarray) -> dict[str, str]:
    """The patient direction at each edge of a slice shown as stored (column x right, row y down).

    Args:
        direction_lps: (3, 3) matrix whose columns are the x, y, z index axes in LPS
            (:attr:`Volume.direction_lps <ctlesion.volume.Volume>`).

    Returns:
        ``{"left", "right", "top", "bottom"}`` -> letters (:func:`direction_letters`). A standard
        axial volume (identity) gives left R, right L, top A, bottom P: the radiological view.
    """
    direction = np.asarray(direction_lps, dtype=np.float64).reshape(3, 3)
    column, row = direction[:, 0], direction[:, 1]
    return {"left": direction_letters(-column), "right": direction_letters(column),
            "top": direction_letters(-row), "bottom": direction_letters(row)}


def scale_bar_mm(width_mm: float, fraction: float = SCALE_BAR_FRACTION) -> float:
    """The longest of :data:`NICE_SCALE_BAR_MM` not longer than ``fraction * width_mm`` (else the shortest)."""
    fitting = [mm for mm in NICE_SCALE_BAR_MM if mm <= fraction * width_mm]
    return fitting[-1] if fitting else NICE_SCALE_BAR_MM[0]


def crop_window_px(volume: Volume, lesion: Lesion) -> tuple[int, int, int, int]:
    """The region of the key slice shown enlarged: integer pixel bounds (x0, y0, x1, y1), ends exclusive.

    A square in mm centred on the lesion's box, of side :data:`CROP_CONTEXT` x the box's longer
    side but at least :data:`MIN_CROP_MM` and :data:`MIN_CROP_PX` pixels, each side at most the
    slice; near the slice's edge it is shifted inwards (not shrunk), so it contains the whole box
    whenever the box lies inside the slice.
    """
    _, num_y, num_x = volume.shape_zyx
    spacing_y, spacing_x = volume.spacing_zyx_mm[1:]
    bx1, by1, _, bx2, by2, _ = (float(v) for v in lesion.box_vox)
    box_mm = max((bx2 - bx1) * spacing_x, (by2 - by1) * spacing_y, 0.0)
    side_mm = max(CROP_CONTEXT * box_mm, MIN_CROP_MM, MIN_CROP_PX * min(spacing_x, spacing_y))
    bounds = []
    for lo, hi, spacing, num in ((bx1, bx2, spacing_x, num_x), (by1, by2, spacing_y, num_y)):
        size = min(num, max(1, math.ceil(side_mm / spacing - 1e-9)))
        start = round((lo + hi) / 2.0 - size / 2.0)
        bounds.append((min(max(start, 0), num - size), size))
    (x0, width), (y0, height) = bounds
    return x0, y0, x0 + width, y0 + height


@dataclass(frozen=True)
class Panel:
    """Where a rectangle of the key slice is drawn on a picture (all integers are canvas pixels).

    Attributes:
        window_px: (x0, y0, x1, y1) integer pixel bounds of the slice region shown, ends exclusive.
        origin_xy: canvas position (x, y) of the displayed region's top-left corner.
        size_wh: displayed size (width, height); square display pixels, so its aspect ratio is
            that of the region in mm.
        px_per_mm: display pixels per mm along x (``size_wh[0] / (x1 - x0) / spacing_x``;
            along y it differs only by rounding).
        bar_mm: scale bar length in mm; bar_px: its length in display pixels
            (``round(bar_mm * px_per_mm)``); bar_origin_xy: its top-left canvas pixel (under the
            slot, left-aligned with the image).
    """

    window_px: tuple[int, int, int, int]
    origin_xy: tuple[int, int]
    size_wh: tuple[int, int]
    px_per_mm: float
    bar_mm: float
    bar_px: int
    bar_origin_xy: tuple[int, int]

    @property
    def scale_xy(self) -> tuple[float, float]:
        """Display pixels per slice pixel (fx, fy)."""
        x0, y0, x1, y1 = self.window_px
        return self.size_wh[0] / (x1 - x0), self.size_wh[1] / (y1 - y0)

    def to_local(self, x: float, y: float) -> tuple[float, float]:
        """Continuous slice pixel coordinates -> coordinates inside the displayed image."""
        fx, fy = self.scale_xy
        return (x - self.window_px[0]) * fx, (y - self.window_px[1]) * fy


def make_panel(window_px: tuple[int, int, int, int], spacing_yx_mm: tuple[float, float],
               slot_origin_xy: tuple[int, int], slot_px: int, bar_offset_px: int = SCALE_BAR_OFFSET_PX,
               bar_fraction: float = SCALE_BAR_FRACTION) -> Panel:
    """Fit a slice region into a square slot of ``slot_px`` pixels (centred, square display pixels).

    The scale bar (:func:`scale_bar_mm` of the region's width and ``bar_fraction``) goes
    ``bar_offset_px`` under the slot, left-aligned with the image.
    """
    x0, y0, x1, y1 = window_px
    spacing_y, spacing_x = spacing_yx_mm
    width_mm, height_mm = (x1 - x0) * spacing_x, (y1 - y0) * spacing_y
    zoom = slot_px / max(width_mm, height_mm)
    size = (max(1, round(width_mm * zoom)), max(1, round(height_mm * zoom)))
    origin = (slot_origin_xy[0] + (slot_px - size[0]) // 2, slot_origin_xy[1] + (slot_px - size[1]) // 2)
    px_per_mm = size[0] / (x1 - x0) / spacing_x
    bar_mm = scale_bar_mm(width_mm, bar_fraction)
    return Panel(window_px=(x0, y0, x1, y1), origin_xy=origin, size_wh=size, px_per_mm=px_per_mm,
                 bar_mm=bar_mm, bar_px=max(1, round(bar_mm * px_per_mm)),
                 bar_origin_xy=(origin[0], slot_origin_xy[1] + slot_px + bar_offset_px))


@dataclass(frozen=True)
class OverlayLayout:
    """Pixel layout of one overlay picture (:func:`overlay_layout`).

    Attributes:
        canvas_wh: picture size (width, height).
        full: the whole key slice (left); crop: the enlarged region (middle).
        full_slot_xy, crop_slot_xy: top-left corners of the square slots (black) the two
            images are centred in (:data:`FULL_PANEL_PX`, :data:`CROP_PANEL_PX`).
        info_x: left edge of the text column (right).
    """

    canvas_wh: tuple[int, int]
    full: Panel
    crop: Panel
    full_slot_xy: tuple[int, int]
    crop_slot_xy: tuple[int, int]
    info_x: int


def overlay_layout(volume: Volume, lesion: Lesion) -> OverlayLayout:
    """The layout of ``lesion``'s overlay picture: the full slice, the enlarged region, the text column."""
    _, num_y, num_x = volume.shape_zyx
    spacing_yx = volume.spacing_zyx_mm[1:]
    full = make_panel((0, 0, num_x, num_y), spacing_yx, (MARGIN_PX, MARGIN_PX), FULL_PANEL_PX)
    crop_x = MARGIN_PX + FULL_PANEL_PX + 2 * MARGIN_PX
    crop = make_panel(crop_window_px(volume, lesion), spacing_yx, (crop_x, MARGIN_PX), CROP_PANEL_PX)
    info_x = crop_x + CROP_PANEL_PX + MARGIN_PX + 24
    return OverlayLayout(canvas_wh=(info_x + INFO_WIDTH_PX, MARGIN_PX + max(FULL_PANEL_PX, CROP_PANEL_PX)
                                    + BOTTOM_MARGIN_PX),
                         full=full, crop=crop, full_slot_xy=(MARGIN_PX, MARGIN_PX),
                         crop_slot_xy=(crop_x, MARGIN_PX), info_x=info_x)


def key_slice_z_lps_mm(volume: Volume, lesion: Lesion) -> float:
    """LPS z (mm) of the centre of the lesion's box on its key slice (the slice's z when it is axial)."""
    x1, y1, _, x2, y2, _ = (float(v) for v in lesion.box_vox)
    # Continuous pixel coordinate c is voxel index c - 0.5 (voxel centres at integers).
    centre_vox = np.array([(x1 + x2) / 2.0 - 0.5, (y1 + y2) / 2.0 - 0.5, float(lesion.key_slice)])
    return float(volume.voxel_to_lps(centre_vox)[2])


# --------------------------------------------------------------------------------------------
# Drawing


class TextItem(NamedTuple):
    """One piece of text to set over a canvas (:func:`render_with_text`).

    ``x``, ``y``: canvas pixels of the anchor; ``ha`` left/center/right, ``va`` top/center/bottom/baseline.
    """

    x: float
    y: float
    text: str
    size_px: float = 17.0
    rgb: tuple[int, int, int] = TEXT_RGB
    ha: str = "left"
    va: str = "center"
    bold: bool = False


def render_with_text(canvas_rgb: np.ndarray, texts: Sequence[TextItem]) -> np.ndarray:
    """Set ``texts`` over an (H, W, 3) uint8 RGB canvas with matplotlib (Agg); return (H, W, 3) uint8 BGR.

    The text is rendered on a transparent figure of the canvas's size and blended over the
    canvas by its coverage, so everything drawn on the canvas keeps its exact position and
    colour where no text covers it.
    """
    height, width = canvas_rgb.shape[:2]
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    figure.patch.set_alpha(0.0)
    agg = FigureCanvasAgg(figure)
    for item in texts:
        figure.text(item.x / width, 1.0 - item.y / height, item.text, fontsize=item.size_px * 72.0 / _DPI,
                    color=tuple(c / 255.0 for c in item.rgb), ha=item.ha, va=item.va, family=_FONT,
                    fontweight="bold" if item.bold else "normal")
    agg.draw()
    rgba = np.asarray(agg.buffer_rgba())
    out = np.array(canvas_rgb, dtype=np.uint8, copy=True)
    rows, cols = np.nonzero(rgba[:height, :width, 3])  # text pixels only: fast, and exact elsewhere
    alpha = rgba[rows, cols, 3:4].astype(np.float32) / 255.0
    blended = rgba[rows, cols, :3].astype(np.float32) * alpha + out[rows, cols].astype(np.float32) * (1.0 - alpha)
    out[rows, cols] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_RGB2BGR)


def encode_png(image_bgr: np.ndarray, path: Path) -> None:
    """Encode a BGR image as PNG and write it atomically.

    Raises:
        OSError: if the PNG cannot be encoded or written.
    """
    ok, encoded = cv2.imencode(".png", image_bgr)
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the picture as PNG")
    atomic_write_bytes(path, encoded.tobytes())


def key_slice_u8(volume: Volume, lesion: Lesion) -> np.ndarray:
    """The lesion's key slice in the soft-tissue window, (Y, X) uint8.

    Raises:
        ValueError: if the key slice is outside the volume.
    """
    num_z = volume.shape_zyx[0]
    if not 0 <= lesion.key_slice < num_z:
        raise ValueError(f"key slice {lesion.key_slice} is outside the volume's {num_z} slices")
    return window_to_uint8(volume.hu[lesion.key_slice], *SOFT_TISSUE_WINDOW_HU)


def draw_panel_image(canvas: np.ndarray, slice_u8: np.ndarray, panel: Panel) -> np.ndarray:
    """Draw the panel's region of the slice onto the canvas; return the writable view of that image area."""
    x0, y0, x1, y1 = panel.window_px
    region = slice_u8[y0:y1, x0:x1]
    downscale = panel.size_wh[0] < region.shape[1] or panel.size_wh[1] < region.shape[0]
    grey = cv2.resize(region, panel.size_wh, interpolation=cv2.INTER_AREA if downscale else cv2.INTER_LINEAR)
    ox, oy = panel.origin_xy
    view = canvas[oy : oy + panel.size_wh[1], ox : ox + panel.size_wh[0]]
    view[...] = grey[..., None]
    return view


def _box_corners(panel: Panel, box_xyxy: Sequence[float]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Display pixels of a continuous-coordinate box: the first and the last pixel inside it."""
    (ax, ay), (bx, by) = panel.to_local(box_xyxy[0], box_xyxy[1]), panel.to_local(box_xyxy[2], box_xyxy[3])
    top_left = (round(float(ax)), round(float(ay)))
    return top_left, (max(round(float(bx)) - 1, top_left[0]), max(round(float(by)) - 1, top_left[1]))


def draw_box_outside(view: np.ndarray, panel: Panel, box_xyxy: Sequence[float], rgb: tuple[int, int, int],
                     thickness: int = 2) -> None:
    """Draw a continuous-coordinate box as a frame of ``thickness`` pixels just OUTSIDE it (nothing inside is covered)."""
    (x0, y0), (x1, y1) = _box_corners(panel, box_xyxy)
    for k in range(1, thickness + 1):
        cv2.rectangle(view, (x0 - k, y0 - k), (x1 + k, y1 + k), rgb, thickness=1)


def draw_lesion_marks(view: np.ndarray, panel: Panel, volume: Volume, lesion: Lesion, *, box: bool = True,
                      thickness: int = 2) -> None:
    """Draw the box, the mask contour (key slice) and the RECIST axes on a panel's image view.

    The box and the contour are drawn just outside the box and the mask (``thickness`` pixels
    wide), so they cover no lesion pixel; the contour is drawn over the box where they meet. The
    axes, 2 pixels wide and antialiased, cross the lesion as RECIST calipers do.
    """
    num_y, num_x = volume.shape_zyx[1:]
    x0, y0, x1, y1 = panel.window_px
    if box:
        bx1, by1, _, bx2, by2, _ = lesion.box_vox
        draw_box_outside(view, panel, (bx1, by1, bx2, by2), BOX_RGB, thickness)
    mask = lesion.slice_mask(lesion.key_slice, (num_y, num_x))[y0:y1, x0:x1].astype(np.uint8)
    if mask.any():
        mask = cv2.resize(mask, panel.size_wh, interpolation=cv2.INTER_NEAREST)
        kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
        ring = (cv2.dilate(mask, kernel) > 0) & (mask == 0)
        view[ring] = CONTOUR_RGB
    for ends, colour in ((lesion.long_axis_px, LONG_AXIS_RGB), (lesion.short_axis_px, SHORT_AXIS_RGB)):
        if ends is not None:
            (xa, ya), (xb, yb) = (panel.to_local(*end) for end in ends)
            cv2.line(view, (round(float(xa)), round(float(ya))), (round(float(xb)), round(float(yb))), colour,
                     thickness=thickness, lineType=cv2.LINE_AA)


def draw_scale_bar(canvas: np.ndarray, panel: Panel, texts: list[TextItem], size_px: float = 16.0) -> None:
    """Draw the panel's scale bar (white, under the image) and queue its "N mm" label."""
    bx, by = panel.bar_origin_xy
    cv2.rectangle(canvas, (bx, by), (bx + panel.bar_px - 1, by + SCALE_BAR_THICKNESS_PX - 1), SCALE_BAR_RGB,
                  thickness=-1)
    texts.append(TextItem(bx + panel.bar_px + 8, by + SCALE_BAR_THICKNESS_PX / 2.0, f"{panel.bar_mm:g} mm",
                          size_px=size_px))


def _orientation_texts(panel: Panel, letters: dict[str, str]) -> list[TextItem]:
    (ox, oy), (w, h) = panel.origin_xy, panel.size_wh
    half, style = MARGIN_PX / 2.0, {"size_px": 20.0, "ha": "center", "va": "center", "bold": True}
    return [TextItem(ox - half, oy + h / 2.0, letters["left"], **style),
            TextItem(ox + w + half, oy + h / 2.0, letters["right"], **style),
            TextItem(ox + w / 2.0, oy - half, letters["top"], **style),
            TextItem(ox + w / 2.0, oy + h + half, letters["bottom"], **style)]


def format_mm(value: float, unit: str = "mm", digits: int = 1) -> str:
    """``"21.4 mm"``, or ``"n/a"`` for NaN / None (not measured)."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f} {unit}"


def render_overlay(volume: Volume, lesion: Lesion, label: int, *, num_lesions: int | None = None,
                   study_name: str | None = None) -> np.ndarray:
    """The overlay picture of a lesion as an (H, W, 3) uint8 BGR image (1768 x 704 pixels).

    Left: the whole key slice (soft-tissue window W 400 / L 40 HU, longer side
    :data:`FULL_PANEL_PX` pixels, square display pixels) with the lesion's box and, in yellow,
    the enlarged region. Middle: that region (:func:`crop_window_px`) enlarged into a
    :data:`CROP_PANEL_PX` square, with the box, the key slice's mask contour and the RECIST long
    and short axes. Both carry orientation letters at their edges (:func:`orientation_letters`;
    radiological view for a standard axial volume: the patient's right on the image's left,
    anterior up) and a scale bar in mm under the image. Right: the label, score, long and short
    axes (mm), volume (mL), the key slice's index and LPS z (mm, :func:`key_slice_z_lps_mm`),
    the window, the pixel spacing, a colour legend and the orientation convention. Nothing is
    drawn over the slices except the marks themselves, and the box and contour lie just outside
    the box and the mask (:func:`draw_lesion_marks`). The layout is :func:`overlay_layout`.

    Args:
        volume: the input volume (HU (Z, Y, X), spacing, LPS geometry).
        lesion: a lesion in the input geometry.
        label: its label in the label map / results.json.
        num_lesions: the study's number of lesions, shown as "lesion 3 of 13" (optional).
        study_name: shown under the title (optional).

    Raises:
        ValueError: if the lesion's key slice is outside the volume.
    """
    slice_u8 = key_slice_u8(volume, lesion)
    layout = overlay_layout(volume, lesion)
    canvas = np.empty((layout.canvas_wh[1], layout.canvas_wh[0], 3), np.uint8)
    canvas[...] = BACKGROUND_RGB
    for (slot_x, slot_y), slot_px in ((layout.full_slot_xy, FULL_PANEL_PX), (layout.crop_slot_xy, CROP_PANEL_PX)):
        canvas[slot_y : slot_y + slot_px, slot_x : slot_x + slot_px] = 0  # black letterbox
    letters = orientation_letters(volume.direction_lps)
    texts: list[TextItem] = []
    bx1, by1, _, bx2, by2, _ = lesion.box_vox

    full, crop = layout.full, layout.crop
    view = draw_panel_image(canvas, slice_u8, full)
    if crop.window_px != full.window_px:
        cv2.rectangle(view, *_box_corners(full, crop.window_px), CROP_FRAME_RGB, thickness=1)
    draw_box_outside(view, full, (bx1, by1, bx2, by2), BOX_RGB)
    draw_lesion_marks(draw_panel_image(canvas, slice_u8, crop), crop, volume, lesion)
    zoom = crop.px_per_mm / full.px_per_mm
    caption_y = layout.full_slot_xy[1] / 2.0
    texts += [TextItem(layout.full_slot_xy[0], caption_y, f"key slice {lesion.key_slice}", size_px=16.0,
                       rgb=MUTED_TEXT_RGB),
              TextItem(layout.crop_slot_xy[0], caption_y, f"enlarged \u00d7{zoom:.1f}", size_px=16.0,
                       rgb=MUTED_TEXT_RGB)]
    for panel in (full, crop):
        draw_scale_bar(canvas, panel, texts)
        texts += _orientation_texts(panel, letters)

    texts += _info_column(canvas, layout.info_x, volume, lesion, label, num_lesions, study_name, letters)
    return render_with_text(canvas, texts)


def _info_column(canvas: np.ndarray, x: int, volume: Volume, lesion: Lesion, label: int, num_lesions: int | None,
                 study_name: str | None, letters: dict[str, str]) -> list[TextItem]:
    """Queue the text column (and draw its legend swatches): measurements, legend, orientation note."""
    texts: list[TextItem] = []
    y = MARGIN_PX + 4
    title = f"Lesion {label}" + (f" of {num_lesions}" if num_lesions else "")
    texts.append(TextItem(x, y, title, size_px=26.0, bold=True, va="top"))
    y += 38
    if study_name:
        shown = study_name if len(study_name) <= 44 else f"{study_name[:21]}\u2026{study_name[-22:]}"
        texts.append(TextItem(x, y, shown, size_px=16.0, rgb=MUTED_TEXT_RGB, va="top"))
        y += 26
    y += 10
    num_z = volume.shape_zyx[0]
    spacing_z, spacing_y, spacing_x = volume.spacing_zyx_mm
    rows = [
        ("score", format_score(lesion.score)),
        ("long axis", format_mm(lesion.long_axis_mm)),
        ("short axis", format_mm(lesion.short_axis_mm)),
        ("volume", format_mm(lesion.volume_ml, "mL", 2)),
        ("key slice", f"{lesion.key_slice}  (of 0\u2013{num_z - 1})"),
        ("z (LPS)", f"{key_slice_z_lps_mm(volume, lesion):+.1f} mm"),
        ("window", f"W {SOFT_TISSUE_WINDOW_HU[0]:g} / L {SOFT_TISSUE_WINDOW_HU[1]:g} HU"),
        ("pixel", f"{spacing_x:.2f} \u00d7 {spacing_y:.2f} mm"),
        ("slice interval", f"{spacing_z:.2f} mm"),
    ]
    for name, value in rows:
        texts += [TextItem(x, y, name, rgb=MUTED_TEXT_RGB), TextItem(x + 140, y, value, bold=name == "score")]
        y += _LINE_PX
    y += 14
    texts.append(TextItem(x, y, "Legend", bold=True))
    y += _LINE_PX
    legend = [(BOX_RGB, "detector box"), (CONTOUR_RGB, "mask contour (key slice)"),
              (LONG_AXIS_RGB, "long axis (RECIST)"), (SHORT_AXIS_RGB, "short axis (RECIST)"),
              (CROP_FRAME_RGB, "enlarged region")]
    for colour, name in legend:
        cv2.line(canvas, (x, y), (x + 30, y), colour, thickness=3)
        texts.append(TextItem(x + 42, y, name))
        y += _LINE_PX
    y += 12
    standard = letters == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    note = (f"Shown as stored; edge letters are patient directions. Image left = {letters['left']}, "
            f"top = {letters['top']}" + (" (radiological view: patient's right on the left, anterior up)."
                                         if standard else "; NOT the standard radiological view."))
    for line in textwrap.wrap(note, 44):
        texts.append(TextItem(x, y, line, size_px=14.0, rgb=MUTED_TEXT_RGB))
        y += 19
    return texts


def write_overlay(volume: Volume, lesion: Lesion, label: int, path: Path, *, num_lesions: int | None = None,
                  study_name: str | None = None) -> None:
    """Write the lesion's overlay picture (:func:`render_overlay`) as a PNG, atomically.

    Args:
        volume: the input volume (HU, spacing, LPS geometry).
        lesion: a lesion in the input geometry.
        label: its label in the label map / results.json, shown in the picture.
        path: destination ``.png`` file.
        num_lesions: the study's number of lesions ("lesion 3 of 13"), optional.
        study_name: shown under the title, optional.

    Raises:
        ValueError: if the key slice is outside the volume.
        OSError: if the PNG cannot be encoded or written.
    """
    encode_png(render_overlay(volume, lesion, label, num_lesions=num_lesions, study_name=study_name), Path(path))
