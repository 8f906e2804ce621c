"""The real MiniLM imported from transformers task models, exported, served by the Predictor: its results equal
transformers' own ``pipeline("text-classification")`` and ``pipeline("token-classification")`` (every
aggregation strategy) on varied real texts.
"""

from __future__ import annotations

import numpy as np
import pytest

from headreg.runtime import Predictor
from headreg.testing import SAMPLE_TEXTS

pytestmark = pytest.mark.slow  # the real MiniLM against transformers' pipelines

NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "B-ORG", 6: "I-ORG"}
TEXTS = [
    *SAMPLE_TEXTS,
    "Angela Merkel met Emmanuel Macron in Strasbourg to discuss the Franco-German budget.",
    "Unbelievably, the Wolkenkratzer in Zürich sold for CHF 12,500,000 — a record!",
    "  leading and trailing spaces  ",
    "Tabs\tand\nnewlines   mixed in, and an e-mail: jane.doe@example.com",
    "Emoji 🎉 and CJK 東京 in one line",
]
# torchscript traces MiniLM in ~4 s against dynamo's ~15-25 s here; the texts fit in 128 tokens. The exporter's
# own tests cover the dynamo graph against PyTorch, and PyTorch against onnxruntime is checked at every export.
EXPORT = dict(exporter="torchscript", max_length=128)  # ExportOptions fields


def _scaled(model, factor: float = 30.0):
    """A fresh classifier's logits are ~0.1 apart; scale them so decisions are clear-cut, not float ties."""
    import torch

    with torch.no_grad():
        model.classifier.weight.mul_(factor)
    return model.eval()


@pytest.fixture(scope="module")
def text_classification(minilm_path, minilm_tokenizer, tmp_path_factory):
    """(transformers pipeline, Predictor) for MiniLM + a 3-label sequence classifier."""
    import torch
    from transformers import AutoModelForSequenceClassification, pipeline

    from headreg import from_transformers
    from headreg.export.pipeline import ExportOptions, export_onnx
    from headreg.model import quiet_transformers

    torch.manual_seed(0)
    with quiet_transformers():
        hf = _scaled(AutoModelForSequenceClassification.from_pretrained(
            minilm_path, num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"}
        ))
    out = tmp_path_factory.mktemp("minilm") / "seq_cls"
    export_onnx(from_transformers(hf), out, tokenizer=minilm_tokenizer, options=ExportOptions(**EXPORT))
    return pipeline("text-classification", model=hf, tokenizer=minilm_tokenizer, device="cpu"), Predictor(out)


@pytest.fixture(scope="module")
def token_classification(minilm_path, minilm_tokenizer, tmp_path_factory):
    import torch
    from transformers import AutoModelForTokenClassification, pipeline

    from headreg import from_transformers
    from headreg.export.pipeline import ExportOptions, export_onnx
    from headreg.model import quiet_transformers

    torch.manual_seed(1)
    with quiet_transformers():
        hf = _scaled(AutoModelForTokenClassification.from_pretrained(
            minilm_path, num_labels=len(NER_LABELS), id2label=NER_LABELS
        ))
    out = tmp_path_factory.mktemp("minilm") / "token_cls"
    export_onnx(from_transformers(hf), out, tokenizer=minilm_tokenizer, options=ExportOptions(**EXPORT))
    return pipeline("token-classification", model=hf, tokenizer=minilm_tokenizer, device="cpu"), Predictor(out)


def test_text_classification_equals_the_transformers_pipeline(text_classification):
    pipe, predictor = text_classification
    expected = pipe(TEXTS, top_k=None)
    results = predictor.predict(TEXTS)
    labels = [r["label"] for r in results]
    assert labels == [max(row, key=lambda x: x["score"])["label"] for row in expected]
    assert len(set(labels)) > 1  # the texts do not all land on one label
    for got, want in zip(results, expected):
        want_scores = {x["label"]: x["score"] for x in want}
        np.testing.assert_allclose([got["scores"][k] for k in want_scores], list(want_scores.values()), atol=1e-4)


@pytest.mark.parametrize("strategy", ["simple", "first", "average", "max"])
def test_token_classification_entities_equal_the_transformers_pipeline(token_classification, strategy):
    pipe, predictor = token_classification
    expected = pipe(TEXTS, aggregation_strategy=strategy)
    results = predictor.predict(TEXTS, aggregation=strategy)
    assert sum(len(r["entities"]) for r in results) > 10  # a real workout for the grouping
    for text, got, want in zip(TEXTS, results, expected):
        assert [(e["label"], e["start"], e["end"]) for e in got["entities"]] == [
            (e["entity_group"], e["start"], e["end"]) for e in want
        ], text
        np.testing.assert_allclose([e["score"] for e in got["entities"]], [e["score"] for e in want], atol=1e-4)
        assert all(e["word"] == text[e["start"] : e["end"]] for e in got["entities"])


def test_per_token_predictions_equal_the_pipeline_without_aggregation(token_classification):
    pipe, predictor = token_classification
    expected = pipe(TEXTS, aggregation_strategy="none")
    for text, got, want in zip(TEXTS, predictor.predict(TEXTS), expected):
        tokens = [t for t in got["tokens"] if t["label"] != "O"]
        # The pipeline shows an unknown token as its text; headreg keeps the token and gives the offsets.
        shown = [text[t["start"] : t["end"]] if t["token"] == "[UNK]" else t["token"] for t in tokens]
        assert [(t["index"], word, t["label"], t["start"], t["end"]) for t, word in zip(tokens, shown)] == [
            (e["index"], e["word"], e["entity"], e["start"], e["end"]) for e in want
        ]
        np.testing.assert_allclose([t["score"] for t in tokens], [e["score"] for e in want], atol=1e-4)
