"""Overlay pictures: each lesion's key slice with its box, mask contour and RECIST axes (SPEC section 9)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ctlesion.atomic import atomic_write_bytes
from ctlesion.postprocess import Lesion
from ctlesion.volume import Volume

#: Soft-tissue display window (width, level) in HU.
SOFT_TISSUE_WINDOW_HU = (400.0, 40.0)
#: Overlays are upsampled until their longer side has at least this many pixels.
MIN_LONG_SIDE_PX = 1024
BOX_BGR = (0, 255, 0)  # green
CONTOUR_BGR = (0, 0, 255)  # red
TEXT_BGR = (0, 255, 255)  # yellow
LONG_AXIS_BGR = (255, 0, 255)  # magenta
SHORT_AXIS_BGR = (255, 255, 0)  # cyan


def window_to_uint8(hu: np.ndarray, width_hu: float, level_hu: float) -> np.ndarray:
    """Map HU to uint8 grey levels through a display window (level +/- width / 2 -> 0..255)."""
    low = level_hu - width_hu / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - low) * (255.0 / width_hu)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _display_scale(shape_yx: tuple[int, int], spacing_yx_mm: tuple[float, float]) -> tuple[float, float]:
    """(fy, fx) output pixels per input pixel: square display pixels, long side >= MIN_LONG_SIDE_PX."""
    finest = min(spacing_yx_mm)
    height, width = shape_yx[0] * spacing_yx_mm[0] / finest, shape_yx[1] * spacing_yx_mm[1] / finest
    zoom = max(1.0, MIN_LONG_SIDE_PX / max(height, width))
    return (round(height * zoom) / shape_yx[0], round(width * zoom) / shape_yx[1])


def render_overlay(volume: Volume, lesion: Lesion, label: int) -> np.ndarray:
    """The overlay picture of a lesion as a (H, W, 3) uint8 BGR image.

    The key slice in a soft-tissue window (W 400, L 40 HU), resized to square display pixels
    with its longer side at least 1024 px; the RECIST long axis in magenta and short axis in
    cyan (when measured), the key slice's mask contour in red, the lesion box in green, and
    "lesion <label>  score <s>  long <mm> mm" in yellow.

    Raises:
        ValueError: if the lesion's key slice is outside the volume.
    """
    num_z, num_y, num_x = volume.shape_zyx
    if not 0 <= lesion.key_slice < num_z:
        raise ValueError(f"key slice {lesion.key_slice} is outside the volume's {num_z} slices")
    fy, fx = _display_scale((num_y, num_x), volume.spacing_zyx_mm[1:])
    size_wh = (round(num_x * fx), round(num_y * fy))
    grey = window_to_uint8(volume.hu[lesion.key_slice], *SOFT_TISSUE_WINDOW_HU)
    image = cv2.cvtColor(cv2.resize(grey, size_wh, interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2BGR)

    for ends, colour in ((lesion.long_axis_px, LONG_AXIS_BGR), (lesion.short_axis_px, SHORT_AXIS_BGR)):
        if ends is not None:
            (xa, ya), (xb, yb) = ends  # continuous pixel coordinates
            cv2.line(image, (int(round(xa * fx)), int(round(ya * fy))), (int(round(xb * fx)), int(round(yb * fy))),
                     colour, thickness=2, lineType=cv2.LINE_AA)
    mask = lesion.slice_mask(lesion.key_slice, (num_y, num_x)).astype(np.uint8)
    mask = cv2.resize(mask, size_wh, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(image, contours, -1, CONTOUR_BGR, thickness=2)

    x1, y1, _, x2, y2, _ = lesion.box_vox  # continuous pixel coordinates
    top_left = (int(round(x1 * fx)), int(round(y1 * fy)))
    bottom_right = (max(int(round(x2 * fx)) - 1, top_left[0]), max(int(round(y2 * fy)) - 1, top_left[1]))
    cv2.rectangle(image, top_left, bottom_right, BOX_BGR, thickness=2)

    text = f"lesion {label}  score {lesion.score:.2f}  long {lesion.long_axis_mm:.1f} mm"
    font, font_scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.8, 2
    (text_w, text_h), baseline = cv2.getTextSize(text, font, font_scale, thickness)
    cv2.rectangle(image, (0, 0), (text_w + 16, text_h + baseline + 16), (0, 0, 0), thickness=-1)
    cv2.putText(image, text, (8, text_h + 8), font, font_scale, TEXT_BGR, thickness, cv2.LINE_AA)
    return image


def write_overlay(volume: Volume, lesion: Lesion, label: int, path: Path) -> None:
    """Write the lesion's overlay picture (:func:`render_overlay`) as a PNG, atomically.

    Args:
        volume: the input volume (HU, spacing).
        lesion: a lesion in the input geometry.
        label: its label in the label map / results.json, shown in the picture.
        path: destination ``.png`` file.

    Raises:
        ValueError: if the key slice is outside the volume.
        OSError: if the PNG cannot be encoded or written.
    """
    ok, encoded = cv2.imencode(".png", render_overlay(volume, lesion, label))
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the overlay as PNG")
    atomic_write_bytes(path, encoded.tobytes())
