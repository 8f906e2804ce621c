"""What every command prints: JSON on stdout, tables on the terminal, one-line errors with exit codes.

Exit codes: 0 ok, 1 verification/prediction failure, 2 usage error. Every error is one line on stderr,
``error: <what went wrong>; <what to do>``. Text from inputs, bundles and plugins is shown, never interpreted.
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any, NoReturn

import click

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers, and ``--json`` output must always parse."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def emit_json(data: Any) -> None:
    """JSON on stdout, keys in the order they were built (label-id order for scores, not string order)."""
    click.echo(json.dumps(_finite(data), indent=2, default=str, allow_nan=False))


# Terminal escapes (CSI, OSC, other ESC sequences), C0/C1 controls and bidi overrides: text from inputs, bundles
# and plugins is shown, never interpreted by the terminal.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]"
)


def plain(value: Any) -> str:
    """``value`` as a string safe to print: escapes and control characters shown as ``\\x..`` codes."""
    return _ESCAPES.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def cell(value: Any):
    """A table cell that rich shows as it is: never parsed as markup (``[bold]``, ``[/]``), escapes neutralised."""
    from rich.text import Text

    return Text(plain(value))


def console(stderr: bool = False):
    import shutil

    from rich.console import Console

    # Piped output gets a wide table rather than rich's 80-column default.
    return Console(stderr=stderr, highlight=False, width=shutil.get_terminal_size((160, 24)).columns)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def usage_error(message: str) -> NoReturn:
    """Print a usage error and exit 2 (bad arguments, missing files, not a bundle, unknown heads)."""
    fail(message, EXIT_USAGE)
