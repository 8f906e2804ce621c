"""seq_cls: single-label sequence classification (softmax over num_labels, cross-entropy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import HeadConfigError
from .base import HeadConfig, PooledHead, check_class_range, expect_labels


class SeqClsHead(PooledHead):
    config_class = HeadConfig
    problem_type = "single_label_classification"

    def __init__(self, config: HeadConfig, hidden_size: int):
        if config.num_labels < 2:  # a softmax over one label answers that label with score 1.0, whatever the text
            raise HeadConfigError("seq_cls needs num_labels >= 2; for one real value per text use the 'regression' "
                                  "head (a transformers checkpoint with one label loads as regression)")
        super().__init__(config, hidden_size)

    def loss(self, logits: torch.Tensor, labels, attention_mask) -> torch.Tensor:
        labels = expect_labels(
            "seq_cls",
            labels,
            shape=(logits.shape[0],),
            integer=True,
            hint=" For multi-hot targets use the 'multi_label' head; for real-valued targets use 'regression'.",
        )
        check_class_range("seq_cls", labels, self.config.num_labels)
        return F.cross_entropy(logits, labels.long().to(logits.device))
