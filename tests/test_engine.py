"""The one engine: every front door runs through it, a failure is its own job's, and verification runs it.

Decoder backbones pad on the left and GPT-2 / GPT-Neo leave their pooled width symbolic in the graph; a bundle that
verifies must predict, in truncate and window mode, with PyTorch's labels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headreg import attach_head
from headreg.errors import HeadImportError, PredictionError, VerificationError
from headreg.export import export_onnx
from headreg.registry import HeadSpec
from headreg.runtime import Predictor
from headreg.testing import load_tokenizer, tiny_backbone

TEXTS = ["hello world", "Berlin is the capital of Germany.", "ok", "", "A somewhat longer sentence about the weather today."]
LONG = "The committee met on a grey Tuesday morning to review the quarterly figures. " * 40


def exported(tmp_path, arch, head, **options):
    torch.manual_seed(0)
    model = attach_head(tiny_backbone(arch), head, num_labels=3).eval()
    bundle = export_onnx(model, tmp_path / f"{arch}-{head}", tokenizer=load_tokenizer(), **options)
    return model, bundle


def torch_labels(model, texts):
    """PyTorch's argmax per text, each text run alone (no padding to disagree about); token heads: per real
    token (special tokens left out, as the runtime's token results leave them out)."""
    tokenizer = load_tokenizer()
    labels = []
    with torch.inference_mode():
        for text in texts:
            batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=128,
                              return_special_tokens_mask=True)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[0]
            if logits.ndim == 2:
                keep = batch["special_tokens_mask"][0] == 0
                labels.append(logits[keep].argmax(-1).tolist())
            else:
                labels.append(int(logits.argmax(-1)))
    return labels


DECODERS = [
    pytest.param("gpt2", "seq_cls"),
    pytest.param("gpt2", "token_cls", marks=pytest.mark.slow),
    pytest.param("gpt_neo", "seq_cls", marks=pytest.mark.slow),
    pytest.param("gpt_neo", "token_cls", marks=pytest.mark.slow),
    pytest.param("llama", "token_cls", marks=pytest.mark.slow),
    pytest.param("qwen2", "seq_cls", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("arch, head", DECODERS)
def test_a_decoder_bundle_that_verifies_predicts_pytorchs_labels_in_truncate_and_window_mode(tmp_path, arch, head):
    model, bundle = exported(tmp_path, arch, head)
    assert bundle.manifest["padding_side"] == "left"
    assert bundle.manifest["output_axes"]["pooled_output"] == "row"
    assert bundle.manifest["verification"]["production"]["passed"]
    predictor = Predictor(bundle.path)
    texts = [text for text in TEXTS if text]
    results = predictor.predict(texts)  # several rows of mixed lengths in one batch: left padding per row
    names = predictor.labels
    if head == "seq_cls":
        got = [names.index(r["label"]) for r in results]
    else:
        got = [[names.index(token["label"]) for token in r["tokens"]] for r in results]
    assert got == torch_labels(model, texts)
    windowed = predictor.predict([LONG, "hello world"], long_text="window")
    assert len(windowed) == 2
    if head == "token_cls":
        assert windowed[0]["tokens"][-1]["end"] > len(LONG) - 5  # read to the end, past max_length
    assert windowed[1] == predictor.predict("hello world")


def test_seq_cls_labels_equal_pytorch_for_a_decoder_batch(tmp_path):
    """The GPT-2 case of the issue: a two-text batch used to crash in the runtime after verify passed."""
    model, bundle = exported(tmp_path, "gpt2", "seq_cls")
    predictor = Predictor(bundle.path)
    texts = ["hello world", "Berlin is the capital of Germany."]
    got = [predictor.labels.index(r["label"]) for r in predictor.predict(texts)]
    assert got == torch_labels(model, texts)


# --- failure isolation ----------------------------------------------------------------------------------------------


class FaultyBackend:
    """The bundle's real backend, failing (or giving NaN) whenever a batch holds the token id ``poison``."""

    def __init__(self, backend, poison, how):
        self.backend, self.poison, self.how = backend, poison, how

    def run(self, feed, names):
        outputs = self.backend.run(feed, names)
        rows = (feed["input_ids"] == self.poison).any(axis=1)
        if rows.any() and self.how == "raise":
            raise RuntimeError("simulated kernel failure")
        if rows.any() and self.how == "nan":
            outputs = {name: value.copy() for name, value in outputs.items()}
            outputs["logits"][rows] = np.nan
        return outputs


@pytest.fixture(scope="module")
def bert_bundle(tmp_path_factory):
    return exported(tmp_path_factory.mktemp("bert"), "bert", "seq_cls")[1]


@pytest.mark.parametrize("how", ["raise", "nan"])
def test_a_failing_job_never_fails_its_batchmates(bert_bundle, how):
    predictor = Predictor(bert_bundle.path, batch_size=8)
    poison = predictor.tokenizer.encode("zebra", add_special_tokens=False).ids[0]
    engine = predictor.engine.with_backend(FaultyBackend(predictor.backend, poison, how))
    jobs = [predictor.prepare(["a fine day"]), predictor.prepare(["a zebra appears"]), predictor.prepare(TEXTS)]
    answers = engine.run(jobs)
    assert answers[0] == predictor.predict(["a fine day"])
    assert answers[2] == predictor.predict(TEXTS)
    assert isinstance(answers[1], PredictionError)
    assert ("NaN" in str(answers[1])) == (how == "nan")


def test_jobs_of_both_kinds_fail_alone_when_the_model_fails_on_one(bert_bundle):
    predictor = Predictor(bert_bundle.path)
    poison = predictor.tokenizer.encode("zebra", add_special_tokens=False).ids[0]
    predictor.engine.backend = FaultyBackend(predictor.backend, poison, "raise")
    answers = predictor.engine.run([predictor.prepare(["good"]), predictor.prepare(["zebra"]),
                                    predictor.prepare(["good"], "embed")])
    clean = Predictor(bert_bundle.path)
    assert answers[0] == clean.predict(["good"])
    assert isinstance(answers[1], PredictionError)
    assert np.allclose(np.stack(answers[2]), clean.embed(["good"]), atol=1e-6)


def test_per_call_batch_size_is_checked_like_the_constructors(bert_bundle):
    from headreg.runtime.inputs import InputError

    predictor = Predictor(bert_bundle.path)
    for bad in (-1, 0, "2", 2.0, True):
        with pytest.raises(InputError, match="batch_size must be a positive integer"):
            predictor.predict(["x"], batch_size=bad)
    assert predictor.predict(["x"], batch_size=1) == predictor.predict(["x"])


# --- the postprocess contract -----------------------------------------------------------------------------------------


def test_a_postprocess_written_for_contract_1_is_refused_with_what_to_change():
    spec = HeadSpec(name="old_head", cls="x:y", task="custom", postprocess="headreg.runtime.postprocess:raw",
                    plugin="headreg-plugin-old", version="0.1")
    with pytest.raises(HeadImportError, match="postprocess contract 1.*contract 2.*rows\\[i\\]"):
        spec.load_postprocess()


def test_builtin_heads_declare_their_result_fields():
    from headreg import get_head

    assert list(get_head("seq_cls").fields) == ["label", "score", "scores"]
    assert get_head("token_cls").fields["entities"].startswith("array<struct<label:string")


def test_export_fails_when_the_bundles_own_predictor_would_crash(tmp_path, monkeypatch):
    """The graph verifies; a postprocess that breaks only on a multi-row call must still fail the export."""
    from headreg.runtime import postprocess

    original = postprocess.seq_cls

    def fragile(rows, context):
        if len(rows) > 1 and len({len(encoding) for encoding in context.encodings}) > 1:
            raise ValueError("cannot mix lengths")
        return original(rows, context)

    monkeypatch.setattr(postprocess, "seq_cls", fragile)
    target = tmp_path / "never"
    with pytest.raises(VerificationError, match="cannot mix lengths"):
        export_onnx(attach_head(tiny_backbone("bert"), "seq_cls", num_labels=2), target, tokenizer=load_tokenizer())
    assert not target.exists()


def test_bench_times_what_predict_runs(bert_bundle):
    from headreg.runtime.bench import Contender, measure

    predictor = Predictor(bert_bundle.path, batch_size=2)
    calls = []
    predictor.engine.backend = type("Counting", (), {"run": lambda self, feed, names: calls.append(len(feed["input_ids"]))
                                                     or predictor.backend.run(feed, names)})()
    (result,) = measure([Contender("default", predictor)], TEXTS, batch_size=2, passes=1, warmup=0)
    assert sorted(calls) == [1, 2, 2] and len(result.latencies) == 3


def test_plans_count_the_padded_width_a_variant_runs():
    """A variant padded to 16-token blocks computes 16 tokens for a 10-token row: the token budget and the
    server's cost model see that, not the raw length."""
    from headreg.runtime.engine import Engine, Layout

    layout = Layout(input_names=("input_ids", "attention_mask"), output_names=("logits",), output_axes={},
                    pad_to_multiple_of=16)
    engine = Engine(None, layout, [], batch_size=32, max_batch_tokens=64)
    assert engine.widths([1, 10, 16, 17]) == [16, 16, 16, 32]
    assert engine.plan([10] * 5) == [[0, 1, 2, 3], [4]]  # 5 x 16 = 80 tokens run, over the budget of 64
    assert engine.with_layout(pad_to_multiple_of=1).plan([10] * 5) == [[0, 1, 2, 3, 4]]  # 5 x 10 = 50
    equal = engine.with_layout(batch_padding=False)  # rows of one length only: no rounding, no padding
    assert equal.widths([10, 12]) == [10, 12] and equal.plan([10, 12]) == [[0], [1]]
