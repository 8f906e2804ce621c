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

from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import PreTrainedModel

from .errors import BackboneError, HeadConfigError, LabelError, SaveLoadError
from .files import MODEL_CONFIG
from .model import (  # noqa: F401  (MultiHeadModel, MultiHeadOutput, POOLED, pooling_key live in model.py now; importable here as before)
    POOLED,
    HeadedModel,
    MultiHeadModel,
    MultiHeadOutput,
    _check_backbone,
    build_head,
    hidden_size_of,
    installed_head,
    load_backbone,
    load_head_weights,
    pooling_key,
)
from .pooling import Pooler, PoolingConfig

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
    grows = isinstance(model, MultiHeadModel) and not isinstance(model, HeadedModel)  # a HeadedModel has one head
    if grows:
        unknown = [name for name in unknown if name not in model.heads]
    if unknown:
        raise HeadConfigError(f"loss_weights name head(s) {unknown} that are not being attached")
    if grows:
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
    specs = [installed_head(directory, entry) for entry in entries]
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
