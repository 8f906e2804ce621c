"""The numpy postprocess of each built-in head, token aggregation to words and entities, and batching.

No model here: logits are written by hand, encodings come from the real MiniLM tokenizer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from headreg.runtime import Context, aggregate_tokens
from headreg.runtime.batching import pad_batch, plan_batches
from headreg.runtime.engine import Engine, Layout
from headreg.runtime.postprocess import multi_label, regression, seq_cls, token_cls

LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
TEXT = "Angela Merkel visited Cupertino yesterday."
# tokens: [CLS] angela mer ##kel visited cup ##ert ##ino yesterday . [SEP]


@pytest.fixture(scope="module")
def tokenizer(minilm_path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def one_hot(ids: list[int], confidence: float = 0.9) -> np.ndarray:
    """Probabilities with ``confidence`` on each token's label, the rest spread evenly."""
    probs = np.full((len(ids), len(LABELS)), (1 - confidence) / (len(LABELS) - 1), dtype=np.float32)
    probs[np.arange(len(ids)), ids] = confidence
    return probs


def rows_of(**batch):
    """Batch arrays as the rows a postprocess receives: row i's own outputs (contract 2)."""
    return [{name: value[i] for name, value in batch.items()} for i in range(len(next(iter(batch.values()))))]


def test_seq_cls_gives_label_score_and_every_score_as_plain_floats():
    context = Context(manifest={}, config={"id2label": {"0": "neg", "1": "pos"}})
    result = seq_cls(rows_of(logits=np.array([[0.0, 2.0], [3.0, 1.0]], dtype=np.float32)), context)
    assert [row["label"] for row in result] == ["pos", "neg"]
    assert result[0]["score"] == pytest.approx(1 / (1 + np.exp(-2.0)), abs=1e-6)
    assert sum(result[1]["scores"].values()) == pytest.approx(1.0, abs=1e-6)
    assert type(result[0]["score"]) is float
    json.dumps(result)  # JSON as is


def test_multi_label_thresholds_default_list_and_per_label_override():
    manifest = {"postprocess_config": {"thresholds": [0.5, 0.5, 0.5]}}
    logits = rows_of(logits=np.array([[2.0, 0.0, -2.0]], dtype=np.float32))  # sigmoid: 0.88, 0.5, 0.12
    base = {"id2label": {"0": "a", "1": "b", "2": "c"}, "thresholds": [0.5, 0.5, 0.5]}

    def labels(**config):
        return multi_label(logits, Context(manifest=manifest, config={**base, **config}))[0]["labels"]

    assert labels() == ["a"]  # 0.5 is not above a 0.5 threshold
    assert labels(thresholds=0.1) == ["a", "b", "c"]
    assert labels(thresholds=[0.9, 0.4, 0.1]) == ["b", "c"]
    assert labels(thresholds={"c": 0.1}) == ["a", "c"]  # others keep the bundle's thresholds
    with pytest.raises(ValueError, match="unknown label 'z'"):
        labels(thresholds={"z": 0.1})
    with pytest.raises(ValueError, match="2 values but the model has 3 labels"):
        labels(thresholds=[0.1, 0.2])


def test_regression_returns_values():
    result = regression(rows_of(logits=np.array([[1.5, -2.0]], dtype=np.float32)), Context(manifest={}, config={}))
    assert result == [{"values": [1.5, -2.0]}]


def test_first_aggregation_gives_each_word_its_first_token_label(tokenizer):
    encoding = tokenizer.encode(TEXT)
    #           CLS angela mer kel visited cup ert ino yesterday .  SEP
    label_ids = [0, 1, 2, 0, 0, 3, 2, 2, 0, 0, 0]
    result = aggregate_tokens(label_ids, one_hot(label_ids), encoding, TEXT, LABELS, aggregation="first")
    assert [(e["label"], e["word"]) for e in result["entities"]] == [("PER", "Angela Merkel"), ("LOC", "Cupertino")]
    per, loc = result["entities"]
    assert (per["start"], per["end"]) == (0, 13) and TEXT[loc["start"] : loc["end"]] == "Cupertino"
    assert per["score"] == pytest.approx(0.9)
    # Every non-special token is listed with its own label and offsets.
    assert [t["token"] for t in result["tokens"]][:3] == ["angela", "mer", "##kel"]
    assert result["tokens"][2]["label"] == "O" and result["tokens"][2]["start"] == 10


def test_none_groups_tokens_without_fusing_words(tokenizer):
    encoding = tokenizer.encode(TEXT)
    label_ids = [0, 1, 2, 0, 0, 3, 2, 2, 0, 0, 0]
    result = aggregate_tokens(label_ids, one_hot(label_ids), encoding, TEXT, LABELS, aggregation="none")
    # "##kel" is O, so "Merkel" is cut; "cup" B-LOC then "##ert ##ino" I-PER are two entities.
    assert [(e["label"], e["word"]) for e in result["entities"]] == [("PER", "Angela Mer"), ("LOC", "Cup"), ("PER", "ertino")]


def test_average_and_max_follow_transformers_semantics(tokenizer):
    encoding = tokenizer.encode("Cupertino")  # CLS cup ##ert ##ino SEP
    probs = np.full((5, 5), 0.05, dtype=np.float32)
    probs[1] = [0.05, 0.05, 0.05, 0.45, 0.40]  # B-LOC 0.45
    probs[2] = [0.05, 0.80, 0.05, 0.05, 0.05]  # B-PER 0.80: the most confident token
    probs[3] = [0.05, 0.05, 0.05, 0.20, 0.60]  # I-LOC 0.60
    ids = probs.argmax(-1)
    average = aggregate_tokens(ids, probs, encoding, "Cupertino", LABELS, aggregation="average")["entities"]
    maximum = aggregate_tokens(ids, probs, encoding, "Cupertino", LABELS, aggregation="max")["entities"]
    first = aggregate_tokens(ids, probs, encoding, "Cupertino", LABELS, aggregation="first")["entities"]
    # mean over the word: I-LOC (0.40 + 0.05 + 0.60) / 3 = 0.35 beats B-PER 0.30 and B-LOC 0.23
    assert average[0]["label"] == "LOC" and average[0]["score"] == pytest.approx(0.35, abs=1e-6)
    assert maximum == [{"label": "PER", "score": pytest.approx(0.8), "start": 0, "end": 9, "word": "Cupertino"}]
    assert first[0]["label"] == "LOC" and first[0]["score"] == pytest.approx(0.45)


def test_viterbi_tags_with_confidences_reuse_the_aggregation(tokenizer):
    """A CRF head passes its decoded tags and 1-D confidences instead of probabilities."""
    encoding = tokenizer.encode(TEXT)
    tags = np.array([0, 1, 2, 2, 0, 3, 4, 4, 0, 0, 0])
    confidences = np.linspace(0.5, 1.0, len(tags))
    result = aggregate_tokens(tags, confidences, encoding, TEXT, LABELS, aggregation="average")
    assert [(e["label"], e["word"]) for e in result["entities"]] == [("PER", "Angela Merkel"), ("LOC", "Cupertino")]
    assert result["entities"][1]["score"] == pytest.approx(float(confidences[5:8].mean()), abs=1e-6)


def test_pair_entities_point_into_their_own_side(tokenizer):
    pair = ("Who is she?", "Angela Merkel")
    encoding = tokenizer.encode(*pair)
    ids = [1 if s == 1 else 0 for s in encoding.sequence_ids]
    ids = [2 if i and prev else i for prev, i in zip([0] + ids, ids)]  # B-PER then I-PER
    entities = aggregate_tokens(ids, one_hot(ids), encoding, pair, LABELS, aggregation="first")["entities"]
    assert entities == [
        {"label": "PER", "score": pytest.approx(0.9), "start": 0, "end": 13, "word": "Angela Merkel", "sequence": 1}
    ]


def test_the_engine_cuts_padding_on_either_side_before_a_token_postprocess(tokenizer):
    """Padding is the engine's business alone: a postprocess gets each row's own tokens (contract 2)."""
    encodings = tokenizer.encode_batch(["Cupertino", "Angela Merkel visited"])
    names = ("input_ids", "attention_mask", "token_type_ids")
    for side in ("right", "left"):
        layout = Layout(input_names=names, output_names=("logits",), output_axes={"logits": "token"}, padding_side=side)
        engine = Engine(None, layout, [], batch_size=2, max_batch_tokens=None)
        mask = engine.pad(encodings, width=6)["attention_mask"]
        logits = np.full((2, 6, 5), -5.0, dtype=np.float32)
        logits[..., 0] = 5.0  # O everywhere ...
        start = 6 - len(encodings[0]) if side == "left" else 0
        logits[0, start + 1, 3] = 10.0  # ... except "cup" of row 0, at position 1 after [CLS], wherever its padding goes
        rows = engine.cut(mask, [logits], ["logits"])
        assert [len(row["logits"]) for row in rows] == [len(e) for e in encodings], side
        context = Context(manifest={}, config={"id2label": LABELS, "aggregation": "first"}, encodings=encodings,
                          texts=["Cupertino", "Angela Merkel visited"])
        result = token_cls(rows, context)
        assert [e["word"] for e in result[0]["entities"]] == ["Cupertino"], side
        assert result[1]["entities"] == [] and len(result[1]["tokens"]) == 4


def test_bad_aggregation_and_length_mismatch_are_errors(tokenizer):
    encoding = tokenizer.encode("hi")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate_tokens([0, 0, 0], one_hot([0, 0, 0]), encoding, "hi", LABELS, aggregation="mean")
    with pytest.raises(ValueError, match="2 labels and 2 scores for 3 tokens"):
        aggregate_tokens([0, 0], one_hot([0, 0]), encoding, "hi", LABELS)


def test_batches_are_bucketed_by_length_and_capped_by_rows_and_tokens():
    lengths = [5, 120, 7, 118, 6, 119, 8, 3]
    batches = plan_batches(lengths, batch_size=3, max_batch_tokens=240)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert batches[0] == [7, 0, 4]  # the three shortest together
    for batch in batches:
        assert len(batch) <= 3 and len(batch) * max(lengths[i] for i in batch) <= 240
    # Arrival order keeps the rows in order; a row over the budget still gets a batch.
    assert plan_batches([10, 500, 10], batch_size=8, max_batch_tokens=100, sort=False) == [[0], [1], [2]]


def test_pad_batch_pads_to_the_longest_row_on_the_models_side(tokenizer):
    encodings = tokenizer.encode_batch(["a b c", ("x", "y z")])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    right = pad_batch(encodings, names, pad_id=0)
    left = pad_batch(encodings, names, pad_id=0, padding_side="left")
    assert right["input_ids"].shape == (2, 6) and right["input_ids"].dtype == np.int64
    assert right["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0]
    assert left["attention_mask"][0].tolist() == [0, 1, 1, 1, 1, 1]
    assert right["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1, 1]
    assert list(pad_batch(encodings, names[:2], pad_id=0)) == names[:2]  # no token types when the model takes none
