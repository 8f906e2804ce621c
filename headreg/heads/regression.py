"""regression: num_labels real-valued targets per sequence (identity output, MSE)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import HeadConfig, PooledHead, expect_labels


@dataclass
class RegressionConfig(HeadConfig):
    num_labels: int = 1


class RegressionHead(PooledHead):
    config_class = RegressionConfig
    problem_type = "regression"

    def loss(self, logits: torch.Tensor, labels, attention_mask) -> torch.Tensor:
        labels = torch.as_tensor(labels)
        if self.config.num_labels == 1 and labels.dim() == 1:
            labels = labels.unsqueeze(-1)
        labels = expect_labels(
            "regression",
            labels,
            shape=tuple(logits.shape),
            integer=False,
            hint=" Pass one float per example (num_labels=1) or one row of num_labels floats.",
        )
        if labels.dtype == torch.bool:
            labels = labels.float()
        return F.mse_loss(logits, labels.to(logits.dtype).to(logits.device))
