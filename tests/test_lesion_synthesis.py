"""Lesion shapes, sizes and appearance (ctlesion.data.lesion_synthesis) and the HU rules of the
tissue maps (ctlesion.data.anatomy) on a synthetic chest: numbers, CPU-fast, no data needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctlesion.data import anatomy
from ctlesion.data.lesion_synthesis import (
    KINDS,
    LONG_DIAMETER_RANGE_MM,
    SIZE_LOGNORMAL_MM,
    TYPE_COUNTS,
    draw_appearance,
    draw_kind,
    draw_long_diameter_mm,
    draw_shape,
    draw_type,
    lesion_box,
    occupancy,
    render_lesion,
)
from ctlesion.volume import Volume


def test_sizes_follow_deeplesion() -> None:
    """Long diameters: log-normal per type (median and spread of DeepLesion's test split), clipped."""
    rng = np.random.default_rng(0)
    everything = []
    for coarse_type, (mean_mm, log_sd) in SIZE_LOGNORMAL_MM.items():
        draws = np.array([draw_long_diameter_mm(rng, coarse_type) for _ in range(4000)])
        assert draws.min() >= LONG_DIAMETER_RANGE_MM[0] and draws.max() <= LONG_DIAMETER_RANGE_MM[1]
        assert np.median(draws) == pytest.approx(mean_mm, rel=0.06), coarse_type
        inner = draws[(draws > LONG_DIAMETER_RANGE_MM[0]) & (draws < LONG_DIAMETER_RANGE_MM[1])]
        q25, q75 = np.percentile(np.log(draws), [25, 75])
        assert (q75 - q25) / 1.349 == pytest.approx(log_sd, rel=0.1), coarse_type
        assert len(inner) > 0.85 * len(draws)
        everything.append(draws)
    # Over all types, weighted as DeepLesion: median about 19 mm, mostly 10-40 mm.
    weights = np.array([TYPE_COUNTS[t] for t in SIZE_LOGNORMAL_MM], dtype=float)
    pooled = np.concatenate([d[: int(4000 * w / weights.max())] for d, w in zip(everything, weights)])
    assert 17.0 <= np.median(pooled) <= 21.0
    assert 0.55 <= np.mean((pooled >= 10) & (pooled <= 40)) <= 0.80
    assert 0.08 <= np.mean(pooled < 10) <= 0.25 and 0.08 <= np.mean(pooled > 40) <= 0.22


def test_types_and_kinds_follow_their_frequencies() -> None:
    rng = np.random.default_rng(1)
    draws = [draw_type(rng, [4, 5]) for _ in range(6000)]
    assert np.mean(np.array(draws) == 5) == pytest.approx(TYPE_COUNTS[5] / (TYPE_COUNTS[4] + TYPE_COUNTS[5]), abs=0.03)
    kinds = [draw_kind(rng, 4) for _ in range(3000)]
    for kind, prob in KINDS[4]:
        assert kinds.count(kind) / len(kinds) == pytest.approx(prob, abs=0.04)
    with pytest.raises(ValueError):
        draw_type(rng, [])


@pytest.mark.parametrize("kind", ["cyst", "metastasis", "nodule", "spiculated", "lymph_node", "mass", "sclerotic"])
def test_shapes_measure_their_drawn_diameter(kind: str) -> None:
    """The central section's Feret diameter equals the drawn long diameter (spicules aside), and the
    rendered mask's RECIST long axis is within a pixel or two of it."""
    from ctlesion.postprocess import recist_axes  # noqa: PLC0415

    rng = np.random.default_rng(2)
    pixel_mm = 0.5
    for long_mm in (8.0, 20.0, 45.0):
        shape = draw_shape(rng, kind, long_mm)
        assert shape.section_feret_mm() == pytest.approx(long_mm, rel=1e-6)
        a, b, _ = shape.semi_axes_mm
        assert b <= a * 1.2
        box = lesion_box((60.0, 200.0, 200.0), shape, 3.0, pixel_mm, (121, 400, 400))
        occ, _ = occupancy(shape, (60.0, 200.0, 200.0), box, pixel_mm, 0.5)
        mask = occ[60 - box[0].start] >= 0.5
        measured = recist_axes(mask, (pixel_mm, pixel_mm)).long_mm
        if kind == "spiculated":  # the bases of the spicules count in the mask
            assert long_mm - 3 * pixel_mm <= measured <= 1.5 * long_mm
        else:
            assert measured == pytest.approx(long_mm, abs=3 * pixel_mm + 0.04 * long_mm)
            # Not an ellipse, but not far from one: the deformation is modest.
            area = mask.sum() * pixel_mm**2
            assert 0.5 * math.pi * (long_mm / 2) ** 2 * 0.45 <= area <= math.pi * (long_mm / 2) ** 2 * 1.05


def test_appearance_hu_ranges() -> None:
    """HU per kind (module doc): cysts 0-20, metastases 20-60 below an enhanced liver, nodes 20-60,
    lung nodules soft tissue, sclerotic bone 300-1000, lytic toward soft tissue."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        assert 0 <= draw_appearance(rng, "cyst", 110.0, 15.0).core_hu <= 20
        met = draw_appearance(rng, "metastasis", 110.0, 25.0)
        assert 20 <= 110.0 - met.core_hu <= 60
        assert 20 <= 55.0 - draw_appearance(rng, "metastasis", 55.0, 25.0).core_hu <= 40
        assert 20 <= draw_appearance(rng, "lymph_node", -100.0, 15.0).core_hu <= 60
        assert -100 <= draw_appearance(rng, "nodule", -850.0, 12.0).core_hu <= 100
        assert 300 <= draw_appearance(rng, "sclerotic", 250.0, 15.0).core_hu <= 1000
        assert 20 <= draw_appearance(rng, "lytic", 250.0, 15.0).core_hu <= 80
        assert abs(draw_appearance(rng, "mass", 50.0, 30.0).core_hu - 50.0) >= 15
        glass = draw_appearance(rng, "part_solid", -850.0, 20.0)
        assert -700 <= -850.0 + glass.ground_glass_hu <= -400


def test_rendered_level_inside_a_cyst() -> None:
    rng = np.random.default_rng(4)
    shape = draw_shape(rng, "cyst", 20.0)
    look = draw_appearance(rng, "cyst", 100.0, 20.0)
    box = lesion_box((20.0, 50.0, 50.0), shape, 3.0, 0.7, (41, 100, 100))
    lesion = render_lesion(rng, shape, look, (20.0, 50.0, 50.0), box, 0.7)
    inside = lesion.occupancy > 0.99
    assert abs(float(lesion.level[inside].mean()) - look.core_hu) <= 1.5
    assert lesion.added is None and np.array_equal(lesion.replace, lesion.occupancy)


def _chest_phantom() -> Volume:
    """A synthetic chest: body of muscle with a subcutaneous fat ring, two lungs (-850 HU with noise),
    mediastinal fat crossed by a 3 mm soft-tissue septum, a bowel-gas bubble (-1000 HU), a vertebra
    (cortex 1000 HU, marrow 250 HU) and a contrast-filled aorta (300 HU), 20 slices of 2 mm, 1 mm
    pixels."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256] + 0.5
    r_body = np.hypot((xx - 128) / 110, (yy - 128) / 90)
    hu = np.where(r_body <= 1, 50.0, -1000.0)
    hu[(r_body > 0.85) & (r_body <= 1)] = -100.0
    lungs = (np.hypot((xx - 80) / 35, (yy - 120) / 50) <= 1) | (np.hypot((xx - 176) / 35, (yy - 120) / 50) <= 1)
    hu[lungs] = -850.0
    hu[np.hypot(xx - 128, yy - 115) <= 22] = -100.0
    hu[114:117, 108:149] = 50.0
    gas = np.hypot(xx - 128, yy - 80) <= 8
    hu[gas] = -1000.0
    vertebra = np.hypot(xx - 128, yy - 185)
    hu[vertebra <= 16] = 1000.0
    hu[vertebra <= 13] = 250.0
    hu[np.hypot(xx - 128, yy - 150) <= 10] = 300.0
    volume = hu[None].repeat(20, axis=0) + rng.normal(0, 15, (20, 256, 256)) * (hu[None] > -990)
    return Volume(hu=volume.astype(np.float32), spacing_zyx_mm=(2.0, 1.0, 1.0), source="chest")


def test_tissue_map_hu_rules() -> None:
    tissue_map = anatomy.tissue_map(_chest_phantom())
    tissue = tissue_map.tissue
    k = 10

    def code(y: int, x: int) -> int:
        return int(tissue[k, y, x])

    assert code(5, 5) == anatomy.OUTSIDE
    assert code(120, 80) == anatomy.LUNG and code(120, 176) == anatomy.LUNG
    assert code(80, 128) == anatomy.GAS  # gas inside the body is not lung
    assert code(128, 233) == anatomy.SUBCUTANEOUS_FAT  # outside the muscle
    assert code(185, 128) == anatomy.BONE  # marrow filled
    assert code(150, 128) == anatomy.VESSEL  # homogeneous 300 HU, no cortex
    assert code(175, 95) == anatomy.BULK  # muscle: soft tissue over 8 mm thick
    assert code(115, 128) == anatomy.SOFT  # the thin septum in fat
    assert (tissue_map.region_z == anatomy.CHEST).all()
    assert (tissue_map.codes[k, 128, 128] & anatomy.MEDIASTINUM) and (tissue_map.codes[k, 128, 233] & anatomy.WALL)
    regions = anatomy.lesion_regions(tissue_map.codes, tissue_map.region_z)
    assert regions[5][k, 120, 80] and not regions[5][k, 80, 128]
    assert regions[1][k, 185, 128] and regions[7][k, 128, 233] and regions[3][k, 128, 128]
    # Nodes lie in fat and thin soft tissue, never on bulk (an unlabelled organ or muscle).
    compartments = anatomy.lesion_compartments(tissue_map.codes)
    assert regions[3][k, 115, 128] and compartments[3][k, 115, 128]
    assert code(160, 108) == anatomy.BULK and tissue_map.codes[k, 160, 108] & anatomy.MEDIASTINUM
    assert not regions[3][k, 160, 108] and not compartments[3][k, 175, 95]  # mediastinal and wall muscle
    assert compartments[7][k, 175, 95]  # soft-tissue masses may lie in the body wall's muscles
    assert compartments[7][k, 128, 233] and not compartments[2][k, 128, 233]  # nodes: not subcutaneous
    assert not regions[4].any() and not regions[6].any()  # no liver or kidney without masks
