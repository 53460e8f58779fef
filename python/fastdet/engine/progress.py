"""One rich progress bar style for training, evaluation and detection (main process only)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def bar(enabled: bool = True) -> Progress:
    """A progress bar on stderr showing done/total, elapsed, ETA and a free `info` field (losses)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=Console(file=sys.stderr), disable=not enabled, transient=False)
