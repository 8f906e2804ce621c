"""The heads of a bundle at runtime: each head's postprocess, config and graph outputs.

A multi-head bundle's graph names a head's outputs ``{head}.logits``, ``{head}.<extra>`` and its pooled
features ``pooled_output`` or ``pooled_output.<pooling>``. Before a head's postprocess runs, its outputs are
renamed back to the head's own names (``logits``, ``pooled_output``, extras) and it gets a Context whose
manifest and config are its own, so every head's postprocess sees exactly what it sees in a single-head
bundle, and returns exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from ..errors import HeadregError
from . import postprocess as _post
from .inputs import InputError


@dataclass
class RuntimeHead:
    name: str  # the head's name in the bundle (its registry name in a single-head bundle)
    level: str
    postprocess: Callable[..., list[Any]]
    config: dict[str, Any]  # the manifest's postprocess_config of this head
    outputs: dict[str, str]  # the head's own output names -> the graph's
    manifest: dict[str, Any]  # the bundle manifest as a single-head bundle of this head would have it

    def run(self, outputs: Mapping[str, Any], context: _post.Context, config: Mapping[str, Any]) -> list[Any]:
        own = {local: outputs[graph] for local, graph in self.outputs.items() if graph in outputs}
        rows = self.postprocess(own, replace(context, manifest=self.manifest, config=config))
        if len(rows) != len(context.encodings):
            raise HeadregError(
                f"postprocess of head {self.name!r} returned {len(rows)} results for a batch of {len(context.encodings)}"
            )
        return rows


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


def split_options(heads: Sequence[RuntimeHead], options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per head, its postprocess config merged with the call's overrides.

    An option named after a head with a dict value (``sentiment={"threshold": 0.3}``) is for that head only;
    any other option goes to every head (``aggregation="max"`` reaches each token head).
    """
    names = {head.name for head in heads}
    shared = {key: value for key, value in options.items() if key not in names}
    merged = {}
    for head in heads:
        own = options.get(head.name, {})
        if not isinstance(own, Mapping):
            raise InputError(
                f"option {head.name}= is for head {head.name!r} and takes a dict of its options, e.g. "
                f"{head.name}={{'threshold': 0.3}}; got {own!r}"
            )
        overrides = {**shared, **own}
        if "threshold" in overrides:  # the multi_label head's config option is "threshold"; accept it here too
            overrides["thresholds"] = overrides.pop("threshold")
        merged[head.name] = {**head.config, **overrides}
    return merged


def select(heads: Sequence[RuntimeHead], wanted: Any) -> list[RuntimeHead]:
    """The heads a call asks for with ``heads=[...]`` (all of them for None), in the bundle's order."""
    if wanted is None:
        return list(heads)
    if isinstance(wanted, str):
        wanted = [wanted]
    try:
        wanted = list(wanted)
    except TypeError:
        raise InputError(f"heads= takes a list of head names, got {wanted!r}") from None
    names = [head.name for head in heads]
    unknown = [name for name in wanted if name not in names]
    if unknown or not wanted:
        what = f"unknown head(s) {unknown}" if unknown else "an empty list"
        raise InputError(f"heads= got {what}; this bundle's heads are: {', '.join(names)}")
    return [head for head in heads if head.name in wanted]


def graph_outputs(heads: Sequence[RuntimeHead]) -> list[str]:
    """The graph outputs these heads read: what a session needs to fetch for them (nothing else runs)."""
    return list(dict.fromkeys(graph for head in heads for graph in head.outputs.values()))
