"""Datasets of CT volumes with lesion label maps: the nnU-Net v2 raw layout and nnDetection's.

Layouts (read-only; nothing is written into the dataset):

* **nnU-Net v2 raw** (Isensee et al., Nature Methods 2021; nnU-Net's ``dataset_format.md``)::

      DATASET/dataset.json          {"channel_names": {"0": "CT"}, "labels": {"background": 0, "tumor": 2, ...},
                                     "file_ending": ".nii.gz", ...}
      DATASET/imagesTr/CASE_0000.nii.gz   (channel 0: the CT; other channels are ignored)
      DATASET/labelsTr/CASE.nii.gz        (semantic label map on the image's grid)
      DATASET/imagesTs/, labelsTs/        (optional test cases; those with a label map are the test split)

  Lesions are the 3D connected components (26-connectivity) of one label (``lesion_label``:
  its name in ``labels`` or its value); components smaller than ``min_lesion_voxels`` are
  dropped. Region labels (nnU-Net v2 ``regions``, tuple values) are not supported.
* **nnDetection** (Baumgartner et al., MICCAI 2021; its ``raw_splitted`` layout)::

      TASK/dataset.json             {"labels": {"0": "lesion", ...}, ...}
      TASK/raw_splitted/imagesTr/CASE_0000.nii.gz
      TASK/raw_splitted/labelsTr/CASE.nii.gz    (instance map: 0 background, 1..N instances)
      TASK/raw_splitted/labelsTr/CASE.json      {"instances": {"1": 0, "2": 1, ...}}  instance -> class
      TASK/raw_splitted/imagesTs/, labelsTs/    (optional test cases)

  Lesions are the instances whose class is ``lesion_label`` (a class name of ``labels`` or its
  index); each instance is one lesion, whatever its connectivity.

* **DICOM + SEG** (:mod:`ctlesion.io.dicom_seg_dataset`): a folder of DICOM CT series with DICOM
  Segmentation objects beside them; each SEG is a case, its segments the labels (by
  ``SegmentLabel``), the lesions the 3D connected components of the chosen segment(s); no test split.

Splits: ``train`` and ``val`` from ``splits_final.json`` or ``splits.json`` in the dataset
folder (nnU-Net's format: a list of folds ``[{"train": [...], "val": [...]}, ...]``; fold 0 is
used), else a seeded random share of the training cases (``val_fraction``), else every training
case is ``train``; ``test`` is every case of ``imagesTs`` with a label map; ``all`` is every case.

The label map must lie on its image's grid (same shape, spacing, origin and direction within
:data:`GRID_TOLERANCE_MM`): otherwise :func:`read_case` refuses the case, naming the file.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctlesion.errors import CtlesionError
from ctlesion.io import read_volume
from ctlesion.io.dicom_seg_dataset import (
    is_dicom_seg_dataset,
    may_hold_segs,
    scan_dicom_seg_folder,
    seg_lesion_mask,
)
from ctlesion.io.nifti import read_nifti
from ctlesion.volume import Volume

#: Supported layouts.
LAYOUTS = ("nnunet", "nndetection", "dicom-seg")
#: Splits of a masked dataset (``all``: every case with a label map).
MASKED_SPLITS = ("train", "val", "test", "all")
#: Largest difference (mm, and unit-vector components) between an image's and its label map's geometry.
GRID_TOLERANCE_MM = 1e-3
#: Suffix of a case's CT file name (channel 0) before the file ending: ``CASE_0000.nii.gz``.
CT_CHANNEL = "_0000"


@dataclass(frozen=True)
class MaskedCase:
    """One case: its CT (channel 0) and its label map.

    Attributes:
        case_id: the nnU-Net/nnDetection case identifier (file name without channel and ending).
        image_path: the CT file (``CASE_0000`` + file ending).
        label_path: the label map (nnU-Net: semantic; nnDetection: instances).
        instances_path: nnDetection's ``CASE.json`` (instance -> class); None for nnU-Net.
        series_uid: DICOM + SEG: the CT series' UID (``image_path`` is the folder holding it).
        segments: DICOM + SEG: (segment number, dataset label value) of each segment of the SEG.
    """

    case_id: str
    image_path: Path
    label_path: Path
    instances_path: Path | None = None
    series_uid: str | None = None
    segments: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class MaskedDataset:
    """A dataset of volumes with lesion label maps (module docstring).

    Attributes:
        root: the dataset folder (the one holding ``dataset.json``).
        layout: ``"nnunet"`` or ``"nndetection"``.
        labels: label (nnU-Net) or class (nnDetection) name -> value / class index.
        splits: split name (``train``, ``val``, ``test``) -> its cases, sorted by case id.
        split_source: how train/val were made, for reports (e.g. ``"splits_final.json fold 0"``).
    """

    root: Path
    layout: str
    labels: dict[str, int]
    splits: dict[str, tuple[MaskedCase, ...]]
    split_source: str

    def cases(self, split: str) -> tuple[MaskedCase, ...]:
        """The cases of ``split`` (:data:`MASKED_SPLITS`; ``all``: every case, by case id).

        Raises:
            ValueError: an unknown split name.
        """
        if split == "all":
            return tuple(sorted((c for cases in self.splits.values() for c in cases), key=lambda c: c.case_id))
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r} (expected one of {', '.join(MASKED_SPLITS)})")
        return self.splits[split]

    def lesion_value(self, lesion_label: str) -> int:
        """The label value (nnU-Net) or class index (nnDetection) named by ``lesion_label``.

        Args:
            lesion_label: a name of ``labels`` or an integer given as text.

        Raises:
            CtlesionError: (naming dataset.json) the name or value is not among the labels, or
                it is nnU-Net's background (0).
        """
        if lesion_label in self.labels:
            value = self.labels[lesion_label]
        else:
            try:
                value = int(lesion_label)
            except ValueError:
                value = None
            if value is None or value not in self.labels.values():
                names = ", ".join(f"{name} ({v})" for name, v in self.labels.items())
                raise CtlesionError(f"no label {lesion_label!r} (labels: {names})", self.root / "dataset.json")
        if self.layout == "nnunet" and value == 0:
            raise CtlesionError("the lesion label cannot be the background (0)", self.root / "dataset.json")
        return value


def is_masked_dataset(path: Path) -> bool:
    """True when ``path`` holds a ``dataset.json`` with an ``imagesTr`` (nnU-Net) or ``raw_splitted``
    (nnDetection), or DICOM SEG files (:func:`~ctlesion.io.dicom_seg_dataset.is_dicom_seg_dataset`)."""
    return _is_nnunet_or_nndetection(Path(path)) or is_dicom_seg_dataset(path)


def _is_nnunet_or_nndetection(path: Path) -> bool:
    return (path / "dataset.json").is_file() and ((path / "imagesTr").is_dir() or (path / "raw_splitted").is_dir())


def open_masked_dataset(root: Path, *, val_fraction: float | None = None, seed: int = 0) -> MaskedDataset:
    """Read a dataset's ``dataset.json`` and list its cases and splits (module docstring).

    Args:
        root: the dataset folder.
        val_fraction: without a splits file, the share of training cases drawn (seeded by
            ``seed``) into ``val``; None: every training case is ``train``.
        seed: seed of that draw.

    Returns:
        The :class:`MaskedDataset` (nothing is read beyond file names and JSON).

    Raises:
        CtlesionError: (naming the file) no or unreadable dataset.json, labels missing or not
            integers, an image without its label map (or the reverse), a splits file naming
            unknown cases, no case at all, or ``val_fraction`` outside [0, 1).
    """
    root = Path(root)
    if not _is_nnunet_or_nndetection(root):
        return _open_dicom_seg(root, val_fraction, seed)
    layout = "nndetection" if (root / "raw_splitted").is_dir() else "nnunet"
    description = _read_json(root / "dataset.json")
    labels = _labels(description, layout, root / "dataset.json")
    ending = description.get("file_ending", ".nii.gz")
    if ending not in (".nii.gz", ".nii"):
        raise CtlesionError(f"file_ending {ending!r} is not supported (NIfTI only)", root / "dataset.json")
    base = root / "raw_splitted" if layout == "nndetection" else root
    training = _cases(base / "imagesTr", base / "labelsTr", ending, layout, required=True)
    test = _cases(base / "imagesTs", base / "labelsTs", ending, layout, required=False)
    if not training and not test:
        raise CtlesionError("holds no case (imagesTr/ and imagesTs/ are empty)", base)
    train, val, source = _train_val(root, training, val_fraction, seed)
    return MaskedDataset(root=root, layout=layout, labels=labels,
                         splits={"train": train, "val": val, "test": test}, split_source=source)


def _open_dicom_seg(root: Path, val_fraction: float | None, seed: int) -> MaskedDataset:
    """The DICOM + SEG layout (:mod:`ctlesion.io.dicom_seg_dataset`): a case per SEG, labels by segment label."""
    segs, series_folders = scan_dicom_seg_folder(root) if may_hold_segs(root) else ([], {})
    if not segs:
        raise CtlesionError("not an nnU-Net or nnDetection dataset (no dataset.json with imagesTr/ or "
                            "raw_splitted/) nor a folder of DICOM series with SEG files", root)
    labels: dict[str, int] = {}
    for _, _, segments in segs:
        for number, label in sorted(segments.items()):
            labels.setdefault(label, number if number not in labels.values() else max(labels.values()) + 1)
    cases = []
    for path, series_uid, segments in segs:
        if series_uid not in series_folders:
            raise CtlesionError(f"the CT series {series_uid} this SEG references is not in the folder", path)
        case_id = str(path.relative_to(root).with_suffix("")).replace("/", "_")
        cases.append(MaskedCase(case_id, series_folders[series_uid], path, series_uid=series_uid,
                                segments=tuple((number, labels[label]) for number, label in sorted(segments.items()))))
    train, val, source = _train_val(root, tuple(sorted(cases, key=lambda c: c.case_id)), val_fraction, seed)
    return MaskedDataset(root=root, layout="dicom-seg", labels=labels, splits={"train": train, "val": val, "test": ()},
                         split_source=source)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CtlesionError(f"cannot read JSON ({exc})", path) from None


def _labels(description: dict, layout: str, path: Path) -> dict[str, int]:
    """name -> value (nnU-Net ``{"name": value}``) or class name -> index (nnDetection ``{"index": "name"}``)."""
    labels = description.get("labels") if isinstance(description, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise CtlesionError("no 'labels' mapping", path)
    try:
        if layout == "nndetection":
            return {str(name): int(index) for index, name in labels.items()}
        return {str(name): int(value) for name, value in labels.items()}
    except (TypeError, ValueError):
        raise CtlesionError("labels must map names to integers (region labels are not supported)", path) from None


def _cases(images_dir: Path, labels_dir: Path, ending: str, layout: str, *, required: bool) -> tuple[MaskedCase, ...]:
    """The cases of one images/labels folder pair; images without a label map are refused in
    training folders and skipped in test folders (unlabelled test cases are normal)."""
    if not images_dir.is_dir():
        if required:
            raise CtlesionError("missing folder", images_dir)
        return ()
    cases = []
    for image in sorted(images_dir.glob(f"*{CT_CHANNEL}{ending}")):
        case_id = image.name[: -len(CT_CHANNEL + ending)]
        label = labels_dir / f"{case_id}{ending}"
        instances = labels_dir / f"{case_id}.json" if layout == "nndetection" else None
        if not label.is_file() or (instances is not None and not instances.is_file()):
            if required:
                missing = label if not label.is_file() else instances
                raise CtlesionError(f"case {case_id} has no label file {missing.name}", labels_dir)
            continue
        cases.append(MaskedCase(case_id, image, label, instances))
    if required and labels_dir.is_dir():
        known = {c.case_id for c in cases}
        orphans = sorted(p.name for p in labels_dir.glob(f"*{ending}") if p.name[: -len(ending)] not in known)
        if orphans:
            raise CtlesionError(f"label map(s) without an image {images_dir.name}/CASE{CT_CHANNEL}{ending}: "
                                f"{', '.join(orphans[:3])}", labels_dir)
    return tuple(cases)


def _train_val(root: Path, training: tuple[MaskedCase, ...], val_fraction: float | None,
               seed: int) -> tuple[tuple[MaskedCase, ...], tuple[MaskedCase, ...], str]:
    by_id = {c.case_id: c for c in training}
    for name in ("splits_final.json", "splits.json"):
        path = root / name
        if path.is_file():
            folds = _read_json(path)
            if not (isinstance(folds, list) and folds and isinstance(folds[0], dict)
                    and {"train", "val"} <= set(folds[0])):
                raise CtlesionError("expected nnU-Net's format: a list of folds {\"train\": [...], \"val\": [...]}",
                                    path)
            unknown = sorted((set(folds[0]["train"]) | set(folds[0]["val"])) - set(by_id))
            if unknown:
                raise CtlesionError(f"fold 0 names case(s) not in imagesTr: {', '.join(map(str, unknown[:3]))}", path)
            pick = lambda ids: tuple(by_id[i] for i in sorted(ids))  # noqa: E731
            return pick(folds[0]["train"]), pick(folds[0]["val"]), f"{name} fold 0"
    if val_fraction is None:
        return training, (), "no splits file and no val fraction: every training case in train"
    if not 0.0 <= val_fraction < 1.0:
        raise CtlesionError(f"val fraction {val_fraction} outside [0, 1)", root)
    ids = sorted(by_id)
    random.Random(seed).shuffle(ids)
    num_val = round(len(ids) * val_fraction)
    val = set(ids[:num_val])
    return (tuple(by_id[i] for i in sorted(by_id) if i not in val), tuple(by_id[i] for i in sorted(val)),
            f"{val_fraction:g} of the training cases in val (seed {seed})")


@dataclass(frozen=True)
class CaseLesions:
    """A case's CT and its lesions.

    Attributes:
        volume: the CT (:func:`ctlesion.io.nifti.read_nifti`: LPS, (Z, Y, X)).
        lesions_zyx: (Z, Y, X) int32 map of the lesions, 1..num_lesions, 0 elsewhere, on the
            volume's grid; lesions are numbered by their first voxel in (z, y, x) order.
        num_lesions: G.
    """

    volume: Volume
    lesions_zyx: np.ndarray
    num_lesions: int


def read_case(case: MaskedCase, lesion_value: int, *, layout: str, min_lesion_voxels: int = 1) -> CaseLesions:
    """Read a case's CT and its lesions of one label or class (module docstring).

    Args:
        case: from :meth:`MaskedDataset.cases`.
        lesion_value: from :meth:`MaskedDataset.lesion_value`.
        layout: the dataset's layout.
        min_lesion_voxels: lesions with fewer voxels are dropped (>= 1).

    Raises:
        CtlesionError: (naming the file) an unreadable image or label map, a label map off the
            image's grid, non-integer labels, or an unreadable instances file.
    """
    if layout == "dicom-seg":
        volume = read_volume(case.image_path, series=case.series_uid)
        wanted = {number for number, value in case.segments if value == lesion_value}
        lesions, count = connected_components(seg_lesion_mask(case.label_path, volume, wanted))
        lesions, count = _drop_small(lesions.astype(np.int32), count, min_lesion_voxels)
        return CaseLesions(volume=volume, lesions_zyx=lesions, num_lesions=count)
    volume = read_nifti(case.image_path)
    labels = read_nifti(case.label_path)
    check_same_grid(volume, labels, case.label_path)
    values = labels.hu
    if values.dtype.kind != "i":
        raise CtlesionError("label map holds non-integer values", case.label_path)
    if layout == "nndetection":
        classes = _read_json(case.instances_path).get("instances", {})
        try:
            wanted = [int(i) for i, c in classes.items() if int(c) == lesion_value]
        except (TypeError, ValueError, AttributeError):
            raise CtlesionError("'instances' must map instance ids to class indices", case.instances_path) from None
        lesions, count = _relabel(values, wanted)
    else:
        lesions, count = connected_components(values == lesion_value)
    lesions, count = _drop_small(lesions.astype(np.int32), count, min_lesion_voxels)
    return CaseLesions(volume=volume, lesions_zyx=lesions, num_lesions=count)


def connected_components(mask_zyx: np.ndarray) -> tuple[np.ndarray, int]:
    """3D connected components (26-connectivity) of a (Z, Y, X) bool mask, numbered 1..G in
    raster order of their first voxel (SimpleITK's ConnectedComponent, fully connected).

    Returns:
        ((Z, Y, X) int32 component map, 0 outside the mask; G).
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask_zyx, dtype=np.uint8))
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(image, True)).astype(np.int32)
    return components, int(components.max(initial=0))


def check_same_grid(volume: Volume, labels: Volume, path: Path) -> None:
    """Refuse a label map (read as a Volume from ``path``) that is not on ``volume``'s grid: same
    (Z, Y, X) shape, and spacing, origin and direction within :data:`GRID_TOLERANCE_MM`.

    Raises:
        CtlesionError: (naming ``path``) every difference found.
    """
    problems = []
    if labels.shape_zyx != volume.shape_zyx:
        problems.append(f"shape {labels.shape_zyx} vs the image's {volume.shape_zyx} (z, y, x)")
    else:
        for name, a, b in (("spacing", labels.spacing_zyx_mm, volume.spacing_zyx_mm),
                           ("origin", labels.origin_lps_mm, volume.origin_lps_mm),
                           ("direction", labels.direction_lps, volume.direction_lps)):
            if np.max(np.abs(np.asarray(a) - np.asarray(b))) > GRID_TOLERANCE_MM:
                problems.append(f"{name} {np.round(np.asarray(a), 4).tolist()} vs the image's "
                                f"{np.round(np.asarray(b), 4).tolist()}")
    if problems:
        raise CtlesionError(f"label map is not on its image's grid: {'; '.join(problems)}", path)


def _relabel(instances: np.ndarray, wanted: list[int]) -> tuple[np.ndarray, int]:
    """Instances in ``wanted`` renumbered 1..G by their first voxel; everything else 0."""
    present = np.isin(instances, wanted) & (instances > 0)
    flat = instances.ravel()
    ids, first = np.unique(flat[present.ravel()], return_index=True)
    order = ids[np.argsort(np.flatnonzero(present.ravel())[first])]
    lookup = np.zeros(int(instances.max()) + 1 if instances.size else 1, np.int32)
    lookup[order] = np.arange(1, len(order) + 1)
    return np.where(present, lookup[np.clip(instances, 0, None)], 0), len(order)


def _drop_small(lesions: np.ndarray, count: int, min_voxels: int) -> tuple[np.ndarray, int]:
    if min_voxels <= 1 or count == 0:
        return lesions, count
    sizes = np.bincount(lesions.ravel(), minlength=count + 1)
    keep = np.flatnonzero(sizes[1:] >= min_voxels) + 1
    lookup = np.zeros(count + 1, np.int32)
    lookup[keep] = np.arange(1, len(keep) + 1)
    return lookup[lesions], len(keep)


def cross_section_areas(lesions_zyx: np.ndarray, num_lesions: int) -> np.ndarray:
    """(G, Z) int64: the voxel count of each lesion 1..G on each slice z of a lesion map."""
    num_z = lesions_zyx.shape[0]
    z = np.broadcast_to(np.arange(num_z)[:, None, None], lesions_zyx.shape)
    on = lesions_zyx > 0
    counts = np.bincount((lesions_zyx[on].astype(np.int64) - 1) * num_z + z[on], minlength=num_lesions * num_z)
    return counts.reshape(num_lesions, num_z)


def largest_cross_sections(lesions_zyx: np.ndarray, num_lesions: int) -> np.ndarray:
    """(G,) int64: the slice (z) where each lesion 1..G has most voxels (the first such slice on ties)."""
    return cross_section_areas(lesions_zyx, num_lesions).argmax(axis=1)


def boxes_on_slice(labels_yx: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """(len(wanted), 4) float64 inclusive pixel boxes (x1, y1, x2, y2: first and last pixel) of
    labels ``wanted`` on one (Y, X) slice; NaN rows for labels absent from it."""
    boxes = np.full((len(wanted), 4), np.nan)
    for row, label in enumerate(wanted):
        ys, xs = np.nonzero(labels_yx == label)
        if len(ys):
            boxes[row] = xs.min(), ys.min(), xs.max(), ys.max()
    return boxes
