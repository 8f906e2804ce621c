"""Import heads from transformers task models, keeping their weights and their outputs.

>>> from transformers import AutoModelForSequenceClassification
>>> hf = AutoModelForSequenceClassification.from_pretrained("path/to/checkpoint")  # doctest: +SKIP
>>> model = from_transformers(hf)          # a HeadedModel with the same logits     # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import BackboneError
from .model import HeadedModel, attach_head
from .pooling import is_decoder, transformers_pooling

# model_type -> (pooler projection dense, pooler projection norm, classifier) as attribute paths on the task model.
_SEQUENCE_LAYOUT: dict[str, tuple[str | None, str | None, str]] = {
    "roberta": ("classifier.dense", None, "classifier.out_proj"),
    "xlm-roberta": ("classifier.dense", None, "classifier.out_proj"),
    "xlm-roberta-xl": ("classifier.dense", None, "classifier.out_proj"),
    "camembert": ("classifier.dense", None, "classifier.out_proj"),
    "data2vec-text": ("classifier.dense", None, "classifier.out_proj"),
    "electra": ("classifier.dense", None, "classifier.out_proj"),
    "distilbert": ("pre_classifier", None, "classifier"),
    "deberta": ("pooler.dense", None, "classifier"),
    "deberta-v2": ("pooler.dense", None, "classifier"),
    "modernbert": ("head.dense", "head.norm", "classifier"),
}
_PROBLEM_TO_HEAD = {
    "single_label_classification": "seq_cls",
    "multi_label_classification": "multi_label",
    "regression": "regression",
}


def _copy_linear(source: nn.Linear, target: nn.Linear) -> None:
    with torch.no_grad():
        target.weight.copy_(source.weight)
        if target.bias is not None:
            if source.bias is not None:
                target.bias.copy_(source.bias)
            else:
                target.bias.zero_()


def from_transformers(model: Any, *, head: str | None = None, name: str | None = None, **options: Any) -> Any:
    """Turn a transformers ``*ForSequenceClassification`` / ``*ForTokenClassification`` model into a HeadedModel.

    The head is chosen from the model's ``problem_type`` (single-label -> ``seq_cls``, multi-label ->
    ``multi_label``, regression -> ``regression``; token models -> ``token_cls``) unless ``head`` is given.
    Backbone weights are shared with ``model``, head weights are copied. With ``name``, the result is a
    one-head MultiHeadModel with that head name, ready to grow with ``add_head``.
    """
    headed = _from_transformers(model, head=head, **options)
    if name is None:
        return headed
    from .multihead import attach_heads

    return attach_heads(headed, {}, keep_as=name)


def _from_transformers(model: Any, *, head: str | None, **options: Any) -> HeadedModel:
    kind = type(model).__name__
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "base_model"):
        raise BackboneError(f"from_transformers needs a transformers task model, got {kind}")
    model_type = config.model_type
    if kind.endswith("ForTokenClassification"):
        level, default_head = "token", "token_cls"
        layout: tuple[str | None, str | None, str] = (None, None, "classifier")
        if model_type == "modernbert":
            raise BackboneError(
                "ModernBertForTokenClassification applies a per-token projection that token_cls does not have; "
                "attach a fresh token_cls head to its base model instead"
            )
    elif kind.endswith("ForSequenceClassification"):
        level = "sequence"
        problem = config.problem_type or ("regression" if config.num_labels == 1 else "single_label_classification")
        if problem not in _PROBLEM_TO_HEAD:
            raise BackboneError(
                f"{kind} has problem_type {problem!r}; headreg knows {', '.join(_PROBLEM_TO_HEAD)}. "
                "Pass head=... to choose the head yourself."
            )
        default_head = _PROBLEM_TO_HEAD[problem]
        layout = (None, None, "score") if is_decoder(config) else _SEQUENCE_LAYOUT.get(model_type, (None, None, "classifier"))
    else:
        raise BackboneError(
            f"from_transformers supports *ForSequenceClassification and *ForTokenClassification models, got {kind}"
        )
    dense_path, norm_path, classifier_path = layout
    try:
        classifier = model.get_submodule(classifier_path)
    except AttributeError as exc:
        raise BackboneError(f"{kind} has no {classifier_path!r} layer where headreg expects its classifier") from exc
    if not isinstance(classifier, nn.Linear):
        raise BackboneError(f"{kind}.{classifier_path} is a {type(classifier).__name__}, not a Linear layer")

    head_name = head or default_head
    head_options: dict[str, Any] = {"num_labels": config.num_labels, **options}
    if head_name != "regression" and getattr(config, "id2label", None) and len(config.id2label) == config.num_labels:
        head_options.setdefault("id2label", dict(config.id2label))
    # The classifier was trained on transformers' own pooling, whatever else the checkpoint's directory holds
    # (a sentence-transformers modules.json describes the embedding, not this head's input).
    pooling = transformers_pooling("auto", model.base_model, level)
    headed = attach_head(model.base_model, head_name, pooling=pooling, **head_options)
    pooler = headed.pooler
    if level == "sequence":
        if (dense_path is not None) != pooler.config.projection:
            raise BackboneError(
                f"{kind}: headreg's auto pooling for {model_type!r} does not match the model's classifier layout"
            )
        if dense_path is not None:
            _copy_linear(model.get_submodule(dense_path), pooler.dense)
        if norm_path is not None:
            pooler.norm.load_state_dict(model.get_submodule(norm_path).state_dict())
    out = getattr(getattr(headed.head, "classifier", None), "out", None)
    if not isinstance(out, nn.Linear) or out.weight.shape != classifier.weight.shape:
        raise BackboneError(f"head {head_name!r} has no classifier layer of shape {tuple(classifier.weight.shape)}")
    _copy_linear(classifier, out)
    headed.train(model.training)
    return headed
