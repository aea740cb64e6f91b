"""The DeepLesion training dataset: key-slice windows, boxes and GrabCut pseudo-masks.

One item is one annotated key slice of a DeepLesion-layout folder (``DL_info.csv`` +
``Images_png/``, the real dataset or :mod:`ctlesion.data.simulate`'s): the window of the key
slice and its neighbours (``load_key_slice_window``, SPEC section 4), normalised to [0, 1]
and fitted into the network's square input (``fit_in_plane``), with its lesions' boxes in
network pixels and their GrabCut pseudo-masks (SPEC section 7).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ctlesion.data.masks import recist_pseudo_mask
from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion import KeySlice, load_key_slice_window, read_dl_info, split_code
from ctlesion.preprocess import HU_MAX, HU_MIN, InPlaneTransform, fit_in_plane, normalize_hu

logger = logging.getLogger(__name__)


def flip_boxes_x(boxes_px: np.ndarray, width_px: float) -> np.ndarray:
    """Mirror (N, 4) boxes (x1, y1, x2, y2) left-right in an image ``width_px`` wide.

    With pixel i covering [i, i+1), column i goes to width - 1 - i, so x -> width - x.
    """
    boxes = np.asarray(boxes_px, dtype=np.float64).copy()
    boxes[:, [0, 2]] = width_px - boxes[:, [2, 0]]
    return boxes


def fit_masks_in_plane(masks: np.ndarray, transform: InPlaneTransform) -> np.ndarray:
    """Resize (N, Y, X) masks with nearest neighbour and pad them like the image.

    The content size follows :func:`ctlesion.preprocess.fit_in_plane` (round(side * scale),
    padding at the bottom and right).

    Returns:
        (N, S, S) uint8 masks of 0/1.
    """
    size = transform.size_px
    new_h, new_w = transform.content_shape_yx
    out = np.zeros((masks.shape[0], size, size), dtype=np.uint8)
    for n, mask in enumerate(masks):
        out[n, :new_h, :new_w] = cv2.resize(mask.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
    return out


def collate_detection(
    batch: list[tuple[torch.Tensor, float, dict]],
) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Stack dataset items into (images (B, 1, D, S, S), intervals (B,) float32, targets)."""
    images = torch.stack([item[0] for item in batch])
    intervals = torch.tensor([float(item[1]) for item in batch], dtype=torch.float32)
    return images, intervals, [item[2] for item in batch]


class DeepLesionDataset(Dataset):
    """Key slices of one split of a DeepLesion-layout folder, ready for the detector.

    ``dataset[i]`` returns ``(image, slice_interval_mm, target)``:

    * ``image``: float32 tensor (1, D, S, S), HU clipped to [-1024, 2050] and scaled to
      [0, 1], resized keeping aspect and zero-padded at the bottom/right to S x S;
    * ``slice_interval_mm``: the interval the network sees (2 mm for thin series, else s);
    * ``target``: ``boxes`` float32 (N, 4) network pixels (x1, y1, x2, y2); ``labels`` int64
      ones (N,); ``masks`` uint8 (N, S, S) GrabCut pseudo-masks (only with ``with_masks``);
      ``key`` the file name; ``scale`` network px per source px; ``boxes_src_px`` float64
      (N, 4) source pixels; ``slice_interval_src_mm`` the series' own interval.

    Lesions marked Possibly_noisy are dropped (``drop_noisy``), and key slices left without
    lesions are skipped. Pseudo-masks are computed once per key slice (on the key slice at
    source resolution) and kept in memory. With ``flip_p`` > 0 the item is mirrored
    left-right (image, boxes, masks and ``boxes_src_px`` together) with that probability,
    decided by a generator seeded from (seed, index, epoch), the same for any number of
    DataLoader workers; call :meth:`set_epoch` before each epoch, or every epoch repeats the
    same flips.

    Args:
        root: folder holding ``DL_info.csv`` and ``Images_png/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_slices: window depth D (odd; paper: 3 or 7).
        image_size_px: network input side S.
        drop_noisy: drop Possibly_noisy lesions (SPEC section 7).
        with_masks: compute pseudo-masks.
        flip_p: probability of a horizontal flip.
        seed: seed of the flip decisions.
        hu_window: HU mapped to [0, 1].
        resample_thick: neighbours 2 mm apart for thick series too (TSM / 2.5D).

    An empty split gives an empty dataset (with a logged warning).

    Raises:
        CtlesionError: if the folder lacks ``DL_info.csv`` or ``Images_png``, or the split name
            is unknown.
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
        flip_p: float = 0.0,
        seed: int = 0,
        hu_window: tuple[float, float] = (HU_MIN, HU_MAX),
        resample_thick: bool = False,
    ) -> None:
        self.root = Path(root)
        self.images_dir = self.root / "Images_png"
        if not self.images_dir.is_dir():
            raise CtlesionError("not a DeepLesion folder: Images_png/ is missing", self.root)
        self.keys: list[KeySlice] = [
            key
            for key in read_dl_info(self.root / "DL_info.csv", split=split_code(split), drop_noisy=drop_noisy)
            if key.num_lesions > 0
        ]
        if not self.keys:
            logger.warning("%s: no annotated key slice in split %r", self.root / "DL_info.csv", split)
        self.split = split
        self.num_slices = num_slices
        self.image_size_px = image_size_px
        self.with_masks = with_masks
        self.flip_p = flip_p
        self.seed = seed
        self.hu_window = tuple(hu_window)
        self.resample_thick = bool(resample_thick)
        self.epoch = 0
        self._mask_cache: dict[int, np.ndarray] = {}

    @classmethod
    def for_detector(cls, root: Path, split: str, config, **kwargs) -> "DeepLesionDataset":
        """The dataset a detector configuration (``DetectorConfig``) reads: its window depth,
        input size, HU window and neighbour spacing; ``kwargs`` as in the constructor."""
        return cls(root, split, num_slices=config.num_slices, image_size_px=config.image_size_px,
                   hu_window=config.hu_window, resample_thick=config.resample_thick, **kwargs)

    def __len__(self) -> int:
        return len(self.keys)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with the seed and the index, decides the random flips."""
        self.epoch = int(epoch)

    def pseudo_masks(self, index: int, key_slice_hu: np.ndarray) -> np.ndarray:
        """(N, Y, X) bool GrabCut pseudo-masks of key slice ``index`` (cached in memory, bit-packed)."""
        if index not in self._mask_cache:
            key = self.keys[index]
            masks = np.stack(
                [recist_pseudo_mask(key_slice_hu, box, recist) for box, recist in zip(key.boxes_px, key.recist_px)]
            )
            self._mask_cache[index] = np.packbits(masks, axis=-1)
        width = key_slice_hu.shape[-1]
        return np.unpackbits(self._mask_cache[index], axis=-1, count=width).astype(bool)

    def _flip(self, index: int) -> bool:
        if self.flip_p <= 0.0:
            return False
        rng = np.random.default_rng([self.seed, index, self.epoch])
        return bool(rng.random() < self.flip_p)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float, dict]:
        key = self.keys[index]
        window_hu, interval_mm = load_key_slice_window(self.images_dir, key, self.num_slices,
                                                       resample_thick=self.resample_thick)
        boxes_src = key.boxes_px.astype(np.float64)
        masks_src = self.pseudo_masks(index, window_hu[self.num_slices // 2]) if self.with_masks else None
        if self._flip(index):
            window_hu = window_hu[:, :, ::-1]
            boxes_src = flip_boxes_x(boxes_src, window_hu.shape[2])
            masks_src = None if masks_src is None else masks_src[:, :, ::-1]
        image, transform = fit_in_plane(normalize_hu(window_hu, self.hu_window), self.image_size_px)
        target = {
            "boxes": torch.from_numpy((boxes_src * transform.scale).astype(np.float32)),
            "labels": torch.ones(len(boxes_src), dtype=torch.int64),
            "key": key.file_name,
            "scale": float(transform.scale),
            "boxes_src_px": torch.from_numpy(boxes_src),
            "slice_interval_src_mm": float(key.slice_interval_mm),
        }
        if masks_src is not None:
            target["masks"] = torch.from_numpy(fit_masks_in_plane(masks_src, transform))
        return torch.from_numpy(image)[None], float(interval_mm), target
