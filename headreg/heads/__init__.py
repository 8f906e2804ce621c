"""Built-in heads. They register through the same hook as plugins, so they get no special treatment."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_heads(register):
    register(
        name="seq_cls",
        aliases=("text-classification", "sequence-classification"),
        task="sequence-classification",
        cls="headreg.heads.seq_cls:SeqClsHead",
        postprocess="headreg.runtime.postprocess:seq_cls",
        description="Single-label classification: softmax over num_labels, cross-entropy loss.",
    )
    register(
        name="multi_label",
        aliases=("multi-label-classification",),
        task="multi-label-classification",
        cls="headreg.heads.multi_label:MultiLabelHead",
        postprocess="headreg.runtime.postprocess:multi_label",
        description="Multi-label classification: a sigmoid per label, BCE loss, per-label thresholds.",
    )
    register(
        name="regression",
        aliases=("text-regression",),
        task="regression",
        cls="headreg.heads.regression:RegressionHead",
        postprocess="headreg.runtime.postprocess:regression",
        description="Regression: num_labels real values per text, MSE loss.",
    )
    register(
        name="token_cls",
        aliases=("token-classification", "ner"),
        task="token-classification",
        level="token",
        cls="headreg.heads.token_cls:TokenClsHead",
        postprocess="headreg.runtime.postprocess:token_cls",
        description="Token classification (NER, POS): a label per token, entity spans aggregated to words.",
    )
