"""The installed heads: the built-ins and every loaded plugin's, queried by name, wildcard, task or plugin.

The first query loads the plugins (:func:`headreg.plugins.get_registry`); a caller that needs only the built-in
heads uses :func:`headreg.plugins.builtin_registry`, which imports no plugin.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from .registry import HeadSpec, Registry


def _registry() -> Registry:
    from .plugins import get_registry  # pluggy and entry points load on the first query, not on `import headreg`

    return get_registry()


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def list_heads(
    filter: str = "*", task: str | None = None, plugin: str | None = None, exclude: str | None = None
) -> list[HeadSpec]:
    """Registered heads in natural name order.

    ``filter`` and ``exclude`` are shell wildcards matched against names and aliases; ``task`` and
    ``plugin`` match exactly (``plugin="headreg"`` gives the built-ins).

    >>> [spec.name for spec in list_heads("*cls")]
    ['seq_cls', 'token_cls']
    """
    specs = []
    for spec in _registry().specs():
        labels = (spec.name, *spec.aliases)
        if not any(fnmatch.fnmatchcase(label, filter) for label in labels):
            continue
        if exclude and any(fnmatch.fnmatchcase(label, exclude) for label in labels):
            continue
        if task is not None and spec.task != task:
            continue
        if plugin is not None and spec.plugin != plugin:
            continue
        specs.append(spec)
    return sorted(specs, key=lambda s: _natural_key(s.name))


def get_head(name: str) -> HeadSpec:
    """The spec for a head name or alias; UnknownHeadError (with a did-you-mean) otherwise."""
    return _registry().get(name)


def is_head(name: str) -> bool:
    return name in _registry()
