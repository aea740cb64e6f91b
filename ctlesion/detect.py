"""`detect`: from a CT study on disk to lesions, label maps, overlays and results.json.

Data flow (SPEC section 2): path -> :class:`Volume` -> thin volumes resampled to 2 mm -> one
window of D slices per slice -> detector (batched) -> per-slice detections in source pixels
-> 3D lesions (linked across adjacent slices) -> writers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ctlesion import __version__
from ctlesion.atomic import staged_outputs
from ctlesion.body import body_box_px, body_parts_mask, centred_inside
from ctlesion.io import PendingVolume
from ctlesion.io.nifti import write_nifti
from ctlesion.io.studies import PlannedStudy
from ctlesion.networks.detector import AlignShiftDetector
from ctlesion.postprocess import Lesion, SliceDetections, link_detections
from ctlesion.predict import NO_AUGMENTATION, TestTimeAugmentation, WindowDetections, predict_windows
from ctlesion.preprocess import (
    body_crop,
    network_interval_mm,
    network_window,
    num_resampled_slices,
    resample_to_reference,
)
from ctlesion.report.dicom_seg import (
    completed_sources,
    lesion_segmentation,
    seg_source_problem,
    write_dicom_file,
)
from ctlesion.report.dicom_sr import lesion_measurement_report
from ctlesion.report.overlays import write_overlay
from ctlesion.report.results import label_map, study_record, write_results_json
from ctlesion.report.summary_sheet import write_summary_sheet
from ctlesion.store import SHIPPED_DEMO_WEIGHTS
from ctlesion.volume import Volume

log = logging.getLogger(__name__)
DEFAULT_WEIGHTS = SHIPPED_DEMO_WEIGHTS  # the shipped demo model (models/ of the source checkout)
#: Margin around the body's bounding box of ``detect``'s network input, network pixels: the
#: smallest that kept the shipped model's lesions within 1 px / 0.01 score (README "Speed").
BODY_CROP_MARGIN_PX = 64
#: ``detect --fast``: the network runs on every second window (README "Speed": measured cost).
FAST_KEY_SLICE_STRIDE = 2


@dataclass(frozen=True)
class DetectOptions:
    """Inference and output options (which series to read is planned before:
    :func:`ctlesion.io.studies.plan_studies`).

    Attributes:
        score_threshold: minimum detection score kept for linking into lesions.
        batch_size: windows per forward pass.
        precision: "fp32" or "bf16" (autocast; :func:`ctlesion.predict.predict_windows`).
        skip_no_body: do not run the network on windows whose key slice holds no body
            (:func:`ctlesion.body.body_box_px`): they get no detections.
        drop_outside_body: drop the detections whose box centre lies outside the body and its
            large parts on their slice (:func:`ctlesion.body.body_parts_mask`: in the air, on the
            table), before they are linked into lesions.
        body_crop_margin_px: run the network on each batch's body bounding box plus this margin
            (network pixels; :func:`ctlesion.preprocess.body_crop`) instead of the whole square;
            None = the whole square.
        key_slice_stride: run the network on every this-many-th slice of the network volume only
            (``detect --fast``: 2); the lesions are linked across the slices between, which take the
            nearest computed slice's mask (:func:`ctlesion.postprocess.link_detections` with a
            detector interval ``stride`` times the network's). Approximate: README "Speed" gives
            the measured sensitivity cost.
        augmentation: test-time augmentation (``detect --tta``, ``--tta-zoom``): each batch runs
            again left-right flipped and/or zoomed in, the views' detections fused
            (:class:`ctlesion.predict.TestTimeAugmentation`, which says at what network time).
        dicom_seg: also write each DICOM study's lesions as a DICOM SEG
            (:mod:`ctlesion.report.dicom_seg`).
        dicom_sr: also write the SEG and a DICOM SR measurement report (TID 1500) referring
            to it (:mod:`ctlesion.report.dicom_sr`).
    """

    score_threshold: float = 0.5
    batch_size: int = 4
    precision: str = "fp32"
    skip_no_body: bool = True
    drop_outside_body: bool = True
    body_crop_margin_px: int | None = BODY_CROP_MARGIN_PX
    key_slice_stride: int = 1
    augmentation: TestTimeAugmentation = NO_AUGMENTATION
    dicom_seg: bool = False
    dicom_sr: bool = False


def _union(boxes: Sequence[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The bounding box of (y0, x0, y1, x1) boxes."""
    y0, x0, y1, x1 = np.array(boxes).T
    return int(y0.min()), int(x0.min()), int(y1.max()), int(x1.max())


def _slice_detections(found: WindowDetections, z: int, slice_hu: np.ndarray,
                      drop_outside_body: bool) -> SliceDetections:
    """A window's detections as the slice's, without those centred outside the body when asked."""
    keep = (centred_inside(found.boxes_px, body_parts_mask(slice_hu)) if drop_outside_body and len(found.scores)
            else np.ones(len(found.scores), dtype=bool))
    return SliceDetections(slice_index=z, boxes_px=found.boxes_px[keep].astype(np.float32),
                           scores=found.scores[keep].astype(np.float32), masks=found.masks[keep])


def _no_detections(z: int, shape_yx: tuple[int, int]) -> SliceDetections:
    return SliceDetections(slice_index=z, boxes_px=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                           masks=np.zeros((0, *shape_yx), np.float32))


@torch.no_grad()
def detect_slices(model: AlignShiftDetector, volume: Volume, *, options: DetectOptions = DetectOptions(),
                  device: torch.device | str = "cpu", on_batch=None) -> list[SliceDetections]:
    """Run the detector on every slice of a volume already at network spacing.

    Windows whose key slice holds no body are skipped (``options.skip_no_body``), and each
    batch of windows is cut to the union of its key slices' body boxes plus a margin
    (``options.body_crop_margin_px``; README "Speed" gives the measured speed and change).
    Detections centred outside the body are dropped (``options.drop_outside_body``).

    Args:
        model: detector in eval mode.
        volume: volume whose slice interval is what the network sees (see
            :func:`ctlesion.preprocess.resample_to_reference`).
        options: score threshold, batch size, precision and the work-saving options.
        device: where the model runs.
        on_batch: optional callback ``on_batch(num_windows_done)`` for progress.

    Returns:
        One :class:`SliceDetections` per key slice (slices 0, stride, 2 stride ... of ``volume``
        with ``options.key_slice_stride``; every slice by default; ``slice_index`` = slice of
        ``volume``), boxes and masks in the volume's (Y, X) pixels.
    """
    config = model.config
    num = volume.shape_zyx[0]
    interval = torch.tensor(network_interval_mm(volume.slice_interval_mm, config.ref_interval_mm,
                                                config.resample_thick), dtype=torch.float32)
    key_slices = range(0, num, options.key_slice_stride)
    need_boxes = options.skip_no_body or options.body_crop_margin_px is not None
    body_boxes = {z: body_box_px(volume.hu[z]) if need_boxes else None for z in key_slices}
    run = [z for z in key_slices if body_boxes[z] is not None or not options.skip_no_body]
    if on_batch is not None and len(run) < len(key_slices):
        on_batch(len(key_slices) - len(run))
    found_by_slice: dict[int, SliceDetections] = {}
    for start in range(0, len(run), options.batch_size):
        indices = run[start:start + options.batch_size]
        stacks, transforms = zip(*(network_window(volume, z, config) for z in indices))
        transform = transforms[0]  # the same for every slice of a volume
        present = [body_boxes[z] for z in indices if body_boxes[z] is not None]
        if options.body_crop_margin_px is not None and present:
            transform = body_crop(transform, _union(present), options.body_crop_margin_px)
        images = torch.from_numpy(np.ascontiguousarray(transform.crop(np.stack(stacks)[:, None])))
        found = predict_windows(model, images, interval.expand(len(indices)), [transform] * len(indices),
                                device=device, score_min=options.score_threshold, precision=options.precision,
                                augmentation=options.augmentation)
        found_by_slice.update({z: _slice_detections(d, z, volume.hu[z], options.drop_outside_body)
                               for d, z in zip(found, indices)})
        if on_batch is not None:
            on_batch(len(indices))
    return [found_by_slice.get(z) or _no_detections(z, volume.shape_zyx[1:]) for z in key_slices]


def detect_volume(model: AlignShiftDetector, volume: Volume, *, options: DetectOptions = DetectOptions(),
                  device: torch.device | str = "cpu", on_batch=None) -> tuple[list[Lesion], float]:
    """Lesions of one volume, in the input volume's geometry.

    Returns:
        The lesions (descending score) and the slice interval the network saw (mm).
    """
    network_volume = resample_to_reference(volume, model.config.ref_interval_mm)
    stride = options.key_slice_stride
    per_slice = [replace(found, slice_index=found.slice_index // stride)  # detector slices stride apart
                 for found in detect_slices(model, network_volume, options=options, device=device, on_batch=on_batch)]
    lesions = link_detections(
        per_slice, detector_interval_mm=network_volume.slice_interval_mm * stride,
        input_interval_mm=volume.slice_interval_mm, spacing_yx_mm=volume.spacing_zyx_mm[1:],
        num_input_slices=volume.shape_zyx[0], num_detector_slices=len(per_slice),
        score_threshold=options.score_threshold,
    )
    return lesions, network_volume.slice_interval_mm


def _write_dicom_objects(stage: Path, name: str, item: PendingVolume, volume: Volume, labels: np.ndarray,
                         lesions: list[Lesion], model_info: dict, *, with_sr: bool) -> tuple[str | None, str | None]:
    """Write ``<name>_lesions.seg.dcm`` (and with ``with_sr`` ``<name>_lesions.sr.dcm``) into the
    staging folder; their names, or None (logged) when there is no lesion or the input cannot
    carry them (not DICOM, UIDs missing)."""
    if not lesions:
        log.info("%s: no lesions found, so no DICOM SEG or SR", item.path)
        return None, None
    sources = item.source_images()
    problem = seg_source_problem(sources)
    if problem:
        log.warning("%s: no DICOM SEG or SR written: %s", item.path, problem)
        return None, None
    model_name = Path(model_info.get("weights", "")).name
    per_slice = item.source_slices(volume)
    sources = completed_sources(sources, volume)  # once, for the SEG and the SR
    try:  # highdicom may still refuse unusual source headers
        segmentation = lesion_segmentation(
            volume, labels, lesions, sources, version=__version__, model_name=model_name,
            source_positions_lps_mm=[None if s is None else s.position_lps_mm for s in per_slice])
        key_images = [None if (key := per_slice[lesion.key_slice]) is None else (key.header, key.frame_number)
                      for lesion in lesions]
        report = (lesion_measurement_report(segmentation, lesions, sources, version=__version__,
                                            model_name=model_name, key_slice_images=key_images)
                  if with_sr else None)
    except (ValueError, AttributeError, KeyError) as error:
        log.warning("%s: no DICOM SEG or SR written: highdicom refused the source headers (%s)", item.path, error)
        return None, None
    seg_name, sr_name = dicom_output_names(name)
    write_dicom_file(stage / seg_name, segmentation)
    if report is None:
        return seg_name, None
    write_dicom_file(stage / sr_name, report)
    return seg_name, sr_name


def overlay_name(name: str, label: int) -> str:
    """File name of lesion ``label``'s overlay picture of study ``name``: ``<name>_lesionNN.png``."""
    return f"{name}_lesion{label:02d}.png"


def dicom_output_names(name: str) -> tuple[str, str]:
    """File names of study ``name``'s DICOM SEG and SR: ``<name>_lesions.seg.dcm``, ``.sr.dcm``."""
    return f"{name}_lesions.seg.dcm", f"{name}_lesions.sr.dcm"


def remove_stale_outputs(out_dir: Path, name: str, record: dict) -> list[Path]:
    """Delete the per-lesion files an earlier ``detect`` of study ``name`` left in ``out_dir``.

    A run into a folder that holds an earlier run's outputs replaces the files it writes, but an
    earlier run with more lesions (or with ``--dicom-seg`` / ``--dicom-sr``) also left overlays
    :func:`overlay_name` past this run's last label (a run numbers them 1..N) and a SEG / SR
    (:func:`dicom_output_names`) that the new results.json does not list. Only those names are
    touched; called after the new outputs are in place, so a failed run leaves the earlier one whole.

    Args:
        out_dir: the folder of results.json.
        name: the study's output name (the prefix of its files).
        record: the study's entry of the new results.json (:func:`study_record`).

    Returns:
        The paths deleted.
    """
    out_dir = Path(out_dir)
    stale = [out_dir / file_name for file_name, written in zip(dicom_output_names(name),
                                                               (record["dicom_seg"], record["dicom_sr"]))
             if not written and (out_dir / file_name).is_file()]
    label = len(record["lesions"]) + 1
    while (out_dir / overlay_name(name, label)).is_file():
        stale.append(out_dir / overlay_name(name, label))
        label += 1
    for path in stale:
        path.unlink()
        log.info("removed %s (an earlier run's output)", path)
    return stale


def run_detect(studies: Sequence[PlannedStudy], results_path: Path, model: AlignShiftDetector, model_info: dict, *,
               options: DetectOptions = DetectOptions(), device: torch.device | str = "cpu",
               progress=None) -> dict:
    """Detect lesions in each planned study and write results.json, label maps and overlays beside it.

    Volumes are decoded one at a time (one volume in memory, however many series
    ``--all-series`` finds). All output files are staged in a temporary folder and moved into
    place only when every study succeeded.

    Args:
        studies: from :func:`ctlesion.io.studies.plan_studies` (headers checked).
        results_path: the results.json to write; label maps ``<study>_lesions.nii.gz``,
            overlays ``<study>_lesionNN.png``, a summary sheet ``<study>_lesions.png`` (when
            the study has lesions) and (``options.dicom_seg`` / ``dicom_sr``) DICOM
            SEGs ``<study>_lesions.seg.dcm`` and SRs ``<study>_lesions.sr.dcm`` go into the same
            folder. Overlays, SEGs and SRs of an earlier run of the same study in that folder
            that this run does not write are deleted afterwards (:func:`remove_stale_outputs`).
        model: detector in eval mode; model_info: its checkpoint sidecar dict.
        options: inference options; device: torch device.
        progress: optional rich Progress to report windows on.

    Returns:
        The results dict that was written.

    Raises:
        CtlesionError: unreadable input (nothing is written then).
        OSError: the output folder cannot be written (the error names it).
    """
    out_dir = Path(results_path).parent
    records = []
    with staged_outputs(out_dir) as stage:
        for study in studies:
            name, item = study.name, study.pending
            volume = item.read()
            task = None
            if progress is not None:
                num_windows = -(-num_resampled_slices(volume, model.config.ref_interval_mm) // options.key_slice_stride)
                task = progress.add_task(f"detect {name}", total=num_windows, info="")
            lesions, network_interval = detect_volume(
                model, volume, options=options, device=device,
                on_batch=None if task is None else (lambda n, t=task: progress.update(t, advance=n)))
            map_name = f"{name}_lesions.nii.gz"
            labels = label_map(volume, lesions)
            write_nifti(labels, volume, Path(stage) / map_name)
            seg_name, sr_name = (_write_dicom_objects(Path(stage), name, item, volume, labels, lesions, model_info,
                                                      with_sr=options.dicom_sr)
                                 if options.dicom_seg or options.dicom_sr else (None, None))
            overlays = []
            for label, lesion in enumerate(lesions, start=1):
                overlay = overlay_name(name, label)
                write_overlay(volume, lesion, label, Path(stage) / overlay, num_lesions=len(lesions),
                              study_name=name)
                overlays.append(overlay)
            sheet = write_summary_sheet(volume, lesions, Path(stage) / f"{name}_lesions.png", study_name=name,
                                        score_threshold=options.score_threshold)
            records.append(study_record(volume, lesions, input_path=str(item.path), detector_interval_mm=network_interval,
                                        label_map_file=map_name, overlay_files=overlays, dicom_seg_file=seg_name,
                                        dicom_sr_file=sr_name, summary_sheet_file=sheet.name))
        model_record = {"weights": model_info.get("weights", ""), "config": model.config.to_dict(),
                        "description": model_info.get("training", {}).get("description", ""),
                        "score_threshold": options.score_threshold,
                        "inference": {"precision": options.precision, "key_slice_stride": options.key_slice_stride,
                                      "test_time_augmentation": options.augmentation.name,
                                      "skip_no_body": options.skip_no_body,
                                      "drop_outside_body": options.drop_outside_body,
                                      "body_crop_margin_px": options.body_crop_margin_px}}
        write_results_json(Path(stage) / Path(results_path).name, records, model=model_record, version=__version__)
    for study, record in zip(studies, records):
        remove_stale_outputs(out_dir, study.name, record)
    return {"version": __version__, "model": model_record, "studies": records}
