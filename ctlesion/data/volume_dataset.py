"""Training items from CT volumes with lesion label maps (nnU-Net v2 raw and nnDetection layouts).

One item is one key slice of a case of a :class:`~ctlesion.io.masked_datasets.MaskedDataset`,
with the same contract as a :class:`~ctlesion.data.dataset.DeepLesionDataset` item (the two
share :class:`~ctlesion.data.dataset.KeySliceItems`: normalisation, augmentation, fitting into
the network input, crops):

* **key slices**: each lesion's largest cross-section (the slice a DeepLesion radiologist
  would have measured) and up to ``other_slices_per_lesion`` more of its slices, drawn (seeded)
  among those where its cross-section is at least half its largest in linear size (a quarter of
  the area); plus negative slices, ``negative_fraction`` of the positive ones, drawn among the
  slices with a body and no lesion voxel (validation during training: the largest
  cross-sections alone, ``other_slices_per_lesion=0, negative_fraction=0``);
* **ground truth on a key slice**: every lesion whose cross-section there is at least half its
  largest in linear size (the rule ``ctlesion simulate`` annotates key slices by; smaller tips
  of lesions are neither targets nor counted), its tight box (pixel i covering [i, i + 1)) and
  its mask from the label map (true masks: no GrabCut);
* **window**: :func:`ctlesion.preprocess.volume_window` on the source volume: the key slice is
  a source slice, its neighbours at the network's interval (thin volumes: +-2 mm, interpolated
  as ``detect`` sees them after :func:`~ctlesion.preprocess.resample_to_reference`; thick: the
  adjacent slices); the network's interval is
  :func:`~ctlesion.preprocess.network_interval_mm` of the volume's own.

Cases are read once (:func:`~ctlesion.io.masked_datasets.read_case`: geometry checked, lesions
as 3D connected components or instances) and kept as two ``.npy`` files (HU, lesion numbers)
and a ``.json`` (spacing, lesion count) in a cache folder (default
``DATASET/ctlesion_cache/volumes``) that every DataLoader worker memory-maps, so an item reads
only its window's slices. Cache names carry a fingerprint of the source files (path, size,
modification time), the lesion label and the minimum lesion size: a changed case is read again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctlesion.body import body_mask
from ctlesion.data.dataset import KeySliceItems, KeySliceSource
from ctlesion.errors import CtlesionError
from ctlesion.io.masked_datasets import MaskedCase, MaskedDataset, boxes_on_slice, cross_section_areas, read_case
from ctlesion.preprocess import HU_MAX, HU_MIN, network_interval_mm, volume_window
from ctlesion.volume import Volume

logger = logging.getLogger(__name__)

#: Default folder of the case cache, inside the dataset folder.
CACHE_DIRNAME = Path("ctlesion_cache") / "volumes"
#: Version of the cache's contents (part of every fingerprint: a new format reads the cases again).
CACHE_FORMAT = "2"
#: A lesion is a target on a slice where its area is at least this share of its largest (half the linear size).
MIN_AREA_SHARE = 0.25
#: Least share of a negative slice's pixels inside the body (slices of air or table only are not drawn).
MIN_BODY_SHARE = 0.05


@dataclass(frozen=True)
class CachedCase:
    """A case as cached: memory-mappable arrays and what the items need of it.

    Attributes:
        case_id: the case identifier.
        hu_path: ``.npy`` (Z, Y, X) HU (int16, or float32 for non-integer data).
        lesions_path: ``.npy`` (Z, Y, X) lesion numbers 1..G (uint16 or int32), 0 elsewhere.
        spacing_zyx_mm: the volume's spacing (slice interval first).
        areas_px: (G, Z) int64 each lesion's cross-section on each slice, pixels
            (:func:`~ctlesion.io.masked_datasets.cross_section_areas`), so that choosing key slices
            reads no lesion map.
    """

    case_id: str
    hu_path: Path
    lesions_path: Path
    spacing_zyx_mm: tuple[float, float, float]
    areas_px: np.ndarray

    @property
    def largest_area_px(self) -> np.ndarray:
        """(G,) int64 each lesion's largest cross-section, pixels."""
        return self.areas_px.max(axis=1, initial=0)


def _fingerprint(case: MaskedCase, lesion_value: int, min_lesion_voxels: int) -> str:
    parts = [CACHE_FORMAT, str(lesion_value), str(min_lesion_voxels)]
    for path in (case.image_path, case.label_path, case.instances_path):
        if path is not None:
            stat = path.stat()
            parts += [str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]


def _save_npy(path: Path, array: np.ndarray) -> None:
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    with partial.open("wb") as handle:
        np.save(handle, array)
    os.replace(partial, path)


def cache_case(case: MaskedCase, lesion_value: int, *, layout: str, min_lesion_voxels: int,
               cache_dir: Path) -> CachedCase:
    """The cached form of a case, reading and writing it first when the cache lacks it.

    Args:
        case: from :meth:`MaskedDataset.cases`.
        lesion_value: from :meth:`MaskedDataset.lesion_value`.
        layout: the dataset's layout.
        min_lesion_voxels: lesions with fewer voxels are dropped.
        cache_dir: the cache folder (created if needed).

    Raises:
        CtlesionError: as :func:`~ctlesion.io.masked_datasets.read_case` (naming the file), or a
            cache folder that cannot be written.
    """
    stem = f"{case.case_id}-{_fingerprint(case, lesion_value, min_lesion_voxels)}"
    hu_path, lesions_path, meta_path = (cache_dir / f"{stem}{ending}" for ending in (".hu.npy", ".lesions.npy",
                                                                                      ".json"))
    if not meta_path.is_file():
        truth = read_case(case, lesion_value, layout=layout, min_lesion_voxels=min_lesion_voxels)
        hu = truth.volume.hu
        hu = hu.astype(np.int16) if hu.dtype.kind in "iu" else hu.astype(np.float32, copy=False)
        lesions = truth.lesions_zyx.astype(np.uint16 if truth.num_lesions < 2**16 else np.int32)
        areas = cross_section_areas(truth.lesions_zyx, truth.num_lesions)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            _save_npy(hu_path, hu)
            _save_npy(lesions_path, lesions)
            partial = meta_path.with_name(meta_path.name + f".{os.getpid()}.partial")
            partial.write_text(json.dumps({"case_id": case.case_id, "spacing_zyx_mm": truth.volume.spacing_zyx_mm,
                                           "num_slices": truth.volume.shape_zyx[0], "areas_px": areas.tolist()}))
            os.replace(partial, meta_path)
        except OSError as exc:
            raise CtlesionError(f"cannot write the volume cache ({exc.strerror or exc}); name a writable "
                                "folder with --mask-cache DIR", cache_dir) from None
    meta = json.loads(meta_path.read_text())
    return CachedCase(case_id=case.case_id, hu_path=hu_path, lesions_path=lesions_path,
                      spacing_zyx_mm=tuple(meta["spacing_zyx_mm"]),
                      areas_px=np.asarray(meta["areas_px"], dtype=np.int64).reshape(-1, meta["num_slices"]))


def choose_key_slices(areas_px: np.ndarray, hu_zyx: np.ndarray, *, other_slices_per_lesion: int,
                      negative_fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """The key slices of one case (module docstring): ``(positive slices, negative slices)``, sorted.

    Args:
        areas_px: (G, Z) each lesion's cross-section on each slice, pixels.
        hu_zyx: (Z, Y, X) HU, to find slices with a body (read only for drawn negatives).
        other_slices_per_lesion: slices drawn per lesion besides its largest.
        negative_fraction: negative slices per positive slice (rounded; capped by what exists).
        rng: the draws' generator.
    """
    areas = np.asarray(areas_px)
    positive: set[int] = set()
    for lesion_areas in areas:
        largest = int(lesion_areas.argmax())
        positive.add(largest)
        others = np.flatnonzero(lesion_areas >= MIN_AREA_SHARE * lesion_areas[largest])
        others = others[others != largest]
        if len(others) and other_slices_per_lesion > 0:
            positive.update(int(z) for z in rng.choice(others, min(other_slices_per_lesion, len(others)),
                                                       replace=False))
    free = np.flatnonzero(areas.sum(axis=0) == 0) if len(areas) else np.arange(len(hu_zyx))
    wanted = round(negative_fraction * len(positive))
    negative: list[int] = []
    for z in rng.permutation(free):
        if len(negative) >= wanted:
            break
        if body_mask(np.asarray(hu_zyx[z])).mean() >= MIN_BODY_SHARE:
            negative.append(int(z))
    return sorted(positive), sorted(negative)


class VolumeKeySliceDataset(KeySliceItems):
    """Key slices of the cases of one split of a masked dataset, ready for the detector (module
    docstring; item contract of :class:`~ctlesion.data.dataset.DeepLesionDataset`, with
    ``key`` = ``"CASE:z"``, z the source slice index).

    Args:
        dataset: the masked dataset.
        split: ``train``, ``val``, ``test`` or ``all``.
        lesion_value: from :meth:`MaskedDataset.lesion_value`.
        num_slices, image_size_px, with_masks, seed, hu_window, input_scaling, resample_thick,
        augment, crop, skip_unreadable: as :class:`~ctlesion.data.dataset.DeepLesionDataset`.
        min_lesion_voxels: lesions with fewer voxels are dropped.
        other_slices_per_lesion: slices drawn per lesion besides its largest cross-section.
        negative_fraction: negative slices per positive slice.
        cache_dir: the case cache; None for ``DATASET/ctlesion_cache/volumes``.

    Raises:
        CtlesionError: as :func:`cache_case`.
    """

    def __init__(self, dataset: MaskedDataset, split: str, lesion_value: int, *, num_slices: int = 3,
                 image_size_px: int = 512, with_masks: bool = True, seed: int = 0,
                 hu_window: tuple[float, float] = (HU_MIN, HU_MAX), input_scaling: str = "unit",
                 resample_thick: bool = False, augment=None, crop=None, skip_unreadable: bool = True,
                 min_lesion_voxels: int = 1, other_slices_per_lesion: int = 2, negative_fraction: float = 0.1,
                 cache_dir: Path | None = None) -> None:
        self.root = dataset.root
        self.split = split
        self._init_items(num_slices=num_slices, image_size_px=image_size_px, with_masks=with_masks, seed=seed,
                         hu_window=hu_window, input_scaling=input_scaling, resample_thick=resample_thick,
                         augment=augment, crop=crop, skip_unreadable=skip_unreadable)
        folder = Path(cache_dir) if cache_dir is not None else dataset.root / CACHE_DIRNAME
        self.cases: list[CachedCase] = []
        self.items: list[tuple[int, int]] = []  # (case index, z)
        self.num_negative = 0
        for case in dataset.cases(split):
            cached = cache_case(case, lesion_value, layout=dataset.layout, min_lesion_voxels=min_lesion_voxels,
                                cache_dir=folder)
            hu = np.load(cached.hu_path, mmap_mode="r")
            rng = np.random.default_rng([seed, len(self.cases)])
            positive, negative = choose_key_slices(cached.areas_px, hu, rng=rng, negative_fraction=negative_fraction,
                                                   other_slices_per_lesion=other_slices_per_lesion)
            self.items += [(len(self.cases), z) for z in sorted(positive + negative)]
            self.num_negative += len(negative)
            self.cases.append(cached)
        self.names = [f"{self.cases[c].case_id}:{z}" for c, z in self.items]
        if not self.items:
            logger.warning("%s: no key slice in split %r", dataset.root, split)

    @classmethod
    def for_detector(cls, dataset: MaskedDataset, split: str, lesion_value: int, config,
                     **kwargs) -> VolumeKeySliceDataset:
        """The dataset a detector configuration (``DetectorConfig``) reads: its window depth,
        input size, HU window and neighbour spacing; ``kwargs`` as in the constructor."""
        return cls(dataset, split, lesion_value, num_slices=config.num_slices, image_size_px=config.image_size_px,
                   hu_window=config.hu_window, input_scaling=config.input_scaling,
                   resample_thick=config.resample_thick, **kwargs)

    def mask_sources(self) -> dict[str, int]:
        """``{"true": n, "grabcut": 0}``: every item's masks come from the label maps."""
        return {"true": len(self) if self.with_masks else 0, "grabcut": 0}

    def source(self, index: int) -> KeySliceSource:
        """The window, boxes and masks of key slice ``index`` (module docstring).

        Raises:
            CtlesionError: a cache file that cannot be read (naming it).
        """
        case_index, z = self.items[index]
        case = self.cases[case_index]
        try:
            hu = np.load(case.hu_path, mmap_mode="r")
            labels_yx = np.asarray(np.load(case.lesions_path, mmap_mode="r")[z])
        except (OSError, ValueError) as exc:
            raise CtlesionError(f"cannot read the volume cache ({exc})", case.hu_path) from None
        volume = Volume(hu=hu, spacing_zyx_mm=case.spacing_zyx_mm)
        window_hu = volume_window(volume, z, self.num_slices, resample_thick=self.resample_thick)
        areas = case.areas_px[:, z]
        targets = np.flatnonzero((areas > 0) & (areas >= MIN_AREA_SHARE * case.largest_area_px)) + 1
        masks = labels_yx[None] == targets[:, None, None]
        boxes = boxes_on_slice(labels_yx, targets) + np.array([0.0, 0.0, 1.0, 1.0])  # tight: pixel i is [i, i + 1)
        interval = volume.slice_interval_mm
        return KeySliceSource(key=self.names[index], window_hu=window_hu,
                              interval_mm=network_interval_mm(interval, resample_thick=self.resample_thick),
                              slice_interval_src_mm=interval, boxes_px=boxes, recist_px=None,
                              masks=masks if self.with_masks else None)
