"""Pooling: turn a backbone's hidden states into one vector per sequence (``pooled_output``).

``auto`` reproduces what transformers' own ``*ForSequenceClassification`` does for the architecture, so a
head imported from a transformers checkpoint keeps its weights and its outputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN

from .errors import HeadConfigError

STRATEGIES = ("auto", "cls", "pooler", "mean", "max", "last")

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
class PoolingConfig:
    """A resolved pooling: the strategy plus an optional dense + activation (+ LayerNorm) projection."""

    strategy: str = "cls"
    projection: bool = False
    activation: str | None = None
    norm: bool = False
    bias: bool = True
    norm_bias: bool = True
    norm_eps: float = 1e-5

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    """Resolve a user's ``pooling=`` option against a backbone."""
    if isinstance(pooling, PoolingConfig):
        return pooling
    if isinstance(pooling, dict):
        return PoolingConfig(**pooling)
    if pooling not in STRATEGIES:
        raise HeadConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(STRATEGIES)}")
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


_POOL = {"cls": first_token, "mean": mean_pool, "max": max_pool, "last": last_token}


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
        return pooled
