"""A rich progress bar for ``Parallel(..., progress=True)`` (rich is imported here only)."""

from __future__ import annotations

from typing import Any

PROGRESS_EXTRA_HINT = 'pip install "flowcore[progress]"'


class ProgressBar:
    """One bar for one call: ``advance(n)`` as results arrive, ``stop()`` at the end.

    ``target``: True for stderr, a ``rich.console.Console``, or a text file to render
    to. ``total`` is None when the input has no length (the bar then counts up).
    """

    def __init__(self, target: Any, *, total: int | None, description: str) -> None:
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
        except ImportError as exc:
            raise ImportError(
                f"Parallel(progress=...) needs rich, which is not installed; fix: {PROGRESS_EXTRA_HINT}"
            ) from exc
        if target is True:
            console = Console(stderr=True)
        elif isinstance(target, Console):
            console = target
        elif hasattr(target, "write"):
            console = Console(file=target)
        else:
            raise TypeError(
                f"progress must be True, a rich Console or a text file, got {type(target).__name__}"
            )
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self._progress.add_task(description, total=total)
        self._total = total
        self._done = 0
        self._progress.start()

    def advance(self, items: int) -> None:
        self._done += items
        self._progress.advance(self._task, items)

    def stop(self) -> None:
        """Draw the final state (the total is known by now) and release the terminal."""
        if self._total is None:
            self._progress.update(self._task, total=self._done)
        self._progress.refresh()
        self._progress.stop()


__all__ = ["PROGRESS_EXTRA_HINT", "ProgressBar"]
