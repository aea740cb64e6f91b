"""The model store (CTLESION_HOME/models) and its commands: import-weights, models, --model."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

import ctlesion.checkpoint
from ctlesion import store
from ctlesion.cli.app import app
from ctlesion.errors import CtlesionError
from ctlesion.networks import mmdet_import

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "abdomen_ct_dicom"
SOURCE = {"file": "alignshift_3slice.pth", "sha256": "0123456789abcdef" * 4, "mmdet_version": "1.0rc0+abc",
          "epoch": 12}


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def last_line(result) -> str:
    return result.output.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tiny_detector():
    from ctlesion.networks.detector import DetectorConfig, build_detector

    return build_detector(DetectorConfig(num_slices=3, image_size_px=64, fpn_channels=16, fc_channels=32))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("CTLESION_HOME", str(path))
    return path


@pytest.fixture
def src(tmp_path) -> Path:
    path = tmp_path / "authors.pth"
    path.write_bytes(b"stands in for an mmdetection checkpoint")
    return path


@pytest.fixture
def fake_importer(tiny_detector, monkeypatch):
    """Replace the importer by one writing a real ctlesion checkpoint; records its calls."""
    calls = []

    def fake(src, dst, *, allow_partial=False):
        calls.append((Path(src), Path(dst), allow_partial))
        ctlesion.checkpoint.save_checkpoint(tiny_detector, dst, training={
            "source": SOURCE, "trained_on": "DeepLesion (official split)", "licence": "research use; check terms"})
        missing = ["roi_heads.mask_predictor.weight"] if allow_partial else []
        return mmdet_import.ImportReport(config=tiny_detector.config, num_mapped=len(tiny_detector.state_dict()),
                                         unmatched=["bbox_head.extra.weight"] if allow_partial else [],
                                         missing=missing, source=SOURCE)

    monkeypatch.setattr(mmdet_import, "import_mmdet_checkpoint", fake)
    return calls


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ctlesion.checkpoint, "load_detector", refuse)


def install(tiny_detector, name: str, training: dict | None = None) -> Path:
    """Put a checkpoint into the store directly."""
    return ctlesion.checkpoint.save_checkpoint(tiny_detector, store.models_dir() / f"{name}.safetensors",
                                               training=training)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def demo_names() -> list[str]:
    return ["demo"] if store.demo_weights().is_file() else []


# --- the library ----------------------------------------------------------------------------------


def test_home_comes_from_the_environment_at_call_time(monkeypatch, tmp_path):
    monkeypatch.delenv("CTLESION_HOME", raising=False)
    assert store.ctlesion_home() == Path.home() / ".ctlesion"
    monkeypatch.setenv("CTLESION_HOME", str(tmp_path / "h"))
    assert store.models_dir() == tmp_path / "h" / "models"
    monkeypatch.setenv("CTLESION_HOME", "")
    assert store.ctlesion_home() == Path.home() / ".ctlesion"


def test_demo_path_is_detects_default_weights():
    import ctlesion.detect

    assert store.SHIPPED_DEMO_WEIGHTS == ctlesion.detect.DEFAULT_WEIGHTS
    assert store.demo_weights() == ctlesion.detect.DEFAULT_WEIGHTS


def test_list_and_resolve(home, tiny_detector):
    assert [e.name for e in store.list_models()] == demo_names()
    install(tiny_detector, "zeta", {"trained_on": "DeepLesion", "licence": "CC BY", "source": "a URL"})
    install(tiny_detector, "Alpha.v2_x-3")
    entries = store.list_models()
    assert [e.name for e in entries] == [*demo_names(), "Alpha.v2_x-3", "zeta"]
    alpha, zeta = entries[-2:]
    assert (alpha.network, alpha.slices, alpha.trained_on, alpha.licence, alpha.source) == \
        ("AlignShift x3", 3, None, None, None)
    assert (zeta.trained_on, zeta.licence, zeta.source, zeta.demo) == ("DeepLesion", "CC BY", "a URL", False)
    assert store.resolve_model("zeta") == home / "models" / "zeta.safetensors"
    json.dumps([e.to_dict() for e in entries])  # JSON-ready
    if demo_names():
        demo = entries[0]
        assert demo.demo and demo.network == "AlignShift x3" and "not DeepLesion" in demo.trained_on
        assert store.resolve_model("demo") == store.demo_weights()


def test_unreadable_model_is_listed_with_its_problem(home, tiny_detector):
    install(tiny_detector, "broken")
    (home / "models" / "broken.json").write_text("{not json")
    (home / "models" / ".hidden.safetensors").write_bytes(b"")  # a leftover, not a model
    (home / "models" / "odd name.safetensors").write_bytes(b"")
    entries = [e for e in store.list_models() if not e.demo]
    assert [e.name for e in entries] == ["broken"]
    assert entries[0].network is None and "unreadable checkpoint sidecar" in entries[0].problem


def test_unknown_and_invalid_names(home, tiny_detector):
    install(tiny_detector, "tiny")
    with pytest.raises(CtlesionError, match=r"no model named 'nope' \(available: (demo, )?tiny;") as error:
        store.resolve_model("nope")
    assert str(error.value).startswith(f"{home / 'models'}: ")
    for bad in ("../tiny", "a b", ".hidden", "", "x" * 65, "tiny.safetensors"):
        with pytest.raises(CtlesionError, match="name"):
            store.resolve_model(bad)
        with pytest.raises(CtlesionError, match="name"):
            store.install_path(bad)
    with pytest.raises(CtlesionError, match="reserved for the shipped demo"):
        store.install_path("demo")
    (home / "models" / "nosidecar.safetensors").write_bytes(b"")
    with pytest.raises(CtlesionError, match="no JSON sidecar"):
        store.resolve_model("nosidecar")


def test_missing_demo_is_explained(home, monkeypatch, tmp_path):
    monkeypatch.setattr(store, "SHIPPED_DEMO_WEIGHTS", tmp_path / "nowhere" / "demo.safetensors")
    assert store.list_models() == []
    with pytest.raises(CtlesionError, match="shipped demo model is not part of this installation"):
        store.resolve_model("demo")


def test_install_path_checks_clash_and_leaves_nothing(home, tiny_detector):
    path = store.install_path("tiny")
    assert path == home / "models" / "tiny.safetensors" and not home.exists()  # the check created nothing
    install(tiny_detector, "tiny")
    with pytest.raises(CtlesionError, match="already installed; --overwrite replaces it"):
        store.install_path("tiny")
    assert store.install_path("tiny", overwrite=True) == path


def test_staged_write_moves_both_files_or_nothing(tmp_path, tiny_detector):
    save = ctlesion.checkpoint.save_checkpoint
    dst = tmp_path / "new" / "deeper" / "model.safetensors"

    def fail(path):
        ctlesion.checkpoint.save_checkpoint(tiny_detector, path)
        raise CtlesionError("late failure", "src.pth")

    with pytest.raises(CtlesionError, match="late failure"):
        store.write_checkpoint_staged(dst, fail)
    assert files_under(tmp_path) == []  # folders it created are gone too
    with pytest.raises(CtlesionError, match="no complete checkpoint"):
        store.write_checkpoint_staged(dst, lambda path: path.write_bytes(b"weights only"))
    assert files_under(tmp_path) == []
    written = []
    assert store.write_checkpoint_staged(dst, lambda p: written.append(save(tiny_detector, p)) or "done") == "done"
    assert written[0].name == dst.name and written[0].parent.parent == dst.parent  # staged beside it
    assert files_under(dst.parent) == ["model.json", "model.safetensors"]


# --- import-weights -------------------------------------------------------------------------------


def test_import_weights_installs_lists_and_detect_uses_it(home, src, fake_importer, tmp_path):
    result = invoke("import-weights", src, "--name", "authors3")
    assert result.exit_code == 0, result.output
    weights = home / "models" / "authors3.safetensors"
    assert fake_importer[0][0] == src and fake_importer[0][1].name == "authors3.safetensors"
    assert fake_importer[0][1] != weights  # written into a staging folder first
    assert "AlignShift x3 network (3 slices, FPN 16, FC 32, input 64 px)" in result.output
    assert "tensors mapped" in result.output and f"wrote {weights} and authors3.json" in result.output
    assert "unmatched" not in result.output and "--model authors3" in result.output
    assert files_under(home) == ["models", "models/authors3.json", "models/authors3.safetensors"]

    listed = invoke("models", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == [*demo_names(), "authors3"]
    row = rows[-1]
    assert row["network"] == "AlignShift x3" and row["slices"] == 3 and row["weights"] == str(weights)
    assert row["trained_on"] == "DeepLesion (official split)" and row["licence"] == "research use; check terms"
    assert row["source"].startswith("alignshift_3slice.pth, sha256 0123456789ab, mmdet 1.0rc0+abc, epoch 12")
    assert row["source_details"] == SOURCE
    table = invoke("models")
    assert table.exit_code == 0 and "authors3" in table.output and "DeepLesion (official split)" in table.output
    assert f"model store: {home / 'models'}" in table.output

    # detect --model NAME runs the installed model on a tiny NIfTI
    nii = tmp_path / "tiny_ct.nii.gz"
    volume = np.full((48, 48, 6), -1000, np.int16)
    volume[16:32, 16:32, 2:4] = 40
    nib.save(nib.Nifti1Image(volume, np.diag([-1.0, -1.0, 5.0, 1.0])), nii)
    out = tmp_path / "det" / "results.json"
    detected = invoke("detect", nii, "--model", "authors3", "--out", out, "--device", "cpu", "--batch-size", 8)
    assert detected.exit_code == 0, detected.output
    model = json.loads(out.read_text())["model"]
    assert model["weights"] == "authors3.safetensors" and model["config"]["fpn_channels"] == 16


def test_import_weights_to_a_file_and_partial_report(src, fake_importer, tmp_path, home):
    out = tmp_path / "converted" / "authors.safetensors"
    result = invoke("import-weights", src, "--out", out, "--allow-partial")
    assert result.exit_code == 0, result.output
    assert fake_importer[-1][2] is True
    assert "unmatched source tensors (1): bbox_head.extra.weight" in result.output
    assert "random initialisation (1): roi_heads.mask_predictor.weight" in result.output
    assert files_under(out.parent) == ["authors.json", "authors.safetensors"] and not home.exists()
    again = invoke("import-weights", src, "--out", out)
    assert again.exit_code == 1 and last_line(again) == f"error: {out}: already exists; --overwrite replaces it"
    assert invoke("import-weights", src, "--out", out, "--overwrite").exit_code == 0


def test_name_clash_needs_overwrite(home, src, fake_importer):
    assert invoke("import-weights", src, "--name", "tiny").exit_code == 0
    weights = home / "models" / "tiny.safetensors"
    before = weights.read_bytes()
    result = invoke("import-weights", src, "--name", "tiny")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert last_line(result) == f"error: {weights}: a model named 'tiny' is already installed; --overwrite replaces it"
    assert len(fake_importer) == 1 and weights.read_bytes() == before
    assert invoke("import-weights", src, "--name", "tiny", "--overwrite").exit_code == 0
    assert len(fake_importer) == 2


@pytest.mark.parametrize("name", ["demo", "../escape", "with space", ".hidden", "model.safetensors"])
def test_invalid_or_reserved_name(name, home, src, fake_importer):
    result = invoke("import-weights", src, "--name", name)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output and fake_importer == [] and not home.exists()


def test_unwritable_home_is_named_and_nothing_written(tmp_path, monkeypatch, src, fake_importer):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    home = blocker / "home"
    monkeypatch.setenv("CTLESION_HOME", str(home))
    before = files_under(tmp_path)
    result = invoke("import-weights", src, "--name", "tiny")
    assert result.exit_code == 1, result.output
    assert last_line(result) == (f"error: {home}: the model store is not writable (Not a directory); "
                                 "set CTLESION_HOME to a writable folder")
    assert len(result.output.strip().splitlines()) == 1
    assert fake_importer == [] and files_under(tmp_path) == before


@pytest.mark.parametrize("args", [[], ["--out", "x.safetensors", "--name", "x"]])
def test_import_weights_needs_exactly_one_destination(args, src, home, fake_importer):
    result = invoke("import-weights", src, *args)
    assert result.exit_code == 2 and "exactly one of --out" in result.output and fake_importer == []


def test_import_weights_checks_its_inputs_first(src, tmp_path, home, fake_importer):
    wrong = invoke("import-weights", src, "--out", tmp_path / "model.pt")
    assert wrong.exit_code == 2 and "--out takes a .safetensors file" in wrong.output
    missing = invoke("import-weights", tmp_path / "missing.pth", "--name", "x")
    assert missing.exit_code == 1 and last_line(missing) == f"error: {tmp_path / 'missing.pth'}: does not exist"
    folder = invoke("import-weights", tmp_path, "--name", "x")
    assert folder.exit_code == 1 and "is a folder" in folder.output
    assert fake_importer == [] and not home.exists()


def test_failing_importer_leaves_nothing_in_the_store(home, src, monkeypatch, tiny_detector):
    def half_then_fail(src, dst, *, allow_partial=False):
        ctlesion.checkpoint.save_checkpoint(tiny_detector, dst)
        raise CtlesionError("truncated file", src)

    monkeypatch.setattr(mmdet_import, "import_mmdet_checkpoint", half_then_fail)
    result = invoke("import-weights", src, "--name", "tiny")
    assert result.exit_code == 1 and last_line(result) == f"error: {src}: truncated file"
    assert not home.exists()  # not even the folders
    install(tiny_detector, "kept", {"trained_on": "before"})
    before = {p: p.read_bytes() for p in (home / "models").iterdir()}
    assert invoke("import-weights", src, "--name", "kept", "--overwrite").exit_code == 1
    assert {p: p.read_bytes() for p in (home / "models").iterdir()} == before  # the old model is intact


def test_new_commands_help(home):
    for command in ("import-weights", "models"):
        result = invoke(command, "--help")
        assert result.exit_code == 0
        for noise in ("<bool>", "<path>", "<str>", "{"):
            assert noise not in result.output
        assert "--no-" not in result.output


# --- --model in detect and evaluate ---------------------------------------------------------------


def test_unknown_model_fails_at_once_listing_the_names(home, tiny_detector, no_model_load, tmp_path):
    install(tiny_detector, "mine")
    out_dir = tmp_path / "out"
    result = invoke("detect", SAMPLE, "--model", "nope", "--out", out_dir / "results.json")
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    line = last_line(result)
    assert line.startswith(f"error: {home / 'models'}: no model named 'nope' (available: ")
    assert "mine" in line and ("demo" in line) == bool(demo_names())
    assert not out_dir.exists()
    evaluated = invoke("evaluate", "--data", tmp_path, "--model", "nope", "--out", tmp_path / "eval")
    assert evaluated.exit_code == 1 and "no model named 'nope'" in evaluated.output


def test_model_excludes_weights(home, no_model_load, tmp_path):
    weights = tmp_path / "w.safetensors"
    result = invoke("detect", SAMPLE, "--model", "demo", "--weights", weights, "--out", tmp_path / "r.json")
    assert result.exit_code == 2 and "--model and --weights exclude each other" in result.output
    result = invoke("evaluate", "--data", tmp_path, "--model", "demo", "--weights", weights)
    assert result.exit_code == 2 and "--model and --weights exclude each other" in result.output
    result = invoke("evaluate", "--data", tmp_path, "--model", "demo", "--predictions", tmp_path / "p.json")
    assert result.exit_code == 2 and "--model and --predictions exclude each other" in result.output


def test_evaluate_loads_the_named_model(home, tiny_detector, monkeypatch, tmp_path):
    install(tiny_detector, "mine")
    loaded = []

    def record(path, device="cpu"):
        loaded.append(Path(path))
        raise CtlesionError("stop here", path)

    monkeypatch.setattr(ctlesion.checkpoint, "load_detector", record)
    result = invoke("evaluate", "--data", tmp_path, "--model", "mine", "--device", "cpu", "--out", tmp_path / "e")
    assert result.exit_code == 1 and loaded == [home / "models" / "mine.safetensors"], result.output
    if demo_names():
        invoke("evaluate", "--data", tmp_path, "--model", "demo", "--device", "cpu", "--out", tmp_path / "e")
        invoke("evaluate", "--data", tmp_path, "--device", "cpu", "--out", tmp_path / "e")  # the default
        assert loaded[1:] == [store.demo_weights()] * 2
