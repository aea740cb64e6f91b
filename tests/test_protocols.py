"""One interface for both evaluation protocols (ctlesion.evaluate.protocols)."""

from __future__ import annotations

import numpy as np
import pytest

from ctlesion.errors import CtlesionError
from ctlesion.evaluate.protocols import KeySliceProtocol, ScanProtocol, protocol_for
from ctlesion.evaluate.scan_froc import SCAN_LAYOUT
from ctlesion.evaluate.scoring import KEY_SLICE_LAYOUT
from masked_data import case_volume, write_nnunet


def test_the_dataset_folder_picks_the_protocol_and_its_defaults(tmp_path):
    volume = case_volume()
    labels = np.zeros(volume.shape_zyx, np.uint8)
    labels[2:4, 20:30, 20:30] = 2
    volumes = write_nnunet(tmp_path / "Dataset001_T", {"a": (volume, labels)}, {"background": 0, "tumor": 2})
    scan = protocol_for(volumes, split="all", lesion_label="tumor")
    assert isinstance(scan, ScanProtocol) and scan.layout is SCAN_LAYOUT
    assert (scan.options.criterion, scan.options.iou_threshold) == ("centre", 0.1)
    assert protocol_for(volumes, split="all", lesion_label="tumor", criterion="iou").options.iou_threshold == 0.1
    assert "per scan, all split" in scan.title()
    assert scan.summary({"froc_per_scan": {"summary": {"all": 1}}}) == {"all": 1}
    with pytest.raises(CtlesionError, match="no label 'nerve'"):
        protocol_for(volumes, split="all", lesion_label="nerve")
    with pytest.raises(ValueError, match="split"):
        protocol_for(volumes, split="everything", lesion_label="tumor")

    deeplesion = tmp_path / "dl"
    deeplesion.mkdir()
    keys = protocol_for(deeplesion, split="test")
    assert isinstance(keys, KeySliceProtocol) and keys.layout is KEY_SLICE_LAYOUT
    assert (keys.options.criterion, keys.options.iou_threshold) == ("iou", 0.5)
    assert keys.summary({"summary": {"all": 2}}) == {"all": 2} and "FP/image" in keys.title()
    with pytest.raises(ValueError, match="overlap threshold"):
        protocol_for(deeplesion, split="test", iou_threshold=1.5)
