"""Rich progress bars on stderr (results go to files and stdout, progress never does)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def make_progress(enabled: bool = True) -> Progress:
    """A rich ``Progress`` writing to stderr with a free ``info`` field; silent when disabled.

    Tasks are added with ``add_task(description, total=N, info="")`` and updated with
    ``update(task, advance=1, info="...")``.
    """
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )
