"""template_head: a cosine-similarity classifier (torch; imported only when the head is attached).

``logits[i] = scale * cos(pooled_output, label_vector[i])``: a classifier whose logits stay within
``[-scale, scale]`` whatever the backbone's feature scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from headreg.errors import HeadConfigError
from headreg.heads.base import Head, HeadConfig, check_class_range, expect_labels


@dataclass
class TemplateConfig(HeadConfig):
    """Every field is saved with the model and restored by load_model; add your options here."""

    scale: float = 16.0

    def validate(self) -> None:
        super().validate()
        if not self.scale > 0:
            raise HeadConfigError(f"scale must be > 0, got {self.scale!r}")


class TemplateHead(Head):
    config_class = TemplateConfig
    level = "sequence"  # "token" heads get one row of logits per token
    problem_type = "single_label_classification"  # read by the built-in postprocess and Trainer's loss choice

    def __init__(self, config: TemplateConfig, hidden_size: int):
        super().__init__(config, hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.label_vectors = nn.Parameter(torch.randn(config.num_labels, hidden_size) * hidden_size**-0.5)

    def forward(self, pooled_output, sequence_output, attention_mask):
        text = F.normalize(self.dropout(pooled_output), dim=-1)
        return self.config.scale * text @ F.normalize(self.label_vectors, dim=-1).T

    def loss(self, logits, labels, attention_mask):
        labels = expect_labels("template_head", labels, shape=(logits.shape[0],), integer=True)
        check_class_range("template_head", labels, self.config.num_labels)
        return F.cross_entropy(logits, labels.long().to(logits.device))

    def manifest(self):
        """What the postprocess finds in ``context.config`` (stored in the bundle's headreg.json)."""
        return {**super().manifest(), "scale": self.config.scale}
