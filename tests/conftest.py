"""Shared pytest fixtures for the ctlesion test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

#: Real CT test data lives beside the project, at ``../shared/data`` from the repository root.
SHARED_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the real CT test data folder ``../shared/data`` (relative to the repo root).

    Skips the requesting test, with the reason, when the folder is absent (for example in a
    checkout of the project on its own).
    """
    if not SHARED_DATA_DIR.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA_DIR} (../shared/data is absent)")
    return SHARED_DATA_DIR


#: Figures from the authors' own code, at ``../shared/reference`` from the repository root.
SHARED_REFERENCE_DIR = SHARED_DATA_DIR.parent / "reference"


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """Path to ``../shared/reference`` (the authors' checkpoints and figures); skips when absent."""
    if not SHARED_REFERENCE_DIR.is_dir():
        pytest.skip(f"reference figures not found at {SHARED_REFERENCE_DIR} (../shared/reference is absent)")
    return SHARED_REFERENCE_DIR


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Checkpoint of an untrained small detector (3 slices, 64 px input, FPN 32, FC 64): the real
    code paths of detect and evaluate in seconds on the CPU."""
    from ctlesion.checkpoint import save_checkpoint  # noqa: PLC0415
    from ctlesion.networks.detector import DetectorConfig, build_detector  # noqa: PLC0415

    config = DetectorConfig(num_slices=3, image_size_px=64, fpn_channels=32, fc_channels=64)
    return save_checkpoint(build_detector(config), tmp_path_factory.mktemp("model") / "tiny.safetensors",
                           training={"description": "random init, for tests"})


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when CUDA is not available (they run wherever it is)."""
    import torch  # noqa: PLC0415

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
