"""Where the neighbour slices of each evaluated window came from (for the report's honesty).

A model sees each key slice with its neighbours (SPEC section 4). In a DeepLesion-layout folder
the neighbours are the other PNGs of the key slice's series folder; where a needed PNG is absent
(key-slice-only extracts such as ``../shared/data/deeplesion_sample``),
:func:`ctlesion.io.deeplesion.load_key_slice_window` takes the nearest present PNG instead, and
where the window reaches past the series' ends (``Slice_range`` and the PNGs present) it
replicates the edge slice, as the protocol does. Figures scored on windows with absent
neighbours are not those of the network with its 3D context: the report says how many.

:func:`window_context` reads the plan ``load_key_slice_window`` follows
(:func:`ctlesion.io.deeplesion.plan_key_slice_window`) without reading any pixel;
:func:`summarize_contexts` counts the images for ``evaluation.json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ctlesion.io.deeplesion import KeySlice, plan_key_slice_window, series_slice_indices
from ctlesion.preprocess import REF_INTERVAL_MM


@dataclass(frozen=True)
class WindowContext:
    """Sources of the neighbour slices of one key slice's window.

    Attributes:
        num_neighbours: slice numbers the window reads besides the key slice (0 with D = 1).
        num_absent: of those, how many have no PNG in the series folder (the nearest present
            PNG is read instead).
        single_slice: every neighbour read is the key slice itself (absent neighbours replaced by
            it, or beyond the series' ends): the network saw no 3D context.
        beyond_series_ends: the window reaches past the first or last slice of the series, where
            the edge slice is replicated (the protocol's rule, SPEC section 4).
    """

    num_neighbours: int
    num_absent: int
    single_slice: bool
    beyond_series_ends: bool


def window_context(images_dir: Path, key: KeySlice, num_slices: int, ref_interval_mm: float = REF_INTERVAL_MM,
                   resample_thick: bool = False, *, available: list[int] | None = None) -> WindowContext:
    """Where the window of ``key`` takes its slices from (:func:`~ctlesion.io.deeplesion.plan_key_slice_window`).

    Args:
        images_dir: the ``Images_png`` folder.
        key: the key slice.
        num_slices: window depth D (odd).
        ref_interval_mm: reference interval r, mm (paper: 2 mm).
        resample_thick: neighbours r apart for thick series too (TSM and 2.5D).
        available: slice numbers of the PNGs in the series folder, if already listed.

    Returns:
        The :class:`WindowContext`.

    Raises:
        CtlesionError: if the series folder does not exist.
    """
    if available is None:
        available = series_slice_indices(Path(images_dir) / key.series_dir)
    plan = plan_key_slice_window(key, available, num_slices, ref_interval_mm, resample_thick)
    return WindowContext(num_neighbours=sum(n != key.slice_index for n in plan.wanted),
                         num_absent=len(plan.absent(key.slice_index)), single_slice=plan.single_slice(key.slice_index),
                         beyond_series_ends=plan.beyond_series_ends)


def summarize_contexts(images_dir: Path, keys: Iterable[KeySlice], num_slices: int,
                       ref_interval_mm: float = REF_INTERVAL_MM, resample_thick: bool = False) -> dict:
    """The ``neighbour_slices`` entry of ``evaluation.json`` for the windows a model saw.

    Args:
        images_dir: the ``Images_png`` folder.
        keys: the key slices scored.
        num_slices: the model's window depth D.
        ref_interval_mm: reference interval r, mm.
        resample_thick: neighbours r apart for thick series too (TSM and 2.5D).

    Returns:
        ``{"window_slices": D, "images_with_absent_neighbours": n, "images_single_slice_context": n,
        "images_beyond_series_ends": n}``: images whose window needed at least one neighbour PNG
        absent from the series folder (replaced by the nearest present one); images whose every
        neighbour was the key slice itself (a subset of the former, plus windows of one-slice
        series); images whose window reached past the series' ends (edge replicated, as in the
        protocol).

    Raises:
        CtlesionError: if a series folder does not exist.
    """
    listed: dict[str, list[int]] = {}
    counts = {"images_with_absent_neighbours": 0, "images_single_slice_context": 0, "images_beyond_series_ends": 0}
    for key in keys:
        if key.series_dir not in listed:
            listed[key.series_dir] = series_slice_indices(Path(images_dir) / key.series_dir)
        context = window_context(images_dir, key, num_slices, ref_interval_mm, resample_thick,
                                 available=listed[key.series_dir])
        counts["images_with_absent_neighbours"] += context.num_absent > 0
        counts["images_single_slice_context"] += context.single_slice
        counts["images_beyond_series_ends"] += context.beyond_series_ends
    return {"window_slices": int(num_slices), **counts}
