"""Several heads on one backbone: one forward pass, pooled features once per distinct pooling.

>>> model = attach_heads(backbone, {                                            # doctest: +SKIP
...     "sentiment": ("seq_cls", {"num_labels": 3}),
...     "entities": ("token_cls", {"num_labels": 5}),
... }, pooling="auto", loss_weights={"entities": 0.5})
>>> out = model(input_ids=ids, attention_mask=mask, labels={"sentiment": y1})   # doctest: +SKIP
>>> out.loss, out.logits["sentiment"], out.logits["entities"]                   # doctest: +SKIP

A head whose labels are missing from a batch adds nothing to the loss, so a Trainer can mix batches
labelled for different tasks. ``model.add_head(name, head, **options)`` grows a model (a fine-tuned
single-head model joins with ``attach_heads(model, {...}, keep_as="sentiment")``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .errors import BackboneError, HeadConfigError, LabelError, SaveLoadError
from .heads.base import Head
from .files import MODEL_CONFIG
from .model import (
    BackboneModel,
    HeadedModel,
    Member,
    _check_backbone,
    build_head,
    hidden_size_of,
    installed_head,
    load_backbone,
    load_head_weights,
    save_model,
)
from .pooling import Pooler, PoolingConfig
from .registry import HeadSpec
from .saved import MEMBER_NAME

POOLED = "pooled_output"


@dataclass
class MultiHeadOutput(ModelOutput):
    """What a MultiHeadModel returns: the weighted loss and each head's logits and pooled features by head name.

    Dicts of tensors are what transformers' Trainer gathers and concatenates in its prediction loop.
    """

    loss: torch.Tensor | None = None
    logits: dict[str, torch.Tensor] | None = None
    pooled_output: dict[str, torch.Tensor] | None = None


def pooling_key(config: PoolingConfig) -> str:
    """A readable module name for a pooling: ``cls``, ``mean``, ``pooler``, ``cls_tanh`` ..."""
    key = config.strategy
    if config.projection:
        key = f"{key}_{config.activation or 'linear'}{'_norm' if config.norm else ''}"
    return key + ("_dense" if config.dense else "") + ("_normalize" if config.normalize else "")


class MultiHeadModel(BackboneModel):
    """A backbone with named heads. ``forward`` returns :class:`MultiHeadOutput`.

    ``poolers`` holds one pooler per distinct pooling (heads with the same pooling share it, so it is
    computed once per pass); ``heads`` holds the heads by name, in the order they were added.
    """

    multi_head = True

    def __init__(self, backbone: PreTrainedModel):
        super().__init__(backbone)
        self.poolers = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.specs: dict[str, HeadSpec] = {}
        self.head_pooling: dict[str, str] = {}
        self.loss_weights: dict[str, float] = {}

    @property
    def head_names(self) -> list[str]:
        return list(self.heads)

    # --- building -------------------------------------------------------------------------------------------------

    def add_head(
        self,
        name: str,
        head: str,
        *,
        pooling: str | dict | PoolingConfig = "auto",
        loss_weight: float = 1.0,
        **options: Any,
    ) -> "MultiHeadModel":
        """Add the registered head ``head`` under ``name`` (``options``: its config fields); returns the model."""
        spec, module, pooling_config = build_head(self.backbone, head, pooling, options)
        # A fresh head shares the pooler of its pooling (and so its projection, trained jointly) when there is one.
        pooler = next((p for p in self.poolers.values() if p.config == pooling_config), None)
        return self._add(name, module, spec, pooler or Pooler(pooling_config, hidden_size_of(self.backbone.config)),
                         loss_weight)

    def add_model(self, name: str, model: HeadedModel, *, loss_weight: float = 1.0) -> "MultiHeadModel":
        """Add a (fine-tuned) single-head model's head and pooler under ``name``; it must share this backbone."""
        if not isinstance(model, HeadedModel):
            raise TypeError(f"add_model takes a HeadedModel, got {type(model).__name__}")
        if model.backbone is not self.backbone:
            raise HeadConfigError(
                f"head {name!r}: that model has its own backbone; heads joining a model must share its backbone "
                "(attach_heads(model, {...}) starts a multi-head model from a single-head one)"
            )
        return self._add(name, model.head, model.spec, model.pooler, loss_weight)

    def _add(self, name: str, head: Head, spec: HeadSpec, pooler: Pooler, loss_weight: float) -> "MultiHeadModel":
        if not isinstance(name, str) or not MEMBER_NAME.match(name) or name == POOLED:
            raise HeadConfigError(
                f"head name {name!r} must start with a letter and hold only letters, digits, '_' and '-' (at most "
                "64 characters): it names the head's ONNX outputs ('{name}.logits')"
            )
        if name in self.heads:
            raise HeadConfigError(f"this model already has a head named {name!r}; its heads are {self.head_names}")
        weight = float(loss_weight)
        if not weight >= 0:
            raise HeadConfigError(f"loss weight of head {name!r} must be >= 0, got {loss_weight!r}")
        self.head_pooling[name] = self._pooler_key(pooler)
        self.heads[name] = head
        self.specs[name] = spec
        self.loss_weights[name] = weight
        device = next(self.backbone.parameters()).device
        self.to(device)
        head.train(self.backbone.training)
        return self

    def _pooler_key(self, pooler: Pooler) -> str:
        """The key of this pooler or an equal one already here (same config and weights), else a new key.

        A trained pooler with a projection keeps its own weights unless they equal an existing pooler's.
        """
        for key, existing in self.poolers.items():
            if existing is pooler:
                return key
            if existing.config == pooler.config and _same_weights(existing, pooler):
                return key
        base = pooling_key(pooler.config)
        key, n = base, 2
        while key in self.poolers:
            key, n = f"{base}_{n}", n + 1
        self.poolers[key] = pooler
        return key

    # --- running ----------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> MultiHeadOutput:
        """Every head's logits (and pooled features) by name; ``labels`` by head name give the weighted loss."""
        if labels is not None and not isinstance(labels, Mapping):
            raise LabelError(
                f"a multi-head model takes labels as a dict by head name, e.g. labels={{{self.head_names[0]!r}: y}}; "
                f"got {type(labels).__name__}. Its heads are {self.head_names}."
            )
        unknown = sorted(set(labels or {}) - set(self.heads))
        if unknown:
            raise LabelError(f"labels for unknown head(s) {unknown}; this model's heads are {self.head_names}")
        pooled, logits, mask = self._run(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, **kwargs)
        loss = None
        for name, target in (labels or {}).items():
            if target is None or _all_ignored(target) or self.loss_weights[name] == 0:
                continue
            term = self.loss_weights[name] * self.heads[name].loss(logits[name], target, mask)
            loss = term if loss is None else loss + term
        if loss is None and labels is not None:
            # Trainer needs a tensor loss even when no head has labels in this batch; zero keeps the graph.
            loss = sum(value.sum() * 0.0 for value in logits.values())
        by_head = {name: pooled[self.head_pooling[name]] for name in self.heads}
        return MultiHeadOutput(loss=loss, logits=logits, pooled_output=by_head)

    def _run(self, *args: Any, **kwargs: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        if not self.heads:
            raise HeadConfigError("this multi-head model has no heads yet; add one with model.add_head(name, head, ...)")
        sequence_output, mask, backbone_pooled = self.encode(*args, **kwargs)
        pooled = {
            key: self.poolers[key](sequence_output, mask, backbone_pooled)
            for key in dict.fromkeys(self.head_pooling[name] for name in self.heads)
        }
        logits = {
            name: head(pooled[self.head_pooling[name]], sequence_output, mask) for name, head in self.heads.items()
        }
        return pooled, logits, mask

    # --- export -----------------------------------------------------------------------------------------------------

    def pooled_output_names(self) -> dict[str, str]:
        """Pooling key -> graph output: ``pooled_output`` for the first pooling, ``pooled_output.<key>`` after."""
        # Order of first use by the heads (not of the ModuleDict), so a saved and reloaded model names them alike.
        keys = list(dict.fromkeys(self.head_pooling[name] for name in self.heads))
        return {key: POOLED if i == 0 else f"{POOLED}.{key}" for i, key in enumerate(keys)}

    def members(self) -> list[Member]:
        pooled_names = self.pooled_output_names()
        members = []
        for name, head in self.heads.items():
            key = self.head_pooling[name]
            outputs = {"logits": f"{name}.logits", "pooled_output": pooled_names[key]}
            outputs.update({extra: f"{name}.{extra}" for extra in head.export_extras()})
            members.append(Member(name, head, self.specs[name], self.poolers[key].config, outputs))
        return members

    def graph_output_names(self) -> list[str]:
        names = list(self.pooled_output_names().values())
        for name, head in self.heads.items():
            names += [f"{name}.logits", *(f"{name}.{extra}" for extra in head.export_extras())]
        return names

    def graph_outputs(self, input_ids, attention_mask, token_type_ids=None) -> dict[str, torch.Tensor]:
        """The exported graph's outputs by name, in graph order: pooled outputs, then each head's."""
        pooled, logits, _ = self._run(input_ids, attention_mask, token_type_ids)
        names = self.pooled_output_names()
        outputs = {names[key]: value for key, value in pooled.items()}
        for name, head in self.heads.items():
            outputs[f"{name}.logits"] = logits[name]
            outputs.update({f"{name}.{extra}": value for extra, value in head.export_extras().items()})
        return outputs

    # --- save / load ------------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory, *, overwrite: bool = False, tokenizer: Any = None) -> Path:
        """Backbone (transformers' format), heads and poolers (json + one safetensors file); never pickle."""
        config = {
            "format_version": 2,
            "heads": [
                {
                    "name": name,
                    "head": self.specs[name].name,
                    "plugin": self.specs[name].plugin,
                    "plugin_version": self.specs[name].version,
                    "head_config": head.config.to_dict(),
                    "pooling": self.head_pooling[name],
                    "loss_weight": self.loss_weights[name],
                }
                for name, head in self.heads.items()
            ],
            "poolings": {key: pooler.config.as_dict() for key, pooler in self.poolers.items()},
        }
        return save_model(self, save_directory, config, overwrite=overwrite, tokenizer=tokenizer)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)


def _all_ignored(labels: Any) -> bool:
    """Integer labels that are all -100 (a batch where no row is labelled for this head): no loss, not NaN."""
    labels = torch.as_tensor(labels)
    return not torch.is_floating_point(labels) and labels.numel() > 0 and bool((labels == -100).all())


HeadSpecs = Mapping[str, "str | tuple[str, Mapping[str, Any]] | HeadedModel"]


def attach_heads(
    model: PreTrainedModel | HeadedModel | MultiHeadModel,
    heads: HeadSpecs,
    *,
    pooling: str | dict | PoolingConfig = "auto",
    loss_weights: Mapping[str, float] | None = None,
    keep_as: str | None = None,
) -> MultiHeadModel:
    """Attach named heads to one backbone and return a :class:`MultiHeadModel`.

    ``heads`` maps a name to ``(registered head, {its options})``, a registered head name (default options)
    or a :class:`HeadedModel` on the same backbone. An option ``"pooling"`` inside a head's options overrides
    ``pooling`` for that head; heads with equal pooling share one pooler. ``loss_weights`` weight each head's
    loss (default 1).

    ``model`` is an ``AutoModel`` backbone; or a fine-tuned single-head :class:`HeadedModel`, whose head joins
    under ``keep_as`` (default: its head type's name) with its weights; or a :class:`MultiHeadModel`, which
    grows in place.
    """
    weights = dict(loss_weights or {})
    unknown = sorted(set(weights) - set(heads) - ({keep_as} if keep_as else set()))
    if isinstance(model, MultiHeadModel):
        unknown = [name for name in unknown if name not in model.heads]
    if unknown:
        raise HeadConfigError(f"loss_weights name head(s) {unknown} that are not being attached")
    if isinstance(model, MultiHeadModel):
        multi = model
        for name in set(weights) & set(multi.heads):
            multi.loss_weights[name] = float(weights[name])
    elif isinstance(model, HeadedModel):
        multi = MultiHeadModel(model.backbone)
        name = keep_as or model.spec.name
        multi.add_model(name, model, loss_weight=weights.get(name, 1.0))
    else:
        _check_backbone(model)
        multi = MultiHeadModel(model)
        multi.train(model.training)
    for name, entry in heads.items():
        weight = weights.get(name, 1.0)
        if isinstance(entry, HeadedModel):
            multi.add_model(name, entry, loss_weight=weight)
            continue
        if isinstance(entry, str):
            head, options = entry, {}
        elif isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], Mapping):
            head, options = entry[0], dict(entry[1])
        else:
            raise HeadConfigError(
                f"head {name!r}: expected (head name, {{options}}) such as ('seq_cls', {{'num_labels': 3}}), a head "
                f"name, or a HeadedModel; got {entry!r}"
            )
        options.setdefault("pooling", pooling)
        multi.add_head(name, head, loss_weight=weight, **options)
    return multi


def load_multi_head(directory: Path, saved: dict[str, Any], *, trust_remote_code: bool, strict: bool = True) -> MultiHeadModel:
    """Rebuild a MultiHeadModel from ``headreg_model.json``'s ``heads`` and ``poolings`` (already checked against
    saved.SAVED_MULTI_HEAD_SCHEMA) and its weights."""
    entries, poolings = saved["heads"], {key: PoolingConfig.from_dict(value) for key, value in saved["poolings"].items()}
    names = [entry["name"] for entry in entries]
    problems = [f"head name {n!r} appears twice" for n in dict.fromkeys(n for n in names if names.count(n) > 1)]
    problems += [f"head {e['name']!r} names pooling {e['pooling']!r}, not one of {sorted(poolings)}"
                 for e in entries if e["pooling"] not in poolings]
    if problems:
        raise SaveLoadError(f"{directory / MODEL_CONFIG} is corrupt: {'; '.join(problems)}. Save the model again.")
    specs = [installed_head(directory, e["head"], e.get("plugin"), e.get("plugin_version")) for e in entries]
    backbone = load_backbone(directory, trust_remote_code=trust_remote_code, strict=strict)
    model = MultiHeadModel(backbone)
    hidden = hidden_size_of(backbone.config)
    for key in dict.fromkeys(entry["pooling"] for entry in entries):
        model.poolers[key] = Pooler(poolings[key], hidden)
    for entry, spec in zip(entries, specs):
        try:
            _, head, _ = build_head(backbone, spec, poolings[entry["pooling"]], dict(entry["head_config"]))
        except (HeadConfigError, BackboneError) as exc:
            raise SaveLoadError(f"{directory / MODEL_CONFIG} has options that do not work: {exc}") from exc
        model.heads[entry["name"]] = head
        model.specs[entry["name"]] = spec
        model.head_pooling[entry["name"]] = entry["pooling"]
        model.loss_weights[entry["name"]] = float(entry.get("loss_weight", 1.0))
    model.to(next(backbone.parameters()).device)
    load_head_weights(model, directory, f"heads {names}")
    return model


class MultiHeadCollator:
    """Pads tokenized examples whose ``labels`` is a dict by head name into a batch for a MultiHeadModel.

    Per-token labels are padded with -100 on the tokenizer's padding side. An example without labels for a
    head gets -100 there (ignored) for class-id heads; a batch where no example has them leaves the head out
    of ``labels`` (it adds nothing to the loss). Float labels (regression, multi-label) cannot be ignored per
    row, so a batch must have them on every example or on none.

    >>> trainer = Trainer(model, args, train_dataset=ds, data_collator=MultiHeadCollator(tokenizer, model))  # doctest: +SKIP
    """

    def __init__(self, tokenizer: Any, model: MultiHeadModel):
        self.tokenizer = tokenizer
        self.levels = {name: head.level for name, head in model.heads.items()}

    def __call__(self, features: list[Mapping[str, Any]]) -> dict[str, Any]:
        labels = [dict(feature.get("labels") or {}) for feature in features]
        inputs = [{k: v for k, v in feature.items() if k != "labels"} for feature in features]
        batch = dict(self.tokenizer.pad(inputs, return_tensors="pt"))
        width = batch["input_ids"].shape[1]
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        stacked = {}
        for name in dict.fromkeys(name for row in labels for name in row):
            if name not in self.levels:
                raise LabelError(f"labels for unknown head {name!r}; the model's heads are {list(self.levels)}")
            values = [row.get(name) for row in labels]
            if self.levels[name] == "token":
                rows = torch.full((len(values), width), -100, dtype=torch.long)
                for index, value in enumerate(values):
                    if value is not None:
                        value = torch.as_tensor(value, dtype=torch.long)[:width]
                        span = slice(width - len(value), width) if left else slice(0, len(value))
                        rows[index, span] = value
                stacked[name] = rows
                continue
            present = [torch.as_tensor(v) for v in values if v is not None]
            if len(present) < len(values):
                if torch.is_floating_point(present[0]):
                    raise LabelError(
                        f"head {name!r} has float labels on some examples of this batch and none on others; "
                        "give every example of a batch its labels, or group examples by head"
                    )
                values = [-100 if v is None else v for v in values]
            stacked[name] = torch.stack([torch.as_tensor(v) for v in values])
        if stacked:
            batch["labels"] = stacked
        return batch
