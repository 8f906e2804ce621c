"""The CRF head end to end: the headreg kit, runtime Viterbi == PyTorch Viterbi, entity spans like token_cls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from headreg import load_model
from headreg.runtime import Predictor
from headreg.runtime.postprocess import Context, token_cls
from headreg_plugin_crf.postprocess import crf

# The kit's fixtures (check_head, minilm_path, minilm_tokenizer, ...). Take its functions from fixtures or import
# them inside tests: importing headreg.testing at the top would keep pytest from rewriting its asserts.
pytest_plugins = ["headreg.testing"]

BIO = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
ARCHITECTURES = ("bert", "llama")
TEXTS = [
    "Angela Merkel visited Paris yesterday.",
    "ok",
    "",
    "The quick brown fox jumps over the lazy dog near the riverbank in Heidelberg.",
    "Ich bin ein Berliner.",
    "Barack Obama and Michelle Obama met Emmanuel Macron at the Élysée Palace in Paris on a rainy Tuesday.",
    "tokenization of unbelievably long compound words",
    "A",
    "Tokyo, Kyoto, Osaka.",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The kit's full round trip on a tiny BERT (padded on the right) and a tiny Llama (padded on the left);
    their saved models and bundles serve the tests below."""
    from headreg.testing import check_head

    reports = check_head("crf", architectures=ARCHITECTURES, export=ARCHITECTURES,
                         workdir=tmp_path_factory.mktemp("crf"), id2label=BIO)
    return dict(zip(ARCHITECTURES, reports))


def test_crf_passes_the_headreg_kit(exported):
    for report in exported.values():
        assert report.bundle_dir is not None and len(report.predictions) == 4
        for prediction in report.predictions:  # made in a subprocess where torch cannot be imported
            assert set(prediction) == {"entities", "tokens", "path"}
            assert all(0 <= tag < len(BIO) for tag in prediction["path"])


@pytest.mark.parametrize("arch, padding_side", [("bert", "right"), ("llama", "left")])
def test_runtime_tags_equal_pytorch_viterbi_on_padded_batches(exported, arch, padding_side):
    from headreg.testing import load_tokenizer

    report = exported[arch]
    model = load_model(report.model_dir)
    tokenizer = load_tokenizer()
    tokenizer.padding_side = padding_side  # as the runtime pads this backbone
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        tags = model.head.decode(model(**batch).logits, batch["attention_mask"])
    predictor = Predictor(report.bundle_dir)
    assert predictor.layout.padding_side == padding_side
    # Batches of 4 rows of different lengths: the runtime pads them differently from the batch above.
    runtime = predictor.predict(TEXTS, batch_size=4)
    expected = [row[mask.bool()].tolist() for row, mask in zip(tags, batch["attention_mask"])]
    got = [result["path"] for result in runtime]
    agreeing = sum(a == b for exp, run in zip(expected, got) for a, b in zip(exp, run))
    assert [len(path) for path in got] == [len(path) for path in expected]
    assert agreeing == sum(len(path) for path in expected)  # every token of every row


def _merkel_case(transition_penalty: float):
    """Emissions for "Angela Merkel visited Paris yesterday." that slightly prefer I-LOC on "mer"."""
    from headreg.testing import minilm_path

    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tokenizer.no_padding()
    text = TEXTS[0]
    encoding = tokenizer.encode(text)
    assert encoding.tokens == ["[CLS]", "angela", "mer", "##kel", "visited", "paris", "yesterday", ".", "[SEP]"]
    wanted = [0, 1, 2, 2, 0, 3, 0, 0, 0]  # O B-PER I-PER I-PER O B-LOC O O O
    emissions = np.zeros((1, len(wanted), len(BIO)), dtype=np.float32)
    emissions[0, np.arange(len(wanted)), wanted] = 5.0
    emissions[0, 2, 4] = 5.5  # I-LOC beats I-PER on "mer" by emissions alone
    transitions = np.zeros((len(BIO), len(BIO)), dtype=np.float32)
    transitions[1, 4] = -transition_penalty  # B-PER -> I-LOC
    # One row as the engine hands it to a postprocess (contract 2): its own emissions, the shared transitions.
    outputs = [{
        "logits": emissions[0],
        "transitions": transitions,
        "start_transitions": np.zeros(len(BIO), dtype=np.float32),
        "end_transitions": np.zeros(len(BIO), dtype=np.float32),
        "pooled_output": np.zeros(4, dtype=np.float32),
    }]
    context = Context(
        manifest={},
        config={"id2label": dict(enumerate(BIO)), "aggregation": "first"},
        encodings=[encoding],
        texts=[text],
    )
    return outputs, context


def test_without_transitions_crf_output_is_token_cls_output():
    """Zero transitions make the CRF factorise: its path is the argmax and its marginals are the softmax."""
    outputs, context = _merkel_case(transition_penalty=0.0)
    (got,), (expected,) = crf(outputs, context), token_cls(outputs, context)
    assert got["path"] == [0, 1, 4, 2, 0, 3, 0, 0, 0]
    for key in ("entities", "tokens"):
        assert [{k: v for k, v in item.items() if k != "score"} for item in got[key]] == [
            {k: v for k, v in item.items() if k != "score"} for item in expected[key]
        ]
        assert [item["score"] for item in got[key]] == pytest.approx([item["score"] for item in expected[key]], abs=1e-6)


def test_transitions_repair_an_entity_that_emissions_alone_split():
    outputs, context = _merkel_case(transition_penalty=10.0)
    (result,) = crf(outputs, context)
    assert result["path"] == [0, 1, 2, 2, 0, 3, 0, 0, 0]
    assert [(e["label"], e["word"], e["start"], e["end"]) for e in result["entities"]] == [
        ("PER", "Angela Merkel", 0, 13),
        ("LOC", "Paris", 22, 27),
    ]
    assert 0.0 < min(e["score"] for e in result["entities"]) <= 1.0
    (argmax,) = token_cls(outputs, context)
    assert [e["word"] for e in argmax["entities"]] == ["Angela", "Merkel", "Paris"]  # what the emissions say
