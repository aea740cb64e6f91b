"""Real CT backgrounds for the simulation: which volumes, their organ masks, patients and splits.

A background is a real CT volume (DICOM series folder or NIfTI file) into which
:mod:`ctlesion.data.simulate` inserts synthetic lesions, optionally with an organ label map
(TotalSegmentator v2 ``total`` labels, see :mod:`ctlesion.data.anatomy`).

**Masks beside a background** (the convention of :func:`backgrounds_in_folder` and
:func:`with_conventional_masks`): ``NAME.nii.gz`` (or a DICOM folder ``NAME/``) has its label
map in ``NAME.seg.nii.gz`` in the same folder; ``--organ-masks BACKGROUND=MASKS`` on the
command line names one explicitly.

**Patients and splits.** Every background is one patient unless it says otherwise
(:attr:`BackgroundSource.patient`), and a patient's series all go to one split, so that no
anatomy is seen in two splits. With at least 3 patients, patients without a fixed split are
assigned by a seeded shuffle (:func:`assign_splits`: 15 % validation and 20 % test, at least
one each). When every patient has a fixed split (e.g. from a background list,
:func:`read_background_list`) those are used whatever their number. Otherwise, with fewer than 3
patients, :mod:`ctlesion.data.simulate` splits synthetic patients instead (and
says so in its log).

**The default set** (:func:`default_backgrounds`), when ``../shared/data`` exists beside the
repository (otherwise the shipped sample series alone): every real CT volume there, nine
backgrounds of eight patients, split by hand so that each split holds chest and abdomen:

* train: ``sample_data/abdomen_ct_dicom`` (the same series as
  ``totalseg_example/example_ct_dicom``), masks ``example_seg_dicom.nii.gz``: upper abdomen,
  contrast;
* train: ``totalseg_example/example_ct_sm.nii.gz``, masks ``example_seg_sm.nii.gz``, and
  ``totalseg_example/example_ct.nii.gz`` (no masks; pelvis to liver, 3 mm): one patient;
* train: ``ct_backgrounds/rider_pilot_9328_lower_chest.nii.gz`` (0.8 mm, contrast);
* train: ``ct_backgrounds/totalseg_aorta_ct_cropped.nii.gz`` and
  ``ct_backgrounds/totalseg_pulmonary_ct_cropped.nii.gz`` (CT angiography crops, no bone
  lesions);
* val: ``ct_backgrounds/cmb_crc_msb-01068_chest.nii.gz`` (chest to liver dome);
* test: ``ct_backgrounds/lidc_idri_0001_chest.nii.gz`` (chest and upper abdomen; its real
  nodule's slices are not used) and ``ct_backgrounds/acrin_flt_breast_001_abdomen_pelvis.nii.gz``
  (abdomen and pelvis, no IV contrast).

``example_ct_sm`` is slices 82-111 of ``example_ct`` (identical voxels; its header, however,
places it at ``example_ct``'s first slices, so its masks cannot be carried over by geometry):
they are one patient. The two CT angiography crops have blood brighter than the HU rule's
cortex threshold (:data:`ctlesion.data.anatomy.CORTEX_HU`), so bone is not told from vessels
there and they get no bone lesions. LIDC-IDRI-0001 holds a real 25-35 mm lung nodule (its
readers' outlines, ``lidc_idri_0001_readers.xml``, at z = -125..-105 mm); series of it keep
clear of z = -135..-95 mm (LPS) so that no unannotated real lesion enters the data. Liver and
kidney lesions exist only where masks give those organs (the first two backgrounds, both in
train); the test split's liver figure comes from the real DeepLesion key slices instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctlesion.data.anatomy import COARSE_TYPES
from ctlesion.errors import CtlesionError

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The repository's own real CT background (present in a source checkout).
SAMPLE_BACKGROUND = REPO_ROOT / "sample_data" / "abdomen_ct_dicom"
#: Real CT data beside the repository (``../shared/data``), used by the default set when present.
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
#: Suffix of an organ label map beside its background (``NAME.seg.nii.gz``).
MASK_SUFFIX = ".seg.nii.gz"
ALL_TYPES: tuple[int, ...] = tuple(sorted(COARSE_TYPES))
VAL_FRACTION, TEST_FRACTION = 0.15, 0.20


@dataclass(frozen=True)
class BackgroundSource:
    """One background to read.

    Attributes:
        ct: DICOM series folder or NIfTI file.
        masks: TotalSegmentator v2 ``total`` label map of it (NIfTI, any grid: aligned by
            physical position), or None.
        patient: patient key (backgrounds of one patient share it); default: :attr:`name`.
        split: fixed split (1 train, 2 val, 3 test) or None (assigned by :func:`assign_splits`).
        lesion_types: coarse lesion types it may receive.
        avoid_z_lps_mm: (low, high) LPS z ranges no series of it may cover (real lesions).
    """

    ct: Path
    masks: Path | None = None
    patient: str = ""
    split: int | None = None
    lesion_types: tuple[int, ...] = ALL_TYPES
    avoid_z_lps_mm: tuple[tuple[float, float], ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        """File or folder name without ``.nii``/``.nii.gz``."""
        name = Path(self.ct).name
        for suffix in (".nii.gz", ".nii"):
            if name.endswith(suffix):
                return name[: -len(suffix)]
        return name

    @property
    def patient_key(self) -> str:
        return self.patient or self.name


def default_backgrounds(shared_data: Path | None = None) -> list[BackgroundSource]:
    """The default background set (module doc): every real CT of ``../shared/data`` with its
    masks and fixed split, or the shipped sample series alone when that folder is absent.

    Args:
        shared_data: the shared data folder (default :data:`SHARED_DATA_DIR`).
    """
    root = Path(shared_data) if shared_data is not None else SHARED_DATA_DIR
    if not (root / "ct_backgrounds").is_dir() or not (root / "totalseg_example").is_dir():
        return [BackgroundSource(SAMPLE_BACKGROUND)]
    seg, bg = root / "totalseg_example", root / "ct_backgrounds"
    no_bone = tuple(t for t in ALL_TYPES if t != 1)
    sample = SAMPLE_BACKGROUND if SAMPLE_BACKGROUND.is_dir() else seg / "example_ct_dicom"
    return [
        BackgroundSource(sample, seg / "example_seg_dicom.nii.gz", "totalseg_example_dicom", 1),
        BackgroundSource(seg / "example_ct_sm.nii.gz", seg / "example_seg_sm.nii.gz", "totalseg_example_ct", 1),
        BackgroundSource(seg / "example_ct.nii.gz", None, "totalseg_example_ct", 1),
        BackgroundSource(bg / "rider_pilot_9328_lower_chest.nii.gz", split=1),
        BackgroundSource(bg / "totalseg_aorta_ct_cropped.nii.gz", split=1, lesion_types=no_bone),
        BackgroundSource(bg / "totalseg_pulmonary_ct_cropped.nii.gz", split=1, lesion_types=no_bone),
        BackgroundSource(bg / "cmb_crc_msb-01068_chest.nii.gz", split=2),
        BackgroundSource(bg / "lidc_idri_0001_chest.nii.gz", split=3, avoid_z_lps_mm=((-135.0, -95.0),)),
        BackgroundSource(bg / "acrin_flt_breast_001_abdomen_pelvis.nii.gz", split=3),
    ]


def _is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


def conventional_masks(ct: Path) -> Path | None:
    """``NAME.seg.nii.gz`` beside a background ``NAME.nii.gz`` / ``NAME/``, if it exists."""
    name = BackgroundSource(Path(ct)).name
    candidate = Path(ct).parent / f"{name}{MASK_SUFFIX}"
    return candidate if candidate.is_file() else None


def backgrounds_in_folder(folder: Path) -> list[BackgroundSource]:
    """Every background in a folder: NIfTI files (not ``*.seg.nii.gz``) and sub-folders (DICOM
    series), sorted by name, each with its conventional masks (module doc).

    Raises:
        CtlesionError: if the folder does not exist or holds no background.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CtlesionError("is not a folder of CT backgrounds", folder)
    found = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.endswith(MASK_SUFFIX):
            continue
        if (path.is_file() and _is_nifti(path)) or (path.is_dir() and any(p.is_file() for p in path.rglob("*"))):
            found.append(BackgroundSource(path, conventional_masks(path)))
    if not found:
        raise CtlesionError("holds no CT background (NIfTI files or DICOM series folders)", folder)
    return found


def with_conventional_masks(paths: Iterable[Path]) -> list[BackgroundSource]:
    """Backgrounds from paths, each with its conventional masks when present."""
    return [BackgroundSource(Path(p), conventional_masks(Path(p))) for p in paths]


def with_masks(sources: Sequence[BackgroundSource], masks: Mapping[Path, Path]) -> list[BackgroundSource]:
    """The sources with explicitly paired masks (``--organ-masks BACKGROUND=MASKS``).

    Raises:
        CtlesionError: if a paired background is not among the sources.
    """
    by_path = {Path(s.ct).resolve(): i for i, s in enumerate(sources)}
    out = list(sources)
    for ct, mask in masks.items():
        index = by_path.get(Path(ct).resolve())
        if index is None:
            raise CtlesionError("organ masks are given for a background that is not simulated", ct)
        source = out[index]
        out[index] = BackgroundSource(source.ct, Path(mask), source.patient, source.split, source.lesion_types,
                                      source.avoid_z_lps_mm)
    return out


def parse_mask_pairs(pairs: Iterable[str]) -> dict[Path, Path]:
    """``BACKGROUND=MASKS`` strings -> {background: masks}.

    Raises:
        CtlesionError: for a string without ``=``, or a masks file that does not exist.
    """
    out: dict[Path, Path] = {}
    for text in pairs:
        ct, sep, mask = text.partition("=")
        if not sep or not ct or not mask:
            raise CtlesionError(f"--organ-masks wants BACKGROUND=MASKS, got {text!r}")
        if not Path(mask).is_file():
            raise CtlesionError("organ masks file not found", mask)
        out[Path(ct)] = Path(mask)
    return out


_LIST_FIELDS = {"name", "ct", "masks", "patient", "split", "lesion_types", "avoid_z_lps_mm"}


def _list_entry(entry: object, folder: Path, where: str) -> BackgroundSource:
    """One entry of a background list (:func:`read_background_list`)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("ct"), str):
        raise ValueError(f"{where}: an entry is not an object with a 'ct' path")
    unknown = set(entry) - _LIST_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}")
    split = entry.get("split")
    if split is not None and split not in (1, 2, 3):
        raise ValueError(f"{where}: split must be 1 (train), 2 (val), 3 (test) or null, got {split!r}")
    types = tuple(int(t) for t in entry.get("lesion_types") or ALL_TYPES)
    if not set(types) <= set(ALL_TYPES):
        raise ValueError(f"{where}: lesion_types must be among {list(ALL_TYPES)}, got {list(types)}")
    masks = entry.get("masks")
    return BackgroundSource(folder / entry["ct"], folder / masks if masks else None, str(entry.get("patient") or ""),
                            split, types, tuple((float(a), float(b)) for a, b in entry.get("avoid_z_lps_mm") or ()))


def read_background_list(path: Path) -> list[BackgroundSource]:
    """Backgrounds declared in a JSON file, with their patients, splits and lesion types.

    The file holds a list of objects (or an object whose ``backgrounds`` is that list, such as
    an earlier simulation's ``simulation.json``), each with ``ct`` (required) and optionally
    ``masks``, ``patient`` (default: the CT's name), ``split`` (1 train, 2 val, 3 test, null:
    assigned), ``lesion_types`` (coarse types 1-8, default all) and ``avoid_z_lps_mm``
    ([[low, high], ...] LPS z ranges to keep clear of). Relative paths are relative to the
    file's folder.

    Raises:
        CtlesionError: if the file cannot be read or an entry is malformed.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CtlesionError(f"cannot read background list: {exc}", path) from exc
    entries = data.get("backgrounds") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise CtlesionError("background list holds no entries (a JSON list, or an object with 'backgrounds')", path)
    try:
        return [_list_entry(entry, path.parent, f"entry {i + 1}") for i, entry in enumerate(entries)]
    except (ValueError, TypeError) as exc:
        raise CtlesionError(f"malformed background list: {exc}", path) from exc


def assign_splits(sources: Sequence[BackgroundSource], seed: int) -> dict[str, int] | None:
    """Split of every patient (1 train, 2 val, 3 test): the fixed ones when every patient has
    one, else None with fewer than 3 patients.

    Fixed splits are kept; the other patients are shuffled with ``seed`` and the first
    ``max(1, round(0.15 P))`` go to validation, the next ``max(1, round(0.2 P))`` to test (P:
    all patients), fewer where fixed splits already fill them.

    Raises:
        CtlesionError: if one patient has backgrounds with different fixed splits.
    """
    patients: dict[str, int | None] = {}
    for source in sources:
        key = source.patient_key
        if key in patients and source.split is not None and patients[key] not in (None, source.split):
            raise CtlesionError(f"patient {key!r} has backgrounds in two splits")
        patients[key] = source.split if source.split is not None else patients.get(key)
    if all(v is not None for v in patients.values()):
        return dict(patients)  # type: ignore[arg-type]
    if len(patients) < 3:
        return None
    total = len(patients)
    want = {2: max(1, int(round(VAL_FRACTION * total))), 3: max(1, int(round(TEST_FRACTION * total)))}
    have = {s: sum(v == s for v in patients.values()) for s in (2, 3)}
    free = sorted(k for k, v in patients.items() if v is None)
    order = [free[i] for i in np.random.default_rng(seed).permutation(len(free))]
    out = {k: v for k, v in patients.items() if v is not None}
    for key in order:
        for split in (2, 3):
            if have[split] < want[split]:
                out[key] = split
                have[split] += 1
                break
        else:
            out[key] = 1
    return out


def round_robin(num_series: int, num_backgrounds: int, rng: np.random.Generator,
                groups: Sequence[int] | None = None) -> list[tuple[int, bool]]:
    """(background index, thick) per series: backgrounds in turn (in a seeded order), each one's
    series alternating thin and thick (its first one random), so every background used twice or
    more gives both. With ``groups`` (e.g. the split of each background), the order starts with
    one background of each group, so that a few series already cover every split."""
    order = rng.permutation(num_backgrounds).tolist()
    if groups is not None:
        leaders: dict[int, int] = {}
        for index in order:
            leaders.setdefault(groups[index], index)
        first = [leaders[g] for g in sorted(leaders)]
        order = first + [i for i in order if i not in first]
    first_thick = rng.random(num_backgrounds) < 0.5
    seen = [0] * num_backgrounds
    out = []
    for i in range(num_series):
        index = order[i % num_backgrounds]
        out.append((index, bool(first_thick[index]) ^ bool(seen[index] % 2)))
        seen[index] += 1
    return out


def split_counts(splits: Mapping[str, int]) -> dict[int, int]:
    """Patients per split."""
    return {s: sum(v == s for v in splits.values()) for s in (1, 2, 3)}


def describe(sources: Sequence[BackgroundSource], splits: Mapping[str, int] | None) -> list[dict[str, object]]:
    """JSON-ready description of the background set (for ``simulation.json``)."""
    return [{"name": s.name, "ct": str(s.ct), "masks": str(s.masks) if s.masks else None,
             "patient": s.patient_key, "split": (splits or {}).get(s.patient_key),
             "lesion_types": list(s.lesion_types),
             "avoid_z_lps_mm": [list(r) for r in s.avoid_z_lps_mm]} for s in sources]

