"""Pooling: turn a backbone's hidden states into one vector per sequence (``pooled_output``).

``auto`` follows the checkpoint as its authors meant it: a sentence-transformers checkpoint's ``modules.json``
(Pooling, Dense, Normalize; see headreg/sentence_modules.py) when the backbone was loaded from one, otherwise
what transformers' own ``*ForSequenceClassification`` does for the architecture, so a head imported from a
transformers checkpoint keeps its weights and its outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import torch
from torch import nn
from transformers.activations import ACT2FN

from .errors import HeadConfigError
from .pooling_names import ALIASES, STRATEGIES


# model_type -> the first-token projection its *ForSequenceClassification applies before the classifier.
_FIRST_TOKEN_PROJECTION = {
    "roberta": "tanh",
    "xlm-roberta": "tanh",
    "xlm-roberta-xl": "tanh",
    "camembert": "tanh",
    "data2vec-text": "tanh",
    "electra": "gelu",
    "distilbert": "relu",
}
_CONTEXT_POOLER = ("deberta", "deberta-v2")


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers ``Dense`` module after the pooling: ``activation(linear(x))``."""

    in_features: int
    out_features: int
    bias: bool = True
    activation: str | None = None  # an ACT2FN name; None: identity


@dataclass(frozen=True)
class PoolingConfig:
    """A resolved pooling: the strategy plus an optional dense + activation (+ LayerNorm) projection, then
    a sentence-transformers checkpoint's ``Dense`` layers and ``Normalize`` (L2) when it has them.

    ``weights``: the authored Dense layers' tensors (``dense.0.weight`` ...), loaded by :class:`Pooler`; not
    part of the configuration (a saved model keeps them in its head weights).
    """

    strategy: str = "cls"
    projection: bool = False
    activation: str | None = None
    norm: bool = False
    bias: bool = True
    norm_bias: bool = True
    norm_eps: float = 1e-5
    dense: tuple[DenseLayer, ...] = ()
    normalize: bool = False
    weights: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        # dense and normalize only when used: an ordinary pooling saves what earlier headreg versions read
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("dense", "normalize", "weights")}
        if self.dense:
            out["dense"] = [vars(layer).copy() for layer in self.dense]
        if self.normalize:
            out["normalize"] = True
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PoolingConfig":
        data = dict(data)
        data["dense"] = tuple(DenseLayer(**layer) for layer in data.get("dense") or ())
        return cls(**data)

    @property
    def authored(self) -> bool:
        """Whether this pooling carries a sentence-transformers checkpoint's own modules."""
        return bool(self.dense) or self.normalize

    def width(self, hidden_size: int) -> int:
        """Width of ``pooled_output`` for a backbone of ``hidden_size``."""
        return self.dense[-1].out_features if self.dense else hidden_size


def is_decoder(config: Any) -> bool:
    """A causal language model backbone (Llama, Qwen2, ...): pools its last non-padding token."""
    if getattr(config, "is_decoder", False):
        return True
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def resolve_pooling(pooling: str | PoolingConfig | dict, backbone: Any, level: str = "sequence") -> PoolingConfig:
    """Resolve a user's ``pooling=`` option against a backbone.

    ``auto``: the sentence-transformers modules of the checkpoint the backbone was loaded from, when it has a
    ``modules.json`` (:func:`authored_pooling`), else :func:`transformers_pooling`.
    """
    if isinstance(pooling, PoolingConfig):
        return pooling
    if isinstance(pooling, dict):
        known = [f.name for f in fields(PoolingConfig) if f.name != "weights"]
        unknown = sorted(set(pooling) - set(known), key=str)
        if unknown:
            raise HeadConfigError(f"pooling has no field(s) {', '.join(map(repr, unknown))}; its fields: "
                                  f"{', '.join(known)} (or name a strategy: {', '.join(STRATEGIES)})")
        return PoolingConfig.from_dict(pooling)
    pooling = ALIASES.get(pooling, pooling)
    if pooling not in STRATEGIES:
        raise HeadConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(STRATEGIES)}")
    if pooling == "auto":
        from .sentence_modules import checkpoint_directory

        directory = checkpoint_directory(backbone)
        authored = authored_pooling(directory) if directory is not None else None
        if authored is not None:
            return authored
    return transformers_pooling(pooling, backbone, level)


def authored_pooling(directory: Any, *, allow_bin: bool = False) -> PoolingConfig | None:
    """The PoolingConfig (with its Dense weights) of the sentence-transformers checkpoint in ``directory``, or None
    (:mod:`headreg.sentence_modules` reads the modules; this module owns what they become)."""
    from .sentence_modules import dense_weights, read_modules

    modules = read_modules(directory)
    if modules is None:
        return None
    weights = dense_weights(modules, allow_bin=allow_bin)
    return PoolingConfig(strategy=modules.strategy, dense=tuple(DenseLayer(**layer) for _, layer in modules.dense),
                         normalize=modules.normalize, weights=weights or None)


def transformers_pooling(pooling: str, backbone: Any, level: str = "sequence") -> PoolingConfig:
    """``pooling`` (``auto``: what transformers' own task model does for the architecture) for this backbone."""
    config = backbone.config
    has_pooler = getattr(backbone, "pooler", None) is not None
    if pooling == "pooler" and not has_pooler:
        raise HeadConfigError(
            f"pooling='pooler' needs a backbone with a pooler layer, and this {type(backbone).__name__} has none; "
            "use pooling='auto' or 'cls'"
        )
    if pooling != "auto":
        return PoolingConfig(strategy=pooling)
    if is_decoder(config):
        return PoolingConfig(strategy="last")
    if level == "token":
        # transformers' *ForTokenClassification models have no pooler: pooled_output is the first token.
        return PoolingConfig(strategy="cls")
    model_type = getattr(config, "model_type", "")
    if model_type in _FIRST_TOKEN_PROJECTION:
        return PoolingConfig(strategy="cls", projection=True, activation=_FIRST_TOKEN_PROJECTION[model_type])
    if model_type in _CONTEXT_POOLER:
        return PoolingConfig(strategy="cls", projection=True, activation=config.pooler_hidden_act)
    if model_type == "modernbert":
        return PoolingConfig(
            strategy=config.classifier_pooling,
            projection=True,
            activation=config.classifier_activation,
            norm=True,
            bias=config.classifier_bias,
            norm_bias=config.norm_bias,
            norm_eps=config.norm_eps,
        )
    if has_pooler:
        return PoolingConfig(strategy="pooler")
    return PoolingConfig(strategy="cls")


def first_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def mean_sqrt_len_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The token sum over the square root of the length (sentence-transformers' ``mean_sqrt_len_tokens``)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9).sqrt()


def max_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    masked = hidden.masked_fill(mask.unsqueeze(-1) == 0, torch.finfo(hidden.dtype).min)
    return masked.amax(1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding token per row; right and left padding alike.

    A max over the real positions, not an ArgMax: exported from int64 positions, ArgMax has no onnxruntime
    kernel (cohere's graph failed to load), while ReduceMax on int64 runs everywhere.
    """
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return (positions * (mask != 0).to(positions.dtype)).amax(-1)


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(mask)]


_POOL = {"cls": first_token, "mean": mean_pool, "max": max_pool, "mean_sqrt_len": mean_sqrt_len_pool, "last": last_token}


class Pooler(nn.Module):
    """Pools hidden states per :class:`PoolingConfig`; owns the projection weights when there is one."""

    def __init__(self, config: PoolingConfig, hidden_size: int):
        super().__init__()
        self.config = config
        if config.projection:
            self.dense = nn.Linear(hidden_size, hidden_size, bias=config.bias)
            self.activation = ACT2FN[config.activation] if config.activation else nn.Identity()
            self.norm = (
                nn.LayerNorm(hidden_size, eps=config.norm_eps, bias=config.norm_bias) if config.norm else nn.Identity()
            )
        if config.dense:
            self.dense_layers = nn.ModuleList(nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
                                              for layer in config.dense)
            self.dense_activations = [ACT2FN[layer.activation] if layer.activation else nn.Identity()
                                      for layer in config.dense]
            if config.weights is not None:
                with torch.no_grad():
                    self.dense_layers.load_state_dict(config.weights)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, backbone_pooled: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.config.strategy == "pooler":
            if backbone_pooled is None:
                raise HeadConfigError("pooling='pooler' but the backbone returned no pooler_output")
            return backbone_pooled
        pooled = _POOL[self.config.strategy](hidden, mask)
        if self.config.projection:
            pooled = self.norm(self.activation(self.dense(pooled)))
        for layer, activation in zip(getattr(self, "dense_layers", ()), getattr(self, "dense_activations", ())):
            pooled = activation(layer(pooled))
        if self.config.normalize:
            # torch.nn.functional.normalize's formula; written out because its expand_as traces to an ONNX
            # output whose width is symbolic, which the runtime would read as a per-token axis
            pooled = pooled / pooled.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-12)
        return pooled
