"""Synthetic lesions: type, size, shape and appearance, drawn and rendered on a voxel grid.

Everything here is relative to a lesion's host tissue and is pure (a random generator in,
arrays out); :mod:`ctlesion.data.simulate` places the lesions in real CT and writes them.

Types and sizes (Yan et al., *DeepLesion: automated mining of large-scale lesion annotations
and universal lesion detection with deep learning*, J. Med. Imaging 5(3) 2018, and the official
DL_info.csv of its test split, 4,927 lesions):

* the 8 coarse types are drawn with the test split's frequencies (:data:`TYPE_COUNTS`:
  abdomen 24 %, lung 22 %, mediastinum 18 %, liver 14 %, pelvis 8 %, soft tissue 7 %, kidney
  5 %, bone 2 %), renormalised over the types whose anatomy a series holds;
* the RECIST long diameter is log-normal per type, with the geometric mean and log standard
  deviation of that type in the test split (:data:`SIZE_LOGNORMAL_MM`; over all types the
  median is 19 mm, 16 % are below 10 mm, 15 % above 40 mm and 1 % above 100 mm, the long
  tail of the DeepLesion paper's size histogram), clipped to :data:`LONG_DIAMETER_RANGE_MM`;
  the short/long ratio is normal around the test split's median 0.75 (10-90 %: 0.47-0.94).

Shape (beyond ellipsoids): an ellipsoid whose radius in each direction u is multiplied by
``R(u) = 1 + sum c_lm Y_lm(u) + lobes + spikes``: real spherical harmonics of degree 2 and 3
with random coefficients (a smooth random deformation), a few broad von Mises-Fisher bumps
(lobulation) and, for spiculated lung nodules, many narrow ones (spicules: the corona radiata
of lung cancer, e.g. Snoeckx et al., *Evaluation of the solitary pulmonary nodule*, Insights
Imaging 2018). The shape is scaled so that the maximum Feret diameter of its central section
(spicules left out, as RECIST does) equals the drawn long diameter. Edges are soft: the
occupancy of a voxel is a logistic function of its approximate signed distance to the surface
with a kind-dependent width (:class:`Appearance` ``edge_sigma_mm``; cysts sharp, metastases
and ground glass soft).

Appearance, after the CT literature (HU of the *host* tissue measured in the scan itself):

* liver metastasis: hypodense, 20-60 HU below the liver on a portal-venous scan (liver above
  80 HU; 20-40 HU on an unenhanced one, liver 55-65 HU and metastases 20-40 HU),
  heterogeneous; some with rim enhancement or a necrotic centre (10-25 HU),
  a few calcified (Sica et al., *CT and MR imaging of hepatic metastases*, AJR 2000);
* hyperdense liver lesion (15 %): 20-50 HU above the liver (haemangioma, arterially enhancing
  tumour; 5 of the 22 real DeepLesion liver lesions of ``../shared/data`` are brighter than
  the liver, by 8-47 HU; the hypodense ones are 13-58 HU below it);
* liver and kidney cyst: 0-20 HU, homogeneous, sharp edge (Bosniak I; Israel & Bosniak,
  *An update of the Bosniak renal cyst classification*, Urology 2005);
* kidney solid lesion: enhancing less than the renal parenchyma, heterogeneous;
* lung nodule: soft tissue (-20..60 HU) in aerated lung, lobulated or spiculated in part;
  part-solid nodules with a ground-glass halo (-700..-400 HU, vessels visible through it: it is
  added to the lung rather than replacing it; Fleischner glossary, Hansell et al., Radiology
  2008); a few central calcifications;
* lymph node: 20-60 HU, oval (long axis craniocaudal), in fat; a few with a necrotic centre;
* soft-tissue, abdominal and pelvic masses: 25-70 HU, at least 15 HU from the host (muscle),
  heterogeneous, larger ones necrotic;
* bone: lytic (20-80 HU, soft tissue replacing marrow) or sclerotic (300-1000 HU, irregular).

Texture follows the recipe of Hu et al., *Label-Free Liver Tumor Segmentation*, CVPR 2023
(synthetic tumours: Gaussian noise smoothed to a tumour-like texture, deformed ellipsoid
shapes, placed in the liver away from vessels, a capsule-like rim): correlated Gaussian noise
with a kind-dependent amplitude (:class:`Appearance` ``texture_sd_hu``) and correlation length
(``texture_scale_mm``) on top of the level map; the scanner's own noise is added by the caller
(:mod:`ctlesion.data.simulate`), taken from the same scan.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property

import cv2
import numpy as np

from ctlesion.data.anatomy import COARSE_TYPES

#: Lesions per coarse type in DeepLesion's official test split (DL_info.csv, 4,927 lesions).
TYPE_COUNTS: dict[int, int] = {1: 108, 2: 1173, 3: 864, 4: 700, 5: 1100, 6: 234, 7: 339, 8: 409}
#: Long diameter per coarse type: (geometric mean mm, standard deviation of the log), measured
#: on DeepLesion's test split (long diameter in pixels x pixel spacing).
SIZE_LOGNORMAL_MM: dict[int, tuple[float, float]] = {
    1: (15.8, 0.54), 2: (21.9, 0.66), 3: (19.4, 0.50), 4: (23.6, 0.75),
    5: (13.0, 0.88), 6: (19.5, 0.65), 7: (21.9, 0.55), 8: (24.0, 0.66),
}
LONG_DIAMETER_RANGE_MM = (5.0, 100.0)
SHORT_RATIO_MEAN, SHORT_RATIO_SD, SHORT_RATIO_RANGE = 0.75, 0.15, (0.45, 1.0)
#: DICOM_windows written per coarse type (the test split's most common window per type: lung and
#: bone lesions were read in a wide window, the rest in a soft-tissue one).
DICOM_WINDOWS: dict[int, tuple[float, float]] = {t: (-175.0, 275.0) for t in COARSE_TYPES}
DICOM_WINDOWS.update({1: (-1500.0, 500.0), 5: (-1500.0, 500.0)})

#: Kinds of lesion per coarse type, with their probabilities.
KINDS: dict[int, tuple[tuple[str, float], ...]] = {
    1: (("lytic", 0.6), ("sclerotic", 0.4)),
    2: (("lymph_node", 0.7), ("mass", 0.3)),
    3: (("lymph_node", 0.9), ("mass", 0.1)),
    4: (("metastasis", 0.55), ("cyst", 0.3), ("hyperdense", 0.15)),
    5: (("nodule", 0.6), ("spiculated", 0.2), ("part_solid", 0.2)),
    6: (("cyst", 0.55), ("solid", 0.45)),
    7: (("mass", 1.0),),
    8: (("lymph_node", 0.6), ("mass", 0.4)),
}
#: Smooth deformation (standard deviation of each degree-2 harmonic coefficient) per kind.
_DEFORMATION = {"cyst": 0.03, "lymph_node": 0.05, "metastasis": 0.08, "hyperdense": 0.06, "mass": 0.11,
                "nodule": 0.11, "spiculated": 0.11, "part_solid": 0.12, "solid": 0.07, "lytic": 0.10, "sclerotic": 0.15}
_LOBULATED = {"metastasis": 0.4, "mass": 0.5, "nodule": 0.6, "spiculated": 0.3, "part_solid": 0.3, "solid": 0.3,
              "lytic": 0.3, "sclerotic": 0.5}
_LOGISTIC = 1.702  # logistic(1.702 x) approximates the normal CDF (an erf edge)


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def draw_type(rng: np.random.Generator, available: list[int], weights: dict[int, float] | None = None) -> int:
    """A coarse lesion type among ``available`` with DeepLesion's frequencies (module doc), or
    with ``weights`` per type when given.

    Raises:
        ValueError: if ``available`` is empty.
    """
    if not available:
        raise ValueError("no lesion type available")
    table = weights if weights is not None else TYPE_COUNTS
    p = np.array([table[t] for t in available], dtype=np.float64)
    return int(available[int(rng.choice(len(available), p=p / p.sum()))])


def draw_kind(rng: np.random.Generator, coarse_type: int) -> str:
    """A kind of lesion of a coarse type (:data:`KINDS`)."""
    names, probs = zip(*KINDS[coarse_type])
    return str(names[int(rng.choice(len(names), p=np.array(probs) / sum(probs)))])


def draw_long_diameter_mm(rng: np.random.Generator, coarse_type: int) -> float:
    """RECIST long diameter (mm): log-normal per type, clipped (module doc)."""
    mean_mm, log_sd = SIZE_LOGNORMAL_MM[coarse_type]
    value = math.exp(math.log(mean_mm) + log_sd * float(rng.standard_normal()))
    return float(np.clip(value, *LONG_DIAMETER_RANGE_MM))


# ----------------------------------------------------------------------------------- shape


def _harmonic_sum(u: np.ndarray, c: np.ndarray) -> np.ndarray:
    """sum_k c_k Y_k(u) over the 12 real spherical harmonics of degree 2 and 3 (unnormalised) at
    unit vectors u (..., 3)."""
    x, y, z = u[..., 0], u[..., 1], u[..., 2]
    xx, yy, zz = x * x, y * y, z * z
    return (c[0] * x * y + c[1] * y * z + c[2] * x * z + c[3] * 0.5 * (xx - yy) + c[4] * 0.5 * (3 * zz - 1)
            + c[5] * y * (3 * xx - yy) / 2 + c[6] * 2 * x * y * z + c[7] * y * (5 * zz - 1) / 2
            + c[8] * z * (5 * zz - 3) / 2 + c[9] * x * (5 * zz - 1) / 2 + c[10] * z * (xx - yy)
            + c[11] * x * (xx - 3 * yy) / 2)


def _random_unit(rng: np.random.Generator, count: int) -> np.ndarray:
    v = rng.standard_normal((count, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _fibonacci_sphere(count: int = 400) -> np.ndarray:
    k = np.arange(count) + 0.5
    phi = np.arccos(1 - 2 * k / count)
    theta = math.pi * (1 + 5**0.5) * k
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


@dataclass(frozen=True)
class LesionShape:
    """A deformed ellipsoid in millimetres (module doc), centred at the origin of its own frame.

    Attributes:
        semi_axes_mm: (a, b, c): in-plane long and short semi-axes and the z semi-axis, mm.
        angle_rad: in-plane rotation of the long axis from the x (column) axis.
        harmonics: (12,) coefficients of the degree 2-3 harmonics of the radius.
        lobes: (K, 5) rows (ux, uy, uz, amplitude, concentration) of broad bumps.
        spikes: (M, 5) rows of narrow bumps (spicules), left out of the Feret normalisation.
    """

    semi_axes_mm: tuple[float, float, float]
    angle_rad: float
    harmonics: tuple[float, ...]
    lobes: tuple[tuple[float, ...], ...] = ()
    spikes: tuple[tuple[float, ...], ...] = ()

    def radius(self, u: np.ndarray, spikes: bool = True) -> np.ndarray:
        """Relative radius R(u) > 0 at unit vectors u (..., 3) of the normalised frame."""
        r = 1.0 + _harmonic_sum(u, np.asarray(self.harmonics, dtype=u.dtype))
        for bumps in (self.lobes, self.spikes) if spikes else (self.lobes,):
            for ux, uy, uz, amplitude, kappa in bumps:
                cosine = u[..., 0] * ux + u[..., 1] * uy + u[..., 2] * uz
                near = cosine > 1.0 - 12.0 / kappa  # exp(-12): negligible elsewhere
                if near.any():
                    r = r + np.where(near, amplitude * np.exp(kappa * (cosine - 1.0)), 0.0).astype(r.dtype)
        return np.clip(r, 0.4, None)

    @cached_property
    def _max_radius(self) -> float:
        return float(self.radius(_fibonacci_sphere()).max())

    def max_extent_mm(self) -> float:
        """An upper bound of the distance from the centre to the surface, mm."""
        return max(self.semi_axes_mm) * self._max_radius * 1.05

    def surface_points_mm(self, offset_mm: float = 0.0, count: int = 400) -> np.ndarray:
        """(count, 3) points (dz, dy, dx) mm from the centre on the surface pushed ``offset_mm``
        outwards (radially), spicules included: a cheap first check of a placement."""
        u = _fibonacci_sphere(count)
        r = self.radius(u)
        a, b, c = self.semi_axes_mm
        local = np.stack([a * r * u[:, 0], b * r * u[:, 1], c * r * u[:, 2]], axis=1)
        length = np.linalg.norm(local, axis=1, keepdims=True)
        local = local * (1.0 + offset_mm / np.maximum(length, 1e-6))
        cos, sin = math.cos(self.angle_rad), math.sin(self.angle_rad)
        dx = local[:, 0] * cos - local[:, 1] * sin
        dy = local[:, 0] * sin + local[:, 1] * cos
        return np.stack([local[:, 2], dy, dx], axis=1)

    def section_feret_mm(self) -> float:
        """Maximum Feret diameter of the central (z = 0) section without spicules, mm."""
        theta = np.linspace(0.0, 2 * math.pi, 360, endpoint=False)
        u = np.stack([np.cos(theta), np.sin(theta), np.zeros_like(theta)], axis=1)
        r = self.radius(u, spikes=False)
        points = np.stack([self.semi_axes_mm[0] * r * u[:, 0], self.semi_axes_mm[1] * r * u[:, 1]], axis=1)
        diff = points[:, None, :] - points[None, :, :]
        return float(np.sqrt((diff**2).sum(-1)).max())

    def scaled(self, factor: float) -> LesionShape:
        a, b, c = self.semi_axes_mm
        return LesionShape((a * factor, b * factor, c * factor), self.angle_rad, self.harmonics, self.lobes,
                           self.spikes)

    def fields(self, d_mm: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance (mm, approximate; < 0 inside) and relative depth t (0 centre, 1 surface).

        Args:
            d_mm: (dz, dy, dx) offsets from the centre in mm, broadcastable arrays (z = slice
                axis, y = rows, x = columns).
        """
        dz, dy, dx = d_mm
        a, b, c = self.semi_axes_mm
        cos, sin = math.cos(self.angle_rad), math.sin(self.angle_rad)
        qx = (dx * cos + dy * sin) / a
        qy = (-dx * sin + dy * cos) / b
        qz = dz / c
        qx, qy, qz = (np.asarray(v, dtype=np.float32) for v in np.broadcast_arrays(qx, qy, qz))
        rho = np.sqrt(qx * qx + qy * qy + qz * qz) + np.float32(1e-9)
        u = np.empty(rho.shape + (3,), dtype=np.float32)
        u[..., 0], u[..., 1], u[..., 2] = qx / rho, qy / rho, qz / rho
        r = self.radius(u)
        grad = np.sqrt((qx / a) ** 2 + (qy / b) ** 2 + (qz / c) ** 2) / rho + 1e-9
        signed = (rho - r) / grad
        return signed.astype(np.float32), (rho / r).astype(np.float32)


def draw_shape(rng: np.random.Generator, kind: str, long_mm: float) -> LesionShape:
    """A random shape of a kind whose central section's Feret diameter is ``long_mm`` (module doc)."""
    ratio = float(np.clip(rng.normal(SHORT_RATIO_MEAN, SHORT_RATIO_SD), *SHORT_RATIO_RANGE))
    if kind == "lymph_node":
        ratio = float(np.clip(rng.normal(0.65, 0.12), 0.45, 0.95))
    a = long_mm / 2
    b = a * ratio
    # Lymph nodes are elongated craniocaudally; other lesions are roughly as deep as wide.
    c = (a * _uniform(rng, 0.9, 1.5)) if kind == "lymph_node" else (math.sqrt(a * b) * _uniform(rng, 0.8, 1.15))
    amplitude = _DEFORMATION[kind]
    coefficients = np.concatenate([rng.normal(0, amplitude, 5), rng.normal(0, 0.6 * amplitude, 7)])
    lobes: list[tuple[float, ...]] = []
    if rng.random() < _LOBULATED.get(kind, 0.0):
        for v in _random_unit(rng, int(rng.integers(2, 5))):
            lobes.append((*v.tolist(), _uniform(rng, 0.06, 0.18), _uniform(rng, 5.0, 12.0)))
    spikes: list[tuple[float, ...]] = []
    if kind == "spiculated":
        for v in _random_unit(rng, int(rng.integers(8, 20))):
            v[2] *= 0.5  # spicules run more often in-plane than along z in an axial view
            v /= np.linalg.norm(v)
            spikes.append((*v.tolist(), _uniform(rng, 0.3, 0.9), _uniform(rng, 150.0, 400.0)))
    shape = LesionShape((a, b, c), _uniform(rng, 0.0, math.pi), tuple(coefficients.tolist()), tuple(lobes),
                        tuple(spikes))
    return shape.scaled(long_mm / shape.section_feret_mm())


# ------------------------------------------------------------------------------ appearance


@dataclass(frozen=True)
class Appearance:
    """How a lesion looks, in HU (module doc for the sources).

    Attributes:
        kind: the lesion kind (:data:`KINDS`).
        core_hu: level of the lesion's body.
        texture_sd_hu, texture_scale_mm: amplitude and correlation length of its texture.
        edge_sigma_mm: width of its edge (the logistic's equivalent Gaussian sigma).
        necrosis_hu, necrosis_radius: level and relative radius (0-1) of a necrotic centre
            (radius 0: none).
        rim_hu, rim_width: level and relative width of an enhancing rim (width 0: none).
        calcification_hu, calcification_radius_mm, calcification_offset: a calcified focus
            (radius 0: none) at this offset (relative to the semi-axes) from the centre.
        ground_glass_hu, solid_radius: part-solid nodules: HU added to the lung outside a
            solid core of relative radius ``solid_radius`` (0: not part-solid).
        host_hu: median HU of the host tissue it was drawn for.
    """

    kind: str
    core_hu: float
    texture_sd_hu: float
    texture_scale_mm: float
    edge_sigma_mm: float
    host_hu: float
    necrosis_hu: float = 0.0
    necrosis_radius: float = 0.0
    rim_hu: float = 0.0
    rim_width: float = 0.0
    calcification_hu: float = 0.0
    calcification_radius_mm: float = 0.0
    calcification_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ground_glass_hu: float = 0.0
    solid_radius: float = 0.0

    def record(self) -> dict[str, object]:
        """JSON-ready fields, rounded."""
        return {k: (round(v, 3) if isinstance(v, float) else [round(x, 3) for x in v] if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}


def _away_from(rng: np.random.Generator, value: float, host: float, margin: float) -> float:
    """``value`` pushed at least ``margin`` HU away from ``host`` (to the side it lies on)."""
    if abs(value - host) >= margin:
        return value
    return host + margin * (1.0 if value > host or (value == host and rng.random() < 0.5) else -1.0)


def draw_appearance(rng: np.random.Generator, kind: str, host_hu: float, long_mm: float) -> Appearance:
    """The look of a lesion of ``kind`` in a host tissue of median ``host_hu`` (module doc).

    Args:
        rng: random generator.
        kind: lesion kind (:data:`KINDS`).
        host_hu: median HU of the tissue the lesion replaces (measured in the scan).
        long_mm: its long diameter (large lesions are more often necrotic).
    """
    extra: dict[str, object] = {}
    big = long_mm >= 30.0
    if kind == "metastasis":
        drop = _uniform(rng, 20, 60) if host_hu >= 80 else _uniform(rng, 20, 40)
        core = max(host_hu - drop, 10.0)
        base = dict(core_hu=core, texture_sd_hu=_uniform(rng, 4, 10), texture_scale_mm=_uniform(rng, 2, 4),
                    edge_sigma_mm=_uniform(rng, 0.6, 1.4))
        if rng.random() < 0.3:
            extra.update(rim_hu=host_hu + _uniform(rng, -10, 20), rim_width=_uniform(rng, 0.15, 0.3))
        if rng.random() < (0.5 if big else 0.15):
            extra.update(necrosis_hu=_uniform(rng, 10, 25), necrosis_radius=_uniform(rng, 0.3, 0.6))
        if rng.random() < 0.05:
            extra.update(_calcification(rng))
    elif kind == "hyperdense":  # liver: haemangioma or arterially enhancing tumour
        base = dict(core_hu=host_hu + _uniform(rng, 20, 50), texture_sd_hu=_uniform(rng, 4, 10),
                    texture_scale_mm=_uniform(rng, 2, 4), edge_sigma_mm=_uniform(rng, 0.8, 1.5))
    elif kind == "cyst":
        base = dict(core_hu=_uniform(rng, 0, 20), texture_sd_hu=_uniform(rng, 0, 2), texture_scale_mm=3.0,
                    edge_sigma_mm=_uniform(rng, 0.4, 0.7))
    elif kind == "solid":  # kidney
        level = min(_uniform(rng, 30, 80), host_hu - 30) if host_hu >= 100 else host_hu + _uniform(rng, -15, 15)
        base = dict(core_hu=level, texture_sd_hu=_uniform(rng, 6, 14), texture_scale_mm=_uniform(rng, 2, 4),
                    edge_sigma_mm=_uniform(rng, 0.7, 1.4))
        if rng.random() < (0.4 if big else 0.1):
            extra.update(necrosis_hu=_uniform(rng, 10, 25), necrosis_radius=_uniform(rng, 0.3, 0.6))
    elif kind in ("nodule", "spiculated", "part_solid"):
        base = dict(core_hu=_uniform(rng, -20, 60), texture_sd_hu=_uniform(rng, 8, 15),
                    texture_scale_mm=_uniform(rng, 1.5, 3), edge_sigma_mm=_uniform(rng, 0.5, 1.1))
        if kind == "part_solid":
            base["edge_sigma_mm"] = _uniform(rng, 1.2, 2.2)
            extra.update(ground_glass_hu=_uniform(rng, 150, 350), solid_radius=_uniform(rng, 0.0, 0.6))
        elif big and rng.random() < 0.3:
            extra.update(necrosis_hu=_uniform(rng, 5, 25), necrosis_radius=_uniform(rng, 0.3, 0.5))
        if kind == "nodule" and rng.random() < 0.1:
            extra.update(_calcification(rng, central=True))
    elif kind == "lymph_node":
        base = dict(core_hu=_uniform(rng, 20, 60), texture_sd_hu=_uniform(rng, 3, 6),
                    texture_scale_mm=_uniform(rng, 2, 3), edge_sigma_mm=_uniform(rng, 0.6, 1.0))
        if rng.random() < 0.1:
            extra.update(necrosis_hu=_uniform(rng, 10, 25), necrosis_radius=_uniform(rng, 0.3, 0.5))
        elif rng.random() < 0.05:
            extra.update(_calcification(rng))
    elif kind == "mass":
        core = _away_from(rng, _uniform(rng, 25, 70), host_hu, 15.0)
        base = dict(core_hu=core, texture_sd_hu=_uniform(rng, 6, 12), texture_scale_mm=_uniform(rng, 2, 5),
                    edge_sigma_mm=_uniform(rng, 0.8, 1.5))
        if rng.random() < (0.4 if big else 0.1):
            extra.update(necrosis_hu=_uniform(rng, 5, 25), necrosis_radius=_uniform(rng, 0.3, 0.6))
        if rng.random() < 0.1:
            extra.update(_calcification(rng))
    elif kind == "lytic":
        base = dict(core_hu=_uniform(rng, 20, 80), texture_sd_hu=_uniform(rng, 5, 12), texture_scale_mm=2.0,
                    edge_sigma_mm=_uniform(rng, 0.6, 1.2))
    elif kind == "sclerotic":
        low = max(host_hu + 150.0, 300.0)
        base = dict(core_hu=_uniform(rng, min(low, 900.0), 1000.0), texture_sd_hu=_uniform(rng, 30, 80),
                    texture_scale_mm=_uniform(rng, 1.5, 3), edge_sigma_mm=_uniform(rng, 1.0, 2.0))
    else:
        raise ValueError(f"unknown lesion kind {kind!r}")
    return Appearance(kind=kind, host_hu=float(host_hu), **base, **extra)  # type: ignore[arg-type]


def _calcification(rng: np.random.Generator, central: bool = False) -> dict[str, object]:
    offset = (0.0, 0.0, 0.0) if central else tuple((rng.uniform(-0.4, 0.4, 3)).tolist())
    return dict(calcification_hu=_uniform(rng, 250, 800), calcification_radius_mm=_uniform(rng, 1.0, 3.0),
                calcification_offset=offset)


# ------------------------------------------------------------------------------- rendering


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def correlated_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma_zyx_vox: tuple[float, float, float]
                     ) -> np.ndarray:
    """(Z, Y, X) float32 Gaussian noise smoothed by a Gaussian of the given sigmas (voxels), unit
    standard deviation."""
    noise = rng.standard_normal(shape).astype(np.float32)
    sz, sy, sx = sigma_zyx_vox
    if sy > 0.3 or sx > 0.3:
        noise = np.stack([cv2.GaussianBlur(s, (0, 0), sigmaX=max(sx, 0.3), sigmaY=max(sy, 0.3),
                                           borderType=cv2.BORDER_REFLECT) for s in noise])
    if sz > 0.3 and shape[0] > 1:
        noise = gaussian_blur_z(noise, sz)
    sd = float(noise.std())
    return noise / sd if sd > 0 else noise


def gaussian_blur_z(block: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a (Z, Y, X) float32 block along z (sigma in slices; edges replicated)."""
    if sigma <= 0:
        return block
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    weights /= weights.sum()
    padded = np.pad(block, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    out = np.zeros_like(block, dtype=np.float32)
    for k, w in enumerate(weights):
        out += np.float32(w) * padded[k:k + block.shape[0]]
    return out


@dataclass
class RenderedLesion:
    """A lesion rendered on a box of the 1 mm block.

    Attributes:
        box: (z slice, y slice, x slice) of the block.
        occupancy: (Z, Y, X) float32 in [0, 1]: how much of each voxel the lesion fills (its
            whole extent, ground glass included); the true mask is ``occupancy >= 0.5``.
        replace: (Z, Y, X) float32 weight with which ``level`` replaces the background.
        level: (Z, Y, X) float32 HU of the lesion's tissue (texture included, scanner noise not).
        added: (Z, Y, X) float32 HU added to the background (ground glass), or None.
    """

    box: tuple[slice, slice, slice]
    occupancy: np.ndarray
    replace: np.ndarray
    level: np.ndarray
    added: np.ndarray | None


def lesion_box(centre_zyx: tuple[float, float, float], shape: LesionShape, margin_mm: float,
               pixel_mm: float, block_shape: tuple[int, int, int], slice_mm: float = 1.0) -> tuple[slice, slice, slice]:
    """Index box of a block (z step ``slice_mm``, pixels ``pixel_mm``) holding a lesion and
    ``margin_mm`` around it (its soft edge), clipped to the block."""
    extent_mm = shape.max_extent_mm() + margin_mm
    cz, cy, cx = centre_zyx
    num_z, height, width = block_shape
    half_z = extent_mm / slice_mm
    half_px = extent_mm / pixel_mm + 1
    return (slice(max(0, int(math.floor(cz - half_z))), min(num_z, int(math.ceil(cz + half_z)) + 1)),
            slice(max(0, int(math.floor(cy - half_px))), min(height, int(math.ceil(cy + half_px)) + 1)),
            slice(max(0, int(math.floor(cx - half_px))), min(width, int(math.ceil(cx + half_px)) + 1)))


def offsets_mm(box: tuple[slice, slice, slice], centre_zyx: tuple[float, float, float], pixel_mm: float,
               slice_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable (z, y, x) offsets in mm of a box's voxels from a lesion centre.

    Args:
        box: (z, y, x) slices of the block; ``centre_zyx``: the centre in block coordinates
            (z: slice index, y/x: continuous pixels, pixel i covering [i, i + 1)).
        pixel_mm, slice_mm: in-plane pixel size and slice step, mm.

    Returns:
        (Z, 1, 1), (1, Y, 1) and (1, 1, X) float64 arrays, mm.
    """
    zs, ys, xs = box
    cz, cy, cx = centre_zyx
    dz = (np.arange(zs.start, zs.stop, dtype=np.float64) - cz)[:, None, None] * slice_mm
    dy = (np.arange(ys.start, ys.stop, dtype=np.float64) + 0.5 - cy)[None, :, None] * pixel_mm
    dx = (np.arange(xs.start, xs.stop, dtype=np.float64) + 0.5 - cx)[None, None, :] * pixel_mm
    return dz, dy, dx


def occupancy(shape: LesionShape, centre_zyx: tuple[float, float, float], box: tuple[slice, slice, slice],
              pixel_mm: float, edge_sigma_mm: float, slice_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Occupancy (logistic of the signed distance, width ``edge_sigma_mm``) and relative depth t.

    Args:
        shape: the lesion's shape.
        centre_zyx: centre (slice index on the block's z grid, row and column in continuous
            pixel coordinates, pixel i covering [i, i + 1)).
        box: index box of the block (:func:`lesion_box`).
        pixel_mm: in-plane pixel size; ``slice_mm``: z step of the grid (1 mm).
    """
    signed, depth = shape.fields(offsets_mm(box, centre_zyx, pixel_mm, slice_mm))
    occ = 1.0 / (1.0 + np.exp(np.clip(_LOGISTIC * signed / max(edge_sigma_mm, 1e-3), -50, 50)))
    return occ.astype(np.float32), depth


def render_lesion(rng: np.random.Generator, shape: LesionShape, appearance: Appearance,
                  centre_zyx: tuple[float, float, float], box: tuple[slice, slice, slice], pixel_mm: float,
                  slice_mm: float = 1.0) -> RenderedLesion:
    """Occupancy, replacement weight, level map and additive part of a lesion on its box (module doc)."""
    occ, t = occupancy(shape, centre_zyx, box, pixel_mm, appearance.edge_sigma_mm, slice_mm)
    a = appearance
    scale = a.texture_scale_mm
    texture = correlated_noise(rng, occ.shape, (scale / slice_mm, scale / pixel_mm, scale / pixel_mm))
    level = np.full(occ.shape, a.core_hu, dtype=np.float32) + np.float32(a.texture_sd_hu) * texture
    if a.necrosis_radius > 0:
        w = _smoothstep((a.necrosis_radius + 0.1 - t) / 0.2)
        level = level + w * (np.float32(a.necrosis_hu) + 0.3 * np.float32(a.texture_sd_hu) * texture - level)
    if a.rim_width > 0:
        w = _smoothstep((t - (1.0 - a.rim_width)) / (0.5 * a.rim_width))
        level = level + w * (np.float32(a.rim_hu) - level)
    if a.calcification_radius_mm > 0:
        ax, ay, az = shape.semi_axes_mm
        offset = np.array(a.calcification_offset) * np.array([az, ay, ax])
        dz, dy, dx = offsets_mm(box, centre_zyx, pixel_mm, slice_mm)
        dist = np.sqrt((dz - offset[0]) ** 2 + (dy - offset[1]) ** 2 + (dx - offset[2]) ** 2)
        w = 1.0 / (1.0 + np.exp(np.clip(_LOGISTIC * (dist - a.calcification_radius_mm) / 0.5, -50, 50)))
        level = level + w.astype(np.float32) * (np.float32(a.calcification_hu) - level)
    replace, added = occ, None
    if a.ground_glass_hu > 0:
        solid = _smoothstep((a.solid_radius + 0.1 - t) / 0.2) if a.solid_radius > 0 else np.zeros_like(t)
        replace = (occ * solid).astype(np.float32)
        added = (occ * (1.0 - solid) * np.float32(a.ground_glass_hu)
                 * (1.0 + 0.15 * texture)).astype(np.float32)
    return RenderedLesion(box=box, occupancy=occ, replace=replace.astype(np.float32), level=level.astype(np.float32),
                          added=added)
