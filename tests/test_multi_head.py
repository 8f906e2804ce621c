"""Several heads on one backbone: model, loss, Trainer, save/load, one-graph export, per-head runtime results.

One tiny multi-head model (seq_cls, multi_label, regression on mean pooling, token_cls and the crf plugin head)
is saved, loaded and exported once per session; each head's single-head reference bundle is exported from the
same modules. Both use the torchscript exporter (seconds, not the dynamo trace's tens of seconds on a busy
machine; the same exporter gives bit-identical backbones, so scores compare exactly); one smaller multi-head
model goes through the default dynamo exporter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from headreg import HeadedModel, MultiHeadModel, attach_head, attach_heads, load_model
from headreg.errors import HeadConfigError, LabelError
from headreg.runtime import InputError, Predictor
from headreg.testing import SAMPLE_TEXTS, load_tokenizer, tiny_backbone

REPO = Path(__file__).resolve().parents[1]
HEADS = {
    "sentiment": ("seq_cls", {"num_labels": 3, "id2label": {0: "neg", 1: "neu", 2: "pos"}}),
    "topics": ("multi_label", {"num_labels": 4, "id2label": {0: "sport", 1: "tech", 2: "food", 3: "news"}}),
    "quality": ("regression", {"num_labels": 1, "pooling": "mean"}),
    "entities": ("token_cls", {"num_labels": 5, "id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}}),
    "chain": ("crf", {"num_labels": 3, "id2label": {0: "O", 1: "B-X", 2: "I-X"}}),
}
TEXTS = [*SAMPLE_TEXTS[:6], ("A man plays a guitar.", "Someone makes music."), ""]
MAX_LENGTH = 32


def _tiny_multi(seed: int = 0) -> MultiHeadModel:
    torch.manual_seed(seed)
    return attach_heads(tiny_backbone("bert", seed=seed, num_hidden_layers=1), HEADS).eval()


def _batch(seed: int = 0, batch: int = 3, length: int = 7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 5000, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 4:] = 0
    return ids, mask


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """(multi-head bundle dir, {head: single-head bundle dir}, the model that was saved and loaded)."""
    from headreg.export import ExportOptions, export_onnx

    root = tmp_path_factory.mktemp("multi")
    original = _tiny_multi()
    original.save_pretrained(root / "saved")
    model = load_model(root / "saved")
    tokenizer = load_tokenizer()
    multi = export_onnx(model, root / "multi", tokenizer,
                        options=ExportOptions(max_length=MAX_LENGTH, quantize="int8", min_agreement=0.0, max_error=1e9,
                                              exporter="torchscript"))
    singles = {}
    for member in model.members():
        pooler = model.poolers[model.head_pooling[member.name]]
        single = HeadedModel(model.backbone, member.head, pooler, member.spec).eval()
        singles[member.name] = export_onnx(single, root / member.name, tokenizer,
                                           options=ExportOptions(max_length=MAX_LENGTH, exporter="torchscript")).path
    return multi, singles, model


def _assert_same(multi, single, path="result"):
    """Labels, names, ids identical; floats within 1e-5."""
    if isinstance(single, float):
        assert multi == pytest.approx(single, abs=1e-5), path
    elif isinstance(single, dict):
        assert list(multi) == list(single), path
        for key in single:
            _assert_same(multi[key], single[key], f"{path}.{key}")
    elif isinstance(single, list):
        assert len(multi) == len(single), path
        for index, (a, b) in enumerate(zip(multi, single)):
            _assert_same(a, b, f"{path}[{index}]")
    else:
        assert multi == single, path


# --- model -------------------------------------------------------------------------------------------------------


def test_one_pass_gives_every_head_and_pools_once_per_distinct_pooling():
    model = _tiny_multi()
    assert model.head_names == list(HEADS)
    # BERT's auto pooling is its pooler for sequence heads and the first token for token heads; quality asked mean.
    assert list(model.pooled_output_names()) == ["pooler", "mean", "cls"]
    assert model.head_pooling["sentiment"] == model.head_pooling["topics"] == "pooler"
    ids, mask = _batch()
    calls = []
    hook = model.backbone.register_forward_hook(lambda *args: calls.append(1))
    out = model(input_ids=ids, attention_mask=mask)
    hook.remove()
    assert len(calls) == 1
    assert out.loss is None
    assert out.logits["sentiment"].shape == (3, 3) and out.logits["entities"].shape == (3, 7, 5)
    assert out.pooled_output["sentiment"] is out.pooled_output["topics"]
    assert not torch.equal(out.pooled_output["quality"], out.pooled_output["sentiment"])


def test_loss_is_the_weighted_sum_and_missing_heads_add_nothing():
    model = _tiny_multi()
    ids, mask = _batch()
    y_sent, y_ent = torch.tensor([0, 2, 1]), torch.randint(0, 5, (3, 7))
    alone_sent = float(model(input_ids=ids, attention_mask=mask, labels={"sentiment": y_sent}).loss)
    alone_ent = float(model(input_ids=ids, attention_mask=mask, labels={"entities": y_ent}).loss)
    model.loss_weights["entities"] = 0.25
    both = model(input_ids=ids, attention_mask=mask, labels={"sentiment": y_sent, "entities": y_ent, "quality": None})
    assert float(both.loss) == pytest.approx(alone_sent + 0.25 * alone_ent, rel=1e-6)
    # a batch with no labelled row for a head (all -100) adds nothing rather than NaN
    ignored = model(input_ids=ids, attention_mask=mask, labels={"sentiment": y_sent, "entities": torch.full((3, 7), -100)})
    assert float(ignored.loss) == pytest.approx(alone_sent, rel=1e-6)
    with pytest.raises(LabelError, match="dict by head name"):
        model(input_ids=ids, attention_mask=mask, labels=y_sent)
    with pytest.raises(LabelError, match="unknown head"):
        model(input_ids=ids, attention_mask=mask, labels={"sentimnet": y_sent})


def test_bad_names_and_options_are_clear_errors():
    backbone = tiny_backbone("bert", num_hidden_layers=1)
    with pytest.raises(HeadConfigError, match="must start with a letter"):
        attach_heads(backbone, {"a.b": ("seq_cls", {"num_labels": 2})})
    model = attach_heads(backbone, {"a": ("seq_cls", {"num_labels": 2})})
    with pytest.raises(HeadConfigError, match="already has a head named 'a'"):
        model.add_head("a", "regression")
    with pytest.raises(HeadConfigError, match="expected \\(head name"):
        attach_heads(backbone, {"b": ("seq_cls", 2)})
    with pytest.raises(HeadConfigError, match="loss_weights name"):
        attach_heads(backbone, {"b": "regression"}, loss_weights={"c": 1.0})


def test_a_fine_tuned_single_head_model_grows_in_one_call_and_keeps_its_outputs():
    torch.manual_seed(0)
    single = attach_head(tiny_backbone("roberta", num_hidden_layers=1), "seq_cls", num_labels=2).eval()
    ids, mask = _batch()
    before = single(input_ids=ids, attention_mask=mask).logits
    grown = attach_heads(single, {"topic": ("seq_cls", {"num_labels": 4})}, keep_as="sentiment").eval()
    assert grown.head_names == ["sentiment", "topic"]
    out = grown(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out.logits["sentiment"], before, rtol=0, atol=0)
    # RoBERTa's auto pooling has a projection: the fresh head shares it (one pooled output, computed once).
    assert list(grown.poolers) == ["cls_tanh"]
    grown.add_head("quality", "regression", pooling="mean")
    assert grown.head_names == ["sentiment", "topic", "quality"] and len(grown.pooled_output_names()) == 2


def test_a_transformers_task_checkpoint_becomes_a_one_head_model_that_grows():
    from transformers import BertForSequenceClassification

    from headreg import from_transformers
    from headreg.testing import tiny_config

    torch.manual_seed(0)
    hf = BertForSequenceClassification(tiny_config("bert", num_hidden_layers=1, num_labels=3)).eval()
    ids, mask = _batch()
    expected = hf(input_ids=ids, attention_mask=mask).logits
    model = from_transformers(hf, name="intent").eval()
    assert isinstance(model, MultiHeadModel) and model.head_names == ["intent"]
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits["intent"], expected)
    model.add_head("entities", "token_cls", num_labels=5)
    assert model(input_ids=ids, attention_mask=mask).logits["entities"].shape == (3, 7, 5)


@pytest.mark.slow
def test_trainer_lowers_both_losses_and_predicts_by_head(tmp_path):
    from transformers import Trainer, TrainingArguments

    from headreg import MultiHeadCollator

    torch.manual_seed(0)
    model = attach_heads(
        tiny_backbone("bert", num_hidden_layers=1),
        {"sentiment": ("seq_cls", {"num_labels": 2}), "entities": ("token_cls", {"num_labels": 3})},
    )
    tokenizer = load_tokenizer()
    texts = [f"{word} item number {i}" for i, word in enumerate(["good", "bad"] * 8)]
    data = []
    for i, text in enumerate(texts):
        encoded = tokenizer(text, truncation=True, max_length=16)
        tags = [(i + j) % 3 for j in range(len(encoded["input_ids"]))]
        labels = {"sentiment": i % 2, "entities": tags}
        if i % 4 == 3:  # some examples are labelled for one task only
            del labels["entities"]
        data.append({**encoded, "labels": labels})
    collate = MultiHeadCollator(tokenizer, model)
    batch = collate(data)

    def head_losses():
        model.eval()
        with torch.no_grad():
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            return [float(model(**inputs, labels={name: batch["labels"][name]}).loss) for name in model.head_names]

    before = head_losses()
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=16, max_steps=6, learning_rate=1e-2,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data, data_collator=collate)
    trainer.train()
    after = head_losses()
    assert after[0] < before[0] and after[1] < before[1], (before, after)

    prediction = trainer.predict(data)
    logits = prediction.predictions[0]
    assert set(logits) == {"sentiment", "entities"} and logits["sentiment"].shape == (16, 2)
    assert set(prediction.label_ids) == {"sentiment", "entities"}
    assert np.isfinite(prediction.metrics["test_loss"])


def test_save_and_load_round_trip_keeps_heads_poolings_and_weights(tmp_path):
    model = _tiny_multi()
    model.loss_weights["chain"] = 0.5
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "headreg_model.json").read_text())
    assert saved["format_version"] == 2 and [h["name"] for h in saved["heads"]] == list(HEADS)
    assert not list((tmp_path / "m").glob("*.bin")) and not list((tmp_path / "m").glob("*.pt"))
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, MultiHeadModel) and loaded.loss_weights["chain"] == 0.5
    assert loaded.pooled_output_names() == model.pooled_output_names()
    ids, mask = _batch()
    want, got = model(input_ids=ids, attention_mask=mask), loaded(input_ids=ids, attention_mask=mask)
    for name in HEADS:
        torch.testing.assert_close(got.logits[name], want.logits[name])
    # strict weights: a head file with one head's weights missing is refused
    from safetensors.torch import load_file, save_file

    from headreg.errors import SaveLoadError

    state = load_file(str(tmp_path / "m" / "head.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("heads.quality.")}, str(tmp_path / "m" / "head.safetensors"))
    with pytest.raises(SaveLoadError, match="missing"):
        load_model(tmp_path / "m")


# --- export and runtime --------------------------------------------------------------------------------------------


def test_one_graph_with_every_heads_outputs_verified_per_head(bundles):
    from headreg.export import verify_bundle
    from headreg.export.trace import graph_signature
    from headreg.manifest import read_manifest

    multi, _, _ = bundles
    manifest = read_manifest(multi.path)
    assert manifest["format_version"] == 2 and manifest["multi_head"] is True
    assert [h["name"] for h in manifest["heads"]] == list(HEADS)
    _, outputs, _ = graph_signature(multi.path / "model.onnx")
    assert list(outputs)[:3] == ["pooled_output", "pooled_output.mean", "pooled_output.cls"]
    for name in HEADS:
        assert f"{name}.logits" in outputs
    assert outputs["chain.transitions"] == [3, 3] and outputs["entities.logits"][:2] == ["batch", "sequence"]
    heads = {h["name"]: h for h in manifest["heads"]}
    assert heads["quality"]["outputs"] == {"logits": "quality.logits", "pooled_output": "pooled_output.mean"}
    assert heads["chain"]["postprocess"] == "headreg_plugin_crf.postprocess:crf"
    for name, head in heads.items():
        check = head["verification"]
        assert check["worst"]["logits"]["abs"] <= 1e-4
        assert check["decision_agreement"] == (None if name == "quality" else 1.0)
    int8 = manifest["variants"]["int8"]
    assert set(int8["acceptance"]["heads"]) == set(HEADS) == set(int8["golden_agreement_by_head"])
    assert int8["acceptance"]["passed"] == all(h["passed"] for h in int8["acceptance"]["heads"].values())
    assert "head" not in manifest  # no top-level single head in a multi-head manifest
    report = verify_bundle(multi.path)
    assert report.passed, report.message()
    production = json.loads((multi.path / "verification.json").read_text())["production"]["cases"]
    assert all(set(case["agreement"]) == set(HEADS) for case in production)  # counted head by head


@pytest.mark.slow
def test_the_dynamo_exporter_writes_one_verified_multi_head_graph(tmp_path):
    from headreg.export import ExportOptions, export_onnx
    from headreg.export.trace import graph_signature

    torch.manual_seed(0)
    model = attach_heads(
        tiny_backbone("bert", num_hidden_layers=1),
        {"sentiment": HEADS["sentiment"], "chain": HEADS["chain"]},
    ).eval()
    bundle = export_onnx(model, tmp_path / "b", load_tokenizer(),
                         options=ExportOptions(max_length=16, exporter="dynamo"))
    assert bundle.report.passed
    _, outputs, _ = graph_signature(bundle.path / "model.onnx")
    assert list(outputs) == [
        "pooled_output", "pooled_output.cls", "sentiment.logits", "chain.logits",
        "chain.transitions", "chain.start_transitions", "chain.end_transitions",
    ]
    result = Predictor(bundle.path).predict(["Anna lives in Berlin"])[0]
    assert set(result) == {"sentiment", "chain"} and len(result["chain"]["path"]) > 2


def test_each_head_answers_exactly_like_its_single_head_bundle(bundles):
    multi, singles, _ = bundles
    predictor = Predictor(multi.path, variant="fp32")  # the references have no int8 variant
    results = predictor.predict(TEXTS)
    assert all(list(result) == list(HEADS) for result in results)
    for name, directory in singles.items():
        single = Predictor(directory)
        assert single.multi_head is False
        _assert_same([result[name] for result in results], single.predict(TEXTS), name)
    # pooled_output is the first pooling's, as a single-head bundle of the first head gives it
    np.testing.assert_allclose(predictor.embed(TEXTS), Predictor(singles["sentiment"]).embed(TEXTS), atol=1e-5)


def test_a_subset_of_heads_fetches_only_their_outputs(bundles):
    multi, singles, _ = bundles
    predictor = Predictor(multi.path, variant="fp32")
    job = predictor.prepare(TEXTS, heads=["quality", "sentiment"])
    names = predictor.engine.output_names_for([job])
    assert sorted(names) == sorted(["sentiment.logits", "pooled_output", "quality.logits", "pooled_output.mean"])
    assert len(names) < len(predictor.layout.output_names)
    assert len(predictor.engine.run_rows(job.rows[:2], names)[0]) == 4
    subset = predictor.predict(TEXTS, heads=["quality", "sentiment"])
    full = predictor.predict(TEXTS)
    assert [list(r) for r in subset] == [["sentiment", "quality"]] * len(TEXTS)
    _assert_same(subset, [{k: r[k] for k in ("sentiment", "quality")} for r in full])
    # per-head options: one head's override, and options that reach every head
    loose = predictor.predict(TEXTS[:3], heads=["topics"], topics={"threshold": 0.01})
    assert all(len(r["topics"]["labels"]) == 4 for r in loose)
    _assert_same(
        predictor.predict(TEXTS[:3], heads="entities", aggregation="none"),
        [{"entities": r} for r in Predictor(singles["entities"]).predict(TEXTS[:3], aggregation="none")],
    )
    with pytest.raises(InputError, match="this bundle's heads are: sentiment, topics"):
        predictor.predict(TEXTS, heads=["sentimnet"])
    with pytest.raises(InputError, match="takes a dict"):
        predictor.predict(TEXTS, topics=0.3)
    with pytest.raises(InputError, match="unknown option 'aggregatoin'"):
        predictor.predict(TEXTS, aggregatoin="max")
    assert {"heads", "sentiment", "threshold", "aggregation"} <= set(predictor.valid_options())


def test_cli_predict_shows_every_head(bundles):
    multi, _, _ = bundles
    run = subprocess.run(
        [sys.executable, "-m", "headreg.cli", "predict", str(multi.path), "I loved it", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    assert set(rows[0]["result"]) == set(HEADS)  # JSON keys come sorted
    table = subprocess.run(
        [sys.executable, "-m", "headreg.cli", "predict", str(multi.path), "I loved it"],
        capture_output=True, text=True, timeout=120, env={"COLUMNS": "250", **__import__("os").environ},
    )
    assert table.returncode == 0, table.stderr
    for name in HEADS:
        assert name in table.stdout


@pytest.mark.slow
def test_a_format_1_bundle_written_by_the_previous_code_still_loads(tmp_path):
    """Export with headreg as it was before format 2 (git history), then load and verify with today's."""
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "4c6b295", "headreg"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    script = (
        "import torch; torch.manual_seed(0)\n"
        "from headreg import attach_head\n"
        "from headreg.testing import tiny_backbone, load_tokenizer\n"
        "from headreg.export import export_onnx\n"
        "m = attach_head(tiny_backbone('bert', num_hidden_layers=1), 'seq_cls', num_labels=2).eval()\n"
        f"export_onnx(m, {str(tmp_path / 'v1')!r}, load_tokenizer(), max_length=16, exporter='torchscript')\n"
        "import headreg; print(headreg.__file__)\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(old)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd=old)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == str(old / "headreg" / "__init__.py")
    manifest = json.loads((tmp_path / "v1" / "headreg.json").read_text())
    assert manifest["format_version"] == 1 and "heads" not in manifest

    from headreg.export import verify_bundle

    predictor = Predictor(tmp_path / "v1")
    assert predictor.multi_head is False and [h.name for h in predictor.heads] == ["seq_cls"]
    result = predictor.predict("a short text")
    assert set(result) == {"label", "score", "scores"}
    assert verify_bundle(tmp_path / "v1").passed


def test_a_single_head_model_is_the_one_member_case_with_its_format_1_names():
    torch.manual_seed(0)
    single = attach_head(tiny_backbone("bert", num_hidden_layers=1), "token_cls", num_labels=4).eval()
    assert isinstance(single, MultiHeadModel) and single.head_names == ["token_cls"]
    # format-1 state-dict keys (saved models, Trainer checkpoints): the head and pooler, each once
    assert {key.split(".")[0] for key in single.state_dict()} == {"backbone", "head"}  # cls pooling: no weights
    projected = attach_head(tiny_backbone("bert", num_hidden_layers=1), "seq_cls", num_labels=2,
                            pooling={"strategy": "cls", "projection": True, "activation": "tanh"})
    assert {key.split(".")[0] for key in projected.state_dict()} == {"backbone", "head", "pooler"}
    ids, mask = _batch()
    out = single(input_ids=ids, attention_mask=mask, labels=torch.zeros_like(ids))
    assert out.logits.shape == (3, 7, 4) and out.loss is not None
    assert single.graph_output_names() == ["pooled_output", "logits"]
    (member,) = single.members()
    assert member.outputs == {"logits": "logits", "pooled_output": "pooled_output"}
    # the same head in a multi-head model runs the same code and gives the same numbers under prefixed names
    multi = attach_heads(single, {}, keep_as="tags")
    graph, same = single.graph_outputs(ids, mask), multi.graph_outputs(ids, mask)
    torch.testing.assert_close(graph["logits"], same["tags.logits"])
    torch.testing.assert_close(graph["pooled_output"], same["pooled_output"])
    with pytest.raises(HeadConfigError, match=r"has one head; attach_heads\(model"):
        single.add_head("extra", "seq_cls", num_labels=2)
    from headreg.model import hidden_size_of

    replaced = type(single.head)(single.head.config, hidden_size_of(single.config))
    single.head = replaced  # what runs is the registered module, whatever was assigned
    assert single.heads["token_cls"] is replaced
