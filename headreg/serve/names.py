"""``headreg serve`` bundle arguments: ``PATH`` (served under the directory's name) or ``NAME=PATH``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # safe inside a URL path segment as is


def parse_bundle_args(arguments: Sequence[str]) -> dict[str, Path]:
    """Name -> bundle directory; ValueError naming the argument for a bad name, a duplicate or a missing directory."""
    named: dict[str, Path] = {}
    for argument in arguments:
        name, sep, path = argument.partition("=")
        if not sep or os.path.isdir(argument):
            name, path = Path(argument).resolve().name, argument
            if not NAME.match(name):
                raise ValueError(f"{argument}: the directory name {name!r} is not usable in a URL; give NAME={argument}")
        elif not NAME.match(name):
            raise ValueError(f"{argument}: model name {name!r} must be letters, digits, '_', '.' or '-'")
        if not os.path.isdir(path):
            raise ValueError(f"{argument}: no bundle directory {path}")
        if name in named:
            raise ValueError(f"two bundles are named {name!r}; name them apart with NAME=PATH")
        named[name] = Path(path)
    return named
