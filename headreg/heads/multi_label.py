"""multi_label: independent yes/no per label (sigmoid, BCE-with-logits, per-label thresholds)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import HeadConfigError
from .base import HeadConfig, PooledHead, expect_labels


@dataclass
class MultiLabelConfig(HeadConfig):
    threshold: float | list[float] = 0.5

    def thresholds(self) -> list[float]:
        if isinstance(self.threshold, (int, float)):
            return [float(self.threshold)] * self.num_labels
        return [float(t) for t in self.threshold]

    def validate(self) -> None:
        super().validate()
        if self.num_labels < 2:
            raise HeadConfigError(
                "multi_label needs num_labels >= 2 (one sigmoid per label); for a single yes/no decision use "
                "seq_cls with num_labels=2"
            )
        if not isinstance(self.threshold, (int, float)) and len(self.threshold) != self.num_labels:
            raise HeadConfigError(f"threshold has {len(self.threshold)} values but num_labels={self.num_labels}")
        if any(not 0.0 < t < 1.0 for t in self.thresholds()):
            raise HeadConfigError(f"thresholds must lie strictly between 0 and 1, got {self.threshold}")


class MultiLabelHead(PooledHead):
    config_class = MultiLabelConfig
    problem_type = "multi_label_classification"

    def loss(self, logits: torch.Tensor, labels, attention_mask) -> torch.Tensor:
        labels = expect_labels(
            "multi_label",
            labels,
            shape=tuple(logits.shape),
            integer=False,
            hint=" Pass multi-hot rows of 0/1 per label, e.g. [[1., 0., 1.]].",
        )
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype).to(logits.device))

    def manifest(self):
        return {**super().manifest(), "thresholds": self.config.thresholds()}
