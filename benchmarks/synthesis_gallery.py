"""Synthetic lesions next to real ones, per DeepLesion coarse type, in the same display window.

Writes a picture (default ``docs/images/synthesis_vs_deeplesion.png``): one row per coarse
lesion type (1 bone ... 8 pelvis), on the left up to ``--real`` crops of real lesions, on the
right ``--synthetic`` crops of simulated ones, all centred on the lesion's box, 2.5 times its
size (at least 40 mm), in the type's window (soft tissue W 400 / L 40; lung W 1500 / L -600;
bone W 1800 / L 400). Real lesions come from ``../shared/data``: DeepLesion key slices
(``deeplesion_sample``, liver lesions: HU = PNG value - 32768) and LIDC-IDRI lung nodules
(``lidc``, the readers' masks give the box; HU = TIFF value - 1024). Other types have no real
example there (the cell says so).

Usage::

    python benchmarks/synthesis_gallery.py                      # simulates 40 series (default set)
    python benchmarks/synthesis_gallery.py --data DIR           # an existing simulated dataset
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import tempfile
import time
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ctlesion.data.anatomy import COARSE_TYPES  # noqa: E402
from ctlesion.data.backgrounds import SHARED_DATA_DIR  # noqa: E402
from ctlesion.data.simulate import simulate_dataset  # noqa: E402
from ctlesion.io.deeplesion import read_dl_info, read_png_hu  # noqa: E402

logger = logging.getLogger("synthesis_gallery")
WINDOWS = {t: (400.0, 40.0) for t in COARSE_TYPES}
WINDOWS.update({5: (1500.0, -600.0), 1: (1800.0, 400.0)})
CROP_PX = 112


def _crop(hu: np.ndarray, box: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Square crop (CROP_PX) around a box: 2.5 x its larger side, at least 40 mm."""
    x1, y1, x2, y2 = box
    side_px = max(2.5 * max(x2 - x1, y2 - y1), 40.0 / pixel_mm)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    scale = CROP_PX / side_px
    matrix = np.array([[scale, 0, CROP_PX / 2 - cx * scale], [0, scale, CROP_PX / 2 - cy * scale]])
    return cv2.warpAffine(hu.astype(np.float32), matrix, (CROP_PX, CROP_PX), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=-1000)


def real_deeplesion(shared: Path) -> dict[int, list[tuple[np.ndarray, str]]]:
    """Crops of the real DeepLesion key slices, by coarse type."""
    root = shared / "deeplesion_sample"
    out: dict[int, list[tuple[np.ndarray, str]]] = {}
    if not (root / "DL_info.csv").is_file():
        return out
    with (root / "DL_info.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    def long_mm(row: dict[str, str]) -> float:
        return float(row["Lesion_diameters_Pixel_"].split(",")[0]) * float(row["Spacing_mm_px_"].split(",")[0])

    rows.sort(key=lambda r: -long_mm(r))
    for row in rows:
        kind = int(row["Coarse_lesion_type"])
        box = np.array([float(v) for v in row["Bounding_boxes"].split(",")])
        pixel_mm = float(row["Spacing_mm_px_"].split(",")[0])
        series, _, number = row["File_name"].rpartition("_")
        hu = read_png_hu(root / "Images_png" / series / number)
        out.setdefault(kind, []).append((_crop(hu, box, pixel_mm), f"DeepLesion {long_mm(row):.0f} mm"))
    return out


def real_lidc(shared: Path) -> list[tuple[np.ndarray, str]]:
    """Crops of the LIDC-IDRI nodules (largest reader-mask section of each case)."""
    out = []
    for case, pixel_mm in (("LIDC-IDRI-0002", 0.6816), ("LIDC-IDRI-0004", 0.8223)):
        root = shared / "lidc" / case
        best = None
        for folder in sorted((root / "reader_masks").glob("slice*")):
            masks = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.tif"))]
            masks = [m > 0 for m in masks if m is not None]
            if not masks:
                continue
            union = np.any(masks, axis=0)
            if best is None or union.sum() > best[1].sum():
                best = (folder.name, union)
        if best is None:
            continue
        image = cv2.imread(str(root / "images" / f"{best[0]}.tif"), cv2.IMREAD_UNCHANGED).astype(np.float32) - 1024
        ys, xs = np.nonzero(best[1])
        box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
        long_mm = max(box[2] - box[0], box[3] - box[1]) * pixel_mm
        out.append((_crop(image, box, pixel_mm), f"LIDC {long_mm:.0f} mm"))
    return out


def synthetic(data: Path, seed: int, count: int) -> dict[int, list[tuple[np.ndarray, str]]]:
    """Crops of simulated lesions, ``count`` per type (seeded pick)."""
    rng = np.random.default_rng(seed)
    by_type: dict[int, list[tuple[object, int]]] = {}
    for key in read_dl_info(data / "DL_info.csv"):
        for i, kind in enumerate(key.lesion_types):
            by_type.setdefault(int(kind), []).append((key, i))
    out: dict[int, list[tuple[np.ndarray, str]]] = {}
    for kind, items in by_type.items():
        for j in rng.permutation(len(items))[:count]:
            key, i = items[int(j)]
            hu = read_png_hu(key.png_path(data / "Images_png"))
            pixel_mm = float(key.spacing_yx_mm[0])
            long_mm = float(key.diameters_px[i][0]) * pixel_mm
            out.setdefault(kind, []).append((_crop(hu, key.boxes_px[i], pixel_mm),
                                             f"sim {long_mm:.0f} mm, {key.slice_interval_mm:g} mm"))
    return out


def draw(real: dict[int, list], synth: dict[int, list], out_png: Path, num_real: int, num_synth: int) -> None:
    columns = num_real + num_synth
    fig, axes = plt.subplots(len(COARSE_TYPES), columns, figsize=(1.45 * columns, 1.6 * len(COARSE_TYPES)))
    for row, kind in enumerate(sorted(COARSE_TYPES)):
        width, level = WINDOWS[kind]
        cells = [("real", c) for c in real.get(kind, [])[:num_real]]
        cells += [None] * (num_real - len(cells))
        cells += [("sim", c) for c in synth.get(kind, [])[:num_synth]]
        cells += [None] * (columns - len(cells))
        for col, cell in enumerate(cells):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if cell is None:
                ax.set_facecolor("0.85")
                if col == 0:
                    ax.text(0.5, 0.5, "no real example\nin ../shared/data", ha="center", va="center", fontsize=5.5,
                            transform=ax.transAxes)
                continue
            image, label = cell[1]
            ax.imshow(image, cmap="gray", vmin=level - width / 2, vmax=level + width / 2)
            ax.set_title(label, fontsize=5.5, pad=1.5, color="darkgreen" if cell[0] == "real" else "navy")
        axes[row, 0].set_ylabel(f"{kind} {COARSE_TYPES[kind]}\nW{width:.0f} L{level:.0f}", fontsize=7)
    fig.suptitle("Real lesions (left, green) and simulated ones (right, blue) per DeepLesion coarse type; "
                 "crops 2.5x the lesion box", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.98), pad=0.3, h_pad=0.4, w_pad=0.2)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="simulated dataset (default: simulate --num-series into a temp dir)")
    parser.add_argument("--num-series", type=int, default=40)
    parser.add_argument("--shared-data", type=Path, default=SHARED_DATA_DIR)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "synthesis_vs_deeplesion.png")
    parser.add_argument("--real", type=int, default=3, help="real crops per row")
    parser.add_argument("--synthetic", type=int, default=5, help="simulated crops per row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    real = real_deeplesion(args.shared_data)
    real.setdefault(5, []).extend(real_lidc(args.shared_data))
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            started = time.perf_counter()
            data = Path(tmp) / "sim"
            simulate_dataset(data, num_series=args.num_series, image_size_px=512, seed=args.seed)
            logger.info("simulated %d series in %.0f s", args.num_series, time.perf_counter() - started)
        draw(real, synthetic(data, args.seed, args.synthetic), args.out, args.real, args.synthetic)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
