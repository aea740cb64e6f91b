"""The model store: imported and trained checkpoints installed under a name (as TotalSegmentator
and nnU-Net keep their weights).

``CTLESION_HOME`` (environment variable, read at every call; default ``~/.ctlesion``) holds
``models/<name>.safetensors`` + ``models/<name>.json``: ordinary ctlesion checkpoints (see
:mod:`ctlesion.checkpoint`). The sidecar's ``training`` dict may say where a model came from
(``source``: a dict such as ``{"file", "sha256", "mmdet_version", ...}`` or a string), what it
was trained on (``trained_on``) and under which terms it may be used (``licence``); all three
are optional.

The shipped demo model (:data:`ctlesion.detect.DEFAULT_WEIGHTS`, in the source checkout's
``models/`` folder) is listed first under the reserved name ``demo``; no installed model can
take that name.

Model names: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most
64 characters. Nothing here imports torch (checkpoint sidecars are plain JSON), so ``ctlesion
models`` and an unknown ``--model`` answer in well under a second.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ctlesion.errors import CtlesionError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Environment variable naming the store folder.
HOME_ENV = "CTLESION_HOME"
#: Store folder when ``CTLESION_HOME`` is unset or empty.
DEFAULT_HOME = Path("~/.ctlesion")
#: The name the shipped demo model is listed and resolved under (reserved).
DEMO_NAME = "demo"
#: Where the shipped demo model lies in a source checkout (``ctlesion.detect.DEFAULT_WEIGHTS`` is
#: this path; it lives here so that resolving a name does not import torch).
SHIPPED_DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "ctlesion_demo_sim.safetensors"
WEIGHTS_SUFFIX = ".safetensors"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FILE_SUFFIXES = (".safetensors", ".json", ".pth", ".pt")
_DEMO_DEFAULTS = {
    "source": "shipped with ctlesion (models/README.md)",
    "trained_on": "simulated lesions in real CT, not DeepLesion (a demo)",
    "licence": "Apache-2.0, as ctlesion",
}


@dataclass(frozen=True)
class ModelEntry:
    """One model of :func:`list_models`.

    Attributes:
        name: what ``--model`` takes (``demo`` for the shipped demo model).
        weights: the ``.safetensors`` file.
        network: the network as in the paper's tables, e.g. ``"AlignShift x3"``; None when the
            sidecar cannot be read (see ``problem``).
        slices: window depth D (``config.num_slices``); None when unreadable.
        source: where the weights came from, one line (None: not recorded).
        trained_on: what the model was trained on (None: not recorded).
        licence: the licence or terms of use to check before using the model (None: not recorded).
        demo: whether this is the shipped demo model.
        problem: why the checkpoint's sidecar cannot be read (None when it can).
        source_details: the sidecar's ``training.source`` as recorded (a dict when the importer
            wrote it: ``file``, ``sha256``, ...), for ``--json``.
    """

    name: str
    weights: Path
    network: str | None
    slices: int | None
    source: str | None
    trained_on: str | None
    licence: str | None
    demo: bool = False
    problem: str | None = None
    source_details: Any = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready dict (``weights`` as a string); the keys of ``ctlesion models --json``."""
        return {"name": self.name, "weights": str(self.weights), "network": self.network, "slices": self.slices,
                "source": self.source, "trained_on": self.trained_on, "licence": self.licence, "demo": self.demo,
                "problem": self.problem, "source_details": self.source_details}


def ctlesion_home() -> Path:
    """The store folder: ``$CTLESION_HOME`` (``~`` expanded), else ``~/.ctlesion``. It may not exist."""
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value or DEFAULT_HOME).expanduser()


def models_dir() -> Path:
    """``CTLESION_HOME/models``, where installed models lie. It may not exist."""
    return ctlesion_home() / "models"


def demo_weights() -> Path:
    """The shipped demo model's weights path (:data:`SHIPPED_DEMO_WEIGHTS`, read at call time).

    The file may be absent (an installation without the source checkout).
    """
    return SHIPPED_DEMO_WEIGHTS


def is_valid_name(name: str) -> bool:
    """Whether ``name`` can name a model: letters, digits, ``.``, ``_``, ``-``; first a letter or
    digit; at most 64 characters; not ending in a checkpoint file suffix."""
    return bool(_NAME.fullmatch(name)) and not name.lower().endswith(_FILE_SUFFIXES)


def _check_name(name: str) -> None:
    """Raise CtlesionError unless ``name`` is a valid model name (a one-line reason)."""
    if is_valid_name(name):
        return
    if name.lower().endswith(_FILE_SUFFIXES) or "/" in name or os.sep in name:
        raise CtlesionError(f"{name!r} is a file name, not a model name (letters, digits, '.', '_' and '-'; "
                            "a checkpoint file goes to --weights / --out)")
    raise CtlesionError(f"{name!r} is not a valid model name: use letters, digits, '.', '_' and '-', "
                        "starting with a letter or digit, at most 64 characters")


def _installed_weights() -> list[Path]:
    """The ``.safetensors`` files of the store with a valid name, sorted by name (no sidecar read)."""
    folder = models_dir()
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(f"*{WEIGHTS_SUFFIX}"):
        name = path.name[: -len(WEIGHTS_SUFFIX)]
        if not path.is_file():
            continue
        if not is_valid_name(name) or name.lower() == DEMO_NAME:
            log.debug("%s: not a valid model name, not listed", path)
            continue
        found.append(path)
    return sorted(found, key=lambda p: (p.name.lower(), p.name))


def _available_names() -> list[str]:
    """Names :func:`resolve_model` accepts now: ``demo`` when the demo file is present, then the store's."""
    demo = [DEMO_NAME] if demo_weights().is_file() else []
    return demo + [p.name[: -len(WEIGHTS_SUFFIX)] for p in _installed_weights()]


def resolve_model(name: str) -> Path:
    """The weights path of the model called ``name`` (``demo``: the shipped demo model).

    Checks only that the files exist (fast, no torch); the checkpoint itself is checked when it
    is loaded (:func:`ctlesion.checkpoint.load_detector`).

    Raises:
        CtlesionError: ``name`` is not a valid model name; no such model (the message lists the
            available names); ``demo`` in an installation without the demo file; an installed
            model without its JSON sidecar.
    """
    if name == DEMO_NAME:
        path = demo_weights()
        if not path.is_file():
            raise CtlesionError("the shipped demo model is not part of this installation (it lives in the source "
                                "checkout's models/ folder: `pip install -e .` from a checkout)", path)
        return path
    _check_name(name)
    path = models_dir() / f"{name}{WEIGHTS_SUFFIX}"
    if not path.is_file():
        names = ", ".join(_available_names()) or "none"
        raise CtlesionError(f"no model named {name!r} (available: {names}; `ctlesion models` lists them, "
                            "`ctlesion import-weights SRC --name NAME` installs one)", models_dir())
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise CtlesionError(f"installed model {name!r} has no JSON sidecar {sidecar.name} (reinstall it)", path)
    return path


def _text(value: Any) -> str | None:
    """A recorded value as one line of text (None when absent or empty)."""
    if value is None or value == "" or value == {} or value == []:
        return None
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items() if v not in (None, ""))
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return " ".join(str(value).split())


def _source_text(source: Any) -> str | None:
    """One line from ``training.source``: a dict from the importer (file, sha256, ...) or text."""
    if not isinstance(source, dict):
        return _text(source)
    parts = []
    if source.get("file"):
        parts.append(Path(str(source["file"])).name)
    if source.get("sha256"):
        parts.append(f"sha256 {str(source['sha256'])[:12]}")
    for key, label in (("mmdet_version", "mmdet"), ("epoch", "epoch"), ("iter", "iter")):
        if source.get(key) not in (None, ""):
            parts.append(f"{label} {source[key]}")
    other = {k: v for k, v in source.items() if k not in {"file", "sha256", "mmdet_version", "epoch", "iter",
                                                           "backbone_type"}}
    rest = _text(other)
    return ", ".join(parts + ([rest] if rest else [])) or None


def _entry(name: str, weights: Path, *, demo: bool = False) -> ModelEntry:
    """Describe one checkpoint from its sidecar; an unreadable one is described by its problem."""
    from ctlesion.checkpoint import read_checkpoint_info
    from ctlesion.networks.config import DetectorConfig

    defaults = _DEMO_DEFAULTS if demo else {}
    try:
        info = read_checkpoint_info(weights)
        config = DetectorConfig.from_dict(info["config"])
    except CtlesionError as exc:
        return ModelEntry(name, weights, None, None, defaults.get("source"), defaults.get("trained_on"),
                          defaults.get("licence"), demo=demo, problem=str(exc))
    except (TypeError, ValueError, AttributeError) as exc:
        return ModelEntry(name, weights, None, None, defaults.get("source"), defaults.get("trained_on"),
                          defaults.get("licence"), demo=demo, problem=f"{weights}: bad detector configuration ({exc})")
    training = info.get("training") if isinstance(info.get("training"), dict) else {}
    source = training.get("source")
    licence = training.get("licence", training.get("license"))
    return ModelEntry(
        name=name, weights=weights, network=config.name, slices=config.num_slices,
        source=_source_text(source) or defaults.get("source"),
        trained_on=_text(training.get("trained_on")) or defaults.get("trained_on"),
        licence=_text(licence) or defaults.get("licence"),
        demo=demo, source_details=source if source not in (None, "", {}) else None)


def list_models() -> list[ModelEntry]:
    """The shipped demo model (when its file is present), then the installed models sorted by name.

    A model whose sidecar cannot be read is listed with ``problem`` set, not skipped. Files of the
    store whose name is not a valid model name are not listed.

    Returns:
        One :class:`ModelEntry` per model.
    """
    entries = []
    demo = demo_weights()
    if demo.is_file():
        entries.append(_entry(DEMO_NAME, demo, demo=True))
    entries += [_entry(p.name[: -len(WEIGHTS_SUFFIX)], p) for p in _installed_weights()]
    return entries


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders (deepest first) while they exist and are empty."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            break


def _probe_writable(folder: Path) -> None:
    """Create ``folder`` (with parents) and a file in it, then remove all that this call created.

    Raises:
        OSError: it cannot be created or written.
    """
    missing = _missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".ctlesion-probe-")
        os.close(handle)
        os.unlink(probe)
    finally:
        _remove_empty(missing)


def checkpoint_destination(weights_path: Path, *, overwrite: bool = False) -> Path:
    """Check, before any work, that a checkpoint can be written to ``weights_path``.

    Leaves nothing behind (folders it had to create for the check are removed).

    Args:
        weights_path: the ``.safetensors`` to write (its ``.json`` sidecar goes beside it).
        overwrite: allow replacing an existing checkpoint of that name.

    Returns:
        ``weights_path``.

    Raises:
        CtlesionError: not a ``.safetensors`` path; the file or its sidecar exists (without
            ``overwrite``) or is a folder; its folder cannot be created or written.
    """
    weights_path = Path(weights_path)
    sidecar = weights_path.with_suffix(".json")
    if weights_path.suffix != WEIGHTS_SUFFIX:
        raise CtlesionError(f"a ctlesion checkpoint is a {WEIGHTS_SUFFIX} file", weights_path)
    for path in (weights_path, sidecar):
        if path.is_dir():
            raise CtlesionError("is a folder", path)
    if not overwrite:
        for path in (weights_path, sidecar):
            if path.exists():
                raise CtlesionError("already exists; --overwrite replaces it", path)
    try:
        _probe_writable(weights_path.parent)
    except OSError as exc:
        raise CtlesionError(f"cannot write into this folder ({exc.strerror or exc})", weights_path.parent) from None
    return weights_path


def install_path(name: str, *, overwrite: bool = False) -> Path:
    """Where model ``name`` is installed: ``CTLESION_HOME/models/<name>.safetensors``, checked.

    Checks the name, that it is free, and that the store can be written (creating nothing that
    stays: folders made for the check are removed).

    Args:
        name: the model name (letters, digits, ``.``, ``_``, ``-``; not ``demo``).
        overwrite: allow replacing an installed model of that name.

    Returns:
        The weights path to write (its ``.json`` sidecar beside it).

    Raises:
        CtlesionError: invalid name; ``demo`` (reserved); a model of that name is installed
            (without ``overwrite``); ``CTLESION_HOME`` cannot be created or written (named).
    """
    _check_name(name)
    if name.lower() == DEMO_NAME:
        raise CtlesionError(f"{name!r} is reserved for the shipped demo model; choose another name")
    weights_path = models_dir() / f"{name}{WEIGHTS_SUFFIX}"
    sidecar = weights_path.with_suffix(".json")
    if not overwrite and (weights_path.exists() or sidecar.exists()):
        raise CtlesionError(f"a model named {name!r} is already installed; --overwrite replaces it", weights_path)
    for path in (weights_path, sidecar):
        if path.is_dir():
            raise CtlesionError("is a folder, not part of an installed model", path)
    try:
        _probe_writable(models_dir())
    except OSError as exc:
        raise CtlesionError(f"the model store is not writable ({exc.strerror or exc}); set {HOME_ENV} to a "
                            "writable folder", ctlesion_home()) from None
    return weights_path


def write_checkpoint_staged(weights_path: Path, write: Callable[[Path], T]) -> T:
    """Run ``write(tmp_weights_path)`` in a hidden folder beside ``weights_path``, then move the
    checkpoint (``.safetensors`` + ``.json``) into place: sidecar first, weights last.

    If ``write`` raises, or leaves no complete checkpoint, nothing is moved, the hidden folder is
    removed and so are the folders this call created: no half-written model is left behind (and
    an earlier checkpoint of that name is untouched). Other files ``write`` leaves are dropped.

    Args:
        weights_path: the final ``.safetensors`` path (see :func:`checkpoint_destination` or
            :func:`install_path` to check it first).
        write: writes a checkpoint to the path it is given and returns a result.

    Returns:
        What ``write`` returned.

    Raises:
        CtlesionError: ``write`` wrote no complete checkpoint; whatever ``write`` raises.
        OSError: the folder cannot be written (naming ``weights_path`` or its folder).
    """
    weights_path = Path(weights_path)
    folder = weights_path.parent
    created = _missing_folders(folder)
    stage = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=folder, prefix=".ctlesion-import-"))
        staged = stage / weights_path.name
        result = write(staged)
        staged_sidecar = staged.with_suffix(".json")
        if not (staged.is_file() and staged_sidecar.is_file()):
            raise CtlesionError("no complete checkpoint was written (weights and JSON sidecar)", weights_path)
        os.replace(staged_sidecar, weights_path.with_suffix(".json"))
        os.replace(staged, weights_path)
        return result
    except BaseException as exc:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(created)
        if isinstance(exc, OSError) and exc.filename is not None and stage is not None \
                and Path(exc.filename).is_relative_to(stage):
            raise type(exc)(exc.errno, exc.strerror or str(exc), str(folder / Path(exc.filename).name)) from None
        raise
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
