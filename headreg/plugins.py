"""Plugin loading: built-in heads and entry-point plugins register through the same hook.

Each plugin is loaded in isolation: one that fails to import, fails hook validation, raises in its hook
or collides with another head is recorded as failed and leaves the others working
(``HEADREG_STRICT_PLUGINS=1`` raises instead). Allow and deny lists are applied before a plugin is imported.
"""

from __future__ import annotations

import inspect
import os
import re
import threading
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import __version__, hookspecs
from .errors import PluginError
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


def get_registry() -> Registry:
    return _load()[0]


def plugin_infos() -> list[PluginInfo]:
    return list(_load()[1])


def reset() -> None:
    """Forget loaded plugins so the next registry query reloads them (after changing the environment)."""
    global _state
    with _lock:
        _state = None


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
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)

    from . import heads as builtin_heads

    builtin = PluginInfo("headreg", "headreg", __version__, "loaded")
    # The built-ins failing is a headreg bug, never a plugin's: let it raise.
    _register_plugin(pm, registry, builtin, builtin_heads, requirement=None)
    infos.append(builtin)

    allow, deny = _env_set(ENV_LOAD), _env_set(ENV_DISABLE) or set()
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist is not None else ep.value.split(":")[0]
        version = ep.dist.version if ep.dist is not None else ""
        info = PluginInfo(ep.name, dist, version, "loaded")
        infos.append(info)
        keys = {_normalize(ep.name), _normalize(dist)}
        if allow is not None and not keys & allow:
            info.status, info.error = "disabled", f"not listed in {ENV_LOAD}"
            continue
        if keys & deny:
            info.status, info.error = "disabled", f"listed in {ENV_DISABLE}"
            continue
        try:
            module = ep.load()
            _register_plugin(pm, registry, info, module, requirement=_headreg_requirement(ep))
        except Exception as exc:  # a plugin may raise anything; record it, keep the others working
            info.status, info.error, info.heads = "failed", _describe(exc), []
            if strict:
                raise PluginError(
                    f"plugin {ep.name!r} ({dist} {version}) failed to load: {info.error}"
                    f" (unset {ENV_STRICT} to skip failing plugins)"
                ) from exc
    return registry, infos


def _entry_points() -> list[metadata.EntryPoint]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        # A distribution visible through two sys.path entries lists its entry points twice.
        key = (ep.name, ep.value)
        if key not in seen:
            seen.add(key)
            unique.append(ep)
    return sorted(unique, key=lambda ep: (ep.name, ep.value))


def _headreg_requirement(ep: metadata.EntryPoint) -> str | None:
    if ep.dist is None:
        return None
    for req in ep.dist.requires or ():
        if re.match(r"^headreg\b(?![-_.])", req, re.IGNORECASE) and "extra ==" not in req:
            return req.strip()
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _register_plugin(
    pm: pluggy.PluginManager, registry: Registry, info: PluginInfo, module: Any, requirement: str | None
) -> None:
    try:
        pm.register(module, name=f"{info.distribution}:{info.name}")
    except pluggy.PluginValidationError as exc:
        raise PluginError(_newer_hook_message(info, module, requirement, exc)) from exc
    try:
        impls = [impl for impl in pm.hook.register_heads.get_hookimpls() if impl.plugin is module]
        staged: list[tuple[HeadSpec, bool]] = []
        offered = {"register": _make_register(info, staged)}
        for impl in impls:
            impl.function(**{name: offered[name] for name in impl.argnames})
        _commit(registry, staged)
    except BaseException:
        pm.unregister(module)
        raise
    info.heads = [spec.name for spec, _ in staged]


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
    ) -> HeadSpec:
        """Register one head. ``cls`` and ``postprocess`` are ``"module:attr"`` strings, imported on use."""
        spec = HeadSpec(
            name=name,
            cls=cls,
            task=task,
            description=description,
            aliases=tuple(aliases),
            postprocess=postprocess,
            level=level,
            plugin=info.distribution,
            version=info.version,
        )
        validate_spec(spec)
        staged.append((spec, override))
        return spec

    return register
