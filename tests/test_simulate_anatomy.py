"""Anatomy-aware simulation on the real CT of ../shared/data (skipped without it): lesions inside
their organ, HU per kind, the default background set and its patient split."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np

from ctlesion.data import anatomy, simulate
from ctlesion.data.backgrounds import (
    BackgroundSource,
    assign_splits,
    backgrounds_in_folder,
    default_backgrounds,
    split_counts,
)
from ctlesion.data.simulate import SAMPLE_BACKGROUND, read_key_slice_masks, simulate_dataset
from ctlesion.io import read_volume
from ctlesion.io.deeplesion import read_dl_info, read_png_hu
from ctlesion.postprocess import recist_axes

SIZE = 384


def _sample(shared_data: Path) -> Path:
    return SAMPLE_BACKGROUND if SAMPLE_BACKGROUND.is_dir() else shared_data / "totalseg_example" / "example_ct_dicom"


def _series_maps(background, record: dict) -> tuple[np.ndarray, np.ndarray, simulate.SeriesPlan]:
    """The tissue codes and body regions of a written series' 1 mm block, rebuilt from its
    simulation.json record."""
    names = {f.name for f in dataclasses.fields(simulate.SeriesPlan)}
    plan = simulate.SeriesPlan(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in record.items() if k in names})
    _, codes, region_z = simulate._background_block(background, plan, SIZE)
    return codes, region_z, plan


def _rows(root: Path, source: BackgroundSource, coarse_type: int):
    """(key, mask, lesion record, plan, thin-slice codes (P, S, S)) per key-slice row, each of
    the coarse type."""
    background = simulate._load(source)
    manifest = json.loads((root / "simulation.json").read_text())
    records = {f"{s['patient']:06d}_{s['study']:02d}_{s['series']:02d}": s for s in manifest["series"]}
    maps = {}
    for key in read_dl_info(root / "DL_info.csv"):
        record = records[key.series_dir]
        if key.series_dir not in maps:
            maps[key.series_dir] = _series_maps(background, record)
        codes, region_z, plan = maps[key.series_dir]
        per = 5 if plan.thick else 1
        thin = slice((key.slice_index - 1) * per, key.slice_index * per)
        for i, mask in enumerate(read_key_slice_masks(root, key.file_name)):
            assert key.lesion_types[i] == coarse_type
            assert mask.any()
            lesion = next(r for r in record["lesions"] if r["areas_px"][key.slice_index - 1] == int(mask.sum()))
            yield key, mask, lesion, plan, codes[thin], region_z[thin]


def _check_inside(root: Path, source: BackgroundSource, coarse_type: int) -> list[tuple]:
    """Every key-slice mask lies inside its type's region (fraction 1.0) on its thin slices;
    returns (key, mask, lesion record, plan) per row."""
    out = []
    for key, mask, lesion, plan, codes, region_z in _rows(root, source, coarse_type):
        region = anatomy.lesion_regions(codes, region_z)[coarse_type]
        assert region.any(axis=0)[mask].mean() == 1.0, key.file_name
        out.append((key, mask, lesion, plan))
    return out


def test_default_background_set(shared_data: Path) -> None:
    sources = default_backgrounds(shared_data)
    assert len(sources) == 9 and all(Path(s.ct).exists() for s in sources)
    assert all(Path(s.masks).is_file() for s in sources if s.masks)
    assert len({s.patient_key for s in sources}) == 8
    splits = assign_splits(sources, seed=123)
    assert split_counts(splits) == {1: 5, 2: 1, 3: 2}
    by_split = {}
    for source in sources:
        by_split.setdefault(splits[source.patient_key], set()).add(source.name)
    assert by_split[3] == {"lidc_idri_0001_chest", "acrin_flt_breast_001_abdomen_pelvis"}
    assert by_split[2] == {"cmb_crc_msb-01068_chest"}
    assert {"example_ct", "example_ct_sm"} <= by_split[1]  # one patient, one split
    assert default_backgrounds(shared_data / "absent") == [BackgroundSource(SAMPLE_BACKGROUND)]


def test_tissue_map_from_masks_keeps_the_liver_on_the_left(shared_data: Path) -> None:
    ct = read_volume(_sample(shared_data))
    labels = anatomy.align_labels(read_volume(shared_data / "totalseg_example" / "example_seg_dicom.nii.gz"), ct)
    assert (labels != anatomy.UNKNOWN_LABEL).all()
    tissue_map = anatomy.tissue_map(ct, labels)
    liver = tissue_map.tissue == anatomy.LIVER
    assert anatomy.LIVER in tissue_map.masked_codes and liver.mean() > 0.03
    assert np.nonzero(liver)[2].mean() < 0.45 * ct.shape_zyx[2]  # patient's right = image left
    assert ((tissue_map.codes[liver] & anatomy.FROM_MASK) > 0).all()


def test_liver_lesions_lie_in_the_liver(shared_data: Path, tmp_path: Path) -> None:
    source = BackgroundSource(_sample(shared_data), shared_data / "totalseg_example" / "example_seg_dicom.nii.gz",
                              lesion_types=(4,))
    simulate_dataset(tmp_path, backgrounds=[source], num_series=6, image_size_px=SIZE, seed=5)
    rows = _check_inside(tmp_path, source, 4)
    assert len(rows) >= 6
    cysts = 0
    for key, mask, lesion, plan in rows:
        assert np.nonzero(mask)[1].mean() < 0.6 * SIZE  # the liver stays on the image's left
        look = lesion["appearance"]
        hu = read_png_hu(key.png_path(tmp_path / "Images_png")).astype(np.float64)
        core = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if plan.thick or core.sum() < 30:
            continue
        if lesion["kind"] == "cyst":
            assert -5.0 <= hu[core].mean() <= 25.0, key.file_name  # water: 0-20 HU plus noise
            cysts += 1
        elif lesion["kind"] == "metastasis":
            assert hu[core].mean() < look["host_hu"] - 10, key.file_name  # hypodense
        measured = recist_axes(mask, (plan.pixel_mm, plan.pixel_mm)).long_mm
        if lesion["drawn_long_mm"] >= 10 and key.slice_index == lesion["key_slice"]:
            assert 0.7 <= measured / lesion["drawn_long_mm"] <= 1.25, key.file_name
    assert cysts >= 1


def test_lung_nodules_lie_in_the_lung(shared_data: Path, tmp_path: Path) -> None:
    source = BackgroundSource(shared_data / "ct_backgrounds" / "rider_pilot_9328_lower_chest.nii.gz",
                              lesion_types=(5,))
    simulate_dataset(tmp_path, backgrounds=[source], num_series=3, image_size_px=SIZE, seed=5)
    rows = _check_inside(tmp_path, source, 5)
    assert len(rows) >= 3
    for key, mask, lesion, plan in rows:
        hu = read_png_hu(key.png_path(tmp_path / "Images_png")).astype(np.float64)
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~mask
        assert np.median(hu[ring]) < -300, key.file_name  # soft tissue in air
        core = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        if lesion["kind"] in ("nodule", "spiculated") and not plan.thick and core.sum() >= 10:
            assert hu[core].mean() > -300, key.file_name


def test_background_folder_and_mask_convention(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "backgrounds"
    folder.mkdir()
    seg = shared_data / "totalseg_example"
    (folder / "abdomen.nii.gz").symlink_to(seg / "example_ct_sm.nii.gz")
    (folder / "abdomen.seg.nii.gz").symlink_to(seg / "example_seg_sm.nii.gz")
    (folder / "pelvis.nii.gz").symlink_to(seg / "example_ct.nii.gz")
    found = backgrounds_in_folder(folder)
    assert [(s.name, s.masks.name if s.masks else None) for s in found] == [
        ("abdomen", "abdomen.seg.nii.gz"), ("pelvis", None)]


def test_nodes_keep_off_unlabelled_organs(shared_data: Path, tmp_path: Path) -> None:
    """In a background without organ masks, abdominal nodes and masses lie in the fat inside the
    muscle wall and thin soft tissue: no mask voxel covers bulk soft tissue (bowel, muscle,
    unlabelled organs) or subcutaneous fat on any of its thin slices, and they replace fat
    (anatomy module doc)."""
    source = BackgroundSource(shared_data / "ct_backgrounds" / "acrin_flt_breast_001_abdomen_pelvis.nii.gz",
                              lesion_types=(2,))
    simulate_dataset(tmp_path, backgrounds=[source], num_series=3, image_size_px=SIZE, seed=5)
    rows = list(_rows(tmp_path, source, 2))
    assert len(rows) >= 3
    for key, mask, _, _, codes, _ in rows:
        tissue = codes & 0x0F
        assert not (tissue == anatomy.BULK).any(axis=0)[mask].any(), key.file_name
        assert not (tissue == anatomy.SUBCUTANEOUS_FAT).any(axis=0)[mask].any(), key.file_name
        assert (tissue == anatomy.FAT).any(axis=0)[mask].mean() >= simulate.NODE_FAT_FRACTION, key.file_name
