"""Atomic file output: a reader never sees a half-written file.

Each file is written to a temporary file in the destination's folder and moved into place with
:func:`os.replace` (atomic on one file system). :func:`staged_outputs` does the same for a group
of files: they are written into a hidden temporary folder in the destination folder and moved
into place only when the whole block succeeds.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + os.replace).

    The parent folder is created if needed. On any error the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as handle:  # honours the umask, unlike mkstemp's 0600
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding))


#: Name prefix of the hidden staging folder inside the output folder.
STAGE_PREFIX = ".ctlesion-staging-"


def _naming(error: OSError, path: Path) -> OSError:
    """An error of the same kind as ``error`` that names ``path`` (a user's path, not an internal one)."""
    return type(error)(error.errno, error.strerror or str(error), str(path))


def _user_facing(error: OSError, stage: Path, out_dir: Path) -> OSError:
    """``error``, naming the destination in ``out_dir`` where it named a file in the staging folder."""
    if error.filename is None:
        return error
    try:
        relative = Path(error.filename).relative_to(stage)
    except ValueError:
        return error
    return _naming(error, out_dir / relative)


def _remove_if_created(out_dir: Path, created: bool) -> None:
    """Remove ``out_dir`` if this call created it and it is (still) empty."""
    if created and out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()


@contextmanager
def staged_outputs(out_dir: str | Path) -> Iterator[Path]:
    """Stage several output files and move them into ``out_dir`` only if the block succeeds.

    Yields a hidden temporary folder inside ``out_dir`` (created if needed; inside rather than
    beside it, so that only ``out_dir`` itself must be writable and the final moves stay on one
    file system). Write the files there under their final relative names. When the block exits
    normally every file is moved into ``out_dir`` with :func:`os.replace`, keeping relative
    paths. If the block raises, the staging folder is deleted, and so is ``out_dir`` if this
    call created it and it is empty: nothing half-written is left behind.

    Raises:
        OSError: ``out_dir`` cannot be created or written (the error names ``out_dir``, never
            the staging folder), or an error of the block or of the final moves naming a
            staged file (it then names that file's destination in ``out_dir``).

    Example::

        with staged_outputs(out) as stage:
            atomic_write_text(stage / "results.json", text)
            write_overlay(volume, lesion, 1, stage / "lesion_001.png")
    """
    out_dir = Path(out_dir)
    created = not out_dir.is_dir()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=STAGE_PREFIX))
    except OSError as error:
        _remove_if_created(out_dir, created)
        raise _naming(error, out_dir) from None
    try:
        yield stage
        for src in sorted(p for p in stage.rglob("*") if not p.is_dir()):
            dest = out_dir / src.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        logger.debug("moved staged outputs into %s", out_dir)
    except BaseException as error:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_if_created(out_dir, created)
        if isinstance(error, OSError):
            raise _user_facing(error, stage, out_dir) from None
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_output_folder(out_dir: str | Path) -> None:
    """Fail early when outputs cannot be staged in ``out_dir``; leave nothing behind.

    Creates and removes a staging folder as :func:`staged_outputs` does (and ``out_dir`` when it
    had to create it), so that a command can refuse an unwritable output folder before its
    long work starts.

    Raises:
        OSError: ``out_dir`` cannot be created or written; the error names ``out_dir``.
    """
    out_dir = Path(out_dir)
    created = not out_dir.is_dir()
    with staged_outputs(out_dir):
        pass
    _remove_if_created(out_dir, created)
