"""Tests of the pseudo-mask disk cache (ctlesion.data.mask_cache) and `ctlesion prepare`."""

from __future__ import annotations

import csv
import dataclasses
import logging
import multiprocessing
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

import ctlesion.data.mask_cache as mask_cache
from ctlesion.cli.app import app
from ctlesion.data.dataset import DeepLesionDataset
from ctlesion.data.mask_cache import (
    PseudoMaskCache,
    default_mask_cache_dir,
    lesion_fingerprint,
    lesion_rng_seed,
    open_mask_cache_dir,
)
from ctlesion.data.masks import recist_pseudo_mask
from ctlesion.data.simulate import SAMPLE_BACKGROUND, simulate_dataset
from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion import KeySlice, read_dl_info, read_png_hu


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mask_cache_sim") / "data"
    simulate_dataset(root, backgrounds=[SAMPLE_BACKGROUND], num_series=4, image_size_px=96, seed=1)
    return root


@pytest.fixture()
def keys(sim_root: Path) -> list[KeySlice]:
    return read_dl_info(sim_root / "DL_info.csv", drop_noisy=False)


def _hu(sim_root: Path, key: KeySlice) -> np.ndarray:
    return read_png_hu(key.png_path(sim_root / "Images_png"))


def _no_grabcut(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("GrabCut ran although the masks are cached")

    monkeypatch.setattr(mask_cache, "recist_pseudo_mask", fail)


def test_first_use_computes_and_writes_then_reads_the_same_bits(
    sim_root: Path, keys: list[KeySlice], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = PseudoMaskCache(open_mask_cache_dir(sim_root, tmp_path / "cache"))
    key = keys[0]
    hu = _hu(sim_root, key)
    assert cache.lookup(key, hu.shape) is None and not cache.is_complete(key)
    first = cache.get(key, hu)
    path = tmp_path / "cache" / key.series_dir / f"{key.slice_index:03d}.npz"
    assert cache.entry_path(key) == path and path.is_file() and cache.is_complete(key)
    assert first.shape == (key.num_lesions, 96, 96) and first.dtype == bool and first.any(axis=(1, 2)).all()
    # The masks are GrabCut's, seeded per lesion from its fingerprint.
    for mask, box, recist in zip(first, key.boxes_px, key.recist_px):
        seed = lesion_rng_seed(lesion_fingerprint(key.file_name, box, recist))
        np.testing.assert_array_equal(mask, recist_pseudo_mask(hu, box, recist, rng_seed=seed))
    _no_grabcut(monkeypatch)
    np.testing.assert_array_equal(cache.get(key, hu), first)
    with np.load(path) as archive:
        assert archive["packed"].shape == (key.num_lesions, 96, 12) and archive["packed"].dtype == np.uint8
        assert int(archive["version"]) == mask_cache.CACHE_FORMAT_VERSION


def test_dataset_uses_the_default_cache_and_reads_it_back(
    sim_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(sim_root, root)
    dataset = DeepLesionDataset(root, "train", num_slices=3, image_size_px=64, mask_source="grabcut")
    assert dataset.mask_cache.cache_dir == root / "ctlesion_cache" / "pseudo_masks" == default_mask_cache_dir(root)
    first = [dataset[i][2]["masks"] for i in range(len(dataset))]
    assert len(list(default_mask_cache_dir(root).rglob("*.npz"))) == len(dataset)
    _no_grabcut(monkeypatch)
    again = DeepLesionDataset(root, "train", num_slices=3, image_size_px=64, mask_source="grabcut")
    for index, masks in enumerate(first):
        assert (again[index][2]["masks"] == masks).all()


def test_changed_annotation_is_recomputed_and_lesions_are_kept_apart(
    sim_root: Path, keys: list[KeySlice], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = PseudoMaskCache(open_mask_cache_dir(sim_root, tmp_path))
    key = max(keys, key=lambda k: k.num_lesions)
    hu = _hu(sim_root, key)
    cache.get(key, hu)
    moved = dataclasses.replace(key, boxes_px=key.boxes_px + np.array([1.0, 0.0, 1.0, 0.0]))
    assert cache.lookup(moved, hu.shape) is None and not cache.is_complete(moved)
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return recist_pseudo_mask(*args, **kwargs)

    monkeypatch.setattr(mask_cache, "recist_pseudo_mask", counting)
    cache.get(moved, hu)
    assert len(calls) == moved.num_lesions
    # Both versions now live in the file; a subset of the lesions needs no GrabCut.
    _no_grabcut(monkeypatch)
    assert cache.lookup(key, hu.shape) is not None and cache.lookup(moved, hu.shape) is not None
    first_only = dataclasses.replace(key, boxes_px=key.boxes_px[:1], recist_px=key.recist_px[:1])
    np.testing.assert_array_equal(cache.get(first_only, hu), cache.lookup(key, hu.shape)[:1])
    # Another GrabCut window is another fingerprint.
    other = PseudoMaskCache(cache.cache_dir, window_hu=(-100.0, 200.0))
    assert other.fingerprints(key) != cache.fingerprints(key) and other.lookup(key, hu.shape) is None
    # ... and so is another image shape.
    assert cache.lookup(key, (hu.shape[0], hu.shape[1] + 8)) is None


def test_corrupt_entry_is_recomputed(
    sim_root: Path, keys: list[KeySlice], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = PseudoMaskCache(open_mask_cache_dir(sim_root, tmp_path))
    key = keys[0]
    hu = _hu(sim_root, key)
    masks = cache.get(key, hu)
    cache.entry_path(key).write_bytes(b"PK\x03\x04 not a zip")
    with caplog.at_level(logging.WARNING, logger="ctlesion.data.mask_cache"):
        np.testing.assert_array_equal(cache.get(key, hu), masks)
    assert "unreadable pseudo-mask cache entry" in caplog.text and str(cache.entry_path(key)) in caplog.text
    assert cache.is_complete(key)


def test_unwritable_cache_folder(sim_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(CtlesionError, match="cannot create the pseudo-mask cache folder.*--mask-cache DIR"):
        open_mask_cache_dir(sim_root, blocker / "cache")
    with pytest.raises(CtlesionError, match="a_file"):
        DeepLesionDataset(sim_root, "train", mask_cache_dir=blocker / "cache")
    # Without masks no cache folder is needed.
    assert DeepLesionDataset(sim_root, "train", with_masks=False, mask_cache_dir=blocker / "cache").mask_cache is None


def _write_repeatedly(cache: PseudoMaskCache, key: KeySlice, masks: np.ndarray, times: int) -> None:
    for _ in range(times):
        cache.store(key, masks)


def test_concurrent_writers_leave_a_valid_file(sim_root: Path, keys: list[KeySlice], tmp_path: Path) -> None:
    cache = PseudoMaskCache(open_mask_cache_dir(sim_root, tmp_path))
    key = keys[0]
    hu = _hu(sim_root, key)
    masks = cache.compute(key, hu)
    cache.store(key, masks)  # from now on every read must find complete masks
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_repeatedly, args=(cache, key, masks, 40)) for _ in range(3)]
    for writer in writers:
        writer.start()
    reads = 0
    while any(w.is_alive() for w in writers):
        np.testing.assert_array_equal(cache.lookup(key, hu.shape), masks)
        reads += 1
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    np.testing.assert_array_equal(cache.lookup(key, hu.shape), masks)
    assert reads > 0
    assert [p.name for p in cache.entry_path(key).parent.iterdir()] == [cache.entry_path(key).name]


# --------------------------------------------------------------------------- ctlesion prepare


def test_prepare_fills_the_cache_reproducibly(sim_root: Path, keys: list[KeySlice], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    result = invoke("prepare", "--data", sim_root, "--mask-cache", cache_dir, "--workers", 2, "--mask-source", "grabcut")
    assert result.exit_code == 0, result.output
    assert f"{len(keys)} computed, 0 already cached, 0 failed" in result.output
    # Masks made in the spawned workers (one OpenCV thread each) equal masks made here,
    # after other uses of OpenCV's RNG.
    cv2.randu(np.zeros((8, 8)), 0, 1)
    fresh = PseudoMaskCache(cache_dir)
    for key in keys:
        hu = _hu(sim_root, key)
        np.testing.assert_array_equal(fresh.lookup(key, hu.shape), fresh.compute(key, hu))
    again = invoke("prepare", "--data", sim_root, "--cache", cache_dir, "--workers", 0, "--split", "train",
                   "--mask-source", "grabcut")
    assert again.exit_code == 0, again.output
    num_train = sum(k.split == 1 for k in keys)
    assert f"0 computed, {num_train} already cached, 0 failed" in again.output


def test_prepare_counts_missing_pngs(sim_root: Path, keys: list[KeySlice], tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(sim_root, root)
    keys[0].png_path(root / "Images_png").unlink()
    result = invoke("prepare", "--data", root, "--workers", 0, "--mask-source", "grabcut")
    assert result.exit_code == 0, result.output
    assert f"{len(keys) - 1} computed, 0 already cached, 1 failed" in result.output
    assert (root / "ctlesion_cache" / "pseudo_masks").is_dir()


def test_prepare_bad_input(sim_root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("prepare", "--data", empty)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "Images_png" in result.output and str(empty) in result.output
    # A DL_info.csv without a required column: the message names the file and the column.
    root = tmp_path / "data"
    shutil.copytree(sim_root / "Images_png", root / "Images_png")
    with open(sim_root / "DL_info.csv", newline="") as src, open(root / "DL_info.csv", "w", newline="") as dst:
        rows = list(csv.DictReader(src))
        writer = csv.DictWriter(dst, [c for c in rows[0] if c != "Bounding_boxes"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    result = invoke("prepare", "--data", root)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "Bounding_boxes" in result.output and "DL_info.csv" in result.output
    # Every PNG missing: nothing could be prepared.
    root = tmp_path / "no_pngs"
    (root / "Images_png").mkdir(parents=True)
    shutil.copy(sim_root / "DL_info.csv", root / "DL_info.csv")
    result = invoke("prepare", "--data", root, "--workers", 0)
    assert result.exit_code == 1 and "none of the" in result.output.splitlines()[-1]
    assert invoke("prepare", "--data", sim_root, "--split", "training").exit_code == 2
