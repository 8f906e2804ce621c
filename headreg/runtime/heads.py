"""The heads of a bundle at runtime: each head's postprocess, config and graph outputs.

A multi-head bundle's graph names a head's outputs ``{head}.logits``, ``{head}.<extra>`` and its pooled
features ``pooled_output`` or ``pooled_output.<pooling>``. Before a head's postprocess runs, its outputs are
renamed back to the head's own names (``logits``, ``pooled_output``, extras) and it gets a Context whose
manifest and config are its own, so every head's postprocess sees exactly what it sees in a single-head
bundle, and returns exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import HeadregError
from . import postprocess as _post
from .inputs import RUNTIME_OPTIONS, InputError, OptionContext, RuntimeOption, check_options, register_option, valid_options


@dataclass
class RuntimeHead:
    name: str  # the head's name in the bundle (its registry name in a single-head bundle)
    level: str
    postprocess: Callable[..., list[Any]]
    config: dict[str, Any]  # the manifest's postprocess_config of this head
    outputs: dict[str, str]  # the head's own output names -> the graph's
    manifest: dict[str, Any]  # the bundle manifest as a single-head bundle of this head would have it
    labels: list[str] = field(default_factory=list)  # label names in id order
    fields: dict[str, str] | None = None  # declared result fields (name -> Spark DDL type), the decision first

    @property
    def options(self) -> OptionContext:
        """What this head's per-call options are checked against (as in its own single-head bundle)."""
        return OptionContext(self.manifest, self.labels, self.config)

    def run(self, rows: Sequence[Mapping[str, Any]], encodings: Sequence[Any], texts: Sequence[Any],
            config: Mapping[str, Any]) -> list[Any]:
        """The head's postprocess on rows' own outputs, renamed to the head's names; one result per row."""
        own = [{local: row[graph] for local, graph in self.outputs.items() if graph in row} for row in rows]
        context = _post.Context(manifest=self.manifest, config=config, encodings=encodings, texts=texts)
        results = self.postprocess(own, context)
        if not isinstance(results, (list, tuple)) or len(results) != len(rows):
            got = f"{len(results)} results" if isinstance(results, (list, tuple)) else f"a {type(results).__name__}"
            raise HeadregError(f"postprocess of head {self.name!r} returned {got} for {len(rows)} rows")
        return list(results)


def head_manifest(manifest: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest a single-head bundle of this head would carry (what postprocesses may read)."""
    view = dict(manifest)
    view.update(
        head={key: entry.get(key) for key in ("plugin", "plugin_version", "level", "problem_type", "postprocess", "config")}
        | {"name": entry.get("head")},
        postprocess_config=dict(entry.get("postprocess_config") or {}),
        num_labels=entry.get("num_labels"),
        id2label=dict(entry.get("id2label") or {}),
        pooling=entry.get("pooling"),
        multi_head=False,
    )
    view.pop("heads", None)
    return view


def _check_heads(value: Any, context: OptionContext) -> list[str]:
    names = [head["name"] for head in context.manifest.get("heads") or []]
    wanted = [value] if isinstance(value, str) else value
    if not isinstance(wanted, (list, tuple)) or not all(isinstance(name, str) for name in wanted):
        raise InputError(f"heads= takes a list of head names, got {value!r:.60}; this bundle's heads are: {', '.join(names)}")
    unknown = [name for name in wanted if name not in names]
    if unknown or not wanted:
        what = f"unknown head(s) {unknown}" if unknown else "an empty list"
        raise InputError(f"heads= got {what}; this bundle's heads are: {', '.join(names)}")
    return list(dict.fromkeys(wanted))


register_option(RuntimeOption("heads", _check_heads, lambda context: bool(context.manifest.get("multi_head")),
                              "the heads that answer (a multi-head bundle; default all)", runtime=True))


def check_head_options(
    options: Mapping[str, Any], heads: Sequence[RuntimeHead], bundle: OptionContext
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """A multi-head call's options: ``(config by selected head name, runtime options)``; InputError otherwise.

    Runtime options (``heads``, ``long_text``, ...) are checked once for the bundle. An option named after a head
    takes a dict of that head's options (``sentiment={"threshold": 0.3}``), checked as that head's single-head
    bundle checks them. Any other option goes to every selected head that takes it, and must fit one of them.
    """
    names = {head.name for head in heads}
    runtime_names = {name for name, option in RUNTIME_OPTIONS.items() if option.runtime and option.applies(bundle)}
    _, runtime = check_options({k: v for k, v in options.items() if k in runtime_names}, bundle)
    selected = [head for head in heads if head.name in runtime.get("heads", names)]
    shared = {k: v for k, v in options.items() if k not in runtime_names and k not in names}
    unknown = [k for k in shared if not any(k in valid_options(head.options) for head in selected)]
    if unknown:
        raise InputError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for heads "
            f"{', '.join(head.name for head in selected)}; valid options: {', '.join(valid_head_options(heads, bundle))}"
        )
    configs = {}
    for head in selected:
        own = options.get(head.name, {})
        if not isinstance(own, Mapping):
            raise InputError(
                f"option {head.name}= is for head {head.name!r} and takes a dict of its options, e.g. "
                f"{head.name}={{'threshold': 0.3}}; got {own!r:.60}"
            )
        mine = {k: v for k, v in shared.items() if k in valid_options(head.options)}
        overrides, inner_runtime = check_options({**mine, **own}, head.options)
        if inner_runtime:
            raise InputError(f"{', '.join(inner_runtime)} apply to the whole call, not to head {head.name!r}: pass them "
                             "as options of their own")
        configs[head.name] = {**head.config, **overrides}
    return configs, runtime


def valid_head_options(heads: Sequence[RuntimeHead], bundle: OptionContext) -> list[str]:
    """``heads``, the runtime's options, each head's name and every head's own options, sorted."""
    names = set(valid_options(bundle)) | {head.name for head in heads}
    for head in heads:
        names |= set(valid_options(head.options))
    return sorted(names)


def graph_outputs(heads: Sequence[RuntimeHead]) -> list[str]:
    """The graph outputs these heads read: what a session needs to fetch for them (nothing else runs)."""
    return list(dict.fromkeys(graph for head in heads for graph in head.outputs.values()))
