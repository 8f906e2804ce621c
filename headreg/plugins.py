"""Plugin loading: built-in heads and entry-point plugins register through the same hook.

Each plugin is loaded in isolation: one that fails to import, fails hook validation, raises in its hook
(anything, ``SystemExit`` and ``KeyboardInterrupt`` included), registers garbage or collides with another
head is recorded as failed and leaves the others working (``HEADREG_STRICT_PLUGINS=1`` raises instead).
A real Ctrl-C while plugins load is still honoured: it is told apart from a plugin raising
``KeyboardInterrupt`` by a SIGINT handler installed for the duration. Whatever a plugin prints while it is
imported or registers goes to stderr, so ``--json`` output on stdout stays JSON. Allow and deny lists are
applied before a plugin is imported.

Plugins are imported only when needed: :func:`get_registry` (listing heads, looking one up by name) loads
them; :func:`builtin_registry` does not, and the Predictor uses it for bundles whose manifest records a
built-in head, so serving a built-in head never pays for (or is broken by) an installed plugin.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import threading
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from ._version import __version__
from .errors import PluginError, PluginSettingError, PluginWarning
from .isolation import is_user_interrupt, plugin_code
from .registry import HeadSpec, Registry, validate_spec

ENTRY_POINT_GROUP = "headreg"
ENV_LOAD = "HEADREG_LOAD_PLUGINS"
ENV_DISABLE = "HEADREG_DISABLE_PLUGINS"
ENV_STRICT = "HEADREG_STRICT_PLUGINS"


@dataclass
class PluginInfo:
    """One plugin as ``headreg plugins`` shows it."""

    name: str  # entry-point name ("headreg" for the built-ins)
    distribution: str
    version: str
    status: str  # loaded | failed | disabled
    error: str | None = None
    heads: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_lock = threading.RLock()
_state: tuple[Registry, list[PluginInfo]] | None = None
_builtins: Registry | None = None


def get_registry() -> Registry:
    return _load()[0]


def builtin_registry() -> Registry:
    """The built-in heads only; no plugin is imported (cheap, and immune to a broken plugin)."""
    global _builtins
    with _lock:
        if _builtins is None:
            registry = Registry()
            _register_builtins(_manager(), registry)
            _builtins = registry
        return _builtins


def _register_builtins(pm: pluggy.PluginManager, registry: Registry) -> PluginInfo:
    """Register the built-in heads; their failing is a headreg bug, never a plugin's, so it raises."""
    from . import heads as builtin_heads

    info = PluginInfo("headreg", "headreg", __version__, "loaded")
    _register_plugin(pm, registry, info, builtin_heads, requirement=None)
    return info


def _manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def plugin_infos() -> list[PluginInfo]:
    return list(_load()[1])


def reset() -> None:
    """Forget loaded plugins so the next registry query reloads them (after changing the environment)."""
    global _state, _builtins
    with _lock:
        _state = _builtins = None


def _load() -> tuple[Registry, list[PluginInfo]]:
    global _state
    with _lock:
        if _state is None:
            _state = _load_all()
        return _state


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_set(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {_normalize(part) for part in raw.split(",") if part.strip()}


def _load_all() -> tuple[Registry, list[PluginInfo]]:
    registry = Registry()
    infos: list[PluginInfo] = []
    strict = os.environ.get(ENV_STRICT, "") not in ("", "0")
    pm = _manager()

    infos.append(_register_builtins(pm, registry))

    allow, deny = _env_set(ENV_LOAD), _env_set(ENV_DISABLE) or set()
    names: set[str] = set()
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist is not None else ep.value.split(":")[0]
        version = ep.dist.version if ep.dist is not None else ""
        info = PluginInfo(ep.name, dist, version, "loaded")
        infos.append(info)
        keys = {_normalize(ep.name), _normalize(dist)}
        names |= keys
        if allow is not None and not keys & allow:
            info.status, info.error = "disabled", f"not listed in {ENV_LOAD}"
            continue
        if keys & deny:
            info.status, info.error = "disabled", f"listed in {ENV_DISABLE}"
            continue
        try:
            with plugin_code():
                module = ep.load()
                _register_plugin(pm, registry, info, module, requirement=_headreg_requirement(ep))
        except KeyboardInterrupt as exc:
            if is_user_interrupt(exc):
                raise  # the user pressed Ctrl-C: stop, as any command would
            _failed(info, exc, strict)
        except BaseException as exc:  # noqa: BLE001  a plugin may raise anything, SystemExit included
            _failed(info, exc, strict)
    for var, listed in ((ENV_LOAD, allow or set()), (ENV_DISABLE, deny)):
        unknown = sorted(listed - names)
        if unknown:
            message = (
                f"{var} names {', '.join(map(repr, unknown))}, which no installed plugin is called; installed "
                f"plugins: {', '.join(sorted(info.name for info in infos[1:])) or '(none)'}"
            )
            if strict:
                raise PluginSettingError(f"{message}. Fix the name in {var} (or unset {ENV_STRICT} to go on without it)")
            warnings.warn(f"{message}; the name is ignored", PluginWarning, stacklevel=2)
    return registry, infos


def _failed(info: PluginInfo, exc: BaseException, strict: bool) -> None:
    info.status, info.error, info.heads = "failed", _describe(exc), []
    if strict:
        raise PluginError(
            f"plugin {info.name!r} ({info.distribution} {info.version}) failed to load: {info.error}"
            f" (unset {ENV_STRICT} to skip failing plugins)"
        ) from exc


def _entry_points() -> list[metadata.EntryPoint]:
    unique: dict[tuple[str, str], metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        # A distribution visible through two sys.path entries lists its entry points twice: the first one counts.
        unique.setdefault((ep.name, ep.value), ep)
    return [unique[key] for key in sorted(unique)]


def _headreg_requirement(ep: metadata.EntryPoint) -> str | None:
    if ep.dist is None:
        return None
    for req in ep.dist.requires or ():
        if re.match(r"^headreg\b(?![-_.])", req, re.IGNORECASE) and "extra ==" not in req:
            return req.strip()
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}): the plugin called sys.exit() while loading"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt raised by the plugin while loading"
    return f"{type(exc).__name__}: {exc}"


def _register_plugin(
    pm: pluggy.PluginManager, registry: Registry, info: PluginInfo, module: Any, requirement: str | None
) -> None:
    hook = getattr(module, "register_heads", None)
    if hook is not None and not callable(hook):
        raise PluginError(f"its register_heads is a {type(hook).__name__}, not a function decorated with @hookimpl")
    try:
        pm.register(module, name=f"{info.distribution}:{info.name}")
    except pluggy.PluginValidationError as exc:
        raise PluginError(_newer_hook_message(info, module, requirement, exc)) from exc
    try:
        impls = [impl for impl in pm.hook.register_heads.get_hookimpls() if impl.plugin is module]
        if not impls:
            raise PluginError("it implements no hook: define register_heads(register) decorated with @headreg.hookimpl")
        staged: list[tuple[HeadSpec, bool]] = []
        offered = {"register": _make_register(info, staged)}
        for impl in impls:
            impl.function(**{name: offered[name] for name in impl.argnames})
        for spec, override in staged:
            if override and any(label in registry for label in (spec.name, *spec.aliases)):
                _check_importable(spec)
        _commit(registry, staged)
    except BaseException:
        pm.unregister(module)
        raise
    info.heads = [spec.name for spec, _ in staged]


def _check_importable(spec: HeadSpec) -> None:
    """An override replaces a working head: it must at least point at code that exists, or it fails instead.

    The postprocess (numpy) is imported; the class's module is only located (importing it imports torch).
    """
    module = spec.cls.partition(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        found, reason = None, f"{type(exc).__name__}: {exc}"
    else:
        reason = "no such module"
    if found is None:
        raise PluginError(
            f"head {spec.name!r} overrides an installed head but its cls {spec.cls!r} cannot be found ({reason}); "
            "the head it would replace stays"
        )
    if spec.postprocess is not None:
        spec.load_postprocess()


def _newer_hook_message(info: PluginInfo, module: Any, requirement: str | None, exc: Exception) -> str:
    """Say which hook arguments the plugin asks for that this headreg lacks, and which headreg it needs."""
    unknown = []
    for name, spec in inspect.getmembers(hookspecs, inspect.isfunction):
        impl = getattr(module, name, None)
        if callable(impl) and hasattr(impl, f"{hookspecs.PROJECT}_impl"):
            offered = set(inspect.signature(spec).parameters)
            unknown += [f"{name}({arg})" for arg in inspect.signature(impl).parameters if arg not in offered]
    asked = f"its hooks ask for {', '.join(unknown)}" if unknown else f"pluggy rejected it ({exc})"
    needs = f"it requires {requirement}" if requirement else "it declares no headreg version"
    upgrade = f"pip install -U '{requirement}'" if requirement else "pip install -U headreg"
    return (
        f"plugin {info.distribution} {info.version} needs a newer headreg than this one ({__version__}): {asked}, "
        f"which headreg {__version__} does not offer; {needs}. Upgrade headreg ({upgrade}) or install an older "
        f"{info.distribution}."
    )


def _commit(registry: Registry, staged: list[tuple[HeadSpec, bool]]) -> None:
    """Add a plugin's heads all or none, so a collision never leaves half a plugin registered."""
    trial = Registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for spec in registry.specs():
            trial.add(spec)
        for spec, override in staged:
            trial.add(spec, override=override)
    for spec, override in staged:
        registry.add(spec, override=override)


def _make_register(info: PluginInfo, staged: list[tuple[HeadSpec, bool]]):
    def register(
        name: str,
        cls: str,
        *,
        task: str = "custom",
        postprocess: str | None = None,
        aliases: tuple[str, ...] | list[str] = (),
        description: str = "",
        level: str = "sequence",
        override: bool = False,
        postprocess_contract: int = 1,
        result_fields: dict[str, str] | None = None,
    ) -> HeadSpec:
        """Register one head. ``cls`` and ``postprocess`` are ``"module:attr"`` strings, imported on use.

        ``postprocess_contract=2``: the postprocess takes each row's own outputs (the current contract).
        ``result_fields``: the fields of its result dicts, name -> Spark DDL type (``{"label": "string"}``).
        """
        # Checked before the spec is built: a string for aliases would become one alias per character.
        if not isinstance(aliases, (list, tuple)) or not all(isinstance(alias, str) for alias in aliases):
            raise TypeError(f"register(aliases=...) must be a list or tuple of strings, got {aliases!r:.60}")
        if not isinstance(override, bool):
            raise TypeError(f"register(override=...) must be True or False, got {override!r:.40}")
        if result_fields is not None and not isinstance(result_fields, dict):
            raise TypeError(f"register(result_fields=...) must be a dict of field name -> type, got {result_fields!r:.60}")
        spec = HeadSpec(
            name=name,
            cls=cls,
            task=task,
            description=description,
            aliases=tuple(aliases),
            postprocess=postprocess,
            level=level,
            postprocess_contract=postprocess_contract,
            result_fields=None if result_fields is None else tuple(result_fields.items()),
            plugin=info.distribution,
            version=info.version,
        )
        validate_spec(spec)
        staged.append((spec, override))
        return spec

    return register

