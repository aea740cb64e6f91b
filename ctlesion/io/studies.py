"""The studies ``detect`` will read: every input found and checked from its headers, and named.

A DICOM folder gives one study per series read (``--series`` / ``--all-series``), a NIfTI file
or a lone Enhanced CT file one; each gets a file-name-safe unique name for its outputs. Only
headers are read, and nothing here loads torch, so a bad input fails in about a second.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ctlesion.io import PendingVolume, pending_volumes


def study_name(path: Path, taken: set[str], suffix: str = "") -> str:
    """A file-name-safe, unique name for a study from its path (folder name, or file name without
    ``.nii``, ``.nii.gz`` or ``.dcm``) + suffix; added to ``taken``."""
    base = (re.sub(r"\.(nii(\.gz)?|dcm)$", "", Path(path).name, flags=re.IGNORECASE) or "study") + suffix
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base)
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def _series_tag(pending: PendingVolume, position: int) -> str:
    """SeriesNumber of a pending volume, or its 1-based position among its folder's series when it has none."""
    number = pending.info.series_number
    return str(number if number is not None else position + 1)


@dataclass(frozen=True)
class PlannedStudy:
    """One study ``detect`` will read: its output name and its volume, checked from headers.

    Attributes:
        name: file-name-safe unique name of the study's outputs (``<name>_lesions.nii.gz`` ...).
        pending: the volume, found and checked from its headers, not yet decoded.
    """

    name: str
    pending: PendingVolume


def plan_studies(inputs: Sequence[Path], *, series: str | None = None, all_series: bool = False,
                 allow_non_ct: bool = False, tilt: str = "refuse") -> list[PlannedStudy]:
    """Find and check every input from its headers, without decoding any pixel data.

    Fast (about a second for a folder of a few hundred files), so that a missing path, a
    folder without CT, an unmatched ``--series`` or a refused tilt fails before a model is
    loaded or any volume decoded.

    Args:
        inputs: DICOM series folders, lone Enhanced CT files and/or NIfTI files. A folder gives
            one study per series read; several series of one folder are named
            ``<folder>_s<SeriesNumber>``.
        series, all_series, allow_non_ct, tilt: as :func:`ctlesion.io.pending_volumes`.

    Returns:
        The studies in input order.

    Raises:
        CtlesionError: an input is missing or unreadable, holds no usable series, or a series
            is refused (one line naming the file and the problem).
    """
    per_input = [pending_volumes(Path(p), series=series, all_series=all_series, allow_non_ct=allow_non_ct, tilt=tilt)
                 for p in inputs]
    taken: set[str] = set()
    return [PlannedStudy(study_name(Path(p), taken, "" if len(found) == 1 else f"_s{_series_tag(v, k)}"), v)
            for p, found in zip(inputs, per_input) for k, v in enumerate(found)]
