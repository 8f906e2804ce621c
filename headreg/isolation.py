"""Running plugin code in isolation: its prints go to stderr, and a real Ctrl-C is told apart from a plugin's.

A leaf module (standard library only): the registry, the plugin loader, the CLI and the runtime all run plugin
code through it without importing one another.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator


class _UserInterrupt(BaseException):
    """Ctrl-C pressed while a plugin was loading (as opposed to a plugin raising KeyboardInterrupt)."""


@contextlib.contextmanager
def plugin_code() -> Iterator[None]:
    """Run a plugin's import or hook: its prints go to stderr, and a real Ctrl-C is marked as the user's.

    Both the Python-level ``sys.stdout`` and file descriptor 1 are pointed at stderr for the duration, so
    neither ``print`` nor output from C extensions lands in ``--json`` output.
    """
    with _output_lock:
        previous = None
        if threading.current_thread() is threading.main_thread():
            def on_sigint(signum, frame):
                raise _UserInterrupt()

            with contextlib.suppress(ValueError, TypeError):
                previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            with stdout_to_stderr():
                yield
        except _UserInterrupt:
            raise KeyboardInterrupt from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)


_output_lock = threading.RLock()  # fd 1 is process-wide: two threads redirecting at once could lose stdout


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point ``sys.stdout`` and file descriptor 1 at stderr for the block (``print`` and C extensions alike).

    Commands that print ``--json`` run plugin code (imports, hooks, postprocess) inside this, so nothing but
    their own JSON reaches stdout.
    """
    with _output_lock:
        sys.stdout.flush()
        saved_fd = None
        with contextlib.suppress(OSError, ValueError):
            if sys.__stdout__ is not None and sys.__stdout__.fileno() == 1 and sys.stderr is not None:
                saved_fd = os.dup(1)
                os.dup2(sys.stderr.fileno(), 1)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            if saved_fd is not None:
                os.dup2(saved_fd, 1)
                os.close(saved_fd)


def is_user_interrupt(exc: BaseException) -> bool:
    """A KeyboardInterrupt that came from a real Ctrl-C during :func:`plugin_code`, not from the plugin."""
    return isinstance(exc, KeyboardInterrupt) and isinstance(exc.__context__, _UserInterrupt)
