"""The head registry: every head, built-in or from a plugin, is a :class:`HeadSpec` registered here.

Specs name their classes as ``"module:attr"`` strings, so listing heads imports neither torch nor the
plugin's model code; the class is imported when a head is built. This module imports nothing that registers
into it: :mod:`headreg.plugins` fills a :class:`Registry`, :mod:`headreg.installed` answers queries over it.
"""

from __future__ import annotations

import difflib
import importlib
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from .errors import HeadCollisionError, HeadImportError, UnknownHeadError
from .isolation import is_user_interrupt, plugin_code

LEVELS = ("sequence", "token")
# The postprocess contract the runtime calls: 2 = ``postprocess(rows, context)``, ``rows[i]`` row i's own outputs
# (no padding); 1 (headreg 0.1) took padded batch arrays and an attention mask.
POSTPROCESS_CONTRACT = 2
# Types a head may declare for its result fields (Spark DDL; Ray and the server read the names).
_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_<>,: ]*$")

# A name is what users type on the command line and what manifests store, so keep it shell- and file-safe.
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")
_ENTRY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class HeadSpec:
    """What the registry knows of a head, without importing it."""

    name: str
    cls: str
    task: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    postprocess: str | None = None
    level: str = "sequence"
    plugin: str = "headreg"
    version: str = ""
    postprocess_contract: int = 1
    # result field -> Spark DDL type of the postprocess's result dicts (what become columns in Spark and Ray);
    # None: the head declares none (integrations then keep the whole result as JSON)
    result_fields: tuple[tuple[str, str], ...] | None = None

    @property
    def builtin(self) -> bool:
        return self.plugin == "headreg"

    @property
    def origin(self) -> str:
        return f"{self.plugin} {self.version}".strip()

    def load_class(self) -> type:
        """Import the head class (this is where torch gets imported)."""
        return import_attr(self.cls, self, "cls")

    def load_postprocess(self) -> Callable[..., Any] | None:
        """Import the numpy postprocess function, or None when the head has none.

        A postprocess registered for an older contract is refused with what to change (it would misread rows).
        """
        if self.postprocess is None:
            return None
        if self.postprocess_contract != POSTPROCESS_CONTRACT:
            raise HeadImportError(
                f"head {self.name!r} from {self.origin!r} registers postprocess {self.postprocess!r} for postprocess "
                f"contract {self.postprocess_contract}; this headreg calls contract {POSTPROCESS_CONTRACT}: "
                "postprocess(rows, context) where rows[i] holds row i's own outputs (token outputs already cut to the "
                "row's tokens, no attention mask). Upgrade the plugin, or port it (drop the padding handling, read "
                "rows[i][name]) and register it with postprocess_contract=2; see docs/plugins.md."
            )
        return import_attr(self.postprocess, self, "postprocess")

    @property
    def fields(self) -> dict[str, str] | None:
        """The declared result fields, name -> Spark DDL type (None when the head declares none)."""
        return None if self.result_fields is None else dict(self.result_fields)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "task": self.task,
            "level": self.level,
            "description": self.description,
            "plugin": self.plugin,
            "version": self.version,
            "cls": self.cls,
            "postprocess": self.postprocess,
            "postprocess_contract": self.postprocess_contract,
            "result_fields": self.fields,
        }


def import_attr(path: str, spec: HeadSpec, what: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        with plugin_code():
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
    except BaseException as exc:  # noqa: BLE001  the plugin's own code may raise anything on import, sys.exit too
        if is_user_interrupt(exc):
            raise
        raise HeadImportError(
            f"head {spec.name!r} from plugin {spec.origin!r} could not be loaded: its {what} {path!r} "
            f"failed with {type(exc).__name__}: {exc}. Reinstall or upgrade {spec.plugin!r}, or disable it "
            f"with HEADREG_DISABLE_PLUGINS={spec.plugin}."
        ) from exc
    return obj


def validate_spec(spec: HeadSpec) -> None:
    """Raise ValueError/TypeError when a registration is malformed; called for every ``register`` call."""
    for label in (spec.name, *spec.aliases):
        if not isinstance(label, str) or not _NAME_RE.match(label) or len(label) > 128:
            raise ValueError(
                f"invalid head name or alias {label!r:.60}: use up to 128 letters, digits, '_', '-', '.', starting "
                "with a letter"
            )
    for what, path in (("cls", spec.cls), ("postprocess", spec.postprocess)):
        if path is None and what == "postprocess":
            continue
        if not isinstance(path, str) or not _ENTRY_RE.match(path):
            raise ValueError(f"head {spec.name!r}: {what} must be a 'module:attr' string, got {path!r:.60}")
    for what, value in (("task", spec.task), ("description", spec.description)):
        if not isinstance(value, str) or len(value) > 4096:
            raise TypeError(f"head {spec.name!r}: {what} must be a string (up to 4096 characters), got {value!r:.60}")
    if isinstance(spec.postprocess_contract, bool) or spec.postprocess_contract not in (1, POSTPROCESS_CONTRACT):
        raise ValueError(f"head {spec.name!r}: postprocess_contract must be 1 or {POSTPROCESS_CONTRACT}, "
                         f"got {spec.postprocess_contract!r:.40}")
    for field_name, field_type in spec.result_fields or ():
        if not (isinstance(field_name, str) and _NAME_RE.match(field_name) and isinstance(field_type, str)
                and _FIELD_RE.match(field_type) and len(field_type) < 1024):
            raise ValueError(f"head {spec.name!r}: result_fields maps names to Spark DDL types ('label': 'string'), "
                             f"got {field_name!r:.40}: {field_type!r:.60}")
    if not isinstance(spec.level, str) or spec.level not in LEVELS:
        raise ValueError(f"head {spec.name!r}: level must be one of {LEVELS}, got {spec.level!r:.40}")


class Registry:
    """Heads by name, plus an alias index. Not thread-safe on its own: plugins.py serialises loading."""

    def __init__(self) -> None:
        self._heads: dict[str, HeadSpec] = {}  # canonical name -> spec
        self._labels: dict[str, str] = {}  # name or alias -> canonical name

    def __contains__(self, label: str) -> bool:
        return label in self._labels

    def add(self, spec: HeadSpec, override: bool = False) -> None:
        """Register ``spec``; HeadCollisionError if it takes a name or alias that another head owns, unless
        ``override`` (then the other head is removed, with a warning)."""
        validate_spec(spec)
        for label in (spec.name, *spec.aliases):
            owner = self._labels.get(label)
            if owner is None:
                continue
            other = self._heads[owner]
            if not override:
                raise HeadCollisionError(
                    f"head name {label!r} from {spec.origin!r} is already registered by {other.origin!r} "
                    f"(head {other.name!r}). Uninstall one of the two distributions, disable one with "
                    f"HEADREG_DISABLE_PLUGINS, or register with override=True to replace it on purpose."
                )
            warnings.warn(f"head {label!r} from {spec.origin!r} overrides the one from {other.origin!r}", stacklevel=3)
            self._remove(owner)
        self._heads[spec.name] = spec
        for label in (spec.name, *spec.aliases):
            self._labels[label] = spec.name

    def _remove(self, name: str) -> None:
        spec = self._heads.pop(name)
        for label in (spec.name, *spec.aliases):
            self._labels.pop(label, None)

    def get(self, label: str) -> HeadSpec:
        name = self._labels.get(label)
        if name is None:
            raise UnknownHeadError(_unknown_message(label, self._labels, sorted(self._heads)))
        return self._heads[name]

    def specs(self) -> list[HeadSpec]:
        return list(self._heads.values())


def _unknown_message(label: object, labels: dict[str, str], names: list[str]) -> str:
    close = difflib.get_close_matches(str(label), list(labels), n=1, cutoff=0.6)
    hint = f" did you mean {labels[close[0]]!r}?" if close else ""
    return f"unknown head {label!r};{hint} installed: {', '.join(names) or '(none)'}"
