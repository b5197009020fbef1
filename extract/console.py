"""Command-line plumbing shared by every ``jungle`` subcommand: logging through rich on
stderr, one-line errors, SIGTERM handled like Ctrl-C."""

from __future__ import annotations

import logging
import signal

import typer
from rich.console import Console
from rich.logging import RichHandler


def stderr_console() -> Console:
    """A rich console on stderr (progress bars, logs and errors go there; data to files)."""
    return Console(stderr=True)


def setup_logging(console: Console, verbose: bool = False) -> None:
    """Log records as rich lines on ``console``; debug level when ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    for noisy in ("PIL", "timm", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(console: Console, message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as a one-line error; return the :class:`typer.Exit` to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (a comma-separated command-line option)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def sigterm_as_interrupt() -> None:
    """Make SIGTERM end a run like Ctrl-C, so finished work is saved before exiting."""

    def handler(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
