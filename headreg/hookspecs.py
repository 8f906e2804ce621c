"""Hook specifications for headreg plugins.

A plugin is a module named by an entry point in the ``headreg`` group. It implements hooks with
``@hookimpl``. Hook arguments may be added in later headreg versions, never removed, so a plugin
that asks only for the arguments it needs keeps working.
"""

from __future__ import annotations

import pluggy

PROJECT = "headreg"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_heads(register):
    """Register heads by calling ``register(name=..., cls="module:Class", postprocess="module:func", ...)``."""
