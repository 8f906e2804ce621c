"""Property tests (hypothesis): the manifest and saved-model validators and the per-call option checks answer
any input with their own error, never a raw Python exception, and what they accept is usable."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headreg.errors import BundleError
from headreg.manifest import bundle_path, loads_strict, validate_manifest
from headreg.runtime import postprocess as post
from headreg.runtime.inputs import InputError, OptionContext, check_options

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
        assert "field '" in str(exc) and "export the bundle again" in str(exc)


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

CONTEXT = OptionContext(MANIFEST, ["toxic", "spam", "off_topic"], MANIFEST["postprocess_config"])
TOKEN_CONTEXT = OptionContext({**MANIFEST, "head": {**MANIFEST["head"], "name": "token_cls", "level": "token"}},
                              ["O", "B-PER", "I-PER"], {"aggregation": "first", "id2label": {"0": "O"}})
option_names = st.sampled_from(["thresholds", "threshold", "aggregation", "ignore_labels", "long_text", "treshold",
                                "id2label", "problem_type"]) | st.text(max_size=10)
option_values = json_value | st.lists(st.floats(allow_nan=True), min_size=3, max_size=3) | st.dictionaries(
    st.sampled_from(["toxic", "spam", "nope"]), st.floats(allow_nan=True), max_size=3)


@FUZZ
@given(options=st.dictionaries(option_names, option_values, max_size=3))
def test_any_options_are_accepted_and_usable_or_an_input_error(options):
    try:
        config, runtime = check_options(options, CONTEXT)
    except InputError as exc:
        assert str(exc)
        return
    merged = {**CONTEXT.config, **config}
    logits = np.array([[0.3, -1.0, 2.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    results = post.multi_label({"logits": logits}, post.Context(manifest=MANIFEST, config=merged))
    for result in results:
        assert set(result["labels"]) <= set(CONTEXT.labels)
        assert all(math.isfinite(score) for score in result["scores"].values())


@FUZZ
@given(options=st.dictionaries(option_names, option_values, max_size=3))
def test_token_options_are_checked_too(options):
    try:
        config, _ = check_options(options, TOKEN_CONTEXT)
    except InputError:
        return
    if "aggregation" in config:
        assert config["aggregation"] in post.AGGREGATIONS
    if "ignore_labels" in config:
        assert set(config["ignore_labels"]) <= {"O", "PER", "B-PER", "I-PER"}  # entity types or labels of the model


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
