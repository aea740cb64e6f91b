"""Pure preprocessing functions: HU windowing, z-resampling, in-plane resizing, slab windows.

Everything here follows SPEC section 4 (AlignShift paper, section 3, and its released code):

* HU are clipped to [-1024, 2050] and mapped affinely to [0, 1].
* The reference slice interval is r = 2 mm. Thin data (s < r) is resampled along z to r by
  linear interpolation and then presented to the network as s = r; thick data (s >= r) keeps its
  own slices and its own interval.
* A window holds the key slice and k neighbours on each side. The neighbour at distance
  j * r from the key slice of a thin series lies between source slices floor(j * r / s) and
  ceil(j * r / s) away, with linear weights from the fractional part of j * r / s (the
  released code computes the weights from r / s only, wrong for j >= 2). Neighbours beyond
  the ends of the series replicate the edge slice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from ctlesion.volume import Volume

HU_MIN = -1024.0
HU_MAX = 2050.0
REF_INTERVAL_MM = 2.0


def normalize_hu(hu: np.ndarray, window_hu: tuple[float, float] = (HU_MIN, HU_MAX)) -> np.ndarray:
    """Clip HU to a window and map it linearly to [0, 1].

    The paper's window is [-1024, 2050] (SPEC section 4); a model records its own window in its
    configuration so training and inference agree.

    Args:
        hu: array of any shape, HU, any real dtype.
        window_hu: (low, high) HU, low < high.

    Returns:
        float32 array of the same shape with values in [0, 1].
    """
    low, high = float(window_hu[0]), float(window_hu[1])
    out = np.clip(np.asarray(hu, dtype=np.float32), low, high)
    out -= low
    out /= high - low
    return out


@dataclass(frozen=True)
class InputMapping:
    """How a model turns HU into its input (a :class:`~ctlesion.networks.detector.DetectorConfig`
    carries the same two fields).

    Attributes:
        hu_window: (low, high) HU clipped and mapped linearly.
        input_scaling: ``"unit"``: the window onto [0, 1] (ctlesion's models); ``"mmdet"``: onto
            [0, 255], then minus 50 (the released AlignShift loader's ``windowing``).
    """

    hu_window: tuple[float, float] = (HU_MIN, HU_MAX)
    input_scaling: str = "unit"


#: ``input_scaling`` -> (gain, offset) applied to the [0, 1] window: ``unit``: identity;
#: ``mmdet``: x 255 - 50 (M3DV/AlignShift ``deeplesion/dataset/DeepLesionDataset_align.py``, ``windowing``).
_SCALING_AFFINE = {"unit": (1.0, 0.0), "mmdet": (255.0, -50.0)}


def network_input(hu: np.ndarray, config) -> np.ndarray:
    """Turn HU into what a model's network takes, by its configuration.

    The HU are clipped to ``config.hu_window`` and mapped linearly onto [0, 1]
    (:func:`normalize_hu`), then by ``config.input_scaling``: ``"unit"`` keeps [0, 1],
    ``"mmdet"`` maps to [0, 255] and subtracts 50, as the authors' released loader does. Every
    command (detect, evaluate, training) builds the network input with this function.

    Args:
        hu: HU array of any shape and real dtype.
        config: a :class:`~ctlesion.networks.detector.DetectorConfig` or :class:`InputMapping`
            (its ``hu_window`` and ``input_scaling``).

    Returns:
        float32 array of the same shape (float64 for float64 input, for exactness checks).

    Raises:
        ValueError: an unknown ``input_scaling``.
    """
    if config.input_scaling not in _SCALING_AFFINE:
        raise ValueError(f"input_scaling must be one of {tuple(_SCALING_AFFINE)}, got {config.input_scaling!r}")
    hu = np.asarray(hu)
    dtype = np.float64 if hu.dtype == np.float64 else np.float32
    low, high = (float(v) for v in config.hu_window)
    out = (np.clip(hu.astype(dtype, copy=True), low, high) - dtype(low)) / dtype(high - low)
    gain, offset = _SCALING_AFFINE[config.input_scaling]
    if (gain, offset) != (1.0, 0.0):
        out *= dtype(gain)
        out += dtype(offset)
    return out


def air_input_value(config) -> float:
    """The network input value of air (the HU window's low end): what padding and augmentation
    write outside the image (0.0 for ``unit``, -50.0 for ``mmdet``)."""
    return float(network_input(np.array([config.hu_window[0]], np.float64), config)[0])


def network_interval_mm(slice_interval_mm: float, ref_interval_mm: float = REF_INTERVAL_MM,
                        resample_thick: bool = False) -> float:
    """Slice interval the network sees: r for thin data (it is resampled to r), s otherwise.

    With ``resample_thick`` (the TSM and 2.5D baselines) every window is sampled r apart, so
    the network always sees r.
    """
    return ref_interval_mm if resample_thick else max(float(slice_interval_mm), ref_interval_mm)


def neighbour_offsets(
    num_slices: int, slice_interval_mm: float, ref_interval_mm: float = REF_INTERVAL_MM, resample_thick: bool = False
) -> np.ndarray:
    """Offsets of the window's slices from the key slice, in units of source slices.

    For thin data (s < r) the j-th neighbour sits at j * r / s source slices (it is spaced by
    r in mm); for thick data it is the j-th adjacent slice, unless ``resample_thick`` (TSM and
    2.5D baselines, paper section 3) asks for neighbours r apart there too (j * r / s, between
    adjacent slices).

    Args:
        num_slices: window depth D = 2k + 1 (odd, >= 1).
        slice_interval_mm: interval s of the source slices, mm (> 0).
        ref_interval_mm: reference interval r, mm.
        resample_thick: space the neighbours r apart whatever s.

    Returns:
        (D,) float64 offsets, symmetric around 0, increasing.

    Raises:
        ValueError: if ``num_slices`` is not a positive odd number or s <= 0.
    """
    if num_slices < 1 or num_slices % 2 != 1:
        raise ValueError(f"num_slices must be a positive odd number, got {num_slices}")
    if not slice_interval_mm > 0:
        raise ValueError(f"slice_interval_mm must be > 0, got {slice_interval_mm}")
    half = num_slices // 2
    thin = slice_interval_mm < ref_interval_mm
    step = ref_interval_mm / slice_interval_mm if thin or resample_thick else 1.0
    return np.arange(-half, half + 1, dtype=np.float64) * step


@dataclass(frozen=True)
class SlicePlan:
    """Which source slices make up each output slice, and how they are blended.

    ``out[d] = (1 - weight_hi[d]) * src[lo[d]] + weight_hi[d] * src[hi[d]]``.
    """

    lo: np.ndarray
    hi: np.ndarray
    weight_hi: np.ndarray

    @property
    def needed(self) -> list[int]:
        """Sorted source slice indices the plan reads (a partner of zero weight is not read)."""
        return sorted(set(self.lo.tolist()) | set(self.hi[self.weight_hi > 0].tolist()))


def plan_slices(positions: np.ndarray, num_source_slices: int) -> SlicePlan:
    """Linear-interpolation plan for continuous slice positions, replicating the edges.

    Args:
        positions: (D,) positions in source slice index units (may be fractional or outside
            [0, N-1]; outside positions take the edge slice).
        num_source_slices: N, number of available source slices (>= 1).

    Returns:
        A :class:`SlicePlan` with integer ``lo``/``hi`` in [0, N-1] and weights in [0, 1].
    """
    pos = np.clip(np.asarray(positions, dtype=np.float64), 0.0, num_source_slices - 1)
    lo = np.floor(pos).astype(np.int64)
    frac = pos - lo
    # Round-off guard: a position within 1e-9 of an integer uses that slice alone.
    frac[np.abs(frac) < 1e-9] = 0.0
    near_one = np.abs(frac - 1.0) < 1e-9
    lo[near_one] += 1
    frac[near_one] = 0.0
    hi = np.minimum(lo + 1, num_source_slices - 1)
    return SlicePlan(lo=lo, hi=hi, weight_hi=frac)


def apply_plan(plan: SlicePlan, read_slice: Callable[[int], np.ndarray]) -> np.ndarray:
    """Build the (D, Y, X) float32 stack described by ``plan``, reading each slice once.

    Args:
        plan: the interpolation plan.
        read_slice: returns the (Y, X) source slice of an index (e.g. from an array or a PNG).
    """
    cache = {i: np.asarray(read_slice(i), dtype=np.float32) for i in plan.needed}
    out = [
        cache[lo] if w == 0.0 else (1.0 - w) * cache[lo] + w * cache[hi]
        for lo, hi, w in zip(plan.lo.tolist(), plan.hi.tolist(), plan.weight_hi.tolist())
    ]
    return np.stack(out).astype(np.float32, copy=False)


def num_resampled_slices(volume: Volume, ref_interval_mm: float = REF_INTERVAL_MM) -> int:
    """Number of slices :func:`resample_to_reference` returns for ``volume`` (without resampling)."""
    s, num = volume.slice_interval_mm, volume.shape_zyx[0]
    if s >= ref_interval_mm:
        return num
    return int(np.floor((num - 1) * s / ref_interval_mm + 1e-6)) + 1


def resample_to_reference(volume: Volume, ref_interval_mm: float = REF_INTERVAL_MM) -> Volume:
    """Resample a thin volume (s < r) along z to the reference interval r; keep thick ones.

    Slice k of the result lies at k * r mm from the first source slice (linear interpolation
    between the two source slices around it), so the first slice is unchanged and the last
    one is at or before the last source slice. Origin and direction are kept; the z spacing
    becomes r.

    Args:
        volume: the input volume.
        ref_interval_mm: the reference interval r (paper: 2 mm).

    Returns:
        A new float32 :class:`Volume`, or ``volume`` itself if it is not thin.
    """
    s = volume.slice_interval_mm
    if s >= ref_interval_mm:
        return volume
    num = volume.shape_zyx[0]
    plan = plan_slices(np.arange(num_resampled_slices(volume, ref_interval_mm)) * (ref_interval_mm / s), num)
    hu = apply_plan(plan, lambda i: volume.hu[i])
    spacing = (ref_interval_mm, volume.spacing_zyx_mm[1], volume.spacing_zyx_mm[2])
    meta = dict(volume.meta, resampled_from_interval_mm=s)
    out = volume.with_array(hu, spacing)
    object.__setattr__(out, "meta", meta)
    return out


@dataclass(frozen=True)
class InPlaneTransform:
    """How a (Y, X) source image was resized and padded to the network's square input, and
    optionally cut to a window of it, in both directions, for images, boxes and masks (the one
    place that knows the in-plane fit).

    ``fit_px = scale * src_px`` (continuous pixel coordinates, x = column) in the padded
    ``size_px`` square (padding at the bottom and right only); the network sees
    ``net_px = fit_px - crop offset``, where the crop (``crop_yx_px``, None = the whole square)
    is rows y0 .. y1 - 1 and columns x0 .. x1 - 1 of the square. Build it with
    :func:`fit_in_plane`, crop it with :func:`body_crop`.
    """

    scale: float
    src_shape_yx: tuple[int, int]
    size_px: int
    crop_yx_px: tuple[int, int, int, int] | None = None

    @property
    def content_shape_yx(self) -> tuple[int, int]:
        """(rows, columns) of the resized image inside the padded square, pixels."""
        height, width = self.src_shape_yx
        return min(self.size_px, round(height * self.scale)), min(self.size_px, round(width * self.scale))

    @property
    def _offset_xy(self) -> np.ndarray:
        y0, x0 = (0, 0) if self.crop_yx_px is None else self.crop_yx_px[:2]
        return np.array([x0, y0, x0, y0], dtype=np.float64)

    def crop(self, stack: np.ndarray) -> np.ndarray:
        """(..., S, S) fitted images -> (..., y1 - y0, x1 - x0), the network's view (a view, not a copy)."""
        if self.crop_yx_px is None:
            return stack
        y0, x0, y1, x1 = self.crop_yx_px
        return stack[..., y0:y1, x0:x1]

    def boxes_to_network(self, boxes_px: np.ndarray) -> np.ndarray:
        """(N, 4) source-pixel boxes (x1, y1, x2, y2) -> float64 network-frame boxes."""
        return np.asarray(boxes_px, dtype=np.float64) * self.scale - self._offset_xy

    def to_source(self, boxes_px: np.ndarray, *, clip: bool = True) -> np.ndarray:
        """(N, 4) network-frame boxes (x1, y1, x2, y2) -> float64 source pixels, clipped to the
        source image (``clip=False``: not clipped, as the DeepLesion protocol scores them)."""
        boxes = (np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4) + self._offset_xy) / self.scale
        if clip:
            boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, self.src_shape_yx[1])
            boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, self.src_shape_yx[0])
        return boxes

    def masks_to_network(self, masks: np.ndarray) -> np.ndarray:
        """(N, Y, X) source masks -> (N, S', S') uint8 0/1 network masks (nearest neighbour, padded
        and cropped like the image)."""
        size = self.size_px
        new_h, new_w = self.content_shape_yx
        out = np.zeros((masks.shape[0], size, size), dtype=np.uint8)
        for n, mask in enumerate(masks):
            out[n, :new_h, :new_w] = cv2.resize(mask.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        return np.ascontiguousarray(self.crop(out))

    def masks_to_source(self, masks: np.ndarray) -> np.ndarray:
        """(N, S', S') network mask probabilities -> (N, Y, X) float32 on the source grid (zero
        outside a crop, the padding dropped, bilinear)."""
        height, width = self.src_shape_yx
        valid_h, valid_w = self.content_shape_yx
        if not len(masks):
            return np.zeros((0, height, width), np.float32)
        if self.crop_yx_px is not None:  # back into the whole square, zero outside the crop
            y0, x0, y1, x1 = self.crop_yx_px
            square = np.zeros((len(masks), self.size_px, self.size_px), np.float32)
            square[:, y0:y1, x0:x1] = masks
            masks = square
        return np.stack([cv2.resize(np.asarray(m[:valid_h, :valid_w], dtype=np.float32), (width, height),
                                    interpolation=cv2.INTER_LINEAR) for m in masks])


def fit_in_plane(stack: np.ndarray, size_px: int, fill: float = 0.0) -> tuple[np.ndarray, InPlaneTransform]:
    """Resize a (D, Y, X) stack to fit ``size_px`` x ``size_px`` keeping aspect, pad with ``fill``.

    Bilinear interpolation (OpenCV). Use after :func:`network_input`, with ``fill`` the input
    value of air (:func:`air_input_value`; 0 for [0, 1] inputs).

    Returns:
        The (D, size_px, size_px) float32 stack and the :class:`InPlaneTransform` used.
    """
    depth, height, width = stack.shape
    transform = InPlaneTransform(scale=size_px / max(height, width), src_shape_yx=(height, width), size_px=size_px)
    new_h, new_w = transform.content_shape_yx
    out = np.full((depth, size_px, size_px), fill, dtype=np.float32)
    for d in range(depth):
        img = stack[d].astype(np.float32, copy=False)
        if (new_h, new_w) != (height, width):
            img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        out[d, :new_h, :new_w] = img
    return out, transform


def body_crop(transform: InPlaneTransform, body_box_yx_px: tuple[int, int, int, int], margin_px: int,
              multiple_px: int = 32) -> InPlaneTransform:
    """``transform`` cut to a body's bounding box plus a margin: what ``detect`` runs the network on.

    The crop's edges are the box's, scaled into the fitted square, moved out by ``margin_px``
    and then out to multiples of ``multiple_px`` (clipped to the square). Both its offset and
    its size are multiples of ``multiple_px`` (32 = the backbone's largest stride in this
    project's networks), so the network's feature grid and anchors stay where they are in the
    whole square, and far enough (``margin_px``) from the crop's edge its features are those of
    the whole square: only the band within the receptive field of the edge sees zero padding
    instead of the air there.

    Args:
        transform: the uncropped fit of the slice (:func:`fit_in_plane`).
        body_box_yx_px: (y0, x0, y1, x1) end-exclusive source pixels
            (:func:`ctlesion.body.body_box_px`, or a union of several).
        margin_px: added on every side, network pixels (>= 0).
        multiple_px: alignment of the crop's offset and size, network pixels.

    Returns:
        The cropped transform (``crop_yx_px`` None when the crop is the whole square).
    """
    y0, x0, y1, x1 = (float(v) * transform.scale for v in body_box_yx_px)
    size = transform.size_px

    def edges(low: float, high: float) -> tuple[int, int]:
        first = max(0, int(np.floor((low - margin_px) / multiple_px)) * multiple_px)
        last = min(size, int(np.ceil((high + margin_px) / multiple_px)) * multiple_px)
        return first, last

    (top, bottom), (left, right) = edges(y0, y1), edges(x0, x1)
    crop = None if (top, left, bottom, right) == (0, 0, size, size) else (top, left, bottom, right)
    return replace(transform, crop_yx_px=crop)


def plan_window(key_slice: int, num_source_slices: int, num_slices: int, slice_interval_mm: float,
                ref_interval_mm: float = REF_INTERVAL_MM, resample_thick: bool = False) -> SlicePlan:
    """The plan of the D-slice window centred on ``key_slice`` of N source slices ``slice_interval_mm`` apart:
    its slices at :func:`neighbour_offsets`, interpolated linearly, the edge slice replicated beyond the ends
    (SPEC section 4). The one window rule of ``detect``, training and evaluation."""
    offsets = neighbour_offsets(num_slices, slice_interval_mm, ref_interval_mm, resample_thick)
    return plan_slices(key_slice + offsets, num_source_slices)


def volume_window(volume: Volume, key_slice: int, num_slices: int, ref_interval_mm: float = REF_INTERVAL_MM,
                  resample_thick: bool = False) -> np.ndarray:
    """The (D, Y, X) float32 HU window centred on ``key_slice`` of a volume (:func:`plan_window`).

    Neighbours are adjacent slices for thick volumes and r apart (interpolated) for thin ones:
    ``detect`` gives it volumes resampled to r (:func:`resample_to_reference`), where they are
    adjacent; training and evaluation give it source volumes, a DeepLesion series read lazily
    among them (:func:`ctlesion.io.deeplesion.load_key_slice_window`). ``volume.hu`` is read only
    at the slices the window needs.
    """
    plan = plan_window(key_slice, volume.shape_zyx[0], num_slices, volume.slice_interval_mm, ref_interval_mm,
                       resample_thick)
    return apply_plan(plan, lambda i: volume.hu[i])


def network_window(volume: Volume, key_slice: int, config) -> tuple[np.ndarray, InPlaneTransform]:
    """The network's input for the window centred on ``key_slice``: :func:`volume_window` by the model's
    depth, interval and thick-slice rule, :func:`network_input`, then :func:`fit_in_plane` padded with air.

    Args:
        volume: at network spacing (``detect``: :func:`resample_to_reference`).
        key_slice: slice index of ``volume``.
        config: the model's :class:`~ctlesion.networks.detector.DetectorConfig`.

    Returns:
        The (D, S, S) float32 stack and its uncropped :class:`InPlaneTransform`.
    """
    window = volume_window(volume, key_slice, config.num_slices, config.ref_interval_mm, config.resample_thick)
    return fit_in_plane(network_input(window, config), config.image_size_px, air_input_value(config))
