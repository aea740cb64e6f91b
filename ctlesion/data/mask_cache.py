"""A disk cache of GrabCut pseudo-masks, one small file per key slice (SPEC section 7).

GrabCut (:func:`ctlesion.data.masks.recist_pseudo_mask`) costs ~10 ms per lesion, too much to
repeat every epoch, and a per-process memory cache grows with the dataset in every DataLoader
worker. Masks are therefore computed once and kept on disk, by ``ctlesion prepare --data DIR``
(:func:`prepare_mask_cache`, a process pool) or on first use by the dataset.

Location: ``<data_dir>/ctlesion_cache/pseudo_masks`` by default (:func:`default_mask_cache_dir`;
shared by every run on that dataset), or any folder the caller names; a folder that cannot be
created or written raises :class:`~ctlesion.errors.CtlesionError` (pass another one).

Layout and format (version :data:`CACHE_FORMAT_VERSION`): ``<cache>/<series_dir>/<slice>.npz``
(mirroring ``Images_png``), an ``np.savez_compressed`` archive (a few hundred bytes) with

* ``version``: () int64, the format version;
* ``fingerprints``: (K,) str, one per cached lesion (:func:`lesion_fingerprint`);
* ``shape_yx``: (2,) int64, the key slice's shape;
* ``packed``: (K, Y, ceil(X / 8)) uint8, the masks bit-packed along x (``np.packbits``).

A lesion's fingerprint hashes everything its mask depends on: the format version, the key
slice's file name, its box and RECIST coordinates (float64 bytes), the GrabCut HU window and
iteration count. A lesion whose fingerprint is not in the file (new, or its annotation
changed), or a file that is unreadable, of another version or of another image shape, is
recomputed and the file rewritten; lesions already in the file are kept, so datasets with and
without the Possibly_noisy lesions share one file. Files are written atomically (temporary
file + ``os.replace``), so DataLoader workers and DDP processes may write the same entry at
once: readers see the old or the new file, never a partial one, and all writers write the
same masks.

Reproducible: OpenCV's RNG is seeded per lesion from its fingerprint (:func:`lesion_rng_seed`)
right before GrabCut, so a mask does not depend on the order or the process it was computed
in, nor on OpenCV's thread count (another OpenCV build may still differ in the last bits).

True masks (mask source ``auto``, the default): a dataset that knows its lesions' true
outlines (a simulated one) keeps them beside ``Images_png`` as
``<data_dir>/masks/<series_dir>/<slice:03d>.npz`` (:func:`true_masks_path`; the same names as
the key slice's PNG), an ``.npz`` archive holding ``masks``: (N, Y, X) bool (integer 0/1 is
accepted), one mask per ``DL_info.csv`` row of that key slice, in the order the table lists
them (Possibly_noisy rows included; rows ``read_dl_info`` skips for an empty required field
break the count), at the key slice's PNG shape. Where that file exists it is used instead of
GrabCut (:func:`read_true_masks`), and ``prepare`` skips the key slice; elsewhere, and with
mask source ``grabcut``, the pseudo-masks above are used. A file of the wrong shape or count,
an empty mask or an unreadable file raises :class:`~ctlesion.errors.CtlesionError` naming it
(the training dataset then skips that key slice with a warning).
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ctlesion.atomic import atomic_write_bytes
from ctlesion.choices import MASK_SOURCES, PREPARE_SPLITS
from ctlesion.data.masks import DEFAULT_WINDOW_HU, GRABCUT_ITERATIONS, recist_pseudo_mask
from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion import KeySlice, read_dl_info, read_png_hu

logger = logging.getLogger(__name__)

#: Folder of a dataset's true lesion masks, beside ``Images_png`` (module doc).
TRUE_MASKS_DIRNAME = "masks"

#: Version of the cache file format and of the mask recipe; bump it to invalidate old entries.
CACHE_FORMAT_VERSION = 1
_MAX_FAILURES_LOGGED = 10


def default_mask_cache_dir(data_dir: Path) -> Path:
    """The default cache folder of a DeepLesion-layout dataset: ``<data_dir>/ctlesion_cache/pseudo_masks``."""
    return Path(data_dir) / "ctlesion_cache" / "pseudo_masks"


def open_mask_cache_dir(data_dir: Path, cache_dir: Path | None = None) -> Path:
    """Create (if needed) and check the pseudo-mask cache folder.

    Args:
        data_dir: the dataset folder (for the default location).
        cache_dir: the folder to use; None for :func:`default_mask_cache_dir`.

    Returns:
        The folder, which exists and is writable.

    Raises:
        CtlesionError: if it cannot be created or written (e.g. a read-only dataset folder:
            pass a cache folder elsewhere).
    """
    folder = default_mask_cache_dir(data_dir) if cache_dir is None else Path(cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CtlesionError(f"cannot create the pseudo-mask cache folder ({exc.strerror}); "
                            "name a writable one with --mask-cache DIR", folder) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CtlesionError("pseudo-mask cache folder is not writable; name a writable one with --mask-cache DIR",
                            folder)
    return folder


def lesion_fingerprint(
    file_name: str,
    box_px: np.ndarray,
    recist_px: np.ndarray,
    window_hu: tuple[float, float] = DEFAULT_WINDOW_HU,
    iterations: int = GRABCUT_ITERATIONS,
) -> str:
    """Hex digest (32 characters, BLAKE2b) of everything a lesion's pseudo-mask depends on.

    Hashes the cache format version, the key slice's file name, the box and RECIST
    coordinates as little-endian float64, the GrabCut HU window and the iteration count.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"ctlesion-pseudo-mask v{CACHE_FORMAT_VERSION}|{file_name}|".encode())
    digest.update(np.asarray(box_px, dtype="<f8").reshape(4).tobytes())
    digest.update(np.asarray(recist_px, dtype="<f8").reshape(8).tobytes())
    digest.update(np.asarray([*window_hu, iterations], dtype="<f8").tobytes())
    return digest.hexdigest()


def lesion_rng_seed(fingerprint: str) -> int:
    """OpenCV RNG seed of a lesion's GrabCut: the first 31 bits of its fingerprint."""
    return int(fingerprint[:8], 16) & 0x7FFFFFFF


def true_masks_path(data_dir: Path, key: KeySlice) -> Path:
    """``<data_dir>/masks/<series_dir>/<slice:03d>.npz``: where a key slice's true masks are (module doc)."""
    return Path(data_dir) / TRUE_MASKS_DIRNAME / key.series_dir / f"{key.slice_index:03d}.npz"


def read_true_masks(path: Path, shape_yx: tuple[int, int], num_rows: int,
                    rows: np.ndarray | None = None) -> np.ndarray | None:
    """A key slice's true lesion masks from its ``masks/`` file (module doc), or None when there is none.

    Args:
        path: the file (:func:`true_masks_path`).
        shape_yx: the key slice's (Y, X).
        num_rows: the number of ``DL_info.csv`` rows of the key slice (Possibly_noisy included).
        rows: indices of the rows wanted (in that order); None for all.

    Returns:
        (M, Y, X) bool masks of the wanted rows, or None when the file does not exist.

    Raises:
        CtlesionError: an unreadable file, no ``masks`` array, a shape other than
            (num_rows, Y, X), a non-integer dtype, or an empty mask among the wanted rows.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            masks = archive["masks"]
    except FileNotFoundError:
        return None
    except KeyError:
        raise CtlesionError("true-mask file holds no 'masks' array", path) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CtlesionError(f"unreadable true-mask file ({exc})", path) from None
    expected = (int(num_rows), *(int(v) for v in shape_yx))
    if masks.shape != expected or not (masks.dtype == bool or np.issubdtype(masks.dtype, np.integer)):
        raise CtlesionError(f"true-mask file holds {masks.dtype} {masks.shape}, expected bool {expected} "
                            "(one mask per DL_info row of the key slice)", path)
    masks = masks != 0
    if rows is not None:
        masks = masks[np.asarray(rows, dtype=np.int64)]
    empty = [int(n) for n in np.flatnonzero(~masks.any(axis=(1, 2)))]
    if empty:
        raise CtlesionError(f"true-mask file has an empty mask for lesion(s) {empty}", path)
    return masks


@dataclass(frozen=True)
class _Entry:
    """The contents of one cache file."""

    fingerprints: list[str]
    shape_yx: tuple[int, int]
    packed: np.ndarray | None  # None when only the fingerprints were read


def _read_entry(path: Path, with_masks: bool = True) -> _Entry | None:
    """Read a cache file; None when it is absent, unreadable or of another format version."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if int(archive["version"]) != CACHE_FORMAT_VERSION:
                return None
            fingerprints = [str(f) for f in archive["fingerprints"]]
            shape = tuple(int(v) for v in archive["shape_yx"])
            packed = archive["packed"] if with_masks else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("%s: unreadable pseudo-mask cache entry (%s); recomputing it", path, exc)
        return None
    if packed is not None and (packed.ndim != 3 or packed.shape[0] != len(fingerprints)):
        logger.warning("%s: malformed pseudo-mask cache entry; recomputing it", path)
        return None
    return _Entry(fingerprints, shape, packed)


def _entry_bytes(fingerprints: list[str], shape_yx: tuple[int, int], packed: np.ndarray) -> bytes:
    """Serialise an entry as an ``.npz`` archive."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, version=np.array(CACHE_FORMAT_VERSION, dtype=np.int64),
                        fingerprints=np.array(fingerprints, dtype="<U32").reshape(-1),
                        shape_yx=np.array(shape_yx, dtype=np.int64), packed=packed)
    return buffer.getvalue()


@dataclass(frozen=True)
class PseudoMaskCache:
    """GrabCut pseudo-masks of key slices, computed once and kept in ``cache_dir`` (module doc).

    Attributes:
        cache_dir: an existing, writable folder (:func:`open_mask_cache_dir`).
        window_hu: GrabCut's HU window (SPEC section 7: DeepLesion's display window).
        iterations: GrabCut iterations.
    """

    cache_dir: Path
    window_hu: tuple[float, float] = DEFAULT_WINDOW_HU
    iterations: int = GRABCUT_ITERATIONS

    def entry_path(self, key: KeySlice) -> Path:
        """``<cache_dir>/<series_dir>/<slice:03d>.npz`` of a key slice."""
        return Path(self.cache_dir) / key.series_dir / f"{key.slice_index:03d}.npz"

    def fingerprints(self, key: KeySlice) -> list[str]:
        """The :func:`lesion_fingerprint` of each lesion of a key slice, in order."""
        return [lesion_fingerprint(key.file_name, box, recist, self.window_hu, self.iterations)
                for box, recist in zip(key.boxes_px, key.recist_px)]

    def is_complete(self, key: KeySlice) -> bool:
        """Whether every lesion of the key slice is cached (reads only the fingerprints)."""
        entry = _read_entry(self.entry_path(key), with_masks=False)
        return entry is not None and set(self.fingerprints(key)) <= set(entry.fingerprints)

    def lookup(self, key: KeySlice, shape_yx: tuple[int, int]) -> np.ndarray | None:
        """The cached (M, Y, X) bool masks of a key slice, or None unless all M are cached."""
        entry = _read_entry(self.entry_path(key))
        if entry is None or entry.shape_yx != tuple(shape_yx):
            return None
        position = {fp: i for i, fp in enumerate(entry.fingerprints)}
        wanted = self.fingerprints(key)
        if not all(fp in position for fp in wanted):
            return None
        packed = entry.packed[[position[fp] for fp in wanted]]
        return np.unpackbits(packed, axis=-1, count=shape_yx[1]).astype(bool)

    def compute(self, key: KeySlice, key_slice_hu: np.ndarray) -> np.ndarray:
        """GrabCut the lesions of a key slice (no cache): (M, Y, X) bool."""
        return np.stack([
            recist_pseudo_mask(key_slice_hu, box, recist, window_hu=self.window_hu, iterations=self.iterations,
                               rng_seed=lesion_rng_seed(fp))
            for box, recist, fp in zip(key.boxes_px, key.recist_px, self.fingerprints(key))
        ]).reshape(-1, *key_slice_hu.shape)

    def store(self, key: KeySlice, masks: np.ndarray) -> None:
        """Write a key slice's (M, Y, X) masks atomically, keeping other lesions already in the file.

        Raises:
            OSError: if the file cannot be written.
        """
        masks = np.asarray(masks, dtype=bool)
        shape_yx = tuple(int(v) for v in masks.shape[1:])
        fingerprints = self.fingerprints(key)
        packed = np.packbits(masks, axis=-1)
        old = _read_entry(self.entry_path(key))
        if old is not None and old.shape_yx == shape_yx:
            new = set(fingerprints)
            others = [i for i, fp in enumerate(old.fingerprints) if fp not in new]
            fingerprints = fingerprints + [old.fingerprints[i] for i in others]
            packed = np.concatenate([packed, old.packed[others]])
        atomic_write_bytes(self.entry_path(key), _entry_bytes(fingerprints, shape_yx, packed))

    def get(self, key: KeySlice, key_slice_hu: np.ndarray) -> np.ndarray:
        """The (M, Y, X) bool pseudo-masks of a key slice: from the cache, else computed and stored.

        A failed write is logged (warning) and the computed masks are returned anyway.

        Args:
            key: the key slice (its M lesions in order).
            key_slice_hu: (Y, X) the key slice in HU.
        """
        shape_yx = tuple(np.shape(key_slice_hu))
        masks = self.lookup(key, shape_yx)
        if masks is not None:
            return masks
        masks = self.compute(key, key_slice_hu)
        try:
            self.store(key, masks)
        except OSError as exc:
            logger.warning("%s: cannot write pseudo-mask cache entry (%s)", self.entry_path(key), exc)
        return masks


@dataclass(frozen=True)
class PrepareReport:
    """Outcome of :func:`prepare_mask_cache`: the cache folder and key-slice counts."""

    cache_dir: Path
    computed: int
    cached: int
    failed: int
    true_masks: int = 0  # key slices skipped because the dataset holds their true masks

    @property
    def total(self) -> int:
        """Key slices considered."""
        return self.computed + self.cached + self.failed + self.true_masks


def _prepare_one(task: tuple[PseudoMaskCache, Path, KeySlice, bool]) -> tuple[str, str]:
    """Fill one key slice's entry: ("true_masks" | "cached" | "computed" | "failed", message)."""
    cache, images_dir, key, use_true = task
    if use_true and true_masks_path(images_dir.parent, key).is_file():
        return "true_masks", ""
    if cache.is_complete(key):
        return "cached", ""
    try:
        cache.store(key, cache.compute(key, read_png_hu(key.png_path(images_dir))))
    except CtlesionError as exc:
        return "failed", str(exc)
    except OSError as exc:
        return "failed", f"{cache.entry_path(key)}: cannot write pseudo-mask cache entry ({exc})"
    return "computed", ""


def _init_worker() -> None:
    """Pool initializer: one OpenCV thread per worker process (the pool provides the parallelism)."""
    cv2.setNumThreads(1)


def _results(tasks: list, workers: int) -> Iterator[tuple[str, str]]:
    """Run :func:`_prepare_one` over the tasks, in this process or a spawn-started pool."""
    if workers == 0:
        yield from map(_prepare_one, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        yield from pool.imap_unordered(_prepare_one, tasks, chunksize=4)


def prepare_mask_cache(
    data_dir: Path,
    *,
    cache_dir: Path | None = None,
    split: str = "all",
    workers: int | None = None,
    progress: bool = True,
    mask_source: str = "auto",
) -> PrepareReport:
    """Compute and cache the pseudo-masks of every key slice of a DeepLesion-layout dataset.

    All lesions are prepared, Possibly_noisy ones included, so the cache serves training with
    and without them. Entries already complete are counted as cached (only their
    fingerprints are read). A key slice whose PNG is missing or corrupt counts as failed
    (the first few are logged as warnings). With ``mask_source="auto"``, key slices whose
    true masks the dataset holds (``masks/``, module doc) are skipped and counted apart.

    Args:
        data_dir: folder holding ``DL_info.csv`` and ``Images_png/``.
        cache_dir: cache folder; None for ``<data_dir>/ctlesion_cache/pseudo_masks``.
        split: ``"all"``, ``"train"``, ``"val"`` or ``"test"``.
        workers: worker processes (spawn-started); 0 works in this process; None uses every CPU.
        progress: show a rich progress bar on stderr.
        mask_source: ``"auto"`` (skip key slices with true masks) or ``"grabcut"`` (prepare all).

    Returns:
        The :class:`PrepareReport` (counts of computed, already cached, failed and true-mask key slices).

    Raises:
        CtlesionError: if the folder lacks ``DL_info.csv`` or ``Images_png/``, the table is
            malformed, the split or mask source is unknown, the cache folder is not writable,
            or no key slice at all could be prepared.
    """
    from ctlesion.progress import make_progress  # noqa: PLC0415 (rich only when preparing)

    data_dir = Path(data_dir)
    if split not in PREPARE_SPLITS:
        raise CtlesionError(f"unknown split {split!r}; expected one of {', '.join(PREPARE_SPLITS)}")
    if mask_source not in MASK_SOURCES:
        raise CtlesionError(f"unknown mask source {mask_source!r}; expected one of {', '.join(MASK_SOURCES)}")
    images_dir = data_dir / "Images_png"
    if not images_dir.is_dir():
        raise CtlesionError("not a DeepLesion folder: Images_png/ is missing", data_dir)
    keys = read_dl_info(data_dir / "DL_info.csv", split=None if split == "all" else split, drop_noisy=False)
    cache = PseudoMaskCache(open_mask_cache_dir(data_dir, cache_dir))
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    counts = {"computed": 0, "cached": 0, "failed": 0, "true_masks": 0}
    failures: list[str] = []
    tasks = [(cache, images_dir, key, mask_source == "auto") for key in keys]
    with make_progress(enabled=progress) as bar:
        task = bar.add_task("pseudo-masks", total=len(tasks), info="")
        for status, message in _results(tasks, min(workers, len(tasks))):
            counts[status] += 1
            if message:
                failures.append(message)
                if len(failures) <= _MAX_FAILURES_LOGGED:
                    logger.warning("%s", message)
            bar.update(task, advance=1, info=", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    if len(failures) > _MAX_FAILURES_LOGGED:
        logger.warning("%d key slices failed in all (first %d shown)", len(failures), _MAX_FAILURES_LOGGED)
    if counts["true_masks"]:
        logger.info("%d key slice(s) have true masks in %s: no GrabCut for them", counts["true_masks"],
                    data_dir / TRUE_MASKS_DIRNAME)
    if keys and counts["failed"] == len(keys):
        raise CtlesionError(f"none of the {len(keys)} key slices could be prepared (first: {failures[0]})", data_dir)
    if not keys:
        logger.warning("%s: no key slice in split %r", data_dir / "DL_info.csv", split)
    return PrepareReport(cache_dir=cache.cache_dir, **counts)
