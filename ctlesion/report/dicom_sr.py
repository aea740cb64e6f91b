"""Lesion measurements as a DICOM Structured Report (TID 1500 Measurement Report), with highdicom.

A Comprehensive 3D SR whose Imaging Measurement Report (DICOM PS3.16 TID 1500) holds one
Volumetric ROI group (TID 1411) per lesion: it refers to the lesion's segment in the DICOM SEG
(:mod:`ctlesion.report.dicom_seg`) with the segment's tracking identifier and UID, is coded as a
SNOMED CT Lesion (52988006), and carries the RECIST long axis (103339001) and short axis
(103340004) in mm measured on the key slice, and the volume (118565006) in ml. The observer is
a device (ctlesion); the algorithm and checkpoint are named on every group. The SR joins the
source study in a new series and lists the SEG and the source images as evidence.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from ctlesion.postprocess import Lesion
from ctlesion.report.dicom_seg import derived_series_number, source_uid

#: SeriesNumber of the SR: the source series' number plus this (or this when it has none).
SR_SERIES_NUMBER_OFFSET = 2000


def lesion_measurement_report(segmentation: Dataset, lesions: Sequence[Lesion], source_images: Sequence[Dataset], *,
                              version: str, model_name: str = "",
                              key_slice_images: Sequence[tuple[Dataset, int | None] | None] | None = None):
    """Build the TID 1500 measurement report of a study's lesions.

    Args:
        segmentation: the study's lesion SEG (segment i = lesion i, as
            :func:`~ctlesion.report.dicom_seg.lesion_segmentation` makes it).
        lesions: the lesions, label order (``long_axis_mm``, ``short_axis_mm``, ``volume_ml``).
        source_images: the source series' headers (evidence), completed as for the SEG
            (:func:`~ctlesion.report.dicom_seg.completed_sources`).
        version: ctlesion version; model_name: the checkpoint's file name (algorithm parameter).
        key_slice_images: per lesion, the source image (header, frame number or None) of its key
            slice, on which the long and short axes were measured
            (:meth:`~ctlesion.io.PendingVolume.source_slices`), or None where the key slice is
            no source slice; the axis measurements then name that image. (The axes' end points
            are not drawn as SCOORDs: TID 1411 volumetric groups admit none; they are in
            results.json and on the overlays.)

    Returns:
        ``highdicom.sr.Comprehensive3DSR`` (a pydicom Dataset).

    Raises:
        ValueError: the SEG's segments or ``key_slice_images`` do not match ``lesions`` one to one.
    """
    import highdicom as hd  # noqa: PLC0415 (only when an SR is asked for)
    from pydicom.sr.codedict import codes  # noqa: PLC0415

    segments = list(segmentation.SegmentSequence)
    if len(segments) != len(lesions):
        raise ValueError(f"the SEG has {len(segments)} segments for {len(lesions)} lesions")
    key_slice_images = [None] * len(lesions) if key_slice_images is None else list(key_slice_images)
    if len(key_slice_images) != len(lesions):
        raise ValueError(f"{len(key_slice_images)} key slice images for {len(lesions)} lesions")
    millilitre = hd.sr.CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter")
    algorithm = hd.sr.AlgorithmIdentification(name="ctlesion AlignShift", version=version,
                                              parameters=[model_name] if model_name else None)
    # The segment is referred to with the series it segments (not frame by frame: highdicom's
    # ReferencedSegment.from_segmentation misses single-segment SEGs, whose segment is shared).
    source_series = hd.sr.SourceSeriesForSegmentation(str(segmentation.ReferencedSeriesSequence[0].SeriesInstanceUID))
    groups = []
    for number, (segment, lesion, key_image) in enumerate(zip(segments, lesions, key_slice_images), start=1):
        on_key_slice = None if key_image is None else [hd.sr.SourceImageForMeasurement(
            source_uid(key_image[0], "SOPClassUID"), source_uid(key_image[0], "SOPInstanceUID"),
            None if key_image[1] is None else [key_image[1]])]
        measurements = [
            hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm, referenced_images=images)
            for name, value, unit, images in (
                (codes.SCT.LongAxis, lesion.long_axis_mm, codes.UCUM.Millimeter, on_key_slice),
                (codes.SCT.ShortAxis, lesion.short_axis_mm, codes.UCUM.Millimeter, on_key_slice),
                (codes.SCT.Volume, lesion.volume_ml, millilitre, None))
        ]
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=segment.TrackingUID, identifier=segment.TrackingID),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=segmentation.SOPClassUID, sop_instance_uid=segmentation.SOPInstanceUID,
                segment_number=number, source_series=source_series),
            finding_type=codes.SCT.Lesion, algorithm_id=algorithm, measurements=measurements))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="ctlesion", manufacturer_name="ctlesion", model_name="AlignShift lesion detector"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[segmentation, *source_images], content=report[0], series_instance_uid=hd.UID(),
        series_number=derived_series_number(source_images, SR_SERIES_NUMBER_OFFSET), sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="ctlesion", series_description="ctlesion lesion measurements")
