"""The command line as a user meets it: readable --help, inputs checked before the model loads,
errors that name the user's paths."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ctlesion.atomic
import ctlesion.checkpoint
from ctlesion.cli.app import app

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "abdomen_ct_dicom"
COMMANDS = ("detect", "info", "train", "evaluate", "prepare", "simulate")


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.mark.parametrize("command", COMMANDS)
def test_help_reads_like_a_conventional_cli(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    for noise in ("<bool>", "<list", "<path>", "<str>", "<int", "<float", "{"):
        assert noise not in result.output, f"{noise!r} in `ctlesion {command} --help`"
    assert "--no-" not in result.output  # flags are single switches


def test_detect_help_names_arguments_and_choices():
    output = invoke("detect", "--help").output
    assert "detect [OPTIONS] INPUTS..." in output
    assert "[refuse|resample]" in output and "[alignshift|tsm|2.5d|none]" in output
    assert invoke("detect", SAMPLE, "--tilt", "sideways").exit_code == 2


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a checkpoint is loaded."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(ctlesion.checkpoint, "load_detector", refuse)


def test_bad_input_fails_before_the_model_loads(no_model_load, tmp_path):
    result = invoke("detect", tmp_path / "missing", "--out", tmp_path / "out" / "results.json")
    assert result.exit_code == 1, result.output
    assert f"{tmp_path / 'missing'}" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder_is_named_and_fails_before_the_model_loads(no_model_load, tmp_path, monkeypatch):
    out_dir = tmp_path / "out"

    def not_permitted(*, dir, prefix):  # as on a folder the user may not write into (EPERM)
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(Path(dir) / f"{prefix}y2l835pd"))

    monkeypatch.setattr(ctlesion.atomic.tempfile, "mkdtemp", not_permitted)
    result = invoke("detect", SAMPLE, "--out", out_dir / "results.json")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == f"error: {out_dir}: Operation not permitted"
    assert ".ctlesion-staging" not in result.output
    assert not out_dir.exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_named(no_model_load, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out_dir.chmod(0o555)
    try:
        result = invoke("detect", SAMPLE, "--out", out_dir / "results.json")
    finally:
        out_dir.chmod(0o755)
    assert result.exit_code == 1 and f"error: {out_dir}: Permission denied" in result.output
    assert ".ctlesion-staging" not in result.output


def test_staged_file_errors_name_the_destination(tmp_path):
    out_dir = tmp_path / "out"
    with pytest.raises(FileNotFoundError) as caught:
        with ctlesion.atomic.staged_outputs(out_dir) as stage:
            (stage / "sub" / "lesion.png").read_bytes()
    assert caught.value.filename == str(out_dir / "sub" / "lesion.png")
    assert not out_dir.exists()


def test_study_names_drop_file_suffixes_and_stay_unique():
    from ctlesion.io.studies import study_name

    taken: set[str] = set()
    names = [study_name(Path(p), taken) for p in ("a/eCT_Supplemental.dcm", "b/scan.nii.gz", "c/scan.NII", "d/scan")]
    assert names == ["eCT_Supplemental", "scan", "scan_2", "scan_3"]
