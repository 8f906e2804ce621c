"""crf: a linear-chain CRF over per-token emissions (token classification, NER).

The head computes emissions (``logits``, one score per token and tag) with the usual MLP and owns a
transition matrix plus start/end scores. Training minimises the CRF negative log-likelihood; tokens labelled
-100 (special tokens, sub-word continuations) are marginalised out rather than cut from the chain, so the
chain the loss sees is the chain Viterbi decodes. Padding is skipped wherever it sits (left or right).

The exported graph returns the emissions and the transition scores; decoding happens in the runtime with
:func:`headreg_plugin_crf.postprocess.viterbi`, the numpy twin of :func:`viterbi_decode` below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from headreg.heads.base import MLP, Head, check_class_range, expect_labels
from headreg.heads.token_cls import TokenClsConfig

# Scores of tags a label rules out. Finite, because logsumexp over all -inf rows gives NaN gradients.
_FORBIDDEN = -1e4


@dataclass
class CRFConfig(TokenClsConfig):
    """``aggregation`` picks a word's tag from the Viterbi path: its first sub-token's ("first"), the most
    frequent ("average"), the most confident token's ("max"); "none" keeps sub-tokens apart."""


class CRFHead(Head):
    config_class = CRFConfig
    level = "token"
    problem_type = "token_classification"

    def __init__(self, config: CRFConfig, hidden_size: int):
        super().__init__(config, hidden_size)
        num_tags = config.num_labels
        self.classifier = MLP(hidden_size, num_tags, config)
        # pytorch-crf's initialisation: small random scores, so no two paths tie before training.
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))
        self.start_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end_transitions = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))

    def forward(self, pooled_output, sequence_output, attention_mask):
        return self.classifier(sequence_output)

    def loss(self, logits: torch.Tensor, labels, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of the labelled paths; -100 labels and padding are not scored."""
        labels = expect_labels(
            "crf",
            labels,
            shape=tuple(logits.shape[:2]),
            integer=True,
            hint=" Pass one tag id per token, -100 for tokens to ignore (special tokens, sub-words).",
        )
        check_class_range("crf", labels, self.config.num_labels)
        labels = labels.long().to(logits.device)
        mask = attention_mask.to(logits.device).bool()
        labelled = (labels != -100) & mask
        allowed = torch.ones_like(logits, dtype=torch.bool)
        one_hot = torch.nn.functional.one_hot(labels.clamp(min=0), self.config.num_labels).bool()
        allowed = torch.where(labelled.unsqueeze(-1), one_hot, allowed)
        emissions = logits.float()
        log_z = self.log_partition(emissions, mask)
        log_gold = self.log_partition(emissions.masked_fill(~allowed, _FORBIDDEN), mask)
        rows = labelled.any(dim=1)
        return ((log_z - log_gold) * rows).sum() / rows.sum().clamp(min=1)

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log of the summed scores of every tag path through the unmasked tokens, per row."""
        return crf_log_partition(
            emissions, mask, self.start_transitions, self.transitions, self.end_transitions
        )

    def decode(self, logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Viterbi tags per token (-1 on padding): what the runtime's postprocess returns for the same inputs."""
        with torch.no_grad():
            return viterbi_decode(
                logits.float(), attention_mask.bool(), self.start_transitions, self.transitions, self.end_transitions
            )

    def export_extras(self) -> dict[str, torch.Tensor]:
        return {
            "transitions": self.transitions,
            "start_transitions": self.start_transitions,
            "end_transitions": self.end_transitions,
        }

    def manifest(self) -> dict[str, Any]:
        return {**super().manifest(), "aggregation": self.config.aggregation, "decoder": "viterbi"}

    def example_labels(self, logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Random tags for ``headreg.testing.check_head``: -100 on padding and the first token."""
        labels = torch.randint(0, self.config.num_labels, tuple(logits.shape[:2]))
        labels[:, 0] = -100
        return labels.masked_fill(attention_mask.cpu() == 0, -100)


def crf_log_partition(
    emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, transitions: torch.Tensor, end: torch.Tensor
) -> torch.Tensor:
    """The forward algorithm. ``emissions`` (B, T, K), ``mask`` (B, T) bool; returns (B,).

    A row's chain starts at its first unmasked token and skips masked ones, so left padding, right
    padding and holes all score like the unpadded sequence.
    """
    batch, length, _ = emissions.shape
    alpha = emissions.new_zeros(batch, emissions.shape[-1])
    started = torch.zeros(batch, dtype=torch.bool, device=emissions.device)
    for t in range(length):
        scores = emissions[:, t]
        step = torch.logsumexp(alpha.unsqueeze(2) + transitions, dim=1) + scores
        fresh = start + scores
        current = mask[:, t]
        alpha = torch.where(current.unsqueeze(1), torch.where(started.unsqueeze(1), step, fresh), alpha)
        started = started | current
    return torch.logsumexp(alpha + end, dim=1)


def viterbi_decode(
    emissions: torch.Tensor, mask: torch.Tensor, start: torch.Tensor, transitions: torch.Tensor, end: torch.Tensor
) -> torch.Tensor:
    """The best tag path per row, (B, T) int64 with -1 on masked tokens.

    Kept step for step identical to the numpy ``viterbi`` (same sums, same first-index tie-breaking),
    so runtime and PyTorch agree exactly on the same emissions.
    """
    batch, length, num_tags = emissions.shape
    score = emissions.new_zeros(batch, num_tags)
    started = torch.zeros(batch, dtype=torch.bool, device=emissions.device)
    keep = torch.arange(num_tags, device=emissions.device).expand(batch, num_tags)
    backpointers = []
    for t in range(length):
        scores = emissions[:, t]
        best, previous = (score.unsqueeze(2) + transitions).max(dim=1)
        current = mask[:, t]
        chained = (started & current).unsqueeze(1)
        score = torch.where(
            current.unsqueeze(1), torch.where(started.unsqueeze(1), best + scores, start + scores), score
        )
        # A masked or first token points at itself, so backtracking carries the tag across it.
        backpointers.append(torch.where(chained, previous, keep))
        started = started | current
    tag = (score + end).argmax(dim=1)
    tags = [tag]
    for t in range(length - 1, 0, -1):
        tag = backpointers[t].gather(1, tag.unsqueeze(1)).squeeze(1)
        tags.append(tag)
    path = torch.stack(tags[::-1], dim=1)
    return path.masked_fill(~mask, -1)
