"""Tissue maps of real CT backgrounds: where each kind of lesion may be placed.

A :class:`TissueMap` gives every voxel of a background volume one **tissue code** (outside,
fat, soft tissue, bone, lung, vessel, liver, kidney, spleen, other organ, gas) and two
**flags** (body wall, mediastinum), and every slice a **body region** (chest, abdomen,
pelvis). :mod:`ctlesion.data.simulate` warps it with the background (nearest neighbour) and
:func:`lesion_regions` turns it into one placement region per DeepLesion coarse lesion type.

Sources of the codes, in order of precedence:

1. **Organ masks** where they exist: a TotalSegmentator v2 ``total`` label map (Wasserthal et
   al., *TotalSegmentator: robust segmentation of 104 anatomic structures in CT images*,
   Radiology: AI 2023; 117 classes in v2, mapped by :data:`TOTALSEGMENTATOR_V2_TISSUE`),
   aligned to the CT by its physical (LPS) geometry with :func:`align_labels`. Inside the
   mask's field of view a voxel that the mask leaves unlabelled cannot be lung or bone (those
   are labelled classes), so the HU rules below may only call it fat, soft tissue, vessel or
   gas there. Inside a masked liver, voxels more than :data:`LIVER_VESSEL_DEVIATION_HU` from
   the liver's median HU (contrast-filled vessels, or real focal lesions) become vessel, so
   lesions avoid them (Hu et al., *Label-Free Liver Tumor Segmentation*, CVPR 2023, place
   synthetic tumours in the liver away from vessels found by thresholding).
2. **HU and connectivity rules** everywhere else (on the slice smoothed with a 1 mm Gaussian,
   so that noise does not flip voxels between classes):

   * body: per slice the largest 4-connected region above -500 HU, holes filled;
   * lung: air (< -400 HU) inside the body, in 3D components of at least
     :data:`LUNG_MIN_ML` mL of which at most :data:`LUNG_MAX_GAS_FRACTION` lies below
     :data:`GAS_HU` (aerated lung holds vessels and interstitium and measures about -850 HU;
     bowel gas is about -1000 HU: in the backgrounds here lungs have 0-10 % of their voxels
     below -950 HU, bowel gas 30-70 %), then per slice with its holes (the vessels) filled.
     Air reaching the image border counts as outside the body unless it looks like lung by
     the same rule (a field of view cropped inside the chest);
   * bone: voxels above 200 HU within :data:`CORTEX_REACH_MM` of cortex (above
     :data:`CORTEX_HU` after the smoothing: cortical bone is 700-2000 HU, contrast-filled
     blood 150-450 HU in most of these backgrounds; the CT angiography crops reach 600 HU and
     are not offered bone lesions, see :mod:`ctlesion.data.backgrounds`), in sections of at least
     20 mm2, holes up to 2500 mm2 (marrow, not the inside of a bony ring) filled;
   * vessel: other voxels above 150 HU inside the body (contrast-filled vessels and heart
     chambers, enhancing renal cortex, oral contrast, calcifications, partial volume at bone
     edges: all places a lesion must not be put; on a non-contrast scan the vessels are soft
     tissue and are not avoided);
   * fat: -190..-30 HU; soft tissue: -30..150 HU; gas: any other air inside the body;
   * bulk soft tissue (:data:`BULK`): unlabelled soft tissue in parts at least
     :data:`BULK_MIN_THICKNESS_MM` thick in-plane (the slice's soft tissue opened by a disc of
     that diameter), and unlabelled soft tissue within :data:`BULK_Z_REACH_MM` of it along z
     (where an organ tapers). Without masks, the liver, spleen, pancreas, bowel, muscles and the
     large vessels of a non-contrast scan (aorta, vena cava, iliac vessels: 8-25 mm) are soft
     tissue like the thin septa, small vessels and normal lymph nodes in fat; their thickness is
     what tells them apart. Lymph nodes and masses may cover soft tissue but not bulk, so they
     never straddle an unlabelled organ's border (a node against the liver of an unenhanced scan
     has no visible edge there) nor lie on a large vessel;
   * subcutaneous fat (:data:`SUBCUTANEOUS_FAT`): per slice, the fat outside the muscle wall.
     The wall and what it encloses are traced from the tissues that are neither fat nor thin
     soft tissue (bulk soft tissue, i.e. muscles and organs, bone, vessels, lung, gas, masked
     organs and muscles) deeper than 3 mm: closed by a disc :data:`SUBCUTANEOUS_CLOSING_MM` across (the
     thin parts of the wall, such as the linea alba and the flank muscles, are under 8 mm and
     not bulk) and filled; fat outside is subcutaneous (body-composition CT separates
     subcutaneous from visceral fat at the same boundary). Lymph nodes lie in the fat inside
     the wall: without this distinction, in a patient with much subcutaneous fat, abdominal
     "nodes" went into it. Limits: fat behind a gap in the wall wider than the closing (no
     bulk muscle for 40 mm) counts as subcutaneous, so the omental fat right under a thin
     anterior abdominal wall may be refused to nodes; and per slice, so the wall is traced
     again on every slice.

   Radiology ranges: fat -190..-30 HU and soft tissue 0..100 HU (e.g. Hounsfield unit tables in
   Brant & Helms, *Fundamentals of Diagnostic Radiology*; the fat window of -190..-30 HU is
   the one used for adipose-tissue segmentation, Yoshizumi et al., Radiology 1999).

No organ (liver, kidney, spleen) is guessed from HU alone: their HU overlap muscle and each
other, so those lesion types are only placed where a mask gives the organ.

Flags and regions:

* body wall (:data:`WALL`): within :data:`WALL_DEPTH_MM` of the body surface (per slice; where
  the field of view cuts the body, the image border is not its surface):
  subcutaneous fat and the superficial muscles, where DeepLesion's soft-tissue lesions lie;
* skin (:data:`SKIN`): within :data:`SKIN_DEPTH_MM` of it (skin and outer subcutaneous fat),
  where no abdominal or pelvic lesion lies;
* mediastinum (:data:`MEDIASTINUM`): on chest slices, inside the convex hull of the lungs and
  outside them;
* region per slice: chest where the lungs cover at least 3 % of the body's area; pelvis where
  masks say so (hip bones, sacrum, bladder) or, without masks and lungs, where a large bone
  section (>= :data:`PELVIS_BONE_MM2` mm2, an iliac wing or femoral head, far larger than a
  rib's) lies on each side of the body's midline; abdomen otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import SimpleITK as sitk

from ctlesion.volume import Volume

logger = logging.getLogger(__name__)

# Tissue codes (the low 4 bits of a tissue map).
OUTSIDE, FAT, SOFT, BONE, LUNG, VESSEL, LIVER, KIDNEY, SPLEEN, ORGAN, GAS, BULK, SUBCUTANEOUS_FAT = range(13)
TISSUE_NAMES = ("outside", "fat", "soft_tissue", "bone", "lung", "vessel", "liver", "kidney", "spleen", "organ",
                "gas", "bulk_soft_tissue", "subcutaneous_fat")
_CODE_BITS = 0x0F
#: Flag: within WALL_DEPTH_MM of the body surface.
WALL = 0x10
#: Flag: on a chest slice, inside the convex hull of the lungs (and not lung).
MEDIASTINUM = 0x20
#: Flag: the code came from an organ mask.
FROM_MASK = 0x40
#: Flag: within SKIN_DEPTH_MM of the body surface (skin and the outer subcutaneous fat).
SKIN = 0x80

# Body regions per slice.
CHEST, ABDOMEN, PELVIS = 1, 2, 3
REGION_NAMES = {CHEST: "chest", ABDOMEN: "abdomen", PELVIS: "pelvis"}

#: Label of an aligned organ label map outside the mask's field of view.
UNKNOWN_LABEL = 65535

BODY_HU = -500.0
AIR_HU = -400.0
FAT_HU = (-190.0, -30.0)
BRIGHT_HU = 150.0
BONE_HU = 200.0
CORTEX_HU = 500.0
LUNG_MIN_ML = 30.0
GAS_HU = -950.0
LUNG_MAX_GAS_FRACTION = 0.25  # at most this fraction of a lung component is below GAS_HU
WALL_DEPTH_MM = 40.0
SKIN_DEPTH_MM = 15.0
PELVIS_BONE_MM2 = 600.0
LIVER_VESSEL_DEVIATION_HU = 35.0
#: Unlabelled soft tissue at least this thick in-plane (mm) is bulk: an organ, muscle, bowel loop
#: or large vessel that the HU rules cannot name.
BULK_MIN_THICKNESS_MM = 8.0
#: Unlabelled soft tissue within this distance (mm) along z of bulk is bulk too (an organ's tip).
BULK_Z_REACH_MM = 3.0
#: Gaps up to this wide (mm) in the muscle wall are closed when it is traced (module doc).
SUBCUTANEOUS_CLOSING_MM = 40.0
_SUBCUTANEOUS_SKIN_MM = 3.0
_SMOOTH_MM = 1.0
_MIN_BONE_MM2 = 20.0
CORTEX_REACH_MM = 6.0
_CUT_BODY_EDGE_FRACTION = 0.005
_MAX_MARROW_MM2 = 2500.0
_CHEST_LUNG_FRACTION = 0.03

#: Tissues that trace the muscle wall and what it encloses (:func:`_subcutaneous`).
_WALL_AND_INSIDE = (BULK, BONE, VESSEL, LUNG, LIVER, KIDNEY, SPLEEN, ORGAN, GAS)

#: TotalSegmentator v2 ``total`` task: label -> tissue code (unlisted labels: ORGAN).
TOTALSEGMENTATOR_V2_TISSUE: dict[int, int] = {
    1: SPLEEN, 2: KIDNEY, 3: KIDNEY, 5: LIVER, 23: KIDNEY, 24: KIDNEY,
    **{k: LUNG for k in range(10, 15)},
    **{k: BONE for k in range(25, 51)},
    **{k: VESSEL for k in range(52, 69)},
    **{k: BONE for k in range(69, 79)},
    **{k: SOFT for k in range(80, 90)},  # gluteal, autochthon and iliopsoas muscles
    **{k: BONE for k in range(91, 117)},
}
#: TotalSegmentator v2 labels of the pelvis (sacrum, S1, hips, bladder, prostate).
TOTALSEGMENTATOR_V2_PELVIS = (21, 22, 25, 26, 77, 78)


@dataclass(frozen=True)
class TissueMap:
    """Tissue codes of a background volume (on its own voxel grid).

    Attributes:
        codes: (Z, Y, X) uint8: tissue code (low 4 bits, ``codes & 0x0F``) plus the flags
            :data:`WALL`, :data:`SKIN`, :data:`MEDIASTINUM` and :data:`FROM_MASK`.
        region_z: (Z,) uint8 body region per slice (:data:`CHEST`, :data:`ABDOMEN`,
            :data:`PELVIS`).
        masked_codes: tissue codes that an organ mask provided (e.g. LIVER, KIDNEY).
    """

    codes: np.ndarray
    region_z: np.ndarray
    masked_codes: frozenset[int]

    @property
    def tissue(self) -> np.ndarray:
        """(Z, Y, X) uint8 tissue codes without flags."""
        return self.codes & _CODE_BITS

    def fractions(self) -> dict[str, float]:
        """Fraction of the body's voxels per tissue name (for logs and simulation.json)."""
        tissue = self.tissue
        body = tissue != OUTSIDE
        total = max(1, int(body.sum()))
        return {name: round(float((tissue == code).sum()) / total, 4)
                for code, name in enumerate(TISSUE_NAMES) if code != OUTSIDE}


def _sitk_image(array: np.ndarray, volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in volume.spacing_zyx_mm[::-1]))
    image.SetOrigin(tuple(float(o) for o in volume.origin_lps_mm))
    image.SetDirection(tuple(float(v) for v in np.asarray(volume.direction_lps).reshape(-1)))
    return image


def align_labels(labels: Volume, ct: Volume) -> np.ndarray:
    """Resample an organ label map onto a CT's voxel grid by physical position (nearest label).

    Both volumes carry LPS geometry (:class:`~ctlesion.volume.Volume`), so a label map on any
    grid (another orientation, a crop, a coarser spacing) lands on the right voxels.

    Args:
        labels: label map (integer labels in ``hu``), e.g. a TotalSegmentator output read
            with :func:`ctlesion.io.read_volume`.
        ct: the CT volume the labels belong to.

    Returns:
        (Z, Y, X) uint16 labels on the CT's grid; :data:`UNKNOWN_LABEL` outside the label map's
        field of view.
    """
    moving = _sitk_image(np.asarray(labels.hu).astype(np.uint16), labels)
    reference = sitk.Image(ct.shape_zyx[::-1], sitk.sitkUInt8)
    reference.SetSpacing(tuple(float(s) for s in ct.spacing_zyx_mm[::-1]))
    reference.SetOrigin(tuple(float(o) for o in ct.origin_lps_mm))
    reference.SetDirection(tuple(float(v) for v in np.asarray(ct.direction_lps).reshape(-1)))
    out = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, UNKNOWN_LABEL,
                        sitk.sitkUInt16)
    return sitk.GetArrayFromImage(out)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """2D mask with its holes (background regions not reaching the image border) filled."""
    inverse = (~mask).astype(np.uint8)
    count, labels = cv2.connectedComponents(inverse, connectivity=4)
    if count <= 1:
        return mask.copy()
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border[border > 0])
    return ~outside


def _disc(radius_px: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 elliptical structuring element of radius ``radius_px`` pixels."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if count <= 1:
        return np.zeros_like(mask, dtype=bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def _smooth(hu: np.ndarray, pixel_mm: float) -> np.ndarray:
    sigma = _SMOOTH_MM / pixel_mm
    return np.stack([cv2.GaussianBlur(np.asarray(s, dtype=np.float32), (0, 0), sigma) for s in hu])


def _fill_small_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """2D mask with its holes of at most ``max_area_px`` pixels filled (marrow, not a ring's inside)."""
    holes = _fill_holes(mask) & ~mask
    if not holes.any():
        return mask.copy()
    count, labels, stats, _ = cv2.connectedComponentsWithStats(holes.astype(np.uint8), connectivity=4)
    small = np.zeros(count, dtype=bool)
    small[1:] = stats[1:, cv2.CC_STAT_AREA] <= max_area_px
    return mask | small[labels]


def _bone_slice(smooth: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Bone of one slice: pixels above BONE_HU within CORTEX_REACH_MM of cortex (above CORTEX_HU
    after the 1 mm smoothing), in sections of at least 20 mm2, marrow filled (module doc)."""
    pixel_mm2 = pixel_mm * pixel_mm
    cortex = (smooth > CORTEX_HU).astype(np.uint8)
    if not cortex.any():
        return np.zeros(smooth.shape, dtype=bool)
    bone = (smooth > BONE_HU) & cv2.dilate(cortex, _disc(max(1, int(round(CORTEX_REACH_MM / pixel_mm))))).astype(bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(bone.astype(np.uint8), connectivity=8)
    large = np.zeros(count, dtype=bool)
    large[1:] = stats[1:, cv2.CC_STAT_AREA] * pixel_mm2 >= _MIN_BONE_MM2
    return _fill_small_holes(large[labels], _MAX_MARROW_MM2 / pixel_mm2)


def _body_slice(smooth: np.ndarray, raw: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Body of one slice: the largest region above BODY_HU with its holes filled, plus, where the
    body is cut by the field of view (it covers >= 0.5 % of the image border), lung-like air that
    reaches the image border (a field of view inside the chest): air whose HU,
    averaged over 3 mm, is above GAS_HU (outside air is about -1000 HU), in regions that survive
    a 5 mm opening (not the thin blurred band outside the skin) of at least 500 mm2 whose
    outline runs mostly (>= 50 %) along the body (not a table's pad)."""
    largest = _largest_component(smooth > BODY_HU)
    if not largest.any():
        return largest
    body = _fill_holes(largest)
    rest = ~body & (smooth < AIR_HU)
    edge = np.concatenate([largest[0], largest[-1], largest[:, 0], largest[:, -1]])
    if rest.any() and edge.mean() >= _CUT_BODY_EDGE_FRACTION:
        heavy = cv2.GaussianBlur(np.clip(raw, -1024, 0).astype(np.float32), (0, 0), 3.0 / pixel_mm)
        kernel = _disc(max(1, int(round(5.0 / pixel_mm))))
        lung_like = cv2.morphologyEx((rest & (heavy > GAS_HU)).astype(np.uint8), cv2.MORPH_OPEN, kernel)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(lung_like, connectivity=4)
        ring_kernel = np.ones((3, 3), np.uint8)
        for k in range(1, count):
            if stats[k, cv2.CC_STAT_AREA] * pixel_mm * pixel_mm < 500.0:
                continue
            part = labels == k
            ring = cv2.dilate(part.astype(np.uint8), ring_kernel).astype(bool) & ~part
            if largest[ring].mean() >= 0.5:  # mostly enclosed by the body (not the table's pad)
                body |= part
    return body


def _lung_components(air: np.ndarray, hu: np.ndarray, voxel_ml: float) -> np.ndarray:
    """3D components of air inside the body that are lung (large, parenchyma-like mean HU)."""
    if not air.any():
        return air
    image = sitk.GetImageFromArray(air.astype(np.uint8))
    components = sitk.GetArrayFromImage(sitk.ConnectedComponent(image, False))
    count = int(components.max())
    flat = components.ravel()
    sizes = np.bincount(flat, minlength=count + 1)
    gas = np.bincount(components[np.asarray(hu) < GAS_HU], minlength=count + 1)
    keep = (sizes * voxel_ml >= LUNG_MIN_ML) & (gas <= LUNG_MAX_GAS_FRACTION * sizes)
    keep[0] = False
    return keep[components]


def _convex_hull_fill(mask: np.ndarray) -> np.ndarray:
    points = cv2.findNonZero(mask.astype(np.uint8))
    out = np.zeros(mask.shape, dtype=np.uint8)
    if points is not None and len(points) >= 3:
        cv2.fillConvexPoly(out, cv2.convexHull(points), 1)
    return out.astype(bool)


def _bulk(soft: np.ndarray, pixel_mm: float, interval_mm: float) -> np.ndarray:
    """Bulk soft tissue (module doc): the per-slice opening of ``soft`` by a disc
    :data:`BULK_MIN_THICKNESS_MM` across, widened within ``soft`` by :data:`BULK_Z_REACH_MM`
    along z. (Z, Y, X) bool in and out."""
    disc = _disc(max(1, int(round(BULK_MIN_THICKNESS_MM / pixel_mm)) // 2))
    bulk = np.stack([cv2.morphologyEx(s.astype(np.uint8), cv2.MORPH_OPEN, disc) > 0 for s in soft])
    grown = bulk.copy()
    for step in range(1, int(BULK_Z_REACH_MM // max(interval_mm, 1e-3)) + 1):
        grown[step:] |= bulk[:-step]
        grown[:-step] |= bulk[step:]
    return grown & soft


def _subcutaneous(codes: np.ndarray, depth_mm: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Subcutaneous fat of one slice (module doc): (Y, X) uint8 tissue codes with flags and
    depth below the body surface (mm) in, (Y, X) bool out."""
    tissue = codes & _CODE_BITS
    core = (np.isin(tissue, _WALL_AND_INSIDE) | ((codes & FROM_MASK) > 0)) & (depth_mm > _SUBCUTANEOUS_SKIN_MM)
    disc = _disc(int(round(SUBCUTANEOUS_CLOSING_MM / pixel_mm)) // 2)
    pad = disc.shape[0]
    closed = cv2.morphologyEx(np.pad(core.astype(np.uint8), pad), cv2.MORPH_CLOSE, disc)[pad:-pad, pad:-pad]
    return (tissue == FAT) & ~_fill_holes(closed > 0)


def _pelvis_by_bone(bone: np.ndarray, body: np.ndarray, pixel_mm2: float) -> bool:
    """Whether a slice shows large bone sections on both sides of the body's midline."""
    if not body.any():
        return False
    columns = np.nonzero(body.any(axis=0))[0]
    mid = 0.5 * (columns[0] + columns[-1] + 1)
    count, _, stats, centroids = cv2.connectedComponentsWithStats(bone.astype(np.uint8), connectivity=8)
    margin = 0.1 * (columns[-1] - columns[0])
    large = [centroids[k][0] for k in range(1, count) if stats[k, cv2.CC_STAT_AREA] * pixel_mm2 >= PELVIS_BONE_MM2]
    return any(x < mid - margin for x in large) and any(x > mid + margin for x in large)


def _pelvis_below_chest(region_z: np.ndarray, superior_up: bool) -> np.ndarray:
    """Pelvis only as one block at the inferior end: slices up to the most superior pelvis slice
    below every chest slice for which at least half the slices from the inferior end up to it
    were found pelvic (the iliac crests), none elsewhere (e.g. not the shoulders)."""
    order = np.arange(len(region_z)) if superior_up else np.arange(len(region_z))[::-1]  # inferior first
    ordered = region_z[order].copy()
    chest = np.nonzero(ordered == CHEST)[0]
    limit = int(chest[0]) if len(chest) else len(ordered)
    top = -1
    for k in range(limit):
        if ordered[k] == PELVIS and (ordered[:k + 1] == PELVIS).mean() >= 0.5:
            top = k
    ordered[(ordered == PELVIS)] = ABDOMEN
    ordered[:top + 1] = PELVIS
    out = region_z.copy()
    out[order] = ordered
    return out


def tissue_map(volume: Volume, organ_labels: np.ndarray | None = None) -> TissueMap:
    """Tissue codes, flags and body regions of a CT volume (module doc for the rules).

    Args:
        volume: the CT (HU, (Z, Y, X)); in-plane pixels should be square (the mean spacing is
            used for areas and distances).
        organ_labels: optional (Z, Y, X) TotalSegmentator v2 ``total`` labels on the CT's grid
            (:func:`align_labels`; :data:`UNKNOWN_LABEL` outside the mask's field of view).

    Returns:
        The :class:`TissueMap` on the volume's grid.

    Raises:
        ValueError: if ``organ_labels`` does not have the volume's shape.
    """
    hu = np.asarray(volume.hu)
    if organ_labels is not None and organ_labels.shape != hu.shape:
        raise ValueError(f"organ labels of shape {organ_labels.shape} do not match the CT's {hu.shape}")
    interval_mm, row_mm, col_mm = volume.spacing_zyx_mm
    pixel_mm = float(np.sqrt(row_mm * col_mm))
    pixel_mm2 = row_mm * col_mm
    smooth = _smooth(hu, pixel_mm)
    num_z = hu.shape[0]
    body = np.stack([_body_slice(smooth[k], hu[k], pixel_mm) for k in range(num_z)])
    air = body & (smooth < AIR_HU)
    lung = _lung_components(air, hu, interval_mm * pixel_mm2 / 1000.0)
    lung = np.stack([_fill_holes(s) for s in lung]) & body
    bone = np.stack([_bone_slice(smooth[k], pixel_mm) for k in range(num_z)]) & body & ~lung

    codes = np.full(hu.shape, OUTSIDE, dtype=np.uint8)
    codes[body] = GAS
    codes[body & (smooth >= FAT_HU[0]) & (smooth <= FAT_HU[1])] = FAT
    codes[body & (smooth > FAT_HU[1]) & (smooth <= BRIGHT_HU)] = SOFT
    codes[body & (smooth > BRIGHT_HU)] = VESSEL
    codes[lung] = LUNG
    codes[bone] = BONE

    masked: set[int] = set()
    pelvis_masked = np.zeros(num_z, dtype=bool)
    known_z = np.zeros(num_z, dtype=bool)
    if organ_labels is not None:
        known = organ_labels != UNKNOWN_LABEL
        known_z = known.any(axis=(1, 2))
        labelled = known & (organ_labels > 0)
        lut = np.full(UNKNOWN_LABEL + 1, ORGAN, dtype=np.uint8)
        for label, code in TOTALSEGMENTATOR_V2_TISSUE.items():
            lut[label] = code
        mask_codes = lut[organ_labels]
        # Unlabelled voxels in the mask's view: lung and bone would have been labelled.
        unlabelled = known & ~labelled
        codes[unlabelled & (codes == LUNG)] = GAS
        codes[unlabelled & (codes == BONE)] = VESSEL
        codes[labelled] = mask_codes[labelled]
        masked = {int(c) for c in np.unique(mask_codes[labelled])}
        pelvis_masked = np.isin(organ_labels, TOTALSEGMENTATOR_V2_PELVIS).any(axis=(1, 2))
        liver = codes == LIVER
        if liver.any():
            median = float(np.median(smooth[liver]))
            codes[liver & (np.abs(smooth - median) > LIVER_VESSEL_DEVIATION_HU)] = VESSEL
        codes[labelled] |= FROM_MASK
        lung = (codes & _CODE_BITS) == LUNG
    codes[_bulk(codes == SOFT, pixel_mm, interval_mm)] = BULK

    # Flags and regions, per slice.
    region_z = np.full(num_z, ABDOMEN, dtype=np.uint8)
    for k in range(num_z):
        if not body[k].any():
            continue
        # Replicated border: where the field of view cuts the body, the cut is not its surface.
        padded = cv2.copyMakeBorder(body[k].astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_REPLICATE)
        depth_mm = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1] * pixel_mm
        codes[k][body[k] & (depth_mm <= WALL_DEPTH_MM)] |= WALL
        codes[k][body[k] & (depth_mm <= SKIN_DEPTH_MM)] |= SKIN
        lung_k = lung[k]
        if lung_k.sum() >= _CHEST_LUNG_FRACTION * body[k].sum():
            region_z[k] = CHEST
            hull = _convex_hull_fill(lung_k) & ~lung_k & body[k]
            codes[k][hull] |= MEDIASTINUM
        elif pelvis_masked[k] or (not known_z[k] and _pelvis_by_bone(bone[k], body[k], pixel_mm2)):
            region_z[k] = PELVIS
        outer = _subcutaneous(codes[k], depth_mm, pixel_mm) & ((codes[k] & MEDIASTINUM) == 0)
        codes[k][outer] = (codes[k][outer] & (0xFF ^ _CODE_BITS)) | SUBCUTANEOUS_FAT
    region_z = _pelvis_below_chest(region_z, superior_up=float(np.asarray(volume.direction_lps)[2, 2]) >= 0)
    return TissueMap(codes=codes, region_z=region_z, masked_codes=frozenset(masked))


#: DeepLesion coarse lesion types (Yan et al., *DeepLesion: automated mining of large-scale
#: lesion annotations and universal lesion detection with deep learning*, J. Med. Imaging 2018;
#: the ``Coarse_lesion_type`` column of DL_info.csv).
COARSE_TYPES: dict[int, str] = {1: "bone", 2: "abdomen", 3: "mediastinum", 4: "liver", 5: "lung", 6: "kidney",
                                7: "soft tissue", 8: "pelvis"}
#: Lesion types placed in fat or loose soft tissue (lymph nodes and masses): at least this fraction
#: of their voxels must replace fat, so that they sit in fat as enlarged nodes do.
NODE_TYPES = (2, 3, 8)


def lesion_regions(codes: np.ndarray, region_z: np.ndarray) -> dict[int, np.ndarray]:
    """Where each DeepLesion coarse lesion type may be centred, on a (warped) tissue map (what
    makes a lesion that type; :func:`lesion_compartments` gives what it may cover).

    * 1 bone: bone (marrow and cortex);
    * 2 abdomen: abdomen slices, deeper than the skin (15 mm), loose tissue: fat that is not
      subcutaneous, unlabelled soft tissue that is not bulk (retroperitoneal and mesenteric lymph
      nodes and masses);
    * 3 mediastinum: chest slices, mediastinum flag, loose tissue;
    * 4 liver, 5 lung, 6 kidney: the organ (liver and kidney only from masks, module doc);
    * 7 soft tissue: subcutaneous fat, other fat of the body wall (within 40 mm of the surface),
      masked muscles and soft tissue (bulk included) within 15 mm of the surface, outside the
      mediastinum (not deeper unlabelled soft tissue, which may be an organ that has no mask);
    * 8 pelvis: pelvis slices, deeper than the skin, loose tissue.

    The 15-40 mm band belongs to both the body wall and the deep regions: the HU rules do not
    find the abdominal wall's muscles, so the boundary between soft-tissue and abdominal lesions
    is a depth, not an anatomical layer.

    Vessels, gas, other organs, outside voxels and (but for type 7) bulk soft tissue belong to
    no region, so a lesion kept inside its region avoids them.

    Args:
        codes: (Z, Y, X) uint8 tissue codes with flags (:class:`TissueMap` ``codes``).
        region_z: (Z,) uint8 body region per slice.

    Returns:
        {coarse type: (Z, Y, X) bool region}, every type 1-8 present (possibly empty).
    """
    tissue = codes & _CODE_BITS
    wall = (codes & WALL) > 0
    skin = (codes & SKIN) > 0
    mediastinum = (codes & MEDIASTINUM) > 0
    from_mask = (codes & FROM_MASK) > 0
    loose = _loose(tissue, from_mask)
    soft = _soft_tissue(tissue)
    region = np.asarray(region_z)[:, None, None]
    return {
        1: tissue == BONE,
        2: loose & ~skin & (region == ABDOMEN),
        3: loose & mediastinum & (region == CHEST),
        4: tissue == LIVER,
        5: tissue == LUNG,
        6: tissue == KIDNEY,
        7: (((tissue == FAT) & wall) | (tissue == SUBCUTANEOUS_FAT) | (soft & (from_mask | skin))) & ~mediastinum,
        8: loose & ~skin & (region == PELVIS),
    }


def _loose(tissue: np.ndarray, from_mask: np.ndarray) -> np.ndarray:
    """Loose tissue, where lymph nodes and masses lie: fat that is not subcutaneous and unlabelled
    soft tissue that is not bulk (module doc)."""
    return (tissue == FAT) | ((tissue == SOFT) & ~from_mask)


def _soft_tissue(tissue: np.ndarray) -> np.ndarray:
    """Soft tissue, thin or bulk, labelled or not (muscles included)."""
    return (tissue == SOFT) | (tissue == BULK)


def lesion_compartments(codes: np.ndarray) -> dict[int, np.ndarray]:
    """The tissue a lesion of each coarse type may cover (all of it, with a 1 mm margin).

    For the organ types (1 bone, 4 liver, 5 lung, 6 kidney) it is the organ itself, as in
    :func:`lesion_regions`. For the lymph nodes and masses of 2 abdomen, 3 mediastinum and 8
    pelvis it is loose tissue (fat that is not subcutaneous, unlabelled soft tissue that is not
    bulk) anywhere, and for 7 soft tissue subcutaneous fat, and fat or soft tissue (muscles and
    other bulk included) of the body wall or of a masked muscle: the type's region fixes where
    such a lesion is centred, its compartment what it may reach, so that the artificial boundaries of the
    regions (a depth, the lungs' hull, the slice where the chest begins) do not limit its size,
    while organs (masked, or unlabelled bulk), vessels, bone, lung and gas remain out of bounds.

    Args:
        codes: (Z, Y, X) uint8 tissue codes with flags.

    Returns:
        {coarse type: (Z, Y, X) bool compartment}.
    """
    tissue = codes & _CODE_BITS
    from_mask = (codes & FROM_MASK) > 0
    loose = _loose(tissue, from_mask)
    wall = (codes & WALL) > 0
    body_wall = (tissue == FAT) | _soft_tissue(tissue)
    return {1: tissue == BONE, 2: loose, 3: loose, 4: tissue == LIVER, 5: tissue == LUNG, 6: tissue == KIDNEY,
            7: (body_wall & (wall | from_mask)) | (tissue == SUBCUTANEOUS_FAT), 8: loose}
