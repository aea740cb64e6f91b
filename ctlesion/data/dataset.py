"""The DeepLesion training dataset: key-slice windows, boxes and lesion masks.

One item is one annotated key slice of a DeepLesion-layout folder (``DL_info.csv`` +
``Images_png/``, the real dataset or :mod:`ctlesion.data.simulate`'s): the window of the key
slice and its neighbours (``load_key_slice_window``, SPEC section 4), normalised to [0, 1],
optionally augmented (:mod:`ctlesion.data.augment`) and fitted into the network's square
input (``fit_in_plane``), optionally cropped (``crop``, training on crops at the native
scale), with its lesions' boxes in network pixels and their masks: the dataset's true masks
where it has them (``masks/``, e.g. a simulated dataset), else GrabCut pseudo-masks (SPEC
section 7) from the disk cache of :mod:`ctlesion.data.mask_cache`.

An item holds only its own arrays: nothing accumulates per item in the dataset object, so
DataLoader workers stay at constant memory over an epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ctlesion.body import body_mask
from ctlesion.data.augment import (
    AugmentConfig,
    AugmentDraw,
    CropConfig,
    apply_draw_to_masks,
    augment_item,
    crop_item,
    draw_augmentation,
    draw_crop,
    flip_boxes_x,
)
from ctlesion.data.hard_negatives import box_region_mask
from ctlesion.data.mask_cache import (
    MASK_SOURCES,
    TRUE_MASKS_DIRNAME,
    PseudoMaskCache,
    open_mask_cache_dir,
    read_true_masks,
    true_masks_path,
)
from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion import (
    KeySlice,
    load_key_slice_window,
    read_dl_info,
)
from ctlesion.preprocess import (
    HU_MAX,
    HU_MIN,
    InPlaneTransform,
    InputMapping,
    air_input_value,
    fit_in_plane,
    network_input,
)

logger = logging.getLogger(__name__)

#: Extra seed word of the crop's generator: crops draw from (seed, index, epoch, _CROP_STREAM),
#: apart from the augmentation's (seed, index, epoch), so turning crops on leaves the
#: augmentation of every item as it was.
_CROP_STREAM = 0x63726F70

__all__ = ["DeepLesionDataset", "KeySliceItems", "KeySliceSource", "collate_detection", "flip_boxes_x"]


def collate_detection(
    batch: list[tuple[torch.Tensor, float, dict]],
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Stack dataset items into (images (B, 1, D, S, S), intervals (B,) float32, targets)."""
    images = torch.stack([item[0] for item in batch])
    intervals = torch.tensor([float(item[1]) for item in batch], dtype=torch.float32)
    return images, intervals, [item[2] for item in batch]


@dataclass(frozen=True)
class KeySliceSource:
    """What a dataset reads for one item, before the steps every dataset shares.

    Attributes:
        key: the item's name (DeepLesion: the key slice's file name; volumes: ``CASE:z``).
        window_hu: (D, Y, X) float32 HU, the key slice at D // 2 and its neighbours.
        interval_mm: the slice interval the network sees (2 mm for thin series, else the source's).
        slice_interval_src_mm: the source's own slice interval, mm.
        boxes_px: (N, 4) float64 lesion boxes (x1, y1, x2, y2) in source pixels of the key slice.
        recist_px: (N, 8) float64 RECIST endpoints, or None (used for rotated boxes without masks).
        masks: (N, Y, X) bool lesion masks on the key slice, or None without masks.
    """

    key: str
    window_hu: np.ndarray
    interval_mm: float
    slice_interval_src_mm: float
    boxes_px: np.ndarray
    recist_px: np.ndarray | None
    masks: np.ndarray | None


class KeySliceItems(Dataset):
    """The item steps every key-slice dataset shares (:class:`DeepLesionDataset`,
    :class:`~ctlesion.data.volume_dataset.VolumeKeySliceDataset`): a subclass reads the
    :class:`KeySliceSource` of an item (:meth:`source`); this class normalises the window to the
    network input, augments it with its boxes and masks, fits it into the square input, crops it,
    and builds the target (the item contract is :class:`DeepLesionDataset`'s).

    Subclasses set ``self.names`` (one name per item, for messages) and call
    :meth:`_init_items`; with ``skip_unreadable`` an item whose source raises
    :class:`~ctlesion.errors.CtlesionError` is replaced by the next readable one.
    """

    names: list[str]

    def _init_items(self, *, num_slices: int, image_size_px: int, with_masks: bool, seed: int,
                    hu_window: tuple[float, float], input_scaling: str, resample_thick: bool,
                    augment: AugmentConfig | None, crop: CropConfig | None, skip_unreadable: bool,
                    hard_negatives: Mapping[str, np.ndarray] | None = None) -> None:
        if crop is not None and crop.size_px > image_size_px:
            raise ValueError(f"crop size {crop.size_px} px exceeds the network input size {image_size_px} px")
        self.num_slices = num_slices
        self.image_size_px = image_size_px
        self.with_masks = with_masks
        self.augment = augment
        self.seed = seed
        self.input_mapping = InputMapping(tuple(hu_window), input_scaling)
        self.resample_thick = bool(resample_thick)
        self.epoch = 0
        self.crop = crop
        self.skip_unreadable = bool(skip_unreadable)
        self.hard_negatives = dict(hard_negatives or {})

    def source(self, index: int) -> KeySliceSource:
        """The window, boxes and masks of item ``index`` (subclasses).

        Raises:
            CtlesionError: unreadable data.
        """
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.names)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with the seed and the index, decides the random augmentation."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float, dict]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"key slice index {index} out of range for {len(self)} key slices")
        index %= len(self)
        if not self.skip_unreadable:
            return self._item(index)
        for step in range(len(self)):
            current = (index + step) % len(self)
            try:
                return self._item(current)
            except CtlesionError as exc:
                logger.warning("%s; skipping key slice %s", exc, self.names[current])
        raise CtlesionError("no readable key slice left in the split", getattr(self, "root", None))

    def _item(self, index: int) -> tuple[torch.Tensor, float, dict]:
        """Item ``index``, raising CtlesionError for unreadable data."""
        src = self.source(index)
        key_hu = src.window_hu[self.num_slices // 2]
        masks_src = src.masks
        window = network_input(src.window_hu, self.input_mapping)
        air = air_input_value(self.input_mapping)
        boxes_src = src.boxes_px.astype(np.float64)
        applied = AugmentDraw()  # the identity
        if self.augment is not None:
            draw = draw_augmentation(self.augment, np.random.default_rng([self.seed, index, self.epoch]))
            item = augment_item(window, boxes_src, draw, recist_px=src.recist_px, masks=masks_src, fill=air)
            window, boxes_src, masks_src, applied = item.window, item.boxes_px, item.masks, item.draw
        image, transform = fit_in_plane(window, self.image_size_px, air)
        masks = None if masks_src is None else transform.masks_to_network(masks_src)
        extra = {}
        if self.crop is not None:
            image, boxes, masks, offset = self._crop(index, src.key, image, transform.boxes_to_network(boxes_src), masks,
                                                     key_hu, applied, transform)
            boxes_src = (boxes + np.array([*offset, *offset], dtype=np.float64)) / transform.scale
            extra["crop_xy_px"] = offset
        else:
            boxes = transform.boxes_to_network(boxes_src)
        target = {
            "boxes": torch.from_numpy(boxes.astype(np.float32).reshape(-1, 4)),
            "labels": torch.ones(len(boxes_src), dtype=torch.int64),
            "key": src.key,
            "scale": float(transform.scale),
            "in_plane": transform,
            "boxes_src_px": torch.from_numpy(boxes_src.reshape(-1, 4)),
            "slice_interval_src_mm": float(src.slice_interval_src_mm),
            **extra,
        }
        if masks is not None:
            target["masks"] = torch.from_numpy(masks)
        return torch.from_numpy(image)[None], float(src.interval_mm), target

    def _crop(self, index: int, key: str, image: np.ndarray, boxes: np.ndarray, masks: np.ndarray | None,
              key_hu: np.ndarray, applied: AugmentDraw, transform: InPlaneTransform):
        """Draw and cut the item's crop from the (D, S, S) image with its boxes (network px) and
        masks: (image (D, PX, PX), kept boxes in crop px, masks (N', PX, PX) or None, offset (x0, y0))."""

        def to_network(region: np.ndarray) -> np.ndarray:  # a key-slice region, moved like the lesion masks
            return transform.masks_to_network(apply_draw_to_masks(region[None], applied))[0].astype(bool)

        def body() -> np.ndarray:
            return to_network(body_mask(key_hu))

        def hard() -> np.ndarray | None:
            boxes_src = self.hard_negatives.get(key)
            return None if boxes_src is None else to_network(box_region_mask(boxes_src, key_hu.shape))

        rng = np.random.default_rng([self.seed, index, self.epoch, _CROP_STREAM])
        draw = draw_crop(self.crop, rng, boxes, self.image_size_px, body, hard)
        cut = crop_item(image, boxes, draw, masks=masks, min_visible_fraction=self.crop.min_visible_fraction)
        return cut.image, cut.boxes_px, cut.masks, tuple(int(v) for v in draw.offset_xy_px)


class DeepLesionDataset(KeySliceItems):
    """Key slices of one split of a DeepLesion-layout folder, ready for the detector.

    ``dataset[i]`` returns ``(image, slice_interval_mm, target)``:

    * ``image``: float32 tensor (1, D, S, S), the network input of the HU
      (:func:`ctlesion.preprocess.network_input`: ``hu_window`` onto [0, 1], or [0, 255] - 50
      with ``input_scaling="mmdet"``), resized keeping aspect and padded with air at the
      bottom/right to S x S;
    * ``slice_interval_mm``: the interval the network sees (2 mm for thin series, else s);
    * ``target``: ``boxes`` float32 (N, 4) network pixels (x1, y1, x2, y2); ``labels`` int64
      ones (N,); ``masks`` uint8 (N, S, S) lesion masks (only with ``with_masks``); ``key`` the
      file name; ``scale`` network px per source px; ``in_plane`` the
      :class:`~ctlesion.preprocess.InPlaneTransform` of the fit (both directions); ``boxes_src_px`` float64 (N, 4) source
      pixels (after augmentation, if any: ``(boxes + crop offset) / scale``);
      ``slice_interval_src_mm`` the series' own interval; with ``crop``, ``crop_xy_px`` (x0,
      y0) int, the crop's offset in the whole fitted image (crop px = image px - offset).

    Lesions marked Possibly_noisy are dropped (``drop_noisy``), and key slices left without
    lesions are skipped.

    Masks (``mask_source``): with ``"auto"`` (default), a key slice whose true masks the
    dataset holds (``<root>/masks/<series_dir>/<slice:03d>.npz``, one mask per DL_info row of
    the key slice; the contract is in :mod:`ctlesion.data.mask_cache`) uses them; the others,
    and every key slice with ``"grabcut"``, use GrabCut pseudo-masks, computed on the key
    slice at source resolution and kept in a disk cache
    (:class:`~ctlesion.data.mask_cache.PseudoMaskCache`) in ``mask_cache_dir``, by default
    ``<root>/ctlesion_cache/pseudo_masks``; fill it beforehand with ``ctlesion prepare``, or
    it fills on first use (safe with many workers and processes). A dataset without
    ``masks/`` behaves as before true masks existed.

    Augmentation (``augment``, training only) is applied to the normalised window at source
    resolution, before ``fit_in_plane``, with its boxes and masks
    (:func:`~ctlesion.data.augment.augment_item`); lesions moved out of the image are dropped
    (if all are, the item keeps only its flip). The draw comes from a generator seeded with
    (seed, index, epoch): the same for any number of DataLoader workers; call
    :meth:`set_epoch` before each epoch, or every epoch repeats the same draws; flips alone
    are ``AugmentConfig.flip_only(p)``.

    Crops (``crop``, training only; :class:`~ctlesion.data.augment.CropConfig`): the item is a
    PX x PX crop of the fitted S x S image (after augmentation), around one of its lesions or,
    with probability ``negative_fraction``, anywhere in the body; boxes and masks follow it
    (rules in :mod:`ctlesion.data.augment`). The crop is drawn from a generator seeded with
    (seed, index, epoch, a crop tag), so the augmentation is the one the whole-slice item
    gets, and crops are as repeatable and worker-independent as the augmentation. Without
    ``crop`` items are whole slices, exactly as before crops existed.

    Unreadable data (``skip_unreadable``): key slices whose PNG is missing are dropped at
    construction with one warning giving their count; an item whose PNGs turn out corrupt or
    missing mid-epoch is replaced, with a warning naming the file, by the next readable key
    slice (index + 1, + 2, ... cyclically), so an epoch never stops on a bad file. With
    ``skip_unreadable=False`` both raise :class:`~ctlesion.errors.CtlesionError` instead
    (evaluation should score every image of a split, or fail).

    Args:
        root: folder holding ``DL_info.csv`` and ``Images_png/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_slices: window depth D (odd; paper: 3 or 7).
        image_size_px: network input side S.
        drop_noisy: drop Possibly_noisy lesions (SPEC section 7).
        with_masks: provide pseudo-masks.
        seed: seed of the augmentation draws.
        hu_window: HU window of the network input (:func:`ctlesion.preprocess.network_input`).
        input_scaling: "unit" ([0, 1]) or "mmdet" ([0, 255] - 50), as the model's configuration.
        resample_thick: neighbours 2 mm apart for thick series too (TSM / 2.5D).
        augment: training augmentation; None for none (evaluation).
        mask_cache_dir: pseudo-mask cache folder; None for ``<root>/ctlesion_cache/pseudo_masks``.
        skip_unreadable: skip missing / corrupt PNGs (and malformed true-mask files) instead of raising.
        crop: train on crops at the native scale; None for whole slices (evaluation).
        mask_source: ``"auto"`` (true masks where the dataset has them, else GrabCut) or ``"grabcut"``.
        hard_negatives: key-slice file name -> (K, 4) boxes (x1, y1, x2, y2, source pixels) where an
            earlier model fired on no lesion (:func:`~ctlesion.data.hard_negatives.read_hard_negatives`);
            with ``crop.hard_negative_fraction`` > 0, negative crops are centred in them with that
            probability (:mod:`ctlesion.data.augment`).

    An empty split gives an empty dataset (with a logged warning).

    Raises:
        CtlesionError: if the folder lacks ``DL_info.csv`` or ``Images_png``, the table lacks a
            column, the split name is unknown, the mask cache folder cannot be written (with
            ``with_masks``), or a key slice PNG is missing and ``skip_unreadable`` is False.
        ValueError: a crop larger than ``image_size_px``, or an unknown ``mask_source``.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        num_slices: int = 3,
        image_size_px: int = 512,
        drop_noisy: bool = True,
        with_masks: bool = True,
        seed: int = 0,
        hu_window: tuple[float, float] = (HU_MIN, HU_MAX),
        input_scaling: str = "unit",
        resample_thick: bool = False,
        augment: AugmentConfig | None = None,
        mask_cache_dir: Path | None = None,
        skip_unreadable: bool = True,
        crop: CropConfig | None = None,
        mask_source: str = "auto",
        hard_negatives: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        if mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {mask_source!r}")
        self.root = Path(root)
        self.images_dir = self.root / "Images_png"
        if not self.images_dir.is_dir():
            raise CtlesionError("not a DeepLesion folder: Images_png/ is missing", self.root)
        keys = [
            key
            for key in read_dl_info(self.root / "DL_info.csv", split=split, drop_noisy=drop_noisy)
            if key.num_lesions > 0
        ]
        self.skip_unreadable = bool(skip_unreadable)
        self.keys: list[KeySlice] = self._present(keys)
        self.names = [key.file_name for key in self.keys]
        if not self.keys:
            logger.warning("%s: no annotated key slice in split %r", self.root / "DL_info.csv", split)
        self.split = split
        self._init_items(num_slices=num_slices, image_size_px=image_size_px, with_masks=with_masks, seed=seed,
                         hu_window=hu_window, input_scaling=input_scaling, resample_thick=resample_thick,
                         augment=augment, crop=crop, skip_unreadable=skip_unreadable, hard_negatives=hard_negatives)
        self.mask_source = mask_source
        self.mask_cache = PseudoMaskCache(open_mask_cache_dir(self.root, mask_cache_dir)) if with_masks else None
        self.use_true_masks = with_masks and mask_source == "auto" and (self.root / TRUE_MASKS_DIRNAME).is_dir()
        # Rows of DL_info (per key slice) that the true-mask files index, where Possibly_noisy
        # lesions were dropped: file name -> (indices of the kept rows, number of rows).
        self._true_mask_rows: dict[str, tuple[np.ndarray, int]] = {}
        if self.use_true_masks and drop_noisy:
            kept = {key.file_name for key in self.keys}
            for full in read_dl_info(self.root / "DL_info.csv", split=split, drop_noisy=False):
                if full.file_name in kept and full.noisy.any():
                    self._true_mask_rows[full.file_name] = (np.flatnonzero(~full.noisy), full.num_lesions)

    @classmethod
    def for_detector(cls, root: Path, split: str, config, **kwargs) -> "DeepLesionDataset":
        """The dataset a detector configuration (``DetectorConfig``) reads: its window depth,
        input size, HU window and neighbour spacing; ``kwargs`` as in the constructor."""
        return cls(root, split, num_slices=config.num_slices, image_size_px=config.image_size_px,
                   hu_window=config.hu_window, input_scaling=config.input_scaling,
                   resample_thick=config.resample_thick, **kwargs)

    def _present(self, keys: list[KeySlice]) -> list[KeySlice]:
        """The key slices whose PNG exists (one stat each); the others are dropped with one
        warning, or raise a CtlesionError without ``skip_unreadable``."""
        missing = [key for key in keys if not key.png_path(self.images_dir).is_file()]
        if not missing:
            return keys
        first = missing[0].png_path(self.images_dir)
        if not self.skip_unreadable:
            raise CtlesionError(f"key slice PNG not found ({len(missing)} of {len(keys)} missing)", first)
        logger.warning("%s: skipped %d of %d key slice(s) whose PNG is missing (first: %s)",
                       self.root / "DL_info.csv", len(missing), len(keys), first)
        absent = {id(key) for key in missing}
        return [key for key in keys if id(key) not in absent]

    def true_masks(self, index: int, shape_yx: tuple[int, int]) -> np.ndarray | None:
        """(N, Y, X) bool true masks of key slice ``index`` from ``<root>/masks/``, or None when it has none.

        Always None with ``mask_source="grabcut"`` or without ``masks/``.

        Raises:
            CtlesionError: a malformed true-mask file (:func:`~ctlesion.data.mask_cache.read_true_masks`).
        """
        if not self.use_true_masks:
            return None
        key = self.keys[index]
        rows, num_rows = self._true_mask_rows.get(key.file_name, (None, key.num_lesions))
        return read_true_masks(true_masks_path(self.root, key), tuple(shape_yx), num_rows, rows)

    def lesion_masks(self, index: int, key_slice_hu: np.ndarray) -> np.ndarray:
        """(N, Y, X) bool masks of key slice ``index``: its true masks when the dataset has them, else GrabCut's.

        Raises:
            CtlesionError: without masks (``with_masks=False``), or a malformed true-mask file.
        """
        masks = self.true_masks(index, np.shape(key_slice_hu)) if self.with_masks else None
        return masks if masks is not None else self.pseudo_masks(index, key_slice_hu)

    def mask_sources(self) -> dict[str, int]:
        """How many key slices get true masks and how many GrabCut pseudo-masks (one stat per key slice).

        Returns:
            ``{"true": n, "grabcut": m}`` (both 0 without masks).
        """
        if not self.with_masks:
            return {"true": 0, "grabcut": 0}
        true = sum(true_masks_path(self.root, key).is_file() for key in self.keys) if self.use_true_masks else 0
        return {"true": int(true), "grabcut": len(self.keys) - int(true)}

    def pseudo_masks(self, index: int, key_slice_hu: np.ndarray) -> np.ndarray:
        """(N, Y, X) bool GrabCut pseudo-masks of key slice ``index`` (from the disk cache, else computed).

        Raises:
            CtlesionError: if the dataset was made with ``with_masks=False``.
        """
        if self.mask_cache is None:
            raise CtlesionError("this dataset was made without masks (with_masks=False)", self.root)
        return self.mask_cache.get(self.keys[index], key_slice_hu)

    def source(self, index: int) -> KeySliceSource:
        """The window (``load_key_slice_window``), boxes, RECIST axes and masks of key slice ``index``.

        Raises:
            CtlesionError: unreadable PNGs or a malformed true-mask file.
        """
        key = self.keys[index]
        window_hu, interval_mm = load_key_slice_window(self.images_dir, key, self.num_slices,
                                                       resample_thick=self.resample_thick)
        masks = self.lesion_masks(index, window_hu[self.num_slices // 2]) if self.with_masks else None
        return KeySliceSource(key=key.file_name, window_hu=window_hu, interval_mm=interval_mm,
                              slice_interval_src_mm=key.slice_interval_mm, boxes_px=key.boxes_px,
                              recist_px=key.recist_px, masks=masks)
