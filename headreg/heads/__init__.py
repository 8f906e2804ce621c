"""Built-in heads. They register through the same hook as plugins, so they get no special treatment."""

from __future__ import annotations

from ..hookspecs import hookimpl

# The result fields each built-in head declares: name -> Spark DDL type; the first is the head's decision. Token
# heads declare their entity spans: their per-token rows stay in Predictor.predict's results and would multiply
# the size of a table.
ENTITY_TYPE = "struct<label:string,score:double,start:int,end:int,word:string,sequence:int>"
FIELDS = {
    "seq_cls": {"label": "string", "score": "double", "scores": "map<string,double>"},
    "multi_label": {"labels": "array<string>", "scores": "map<string,double>"},
    "regression": {"values": "array<double>"},
    "token_cls": {"entities": f"array<{ENTITY_TYPE}>"},
}


@hookimpl
def register_heads(register):
    register(
        name="seq_cls",
        aliases=("text-classification", "sequence-classification"),
        task="sequence-classification",
        cls="headreg.heads.seq_cls:SeqClsHead",
        postprocess="headreg.runtime.postprocess:seq_cls",
        postprocess_contract=2,
        result_fields=FIELDS["seq_cls"],
        description="Single-label classification: softmax over num_labels, cross-entropy loss.",
    )
    register(
        name="multi_label",
        aliases=("multi-label-classification",),
        task="multi-label-classification",
        cls="headreg.heads.multi_label:MultiLabelHead",
        postprocess="headreg.runtime.postprocess:multi_label",
        postprocess_contract=2,
        result_fields=FIELDS["multi_label"],
        description="Multi-label classification: a sigmoid per label, BCE loss, per-label thresholds.",
    )
    register(
        name="regression",
        aliases=("text-regression",),
        task="regression",
        cls="headreg.heads.regression:RegressionHead",
        postprocess="headreg.runtime.postprocess:regression",
        postprocess_contract=2,
        result_fields=FIELDS["regression"],
        description="Regression: num_labels real values per text, MSE loss.",
    )
    register(
        name="token_cls",
        aliases=("token-classification", "ner"),
        task="token-classification",
        level="token",
        cls="headreg.heads.token_cls:TokenClsHead",
        postprocess="headreg.runtime.postprocess:token_cls",
        postprocess_contract=2,
        result_fields=FIELDS["token_cls"],
        description="Token classification (NER, POS): a label per token, entity spans aggregated to words.",
    )
