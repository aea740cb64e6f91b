"""The one error family of ctlesion.

Every problem with user input (a file, a folder, a checkpoint, a table) raises a
:class:`CtlesionError` whose message names the path and the problem in one line. The CLI
maps it to exit code 1 without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class CtlesionError(Exception):
    """A problem with user input, stated in one line that names the file and the problem."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)
