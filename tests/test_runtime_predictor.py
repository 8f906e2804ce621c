"""Predictor on real bundles exported from tiny backbones: parity with PyTorch per head, batching, threads,
bad input and broken bundles. The MiniLM parity with transformers' pipelines is in test_runtime_parity.py.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from headreg.errors import BundleError
from headreg.runtime import InputError, Predictor
from headreg.testing import SAMPLE_TEXTS

NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
HEAD_OPTIONS = {
    "seq_cls": dict(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}),
    "multi_label": dict(num_labels=3, id2label={0: "toxic", 1: "spam", 2: "off_topic"}),
    "regression": dict(num_labels=2),
    "token_cls": dict(num_labels=5, id2label=NER_LABELS),
}
TEXTS = [
    *SAMPLE_TEXTS,
    "Angela Merkel met Emmanuel Macron in Paris to talk about energy prices and the budget.",
    "word " * 300,  # longer than the tiny backbones' max_length (128): truncated
    "Tabs\tand\nnewlines   and\u00a0odd spaces",
    "Emoji 🎉 and CJK 東京 text",
]


@functools.lru_cache(maxsize=None)
def tiny_model(head: str):
    """A tiny BERT with ``head``; the head's weights are scaled up so its decisions are clear-cut."""
    import torch

    from headreg import attach_head
    from headreg.testing import tiny_backbone

    model = attach_head(tiny_backbone("bert"), head, **HEAD_OPTIONS.get(head, {})).eval()
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.mul_(20.0)
    return model


@functools.lru_cache(maxsize=None)
def tiny_bundle(head: str) -> Path:
    """Export once per test session (shared by the runtime and predict-CLI tests)."""
    from headreg.export.pipeline import ExportOptions, export_onnx
    from headreg.testing import load_tokenizer

    from conftest import session_dir

    out = session_dir("runtime-bundles") / head
    # torchscript traces in under a second; the dynamo path is what the MiniLM parity tests use.
    export_onnx(tiny_model(head), out, tokenizer=load_tokenizer(), options=ExportOptions(exporter="torchscript"))
    return out


def torch_outputs(head: str, texts, max_length: int = 128):
    """The PyTorch model's logits / pooled_output and the special-token mask, tokenized by transformers."""
    import torch

    from headreg.testing import load_tokenizer

    tokenizer = load_tokenizer()
    if texts and isinstance(texts[0], tuple):
        first, second = zip(*texts)
        batch = tokenizer(list(first), list(second), padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt", return_special_tokens_mask=True)
    else:
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                          return_special_tokens_mask=True)
    special = batch.pop("special_tokens_mask").numpy()
    with torch.inference_mode():
        output = tiny_model(head)(**batch)
    return output.logits.numpy(), output.pooled_output.numpy(), special, batch["attention_mask"].numpy()


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# --- parity with PyTorch ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["seq_cls", "multi_label", "regression", "token_cls"])
def test_predictions_equal_the_pytorch_model(head):
    predictor = Predictor(tiny_bundle(head))
    results = predictor.predict(TEXTS)
    logits, _, special, mask = torch_outputs(head, TEXTS)
    labels = HEAD_OPTIONS[head].get("id2label")
    assert len(results) == len(TEXTS)
    json.dumps(results)  # plain JSON, no numpy scalars
    for row, result in enumerate(results):
        if head == "seq_cls":
            probs = softmax(logits[row])
            assert result["label"] == labels[int(probs.argmax())]
            np.testing.assert_allclose(list(result["scores"].values()), probs, atol=1e-4)
        elif head == "multi_label":
            probs = 1 / (1 + np.exp(-logits[row]))
            assert result["labels"] == [labels[i] for i in np.flatnonzero(probs > 0.5)]
            np.testing.assert_allclose(list(result["scores"].values()), probs, atol=1e-4)
        elif head == "regression":
            np.testing.assert_allclose(result["values"], logits[row], atol=1e-4)
        else:
            keep = (mask[row] == 1) & (special[row] == 0)
            probs = softmax(logits[row][keep])
            assert [t["label"] for t in result["tokens"]] == [labels[i] for i in probs.argmax(-1)]
            np.testing.assert_allclose([t["score"] for t in result["tokens"]], probs.max(-1), atol=1e-4)
    if head == "token_cls":
        assert any(result["entities"] for result in results)
        for text, result in zip(TEXTS, results):
            for entity in result["entities"]:
                assert entity["word"] == text[entity["start"] : entity["end"]] and entity["word"]


def test_sentence_pairs_and_embeddings_equal_the_pytorch_model():
    pairs = [("A man is playing a guitar.", "Someone plays music."), ("", "empty premise"), ("short", "x " * 200)]
    predictor = Predictor(tiny_bundle("seq_cls"))
    logits, pooled, _, _ = torch_outputs("seq_cls", pairs)
    results = predictor.predict(pairs)
    np.testing.assert_allclose([list(r["scores"].values()) for r in results], softmax(logits), atol=1e-4)
    embeddings = predictor.embed(TEXTS)
    assert embeddings.shape == (len(TEXTS), 32) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, torch_outputs("seq_cls", TEXTS)[1], atol=1e-4)
    np.testing.assert_allclose(predictor.embed(TEXTS[0]), embeddings[0], atol=1e-6)  # one string, one vector


# --- batching ----------------------------------------------------------------------------------------------------------


def test_results_come_back_in_input_order_whatever_the_batching():
    reference = Predictor(tiny_bundle("token_cls")).predict(TEXTS, batch_size=1)
    for options in (dict(batch_size=64), dict(batch_size=3, max_batch_tokens=64)):
        predictor = Predictor(tiny_bundle("token_cls"), max_batch_tokens=options.pop("max_batch_tokens", 4096))
        results = predictor.predict(TEXTS, **options)
        assert [[e["word"] for e in r["entities"]] for r in results] == [[e["word"] for e in r["entities"]] for r in reference]
        for got, want in zip(results, reference):
            np.testing.assert_allclose([t["score"] for t in got["tokens"]], [t["score"] for t in want["tokens"]], atol=1e-5)


class RecordingBackend:
    """The bundle's real backend, recording the width of every batch predict hands it."""

    def __init__(self, backend):
        self.backend, self.widths = backend, []

    def run(self, feed, names):
        self.widths.append(feed["attention_mask"].shape[1])
        return self.backend.run(feed, names)


def test_predict_pads_each_batch_only_to_its_own_longest_row():
    predictor = Predictor(tiny_bundle("seq_cls"), batch_size=4)
    predictor.engine.backend = recording = RecordingBackend(predictor.engine.backend)
    texts = ["word " * 100, "a", "word " * 100, "a", "a", "word " * 100, "a", "word " * 100]
    predictor.predict(texts)
    assert sorted(recording.widths) == [3, 102]  # [CLS] a [SEP], then 100 words + 2 specials: sorted by length


def test_predict_in_arrival_order_would_pad_every_batch_to_the_long_rows():
    """The baseline bucketing beats: the same texts in arrival order, as headreg bench compares them."""
    predictor = Predictor(tiny_bundle("seq_cls"), batch_size=4)
    lengths = [len(e) for e in predictor.encode(["word " * 100, "a", "word " * 100, "a", "a", "word " * 100, "a", "word " * 100])]
    assert [max(lengths[i] for i in batch) for batch in predictor.engine.plan(lengths, bucket=False)] == [102, 102]
    assert [max(lengths[i] for i in batch) for batch in predictor.engine.plan(lengths)] == [3, 102]


def test_one_predictor_serves_many_threads_with_identical_results():
    predictor = Predictor(tiny_bundle("seq_cls"), threads=1)
    expected = predictor.predict(TEXTS)
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for _ in range(3):
                results[worker] = predictor.predict(TEXTS[worker % 3 :] + TEXTS[: worker % 3])
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for worker, got in results.items():
        rotated = expected[worker % 3 :] + expected[: worker % 3]
        assert [r["label"] for r in got] == [r["label"] for r in rotated]
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in rotated], atol=1e-6)


# --- bad input -----------------------------------------------------------------------------------------------------


def test_empty_inputs_give_empty_results():
    predictor = Predictor(tiny_bundle("seq_cls"))
    assert predictor.predict([]) == []
    assert predictor.embed([]).shape == (0, 32)


def test_an_empty_string_and_a_single_string_get_predictions():
    predictor = Predictor(tiny_bundle("token_cls"))
    result = predictor.predict("")
    assert result == {"entities": [], "tokens": []}
    assert Predictor(tiny_bundle("seq_cls")).predict("")["label"] in {"neg", "neu", "pos"}


def test_a_100k_character_text_is_truncated_to_max_length():
    predictor = Predictor(tiny_bundle("token_cls"))
    text = "Berlin " * (100_000 // 7)
    (encoding,) = predictor.encode([text])
    assert len(encoding) == predictor.max_length == 128
    result = predictor.predict([text])[0]
    assert len(result["tokens"]) == 126 and result["tokens"][-1]["end"] <= len(text)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (None, "input 2 is None; pass a string"),
        (42, "input 2 is int"),
        (("premise", None), "input 2 is a sentence pair with a side missing"),
        (("premise",), "input 2 is a sentence pair with a side missing"),
        (("premise", 3), r"input 2 \(text_pair\) is int"),
    ],
)
def test_bad_items_are_errors_naming_their_index(item, message):
    predictor = Predictor(tiny_bundle("seq_cls"))
    with pytest.raises(InputError, match=message):
        predictor.predict(["fine", "also fine", item])


# --- broken bundles fail at load ------------------------------------------------------------------------------------------


@pytest.fixture
def bundle_copy(tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle("seq_cls"), copy)
    return copy


def edit_manifest(bundle: Path, edit) -> None:
    manifest = json.loads((bundle / "headreg.json").read_text())
    edit(manifest)
    (bundle / "headreg.json").write_text(json.dumps(manifest))


def test_a_missing_file_is_a_clear_error(bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json missing"):
        Predictor(bundle_copy)


def test_a_newer_format_version_is_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(format_version=99, headreg_version="9.0"))
    with pytest.raises(BundleError, match="bundle format 99 .*Upgrade headreg"):
        Predictor(bundle_copy)


def test_a_model_whose_outputs_differ_from_the_manifest_is_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["outputs"].update(scores=m["outputs"].pop("logits")))
    with pytest.raises(BundleError, match=r"does not match its manifest.*outputs"):
        Predictor(bundle_copy)


def test_a_changed_tokenizer_is_refused(bundle_copy):
    tokenizer = json.loads((bundle_copy / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["berlin"] = 0  # one token id changed: predictions would silently differ
    (bundle_copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(BundleError, match="sha256 differs"):
        Predictor(bundle_copy)


def test_asking_for_a_variant_the_bundle_lacks_is_a_clear_error(bundle_copy):
    with pytest.raises(BundleError, match="no 'int8' variant.*--quantize int8"):
        Predictor(bundle_copy, variant="int8")


def test_an_uninstalled_plugin_postprocess_names_the_plugin(bundle_copy):
    def point_at_plugin(manifest):
        manifest["head"].update(name="gone_head", postprocess="headreg_plugin_gone.post:decode",
                                plugin="headreg-plugin-gone")

    edit_manifest(bundle_copy, point_at_plugin)
    with pytest.raises(BundleError, match="pip install headreg-plugin-gone"):
        Predictor(bundle_copy)


def test_a_corrupt_model_file_is_a_bundle_error_at_load(bundle_copy):
    (bundle_copy / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(BundleError, match="sha256 differs"):
        Predictor(bundle_copy)  # a small model file is always checked against the manifest
    manifest = json.loads((bundle_copy / "headreg.json").read_text())
    del manifest["files"]["model.onnx"]
    (bundle_copy / "headreg.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not a loadable ONNX model.*export the bundle again"):
        Predictor(bundle_copy)


def test_threshold_option_is_accepted_under_the_heads_config_name():
    predictor = Predictor(tiny_bundle("multi_label"))
    text = ["some text to score"]
    everything = predictor.predict(text, threshold=1e-6)[0]
    nothing = predictor.predict(text, threshold=1 - 1e-6)[0]
    assert predictor.predict(text, thresholds=1e-6)[0] == everything
    assert len(everything["labels"]) == 3 and nothing["labels"] == []
    # both names at once: neither silently wins
    with pytest.raises(InputError, match="'thresholds' and 'threshold' are one option; pass only one of them"):
        predictor.predict(text, thresholds=1e-6, threshold=1 - 1e-6)


# --- plugin heads ----------------------------------------------------------------------------------------------------


def test_a_plugin_heads_own_postprocess_runs(bundle_copy, tmp_path, monkeypatch):
    """The manifest names the plugin's numpy postprocess; the Predictor imports it and calls it once per call with
    every row's own outputs (contract 2), whatever the batches were."""
    (tmp_path / "my_post.py").write_text(textwrap.dedent("""
        def top_two(rows, context):
            order = [row["logits"].argsort()[::-1][:2] for row in rows]
            return [{"top": [context.label(i) for i in row], "rows": len(context.texts)} for row in order]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    edit_manifest(bundle_copy, lambda m: m["head"].update(postprocess="my_post:top_two"))
    results = Predictor(bundle_copy, batch_size=2, trust_remote_code=True).predict(["a", "b", "c"])
    assert [r["rows"] for r in results] == [3, 3, 3]
    assert all(len(r["top"]) == 2 and set(r["top"]) <= {"neg", "neu", "pos"} for r in results)


def test_code_named_by_a_bundle_is_not_imported_without_trust_remote_code(bundle_copy, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "evil_post.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef run(o, c):\n    return []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    edit_manifest(bundle_copy, lambda m: m["head"].update(postprocess="evil_post:run"))
    with pytest.raises(BundleError, match="trust_remote_code=True"):
        Predictor(bundle_copy)
    assert not marker.exists()


# --- torch-free -------------------------------------------------------------------------------------------------------


def test_serving_imports_neither_torch_nor_transformers():
    script = textwrap.dedent(f"""
        import sys
        import headreg.runtime
        assert "onnxruntime" not in sys.modules  # loaded with the first Predictor, not at import
        from headreg.runtime import Predictor
        p = Predictor({str(tiny_bundle("token_cls"))!r})
        p.predict(["Angela Merkel visited Paris", ("a", "b")])
        p.embed(["x"])
        print(sorted(m for m in ("torch", "transformers", "click", "rich") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --- the row pipeline: rows of several jobs share batches, each job's results are its own --------------------------


@pytest.mark.parametrize("head", ["seq_cls", "token_cls"])
def test_rows_of_different_jobs_share_a_batch_without_changing_results(head):
    """What headreg serve does across requests: interleave two jobs' rows in batches, finish each job alone."""
    predictor = Predictor(tiny_bundle(head), threads=1)
    first, second = TEXTS[::2], TEXTS[1::2] + ["one more text that is quite a bit longer than the others"]
    options = {"aggregation": "max"} if head == "token_cls" else {}  # seq_cls has no such option (InputError)
    jobs = [predictor.prepare(first), predictor.prepare(second, **options)]
    pending = [(job, index) for job in jobs for index in range(len(job.rows))]
    outputs = {id(job): [None] * len(job.rows) for job in jobs}
    mixed = 0
    engine = predictor.engine
    for indices in engine.plan([len(job.rows[i].encoding) for job, i in pending], batch_size=3):
        batch = [pending[i] for i in indices]
        mixed += len({id(job) for job, _ in batch}) == 2
        results, failed = engine.execute(batch)
        assert not failed
        for (job, i), out in zip(batch, results):
            outputs[id(job)][i] = out
    assert mixed, "the plan never put rows of both jobs in one batch; the test would prove nothing"
    assert engine.finish(jobs[0], outputs[id(jobs[0])]) == predictor.predict(first)
    assert engine.finish(jobs[1], outputs[id(jobs[1])]) == predictor.predict(second, **options)
    assert engine.run(jobs, batch_size=3) == [predictor.predict(first), predictor.predict(second, **options)]


def test_predict_works_through_large_calls_in_chunks(monkeypatch):
    import headreg.runtime.predictor as predictor_module

    predictor = Predictor(tiny_bundle("seq_cls"), threads=1)
    expected = predictor.predict(TEXTS)
    monkeypatch.setattr(predictor_module, "PREDICT_CHUNK", 3)
    assert predictor.predict(iter(TEXTS)) == expected
    np.testing.assert_allclose(predictor.embed(TEXTS), Predictor(tiny_bundle("seq_cls")).embed(TEXTS), atol=1e-6)


def test_return_logits_adds_the_raw_scores_the_probabilities_came_from():
    """TEI's raw_scores and Hugging Face's function_to_apply need them (headreg/serve/protocols)."""
    seq = Predictor(tiny_bundle("seq_cls"), threads=1)
    plain, with_logits = seq.predict(TEXTS[:4]), seq.predict(TEXTS[:4], return_logits=True)
    for result, extended in zip(plain, with_logits):
        assert "logits" not in result and {k: v for k, v in extended.items() if k != "logits"} == result
        np.testing.assert_allclose(softmax(np.asarray(extended["logits"])), list(result["scores"].values()), atol=1e-6)
    ner = Predictor(tiny_bundle("token_cls"), threads=1)
    with pytest.raises(InputError, match="unknown option 'return_logits'"):
        ner.predict(["x"], return_logits=True)
    with pytest.raises(InputError, match="return_logits must be true or false"):
        seq.predict(["x"], return_logits="yes")
