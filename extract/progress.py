"""A progress bar over clips with a clips/s rate (rich), or nothing when disabled."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _RateColumn(ProgressColumn):
    """Clips per second since the start (rich's windowed speed shows absurd rates when
    results arrive in bursts, e.g. a Ray pipeline's first batches after its start-up)."""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        speed = task.completed / elapsed if elapsed and task.completed else None
        return Text(f"{speed:.2f} clips/s" if speed else "- clips/s", style="progress.data.speed")


@contextlib.contextmanager
def clip_progress(
    total: int, enabled: bool = True, label: str = "clips"
) -> Iterator[Callable[[int], None]]:
    """Context manager yielding ``advance(n)``; draws a bar with clips/s when enabled."""
    if not enabled:
        yield lambda n: None
        return
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
