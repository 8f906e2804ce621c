"""token_cls: a label per token (NER, POS); cross-entropy that ignores -100 and padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..aggregation_names import AGGREGATIONS
from ..errors import HeadConfigError
from .base import MLP, Head, HeadConfig, check_class_range, expect_labels


@dataclass
class TokenClsConfig(HeadConfig):
    aggregation: str = "first"

    def validate(self) -> None:
        super().validate()
        if self.aggregation not in AGGREGATIONS:
            raise HeadConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")


class TokenClsHead(Head):
    config_class = TokenClsConfig
    level = "token"
    problem_type = "token_classification"

    def __init__(self, config: TokenClsConfig, hidden_size: int):
        super().__init__(config, hidden_size)
        self.classifier = MLP(hidden_size, config.num_labels, config)

    def forward(self, pooled_output, sequence_output, attention_mask):
        return self.classifier(sequence_output)

    def loss(self, logits: torch.Tensor, labels, attention_mask: torch.Tensor) -> torch.Tensor:
        labels = expect_labels(
            "token_cls",
            labels,
            shape=tuple(logits.shape[:2]),
            integer=True,
            hint=" Pass one class id per token, -100 for tokens to ignore (special tokens, sub-words).",
        )
        check_class_range("token_cls", labels, self.config.num_labels)
        labels = labels.long().to(logits.device).masked_fill(attention_mask == 0, -100)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    def manifest(self):
        return {**super().manifest(), "aggregation": self.config.aggregation}
