"""Adversarial cases: bad inputs, crafted bundles, corrupt saved models, hostile plugins and faults.

A case is held when headreg answers it with the documented error type and a message (InputError / BundleError /
SaveLoadError, a plugin recorded as failed, exit code 2 on the CLI), or with correct output; never a raw Python
exception, a hang, a crash of the host, invalid ``--json``, or a file written or deleted where it must not be.
Every case is its own test, so a case that is not held fails by name.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from conftest import pip_install, write_plugin

from headreg.errors import BundleError, SaveLoadError
from headreg.runtime import InputError, Predictor


@pytest.fixture(scope="module")
def b(tmp_path_factory) -> dict[str, Path]:
    """Tiny bundles of three heads (shared with the runtime tests), one of other weights but the same shapes as
    seq_cls, and a saved model."""
    from test_runtime_predictor import HEAD_OPTIONS, tiny_bundle

    from headreg import attach_head
    from headreg.export.pipeline import ExportOptions, export_onnx
    from headreg.testing import load_tokenizer, single_torch_thread, tiny_backbone

    work = tmp_path_factory.mktemp("adversarial")
    bundles = {head: tiny_bundle(head) for head in ("seq_cls", "multi_label", "token_cls")}
    with single_torch_thread():
        other = attach_head(tiny_backbone("bert", seed=1), "seq_cls", **HEAD_OPTIONS["seq_cls"]).eval()
        bundles["other"] = export_onnx(other, work / "other", tokenizer=load_tokenizer(),
                                       options=ExportOptions(exporter="torchscript")).path
        model = attach_head(tiny_backbone("bert"), "seq_cls", num_labels=2)
        bundles["saved"] = model.save_pretrained(work / "saved", tokenizer=load_tokenizer())
    return bundles


@pytest.fixture(scope="module")
def predictors(b) -> dict[str, Predictor]:
    return {head: Predictor(b[head]) for head in ("seq_cls", "multi_label", "token_cls")}


def raises_with_message(error: type[BaseException], call: Callable[[], Any], match: str = "") -> str:
    """``call()`` raises ``error`` with a non-empty message containing ``match``; the message, for more checks."""
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert message and match in message, message
    return message


def copy_of(path: Path, work: Path) -> Path:
    target = Path(tempfile.mkdtemp(dir=work)) / path.name
    shutil.copytree(path, target, symlinks=True)
    return target


def edited(bundle: Path, work: Path, change: Callable[[dict], None], file: str = "headreg.json") -> Path:
    copy = copy_of(bundle, work)
    data = json.loads((copy / file).read_text())
    change(data)
    (copy / file).write_text(json.dumps(data))
    return copy


def headreg_cli(*args: str | bytes, stdin: bytes | None = None, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "headreg.cli", *args], input=stdin, capture_output=True, env=env,
                          timeout=timeout)


# --- bad inputs ------------------------------------------------------------------------------------------------------

BAD_INPUTS = [None, 5, 3.5, b"abc", bytearray(b"abc"), {"text": "x"}, object(), [None], [5], [b"x"], [["a"]],
              [("a",)], [("a", None)], [("a", 5)], ["\udcff"], [("ok", "\ud800")], [("a", "b", "c")], [{"text": "x"}]]


@pytest.mark.parametrize("call", ["predict", "embed"])
@pytest.mark.parametrize("value", BAD_INPUTS, ids=[f"{value!r:.30}" for value in BAD_INPUTS])
def test_bad_inputs_are_an_input_error(predictors, call, value):
    raises_with_message(InputError, lambda: getattr(predictors["seq_cls"], call)(value))


BAD_OPTIONS = [
    ("multi_label", dict(thresholds=None)), ("multi_label", dict(thresholds=math.nan)),
    ("multi_label", dict(thresholds=math.inf)), ("multi_label", dict(thresholds=-0.1)),
    ("multi_label", dict(thresholds=2)), ("multi_label", dict(thresholds="0.5")), ("multi_label", dict(thresholds=[0.5])),
    ("multi_label", dict(thresholds={"nope": 0.5})), ("multi_label", dict(thresholds={"toxic": math.nan})),
    ("multi_label", dict(threshold=True)), ("multi_label", dict(treshold=0.3)),
    ("seq_cls", dict(aggregation="max")), ("seq_cls", dict(thresholds=0.5)), ("seq_cls", dict(id2label={"0": "x"})),
    ("token_cls", dict(ignore_labels=None)), ("token_cls", dict(ignore_labels="O")), ("token_cls", dict(ignore_labels=[1])),
    ("token_cls", dict(aggregation="best")), ("token_cls", dict(aggregation=None)), ("seq_cls", dict(long_text="sideways")),
    ("seq_cls", dict(window_stride=-1, long_text="window")), ("seq_cls", dict(window_reduce="median", long_text="window")),
]


@pytest.mark.parametrize("head,option", BAD_OPTIONS, ids=[f"{head}-{option}" for head, option in BAD_OPTIONS])
def test_bad_per_call_options_are_an_input_error(predictors, head, option):
    raises_with_message(InputError, lambda: predictors[head].predict(["some text"], **option))


BAD_PREDICTOR_ARGUMENTS = [dict(batch_size=0), dict(batch_size="3"), dict(max_length=0), dict(threads=-1),
                           dict(max_batch_tokens=True)]


@pytest.mark.parametrize("kwargs", BAD_PREDICTOR_ARGUMENTS, ids=str)
def test_bad_predictor_arguments_are_an_input_error(b, kwargs):
    raises_with_message(InputError, lambda: Predictor(b["seq_cls"], **kwargs))


BAD_FILES = {"latin1.txt": "caf\xe9\n".encode("latin-1"), "null.jsonl": b'{"text": null}\n', "int.jsonl": b'{"text": 5}\n',
             "typo.jsonl": b'{"txt": "x"}\n', "pair.jsonl": b'{"text": "a", "text_pair": 3}\n'}


@pytest.mark.parametrize("name", BAD_FILES)
def test_unreadable_text_files_are_an_input_error(tmp_path, name):
    from headreg.runtime.inputs import read_texts

    (tmp_path / name).write_bytes(BAD_FILES[name])
    raises_with_message(InputError, lambda: read_texts(tmp_path / name))


def test_hostile_but_valid_inputs_are_answered(predictors, tmp_path):
    from headreg.runtime.inputs import read_texts

    seq = predictors["seq_cls"]
    assert len(seq.encode(["word " * 2_000_000])[0]) == seq.max_length  # 10 M characters: truncated, cheaply
    assert seq.predict([""])[0]["label"] in seq.labels
    (tmp_path / "splits.txt").write_bytes("a\x0cb\u2028c\x85d\x1ce\r\nf\n".encode())
    assert read_texts(tmp_path / "splits.txt") == ["a\x0cb\u2028c\x85d\x1ce", "f"]  # only \n and \r\n end a line
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "a\xe2\x80\xa8b"}\n')
    assert read_texts(tmp_path / "bom.jsonl") == ["a\u2028b"]
    # plain text whose first line merely starts with "{" is text; JSONL whose later line is broken says why
    (tmp_path / "braces.txt").write_text("{braces} are used\nsecond\n")
    assert read_texts(tmp_path / "braces.txt") == ["{braces} are used", "second"]
    (tmp_path / "mixed.txt").write_text('{"text": "a"}\nplain\n')
    with pytest.raises(InputError, match=r"mixed.txt:2: .*read as JSONL because its first line is a JSON object"):
        read_texts(tmp_path / "mixed.txt")


@pytest.mark.slow
@pytest.mark.parametrize("text", ["[/]", "[bold red]x[/bold red]", "\x1b[31mred\x1b]8;;http://x\x07y\x1b]8;;\x07", "\u202eevil"])
def test_cli_tables_show_markup_and_escapes_as_text(b, text):
    result = headreg_cli("predict", str(b["seq_cls"]), text)
    assert result.returncode == 0, result.stderr
    assert b"\x1b" not in result.stdout and b"\xe2\x80\xae" not in result.stdout


@pytest.mark.slow
def test_cli_json_input_errors_and_undecodable_arguments(b):
    odd = headreg_cli("predict", str(b["seq_cls"]), "--json", "[/]", "\u2028", "\x01")
    assert len(json.loads(odd.stdout)) == 3
    for result in (headreg_cli("predict", str(b["seq_cls"]), "--file", "-", stdin=b"\xff\xfe\n"),  # invalid UTF-8
                   headreg_cli("predict", str(b["seq_cls"]), b"caf\xe9")):  # a lone surrogate in argv
        assert result.returncode == 2 and b"Traceback" not in result.stderr and result.stderr.startswith(b"error: ")


# --- crafted bundles -------------------------------------------------------------------------------------------------


def _manifest_changes(seq: Path) -> dict[str, Callable[[dict], None]]:
    return {
        "tokenizer /etc/passwd": lambda m: m["tokenizer"].update(file="/etc/passwd"),
        "tokenizer /dev/zero": lambda m: m["tokenizer"].update(file="/dev/zero"),
        "tokenizer ../": lambda m: m["tokenizer"].update(file="../seq_cls/tokenizer.json"),
        "tokenizer int": lambda m: m["tokenizer"].update(file=5),
        "variant absolute": lambda m: m["variants"]["fp32"].update(file=str(seq / "model.onnx")),
        "variant ../": lambda m: m["variants"]["fp32"].update(file="../seq_cls/model.onnx"),
        "variant dir": lambda m: m["variants"]["fp32"].update(file="."),
        "files ../": lambda m: m["files"].update({"../x": "0" * 64}),
        "files bad digest": lambda m: m["files"].update({"model.onnx": "zz"}),
        "head string": lambda m: m.update(head="seq_cls"),
        "head name int": lambda m: m["head"].update(name=5),
        "head level": lambda m: m["head"].update(level="paragraph"),
        "max_length -5": lambda m: m.update(max_length=-5),
        "max_length str": lambda m: m.update(max_length="128"),
        "max_length huge": lambda m: m.update(max_length=10**12),
        "id2label keys": lambda m: m.update(id2label={"a": "x", "b": "y", "c": "z"}),
        "id2label gap": lambda m: m.update(id2label={"0": "x", "1": "y", "9": "z"}),
        "id2label values": lambda m: m.update(id2label={"0": 1, "1": 2, "2": 3}),
        "num_labels 12M": lambda m: m.update(num_labels=12_000_000),
        "num_labels float": lambda m: m.update(num_labels=3.0),
        "padding_side": lambda m: m.update(padding_side="up"),
        "inputs missing mask": lambda m: m.update(inputs=["input_ids"]),
        "inputs duplicate": lambda m: m.update(inputs=["input_ids", "input_ids", "attention_mask"]),
        "outputs not dict": lambda m: m.update(outputs=["logits"]),
        "outputs width lie": lambda m: m["outputs"].update(logits=["batch", 7]),
        "outputs dims none": lambda m: m["outputs"].update(pooled_output=[]),
        "labels fewer than logits": lambda m: m.update(num_labels=2, id2label={"0": "a", "1": "b"}),
        "pad id negative": lambda m: m["tokenizer"].update(pad_token_id=-1),
        "pad id beyond vocab": lambda m: m["tokenizer"].update(pad_token_id=10**6),
        "vocab smaller than tokenizer": lambda m: m["backbone"].update(vocab_size=100),
        "pair str": lambda m: m["tokenizer"].update(pair="no"),
        "variants default unknown": lambda m: m["variants"].update(default="fp16"),
        "variant not object": lambda m: m["variants"].update(int8="model.int8.onnx"),
        "postprocess injection": lambda m: m["head"].update(postprocess="os:system"),
        "postprocess not entry": lambda m: m["head"].update(postprocess="rm -rf /"),
        "plugin not installed": lambda m: m["head"].update(name="ghost_head", plugin="headreg-plugin-ghost"),
        "format version 99": lambda m: m.update(format_version=99),
        "format version str": lambda m: m.update(format_version="1"),
        "format wrong": lambda m: m.update(format="other"),
        "verification atol str": lambda m: m["verification"].update(atol="x"),
        "postprocess_config list": lambda m: m.update(postprocess_config=[1]),
        "backbone hidden -1": lambda m: m["backbone"].update(hidden_size=-1),
        "manifest is a list": lambda m: m.clear(),
    }


MANIFEST_CHANGES = list(_manifest_changes(Path("bundle")))


@pytest.mark.parametrize("name", MANIFEST_CHANGES)
def test_crafted_manifests_are_a_bundle_error(b, tmp_path, name):
    change = _manifest_changes(b["seq_cls"])[name]
    raises_with_message(BundleError, lambda: Predictor(edited(b["seq_cls"], tmp_path, change)))


@pytest.mark.parametrize("thresholds", [[], [0.5], [0.5, 0.5, 2.0], "x", {"nope": 0.5}])
def test_a_stored_option_default_that_no_call_could_pass_is_a_bundle_error(b, tmp_path, thresholds):
    """A manifest's postprocess_config holds the defaults of per-call options: they get a call's own checks at
    load, so a bad one is refused there instead of failing every later prediction."""
    def change(manifest):
        for config in (manifest["postprocess_config"], manifest["heads"][0]["postprocess_config"]):
            config["thresholds"] = thresholds

    raises_with_message(BundleError, lambda: Predictor(edited(b["multi_label"], tmp_path, change)), "postprocess_config")


def test_a_stored_thresholds_dict_is_a_default_calls_can_change(b, tmp_path):
    """{label: threshold} as the stored form: the other labels keep 0.5, and a call's own thresholds apply on top."""
    labels = Predictor(b["multi_label"]).labels

    def change(manifest):
        for config in (manifest["postprocess_config"], manifest["heads"][0]["postprocess_config"]):
            config["thresholds"] = {labels[0]: 0.0}

    predictor = Predictor(edited(b["multi_label"], tmp_path, change))
    (stored,) = predictor.predict(["a short text"])
    assert labels[0] in stored["labels"]  # every probability is above 0
    assert set(stored["labels"]) - {labels[0]} == {name for name in labels[1:] if stored["scores"][name] > 0.5}
    (changed,) = predictor.predict(["a short text"], thresholds={labels[0]: 1.0})
    assert labels[0] not in changed["labels"]


RAW_MANIFESTS = {
    "duplicate keys": lambda text: text.replace('"pooling": {', '"pooling": {"strategy": "max"}, "pooling": {', 1),
    "NaN": lambda text: text.replace('"num_labels": 3', '"num_labels": NaN', 1),
    "not JSON": lambda text: "{",
    "deep nesting": lambda text: "[" * 100_000,
    "empty": lambda text: "",
    "binary": lambda text: "\x00\xff",
}


@pytest.mark.parametrize("name", RAW_MANIFESTS)
def test_malformed_manifest_text_is_a_bundle_error(b, tmp_path, name):
    copy = copy_of(b["seq_cls"], tmp_path)
    original = (copy / "headreg.json").read_text()
    text = RAW_MANIFESTS[name](original)
    assert text != original
    (copy / "headreg.json").write_text(text)
    raises_with_message(BundleError, lambda: Predictor(copy))


SYMLINKS = [("tokenizer.json", "/dev/zero"), ("tokenizer.json", "/etc/hostname"), ("headreg.json", "/etc/hostname"),
            ("model.onnx", "/dev/urandom"), ("tokenizer.json", None)]  # None: the original bundle's own file


@pytest.mark.parametrize("name,target", SYMLINKS, ids=[f"{n}->{t or 'original'}" for n, t in SYMLINKS])
def test_symlinked_bundle_files_are_a_bundle_error(b, tmp_path, name, target):
    copy = copy_of(b["seq_cls"], tmp_path)
    (copy / name).unlink()
    (copy / name).symlink_to(target or b["seq_cls"] / name)
    raises_with_message(BundleError, lambda: Predictor(copy))


@pytest.mark.parametrize("name", ["model.onnx garbage", "tokenizer changed", "other model's onnx"])
def test_replaced_bundle_files_are_a_bundle_error(b, tmp_path, name):
    seq = b["seq_cls"]
    file, data = {
        "model.onnx garbage": ("model.onnx", b"x"),
        "tokenizer changed": ("tokenizer.json", (seq / "tokenizer.json").read_bytes().replace(b'"[UNK]"', b'"[UNX]"', 1)),
        "other model's onnx": ("model.onnx", (b["other"] / "model.onnx").read_bytes()),
    }[name]
    copy = copy_of(seq, tmp_path)
    assert (copy / file).read_bytes() != data
    (copy / file).write_bytes(data)
    raises_with_message(BundleError, lambda: Predictor(copy))


def _golden_bomb(archive: zipfile.ZipFile) -> None:
    for index in range(12):  # 12 x 128 MB of zeros, ~1.5 MB compressed
        with archive.open(f"{index}.input.input_ids.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.zeros((4096, 4096), dtype=np.int64))


def _golden_shape_lie(archive: zipfile.ZipFile) -> None:
    with archive.open("0.input.input_ids.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<i8", "fortran_order": False, "shape": (1 << 40,)})


def _golden_pickle(archive: zipfile.ZipFile) -> None:
    with archive.open("0.input.input_ids.npy", "w") as member:
        np.lib.format.write_array(member, np.array([object()], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("build", [pytest.param(_golden_bomb, id="bomb", marks=pytest.mark.slow),
                                   pytest.param(_golden_shape_lie, id="shape lie"), pytest.param(_golden_pickle, id="pickle")])
def test_crafted_golden_files_are_a_bundle_error(b, tmp_path, build):
    from headreg.export import verify_bundle

    copy = copy_of(b["seq_cls"], tmp_path)
    with zipfile.ZipFile(copy / "golden.npz", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        build(archive)
    raises_with_message(BundleError, lambda: verify_bundle(copy))


def test_verify_bounds_what_a_manifest_or_report_may_ask_for(b, tmp_path):
    from headreg.export import verify_bundle

    seq = b["seq_cls"]
    raises_with_message(BundleError, lambda: verify_bundle(
        edited(seq, tmp_path, lambda m: m["head"]["config"].update(num_labels=12_000_000))), "head.config.num_labels")
    # verify builds no torch head (results are read by the runtime postprocess): a head config it would have built
    # from is not read at all; with the manifest's recorded hash renewed the bundle verifies
    crafted = edited(seq, tmp_path, lambda m: m["head"]["config"].update(num_labels=900_000))
    record = json.loads((crafted / "verification.json").read_text())
    record["manifest_sha256"] = hashlib.sha256((crafted / "headreg.json").read_bytes()).hexdigest()
    (crafted / "verification.json").write_text(json.dumps(record))
    report = verify_bundle(crafted)
    assert report.passed, report.message()
    raises_with_message(BundleError, lambda: verify_bundle(
        edited(seq, tmp_path, lambda r: r.update(case_results=[1, 2, 3]), file="verification.json")))


# --- corrupt saved models --------------------------------------------------------------------------------------------

CONFIG_CHANGES: dict[str, Callable[[dict], None]] = {
    "head int": lambda c: c.update(head=5),
    "head unknown": lambda c: c.update(head="nope", plugin="headreg-plugin-nope"),
    "head_config list": lambda c: c.update(head_config=[1]),
    "num_labels -5": lambda c: c["head_config"].update(num_labels=-5),
    "num_labels str": lambda c: c["head_config"].update(num_labels="2"),
    "num_labels 5 vs weights": lambda c: c["head_config"].update(num_labels=5),
    "id2label keys": lambda c: c["head_config"].update(id2label={"a": "x", "b": "y"}),
    "unknown head option": lambda c: c["head_config"].update(frobnicate=1),
    "dropout str": lambda c: c["head_config"].update(dropout="high"),
    "pooling str": lambda c: c.update(pooling="cls"),
    "pooling strategy": lambda c: c["pooling"].update(strategy="median"),
    "pooling activation": lambda c: c["pooling"].update(activation="os.system"),
    "pooling extra": lambda c: c["pooling"].update(evil=1),
    "backbone ../": lambda c: c.update(backbone="../x"),
    "format": lambda c: c.update(format="other"),
    "format_version 99": lambda c: c.update(format_version=99),
    "format_version str": lambda c: c.update(format_version="1"),
    "missing head_config": lambda c: c.pop("head_config"),
}


@pytest.mark.parametrize("name", CONFIG_CHANGES)
def test_corrupt_saved_model_configs_are_a_save_load_error(b, tmp_path, name):
    from headreg import load_model

    copy = edited(b["saved"], tmp_path, CONFIG_CHANGES[name], file="headreg_model.json")
    raises_with_message(SaveLoadError, lambda: load_model(copy))


def _rename_backbone_key(copy: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(copy / "backbone" / "model.safetensors")
    state["bogus"] = state.pop("embeddings.word_embeddings.weight")
    save_file(state, copy / "backbone" / "model.safetensors", metadata={"format": "pt"})


def _drop_backbone_key(copy: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(copy / "backbone" / "model.safetensors")
    state.pop("encoder.layer.0.attention.self.query.weight")
    save_file(state, copy / "backbone" / "model.safetensors", metadata={"format": "pt"})


def _pickle_only(copy: Path) -> None:
    (copy / "backbone" / "model.safetensors").unlink()
    (copy / "backbone" / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")


def _edit_text(name: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(copy: Path) -> None:
        text = (copy / name).read_text()
        assert old in text
        (copy / name).write_text(text.replace(old, new, 1))

    return edit


SAVED_MUTATIONS: dict[str, Callable[[Path], None]] = {
    "backbone key renamed": _rename_backbone_key,
    "backbone key missing": _drop_backbone_key,
    "pickle only": _pickle_only,
    "head weights garbage": lambda c: (c / "head.safetensors").write_bytes(b"garbage"),
    "config not JSON": lambda c: (c / "headreg_model.json").write_text("{"),
    "config duplicate keys": _edit_text("headreg_model.json", '"pooling": {', '"pooling": {"strategy": "max"}, "pooling": {'),
    "config NaN": _edit_text("headreg_model.json", '"num_labels": 2', '"num_labels": NaN'),
    "backbone config garbage": lambda c: (c / "backbone" / "config.json").write_text("[]"),
    "missing head weights": lambda c: (c / "head.safetensors").unlink(),
}


@pytest.mark.parametrize("name", SAVED_MUTATIONS)
def test_corrupt_saved_model_files_are_a_save_load_error(b, tmp_path, name):
    from headreg import load_model

    copy = copy_of(b["saved"], tmp_path)
    SAVED_MUTATIONS[name](copy)
    raises_with_message(SaveLoadError, lambda: load_model(copy))


def test_a_saved_backbone_naming_remote_code_does_not_run_it(b, tmp_path):
    from headreg import load_model

    copy = copy_of(b["saved"], tmp_path)
    config = json.loads((copy / "backbone" / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel"}
    (copy / "backbone" / "config.json").write_text(json.dumps(config))
    (copy / "backbone" / "evil.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w').write('x')\n")
    try:
        load_model(copy)
    except Exception:  # noqa: BLE001  refusing is fine; running the file is not
        pass
    assert not (tmp_path / "pwned").exists()


# --- hostile plugins -------------------------------------------------------------------------------------------------

PLUGINS = {
    "exit-import": "import sys\nsys.exit(3)\n",
    "interrupt-import": "raise KeyboardInterrupt\n",
    "exit-hook": "import sys\nfrom headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n    sys.exit(1)\n",
    "interrupt-hook": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n    raise KeyboardInterrupt\n",
    "raise-import": "raise RuntimeError('boom')\n",
    "prints": "import os\nprint('noise')\nos.write(1, b'fd noise\\n')\nfrom headreg import hookimpl\n"
              "@hookimpl\ndef register_heads(register):\n    print('more')\n"
              "    register(name='chatty', cls='p_prints:X', task='custom')\n",
    "string-aliases": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                      "    register(name='stringy', cls='a:B', aliases='xyz')\n",
    "hook-42": "register_heads = 42\n",
    "nan-task": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                "    register(name='nanny', cls='a:B', task=float('nan'))\n",
    "nan-description": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                       "    register(name='nandesc', cls='a:B', description=float('nan'))\n",
    "broken-override": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                       "    register(name='seq_cls', cls='gone:X', postprocess='gone:y', override=True)\n",
    "markup-name": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                   "    register(name='markup', cls='a:B', description='[bold red]x[/] \\x1b[31m')\n",
    "bad-name": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                "    register(name='../../etc', cls='a:B')\n",
    "bad-cls": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
               "    register(name='badcls', cls='not an entry')\n",
    "no-hook": "x = 1\n",
    "override-override-false": "from headreg import hookimpl\n@hookimpl\ndef register_heads(register):\n"
                               "    register(name='seq_cls', cls='a:B', override='yes')\n",
}
EXPECTED_LOADED = {"prints", "markup-name"}


@pytest.fixture(scope="module")
def hostile_env(tmp_path_factory) -> dict[str, str]:
    """An environment whose PYTHONPATH holds every hostile plugin, pip-installed in one go."""
    work = tmp_path_factory.mktemp("hostile-plugins")
    projects = [write_plugin(work / "src", f"hp-{name}", f"p_{name.replace('-', '_')}", body)
                for name, body in PLUGINS.items()]
    pip_install(work / "site", *projects)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADREG_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work / "site"), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def hostile_listing(hostile_env) -> dict[str, dict]:
    listing = headreg_cli("plugins", "--json", env=hostile_env)
    assert listing.returncode == 0, listing.stderr
    return {p["distribution"]: p for p in json.loads(listing.stdout)}


@pytest.mark.slow
@pytest.mark.parametrize("name", PLUGINS)
def test_a_hostile_plugin_is_recorded_as_failed_or_loads_harmlessly(hostile_listing, name):
    info = hostile_listing[f"hp-{name}"]
    if name in EXPECTED_LOADED:
        assert info["status"] == "loaded", info
    else:
        assert info["status"] == "failed" and info["error"], info


@pytest.mark.slow
def test_hostile_plugins_leave_the_built_ins_and_the_output_intact(b, hostile_env):
    heads = headreg_cli("heads", "--json", env=hostile_env)
    assert {h["name"]: h["plugin"] for h in json.loads(heads.stdout)}.get("seq_cls") == "headreg"
    table = headreg_cli("heads", env=hostile_env)
    assert table.returncode == 0 and b"[bold red]x[/]" in table.stdout and b"\x1b" not in table.stdout
    served = subprocess.run(
        [sys.executable, "-c", f"from headreg.runtime import Predictor; Predictor({str(b['seq_cls'])!r}).predict('x')"],
        env=hostile_env, capture_output=True, timeout=300)
    assert served.returncode == 0, served.stderr


# --- faults ----------------------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HEADREG_")}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("delay", [0.5, 2.0, 4.0, 6.0, 8.0, 10.0])
def test_a_killed_export_leaves_a_complete_bundle_or_nothing(b, tmp_path, sig, delay):
    from headreg.atomic import remove_leftovers

    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "headreg.cli", "export", str(b["saved"]), "-o", str(out),
                                "--exporter", "torchscript", "--json"], env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(delay)
    process.send_signal(sig)
    process.wait(timeout=120)
    if out.exists():
        assert (out / "headreg.json").exists() and (out / "verification.json").exists(), "a partial bundle"
    remove_leftovers(out)  # what the next export to the same place does
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["out"])


@pytest.mark.slow
def test_export_never_overwrites_what_is_not_a_bundle(b, tmp_path):
    saved = b["saved"]
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "thesis.tex").write_text("years")
    result = headreg_cli("export", str(saved), "-o", str(documents), "--overwrite", env=_env())
    assert result.returncode == 2 and (documents / "thesis.tex").exists()
    for target in (saved, saved.parent):
        result = headreg_cli("export", str(saved), "-o", str(target), "--overwrite", env=_env())
        assert result.returncode == 2 and (saved / "headreg_model.json").exists()


def test_save_pretrained_refuses_a_file_and_writes_ordinary_modes(b, tmp_path):
    from headreg import load_model

    model = load_model(b["saved"])
    raises_with_message(SaveLoadError, lambda: model.save_pretrained(Path(tempfile.mkstemp(dir=tmp_path)[1]),
                                                                     overwrite=True))
    previous = os.umask(0o022)
    try:
        out = model.save_pretrained(tmp_path / "m")
    finally:
        os.umask(previous)
    assert all(p.stat().st_mode & 0o777 in (0o644, 0o755) for p in out.rglob("*"))


@pytest.fixture
def small_mount(tmp_path):
    """A 256 KiB tmpfs (needs root and mount; skipped where the container does not allow it)."""
    mount = tmp_path / "mount"
    mount.mkdir()
    if os.getuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount(8)")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("this container cannot mount a tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_full_or_read_only_disk_is_a_clear_error_that_leaves_nothing(b, small_mount):
    from headreg import load_model

    model = load_model(b["saved"])
    raises_with_message(SaveLoadError, lambda: model.save_pretrained(small_mount / "m"), "no space left")
    assert not list(small_mount.iterdir())
    full = headreg_cli("export", str(b["saved"]), "-o", str(small_mount / "b"), "--exporter", "torchscript",
                       env=_env(), timeout=600)
    assert full.returncode == 2 and b"no space left" in full.stderr
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    read_only = headreg_cli("export", str(b["saved"]), "-o", str(small_mount / "b"), env=_env(), timeout=600)
    assert read_only.returncode == 2 and b"read-only" in read_only.stderr
