"""Property tests (hypothesis): the manifest and saved-model validators and the per-call option checks answer
any input with their own error, never a raw Python exception, and what they accept is usable."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headreg.errors import BundleError
from headreg.manifest import bundle_path, loads_strict, validate_manifest
from headreg.runtime import Predictor
from headreg.runtime.inputs import InputError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LABELS = {"0": "toxic", "1": "spam", "2": "off_topic"}
MANIFEST = {
    "format": "headreg-bundle",
    "format_version": 1,
    "headreg_version": "0.1.0",
    "head": {"name": "multi_label", "plugin": "headreg", "plugin_version": "0.1.0", "level": "sequence",
             "problem_type": "multi_label_classification", "postprocess": "headreg.runtime.postprocess:multi_label",
             "config": {"num_labels": 3, "id2label": LABELS, "dropout": 0.1}},
    "postprocess_config": {"problem_type": "multi_label_classification", "id2label": LABELS, "thresholds": [0.5] * 3},
    "num_labels": 3,
    "id2label": LABELS,
    "pooling": {"strategy": "cls"},
    "backbone": {"model_type": "bert", "hidden_size": 32, "vocab_size": 30522, "is_decoder": False},
    "inputs": ["input_ids", "attention_mask", "token_type_ids"],
    "outputs": {"logits": ["batch", 3], "pooled_output": ["batch", 32]},
    "opset": 18,
    "max_length": 128,
    "padding_side": "right",
    "tokenizer": {"file": "tokenizer.json", "sha256": "a" * 64, "pad_token_id": 0, "pad_token": "[PAD]", "pair": True},
    "files": {"model.onnx": "b" * 64},
    "variants": {"fp32": {"file": "model.onnx", "precision": "fp32", "backend": "onnxruntime"}},
    "verification": {"passed": True, "atol": 1e-4, "rtol": 1e-3},
}

json_leaf = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=20)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))


PATHS = [path for path in _paths(MANIFEST) if path]


def _mutated(reference: dict, path: tuple, value, delete: bool) -> dict:
    """A deep copy of ``reference`` with the field at ``path`` set to ``value`` (or deleted)."""
    data = copy.deepcopy(reference)
    holder = data
    for key in path[:-1]:
        holder = holder[key]
    if delete:
        del holder[path[-1]]
    else:
        holder[path[-1]] = value
    return data


def test_the_reference_manifest_is_valid():
    assert validate_manifest(copy.deepcopy(MANIFEST)) is not None


@FUZZ
@given(path=st.sampled_from(PATHS), value=json_value, delete=st.booleans())
def test_any_single_field_change_is_accepted_or_a_bundle_error(path, value, delete):
    manifest = _mutated(MANIFEST, path, value, delete)
    try:
        validate_manifest(manifest)
    except BundleError as exc:
        # the field is named as Python quotes it: "..." when its path holds a ' (a label key, say)
        assert re.search(r"field ['\"]", str(exc)) and "export the bundle again" in str(exc), str(exc)


@pytest.fixture(scope="module")
def real_bundle() -> tuple[Path, dict]:
    """A real tiny multi_label bundle and its manifest (exported once per session)."""
    from test_runtime_predictor import tiny_bundle

    bundle = tiny_bundle("multi_label")
    return bundle, json.loads((bundle / "headreg.json").read_text())


@pytest.fixture(scope="module")
def scratch_bundle(real_bundle, tmp_path_factory) -> Path:
    """A copy of the real bundle whose manifest each example rewrites."""
    copy = tmp_path_factory.mktemp("fuzz-real") / "bundle"
    shutil.copytree(real_bundle[0], copy)
    return copy


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=json_value, delete=st.booleans())
def test_a_manifest_the_validator_accepts_loads_and_predicts_or_is_a_bundle_error(real_bundle, scratch_bundle, data,
                                                                                  value, delete):
    """What validation lets through reaches a real Predictor: it predicts, or refuses with a BundleError."""
    reference = real_bundle[1]
    path = data.draw(st.sampled_from([path for path in _paths(reference) if path]), label="path")
    manifest = _mutated(reference, path, value, delete)
    try:
        validate_manifest(manifest)
    except BundleError:
        return
    (scratch_bundle / "headreg.json").write_text(json.dumps(manifest, allow_nan=True))
    try:
        predictor = Predictor(scratch_bundle, threads=1)
    except BundleError as exc:
        assert str(exc)
        return
    results = predictor.predict(["a short text", "another text, a little longer than the first one"])
    assert len(results) == 2
    for result in results:
        assert set(result["labels"]) <= set(predictor.labels)
        assert all(math.isfinite(score) for score in result["scores"].values())


@FUZZ
@given(value=json_value)
def test_any_json_document_is_accepted_or_a_bundle_error(value):
    try:
        validate_manifest(value)
    except BundleError:
        pass


@FUZZ
@given(text=st.text(max_size=200))
def test_strict_json_reading_raises_value_errors_only(text):
    try:
        loads_strict(text)
    except (ValueError, RecursionError):
        pass


@pytest.fixture(scope="module")
def bundle_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-bundle")
    (root / "tokenizer.json").write_text("{}")
    (root / "sub").mkdir()
    (root / "sub" / "file").write_text("x")
    os.symlink("/etc/hostname", root / "out-link")
    return root


@FUZZ
@given(name=st.one_of(st.text(max_size=40), st.sampled_from(
    ["tokenizer.json", "sub/file", "sub/../tokenizer.json", "../x", "/etc/passwd", "out-link", "sub", "./tokenizer.json",
     "sub//file", "C:/x", "\x00", "a\\b"]), json_leaf))
def test_bundle_paths_never_lead_outside(bundle_root, name):
    try:
        path = bundle_path(bundle_root, name)
    except BundleError:
        return
    real = Path(os.path.realpath(path))
    assert real.is_file() and Path(os.path.realpath(bundle_root)) in real.parents


# --- per-call options ----------------------------------------------------------------------------------------------

option_names = st.sampled_from(["thresholds", "threshold", "aggregation", "ignore_labels", "long_text", "treshold",
                                "id2label", "problem_type"]) | st.text(max_size=10)
option_values = json_value | st.lists(st.floats(allow_nan=True), min_size=3, max_size=3) | st.dictionaries(
    st.sampled_from(["toxic", "spam", "nope"]), st.floats(allow_nan=True), max_size=3)


@pytest.fixture(scope="module")
def predictors() -> dict[str, Predictor]:
    from test_runtime_predictor import tiny_bundle

    return {head: Predictor(tiny_bundle(head), threads=1) for head in ("multi_label", "token_cls")}


OPTION_TEXTS = ["Angela Merkel met Emmanuel Macron in Paris.", "a short text"]


@FUZZ
@given(options=st.dictionaries(option_names, option_values, max_size=3))
def test_any_options_are_an_input_error_or_used_by_predict(predictors, options):
    """Options the check accepts go to a real predict call, whose results honour them."""
    predictor = predictors["multi_label"]
    try:
        results = predictor.predict(OPTION_TEXTS, **options)
    except InputError as exc:
        assert str(exc)
        return
    thresholds = options.get("thresholds", options.get("threshold", 0.5))
    for result in results:
        assert set(result["labels"]) <= set(predictor.labels)
        assert all(math.isfinite(score) for score in result["scores"].values())
        for label, score in result["scores"].items():
            bar = thresholds.get(label, 0.5) if isinstance(thresholds, dict) else \
                thresholds[predictor.labels.index(label)] if isinstance(thresholds, list) else thresholds
            assert (label in result["labels"]) == (score > bar), (label, score, bar)  # at the threshold: off


@FUZZ
@given(options=st.dictionaries(option_names, option_values, max_size=3))
def test_token_options_are_an_input_error_or_used_by_predict(predictors, options):
    predictor = predictors["token_cls"]
    try:
        results = predictor.predict(OPTION_TEXTS, **options)
    except InputError:
        return
    types = {label.split("-", 1)[-1] for label in predictor.labels}  # B-PER -> PER; O -> O
    ignored = set(options.get("ignore_labels", ["O"]))
    for result in results:
        for entity in result["entities"]:
            assert entity["label"] in types | set(predictor.labels)
            assert entity["label"] not in ignored and math.isfinite(entity["score"])


# --- saved-model config ------------------------------------------------------------------------------------------

SAVED = {
    "format": "headreg-model", "format_version": 1, "headreg_version": "0.1.0", "head": "seq_cls", "plugin": "headreg",
    "plugin_version": "0.1.0", "head_config": {"num_labels": 2, "id2label": {"0": "neg", "1": "pos"}, "dropout": 0.1},
    "pooling": {"strategy": "cls", "projection": False, "activation": None, "norm": False, "bias": True,
                "norm_bias": True, "norm_eps": 1e-5},
    "backbone": "backbone", "tokenizer_source": None,
}
SAVED_PATHS = [path for path in _paths(SAVED) if path]


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("saved")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(SAVED_PATHS), value=json_value, delete=st.booleans())
def test_any_saved_config_change_is_accepted_or_a_save_load_error(saved_dir, path, value, delete):
    from headreg.errors import SaveLoadError
    from headreg.files import MODEL_CONFIG
    from headreg.saved import read_saved_config

    config = _mutated(SAVED, path, value, delete)
    (saved_dir / MODEL_CONFIG).write_text(json.dumps(config, allow_nan=True))
    try:
        read_saved_config(saved_dir)
    except SaveLoadError as exc:
        assert "headreg_model.json" in str(exc)


@pytest.fixture(scope="module")
def real_saved(tmp_path_factory) -> tuple[Path, dict]:
    """A real tiny saved model (seq_cls, 2 labels) in a directory each example rewrites the config of."""
    from headreg import attach_head
    from headreg.files import MODEL_CONFIG
    from headreg.testing import load_tokenizer, tiny_backbone

    saved = attach_head(tiny_backbone("bert"), "seq_cls", num_labels=2).save_pretrained(
        tmp_path_factory.mktemp("fuzz-saved") / "model", tokenizer=load_tokenizer())
    return saved, json.loads((saved / MODEL_CONFIG).read_text())


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), value=json_value, delete=st.booleans())
def test_a_saved_config_the_check_accepts_loads_and_runs_or_is_a_save_load_error(real_saved, data, value, delete):
    """What the saved-model check lets through reaches load_model: a model that runs, or a SaveLoadError."""
    import torch

    from headreg import load_model
    from headreg.errors import SaveLoadError
    from headreg.files import MODEL_CONFIG
    from headreg.saved import read_saved_config

    directory, reference = real_saved
    path = data.draw(st.sampled_from([path for path in _paths(reference) if path]), label="path")
    (directory / MODEL_CONFIG).write_text(json.dumps(_mutated(reference, path, value, delete), allow_nan=True))
    try:
        read_saved_config(directory)
        model = load_model(directory)
    except SaveLoadError as exc:
        assert str(exc)
        return
    ids = torch.tensor([[101, 2023, 2003, 102]])
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert logits.shape[0] == 1 and torch.isfinite(logits).all()
