"""Cost of `detect --dicom-seg / --dicom-sr` against the NIfTI label map every run writes.

Usage: python benchmarks/export_speed.py [--slices 300] [--size 512] [--lesions 12] [--repeats 3]

Synthesizes an uncompressed CT series with UIDs (``read_speed.synthesize_series``), reads it,
places ``--lesions`` box-shaped lesions (12 slices x 30 x 30 voxels each) and times, side by
side in this one process, the best of ``--repeats`` runs of:

* baseline: ``label_map`` + ``write_nifti`` (the label map ``detect`` always writes);
* SEG: ``label_map`` + ``lesion_segmentation`` + ``write_dicom_file`` (``--dicom-seg``);
* SR: ``lesion_measurement_report`` + ``write_dicom_file`` on that SEG (what ``--dicom-sr``
  adds).

Prints the machine, each time with its ratio to the baseline, and the file sizes.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
from froc_speed import best_of
from read_speed import synthesize_series

from ctlesion.io import pending_volumes
from ctlesion.io.nifti import write_nifti
from ctlesion.postprocess import Lesion
from ctlesion.report.dicom_seg import lesion_segmentation, write_dicom_file
from ctlesion.report.dicom_sr import lesion_measurement_report
from ctlesion.report.results import label_map


def box_lesions(shape_zyx: tuple[int, int, int], count: int) -> list[Lesion]:
    """``count`` box lesions of 12 x 30 x 30 voxels spread through the volume."""
    lesions = []
    for i in range(count):
        z = (i * 17) % max(shape_zyx[0] - 12, 1)
        y, x = 40 + (i * 37) % max(shape_zyx[1] - 80, 1), 40 + (i * 53) % max(shape_zyx[2] - 80, 1)
        lesions.append(Lesion(score=0.9 - 0.01 * i, box_vox=(x, y, z, x + 30, y + 30, z + 11), key_slice=z + 6,
                              long_axis_mm=30.0, short_axis_mm=20.0, volume_ml=5.0,
                              mask_zyx=np.ones((12, 30, 30), bool), mask_offset_zyx=(z, y, x)))
    return lesions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--lesions", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads")
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "series", Path(tmp) / "out"
        out.mkdir()
        folder.mkdir()
        synthesize_series(folder, args.slices, args.size)
        (pending,) = pending_volumes(folder)
        volume, sources = pending.read(), pending.source_images()
        lesions = box_lesions(volume.shape_zyx, args.lesions)
        print(f"series: {volume.shape_zyx} voxels, {args.lesions} lesions of 12 x 30 x 30 voxels")

        def nifti() -> None:
            write_nifti(label_map(volume, lesions), volume, out / "labels.nii.gz")

        def seg() -> None:
            write_dicom_file(out / "lesions.seg.dcm",
                             lesion_segmentation(volume, label_map(volume, lesions), lesions, sources, version="bench"))

        segmentation = lesion_segmentation(volume, label_map(volume, lesions), lesions, sources, version="bench")

        def sr() -> None:
            write_dicom_file(out / "lesions.sr.dcm",
                             lesion_measurement_report(segmentation, lesions, sources, version="bench"))

        base_s = best_of(args.repeats, nifti)
        seg_s = best_of(args.repeats, seg)
        sr_s = best_of(args.repeats, sr)
        sizes = {name: (out / name).stat().st_size / 1e6 for name in ("labels.nii.gz", "lesions.seg.dcm", "lesions.sr.dcm")}
        print(f"NIfTI label map (baseline): {base_s:.2f} s, {sizes['labels.nii.gz']:.2f} MB")
        print(f"DICOM SEG: {seg_s:.2f} s ({seg_s / base_s:.2f}x), {sizes['lesions.seg.dcm']:.2f} MB")
        print(f"DICOM SR: {sr_s:.2f} s ({sr_s / base_s:.2f}x), {sizes['lesions.sr.dcm']:.2f} MB")


if __name__ == "__main__":
    main()
