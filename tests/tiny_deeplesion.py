"""A tiny hand-made DeepLesion-layout dataset for data-pipeline tests (no simulator involved).

Each series is a few slices of a textured soft-tissue ellipse ("body", 40 HU) in air (-1000
HU); its key slice holds one to three elliptical lesions (+/- 80 HU), annotated in
``DL_info.csv`` like DeepLesion (box = the ellipse's pixel extent plus 3 px, RECIST axes, one
row per lesion). Optionally the true masks (the drawn ellipses) are written as
``masks/<series_dir>/<slice:03d>.npz`` holding ``masks``: (N, Y, X) bool, in the DL_info row
order of that key slice, the contract of :mod:`ctlesion.data.mask_cache`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctlesion.io.deeplesion import write_dl_info, write_png_hu

NUM_SLICES = 5
KEY_SLICE = 3  # file number of the key slice of every series (1-based, as DeepLesion)


def _ellipse(shape_yx, centre_xy, axes, angle_rad) -> np.ndarray:
    yy, xx = np.mgrid[: shape_yx[0], : shape_yx[1]] + 0.5
    cos, sin = np.cos(angle_rad), np.sin(angle_rad)
    u = (xx - centre_xy[0]) * cos + (yy - centre_xy[1]) * sin
    v = -(xx - centre_xy[0]) * sin + (yy - centre_xy[1]) * cos
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1


def build_tiny_deeplesion(
    root: Path,
    *,
    shape_yx: tuple[int, int] = (128, 128),
    num_series: int = 6,
    true_masks: bool = True,
    noisy_first: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Write the dataset into ``root``; returns each key slice's true masks (N, Y, X) bool, in row order.

    Series alternate 1 mm and 5 mm slices; splits cycle train, train, val, test, train, ...
    With ``noisy_first`` the first lesion of every key slice that has several is marked
    Possibly_noisy.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    height, width = shape_yx
    yy, xx = np.mgrid[:height, :width] + 0.5
    body = _ellipse(shape_yx, (width / 2, height / 2), (0.44 * width, 0.40 * height), 0.0)
    rows, truths = [], {}
    splits = [1, 1, 2, 3]
    for series in range(num_series):
        series_dir = f"{series + 1:06d}_01_01"
        count = 1 + series % 3
        lesions = []
        for _ in range(count):
            for _attempt in range(100):
                axes = rng.uniform(3, 0.12 * min(shape_yx), 2)
                centre = rng.uniform([0.25 * width, 0.25 * height], [0.75 * width, 0.75 * height])
                mask = _ellipse(shape_yx, centre, axes, rng.uniform(0, np.pi))
                if (mask & body).sum() == mask.sum() and not any((mask & m).any() for m, *_ in lesions):
                    lesions.append((mask, centre, axes))
                    break
        texture = 15 * np.sin(xx / 5 + series) * np.cos(yy / 7)
        key_hu = np.where(body, 40 + texture, -1000.0)
        for n, (mask, *_rest) in enumerate(lesions):
            key_hu = np.where(mask, key_hu + (80 if n % 2 == 0 else -80), key_hu)
        for number in range(1, NUM_SLICES + 1):
            hu = key_hu if number == KEY_SLICE else np.where(body, 40 + texture + 3 * number, -1000.0)
            write_png_hu(root / "Images_png" / series_dir / f"{number:03d}.png", hu)
        masks = np.stack([m for m, *_ in lesions])
        truths[f"{series_dir}_{KEY_SLICE:03d}.png"] = masks
        if true_masks:
            path = root / "masks" / series_dir / f"{KEY_SLICE:03d}.npz"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, masks=masks)
        interval = 1.0 if series % 2 == 0 else 5.0
        for n, (mask, centre, axes) in enumerate(lesions):
            ys, xs = np.nonzero(mask)
            box = [max(0, xs.min() - 3), max(0, ys.min() - 3), min(width, xs.max() + 4), min(height, ys.max() + 4)]
            # RECIST: the long axis through the centre along the longer ellipse axis (approximate).
            long_axis = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
            short_axis = min(xs.max() - xs.min(), ys.max() - ys.min()) + 1
            recist = [xs.min() + 0.5, centre[1], xs.max() + 0.5, centre[1],
                      centre[0], ys.min() + 0.5, centre[0], ys.max() + 0.5]
            rows.append({
                "File_name": f"{series_dir}_{KEY_SLICE:03d}.png", "Patient_index": series + 1, "Study_index": 1,
                "Series_ID": 1, "Key_slice_index": KEY_SLICE, "Measurement_coordinates": recist,
                "Bounding_boxes": box, "Lesion_diameters_Pixel_": [long_axis, short_axis],
                "Normalized_lesion_location": [centre[0] / width, centre[1] / height, 0.5],
                "Coarse_lesion_type": 7, "Possibly_noisy": int(noisy_first and count > 1 and n == 0),
                "Slice_range": [1, NUM_SLICES], "Spacing_mm_px_": [0.8, 0.8, interval],
                "Image_size": [height, width], "DICOM_windows": [-175, 275], "Patient_gender": "F",
                "Patient_age": 50, "Train_Val_Test": splits[series % len(splits)],
            })
    write_dl_info(root / "DL_info.csv", rows)
    return truths
