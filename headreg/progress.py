"""Progress on stderr for long work (export steps, benchmark passes): shown on a terminal, silent otherwise.

Silent when stderr is not a terminal (pipes, CI logs, notebooks, tests) and whenever the caller says so
(``--json``), so machine-readable output and logs never carry spinners. ``HEADREG_PROGRESS=1`` forces it
on, ``HEADREG_PROGRESS=0`` off.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Iterator


def wanted(requested: bool | None = None) -> bool:
    """``requested`` if given, else the HEADREG_PROGRESS override, else whether stderr is a terminal."""
    if requested is not None:
        return requested
    forced = os.environ.get("HEADREG_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@contextlib.contextmanager
def status(message: str, enabled: bool | None = None) -> Iterator[None]:
    """A spinner with ``message`` while the block runs (loading a model, say)."""
    if not wanted(enabled):
        yield
        return
    with _console().status(message):
        yield


class StepProgress:
    """A ``progress(name, state, info)`` callback: a spinner while a step runs, one line when it ends."""

    def __init__(self, enabled: bool | None = None):
        self.console = _console() if wanted(enabled) else None
        self.status: Any = None

    def __call__(self, name: str, state: str, info: dict) -> None:
        if self.console is None:
            return
        self.stop()
        if state == "start":
            self.status = self.console.status(f"{name} ...")
            self.status.start()
            return
        details = ", ".join(f"{k}={v}" for k, v in info.items() if k != "seconds")
        mark = "[green]✓[/]" if state == "done" else "[red]✗[/]"
        self.console.print(f"{mark} {name:<18} {info.get('seconds', 0):7.1f} s  {details}")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


class CountProgress:
    """A bar for ``total`` units of work; ``advance(description)`` after each. A no-op when not wanted."""

    def __init__(self, description: str, total: int, enabled: bool | None = None):
        self.bar = None
        if wanted(enabled):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=_console(), transient=False)
            self.task = self.bar.add_task(description, total=total)
            self.bar.start()

    def advance(self, description: str | None = None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, **({"description": description} if description else {}))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> "CountProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
