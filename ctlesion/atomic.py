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


@contextmanager
def staged_outputs(out_dir: str | Path) -> Iterator[Path]:
    """Stage several output files and move them into ``out_dir`` only if the block succeeds.

    Yields a hidden temporary folder inside ``out_dir`` (created if needed; inside rather than
    beside it, so that only ``out_dir`` itself must be writable and the final moves stay on one
    file system). Write the files there under their final relative names. When the block exits
    normally every file is moved into ``out_dir`` with :func:`os.replace`, keeping relative
    paths. If the block raises, the staging folder is deleted, and so is ``out_dir`` if this
    call created it and it is empty: nothing half-written is left behind.

    Example::

        with staged_outputs(out) as stage:
            atomic_write_text(stage / "results.json", text)
            write_overlay(volume, lesion, 1, stage / "lesion_001.png")
    """
    out_dir = Path(out_dir)
    created = not out_dir.is_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=".ctlesion-staging-"))
    try:
        yield stage
        for src in sorted(p for p in stage.rglob("*") if not p.is_dir()):
            dest = out_dir / src.relative_to(stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        logger.debug("moved staged outputs into %s", out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
