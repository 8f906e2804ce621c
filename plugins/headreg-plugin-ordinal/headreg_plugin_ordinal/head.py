"""ordinal: ordinal regression over K ranks (star ratings, severity levels) in the CORAL style.

One shared score ``s`` per text and K-1 cut points give K-1 cumulative logits ``logit_k = s - cut_k``,
``sigmoid(logit_k) = P(rank > k)``. CORAL (Cao, Mirjalili, Raschka 2020) gets rank consistency from the
learned biases ending up ordered; here the cut points are ordered by construction (a cumulative sum of
softplus gaps), so ``P(rank > k)`` never increases with ``k`` for any weights, trained or not, and the
predicted rank ``#{k : P(rank > k) > 0.5}`` is always consistent with the per-threshold probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from headreg.errors import HeadConfigError
from headreg.heads.base import MLP, Head, HeadConfig, check_class_range, expect_labels


@dataclass
class OrdinalConfig(HeadConfig):
    """``num_labels`` is the number of ranks K (the logits have K-1 columns); ``id2label`` names the ranks
    from lowest to highest. ``importance_weights``: optional CORAL weights, one per threshold."""

    num_labels: int = 5
    importance_weights: list[float] | None = None

    def validate(self) -> None:
        super().validate()
        if self.num_labels < 2:
            raise HeadConfigError(f"ordinal needs num_labels >= 2 ranks, got {self.num_labels}")
        if self.importance_weights is not None:
            weights = [float(w) for w in self.importance_weights]
            if len(weights) != self.num_labels - 1 or any(w <= 0 for w in weights):
                raise HeadConfigError(
                    f"importance_weights needs num_labels - 1 = {self.num_labels - 1} positive values "
                    f"(one per threshold), got {self.importance_weights}"
                )


class OrdinalHead(Head):
    config_class = OrdinalConfig
    level = "sequence"
    problem_type = "ordinal_regression"

    def __init__(self, config: OrdinalConfig, hidden_size: int):
        super().__init__(config, hidden_size)
        self.scorer = MLP(hidden_size, 1, config)
        # softplus(raw) is the gap between neighbouring cut points; start them one logit apart.
        self.raw_gaps = nn.Parameter(torch.full((config.num_labels - 2,), math.log(math.expm1(1.0))))

    def cut_points(self) -> torch.Tensor:
        """The K-1 ordered cut points (ascending), centred on zero; the scorer's bias places them."""
        gaps = F.softplus(self.raw_gaps)
        cuts = torch.cat([gaps.new_zeros(1), torch.cumsum(gaps, dim=0)])
        return cuts - cuts.mean()

    def forward(self, pooled_output, sequence_output, attention_mask):
        return self.scorer(pooled_output) - self.cut_points()

    def loss(self, logits: torch.Tensor, labels, attention_mask) -> torch.Tensor:
        """CORAL loss: binary cross-entropy of each cumulative logit against ``rank > k``, summed over k."""
        labels = expect_labels(
            "ordinal",
            labels,
            shape=(logits.shape[0],),
            integer=True,
            hint=" Pass one rank per text, 0 for the lowest .. num_labels - 1 for the highest.",
        )
        check_class_range("ordinal", labels, self.config.num_labels)
        labels = labels.long().to(logits.device)
        levels = (labels.unsqueeze(1) > torch.arange(logits.shape[1], device=logits.device)).to(logits.dtype)
        per_threshold = F.logsigmoid(logits) * levels + (F.logsigmoid(logits) - logits) * (1 - levels)
        if self.config.importance_weights is not None:
            per_threshold = per_threshold * torch.as_tensor(self.config.importance_weights, dtype=logits.dtype)
        return -per_threshold.sum(dim=1).mean()

    def predict_rank(self, logits: torch.Tensor) -> torch.Tensor:
        """The rank per row: how many thresholds it passes (P(rank > k) > 0.5)."""
        return (logits > 0).sum(dim=-1)

    def manifest(self) -> dict[str, Any]:
        return {**super().manifest(), "num_ranks": self.config.num_labels}

    def example_labels(self, logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Labels for ``headreg.testing.check_head``: the top rank for every row (learnable on any backbone)."""
        return torch.full((logits.shape[0],), self.config.num_labels - 1)
