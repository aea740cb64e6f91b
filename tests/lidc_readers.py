"""The LIDC-IDRI readers' nodule outlines (``lidc_idri_0001_readers.xml``) as a consensus mask.

Format (LIDC-IDRI, Armato et al., Medical Physics 2011): one ``readingSession`` per reader, one
``unblindedReadNodule`` per nodule >= 3 mm outlined by that reader, one ``roi`` per slice
(``imageZposition`` = the slice's z in mm; ``edgeMap`` points = the outline's pixels, x = DICOM
column, y = DICOM row; ``inclusion`` FALSE marks a hole). Nodules < 3 mm carry a single point
and no outline: they are left out, as in LUNA16.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from ctlesion.volume import Volume

_NS = {"n": "http://www.nih.gov"}


def _reader_mask(session: ET.Element, volume: Volume) -> np.ndarray:
    mask = np.zeros(volume.shape_zyx, np.uint8)
    z0, dz = volume.origin_lps_mm[2], volume.spacing_zyx_mm[0]
    for nodule in session.findall("n:unblindedReadNodule", _NS):
        for roi in nodule.findall("n:roi", _NS):
            points = np.array([[int(e.find("n:xCoord", _NS).text), int(e.find("n:yCoord", _NS).text)]
                               for e in roi.findall("n:edgeMap", _NS)], np.int32)
            if len(points) < 3:
                continue
            z = round((float(roi.find("n:imageZposition", _NS).text) - z0) / dz)
            inside = roi.find("n:inclusion", _NS).text.strip().upper() == "TRUE"
            slice_mask = np.ascontiguousarray(mask[z])
            cv2.fillPoly(slice_mask, [points], 1 if inside else 0)
            mask[z] = slice_mask
    return mask


def consensus_mask(xml_path: Path, volume: Volume, min_readers: int = 2) -> np.ndarray:
    """(Z, Y, X) bool: voxels inside the outlines of at least ``min_readers`` readers.

    The volume must be the LIDC series in LPS with an identity direction (the file's columns and
    rows are the DICOM ones), as ``lidc_idri_0001_chest.nii.gz`` is.
    """
    assert np.allclose(volume.direction_lps, np.eye(3)), "expects an axial LPS volume"
    sessions = ET.parse(xml_path).getroot().findall("n:readingSession", _NS)
    votes = sum(_reader_mask(session, volume).astype(np.int32) for session in sessions)
    return votes >= min_readers
