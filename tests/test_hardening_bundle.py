"""Crafted and corrupted bundles: every path stays inside the bundle, every field is checked, reads are bounded.

Real bundles (exported once per session by test_runtime_predictor.tiny_bundle), edited on disk the way an
attacker or a careless hand would, loaded with the real Predictor and `headreg verify`.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_runtime_predictor import bundle_copy, tiny_bundle  # noqa: F401  (bundle_copy is a fixture)
from test_runtime_predictor import edit_manifest as edit

from headreg.errors import BundleError
from headreg.export import verify_bundle
from headreg.manifest import read_manifest, sha256_file
from headreg.runtime import Predictor


@pytest.fixture
def bundle(bundle_copy) -> Path:
    return bundle_copy


# --- paths the manifest names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tokenizer", "/etc/passwd", "absolute path"),
        ("tokenizer", "../../tokenizer.json", r"'\.\.'"),
        ("tokenizer", "/dev/zero", "absolute path"),
        ("variant", "/tmp/model.onnx", "absolute path"),
        ("variant", "sub/../../model.onnx", r"'\.\.'"),
        ("files", "../outside.bin", r"'\.\.'"),
    ],
)
def test_manifest_paths_outside_the_bundle_are_refused(bundle, field, value, message):
    def change(manifest):
        if field == "tokenizer":
            manifest["tokenizer"]["file"] = value
        elif field == "variant":
            manifest["variants"]["fp32"]["file"] = value
        else:
            manifest["files"][value] = "0" * 64

    edit(bundle, change)
    with pytest.raises(BundleError, match=message):
        Predictor(bundle)


def test_symlinks_leading_out_of_the_bundle_are_refused(bundle, tmp_path):
    outside = tmp_path / "outside.json"
    shutil.copy(bundle / "tokenizer.json", outside)
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").symlink_to(outside)
    with pytest.raises(BundleError, match="leads out of the bundle"):
        Predictor(bundle)


def test_a_tokenizer_that_is_a_device_or_directory_is_refused_before_reading(bundle):
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").symlink_to("/dev/zero")  # inside-the-bundle name, outside target
    with pytest.raises(BundleError, match="leads out of the bundle|not a regular file"):
        Predictor(bundle)
    (bundle / "tok").mkdir()
    edit(bundle, lambda m: m["tokenizer"].update(file="tok"))
    with pytest.raises(BundleError, match="not a regular file"):
        Predictor(bundle)


def test_an_oversized_tokenizer_is_refused_by_size_before_it_is_parsed(bundle, monkeypatch):
    import headreg.runtime.bundle as bundle_module

    monkeypatch.setattr(bundle_module, "TOKENIZER_MAX_BYTES", 1000)  # the real file is ~700 kB
    with pytest.raises(BundleError, match="more than a tokenizer.json may be"):
        Predictor(bundle)


def test_a_changed_file_is_caught_by_its_hash(bundle):
    tokenizer = json.loads((bundle / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["[UNK]"], tokenizer["model"]["vocab"]["the"] = (
        tokenizer["model"]["vocab"]["the"], tokenizer["model"]["vocab"]["[UNK]"])
    (bundle / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(BundleError, match="sha256 differs"):
        Predictor(bundle)


def test_verify_files_checks_the_model_hash_on_request(bundle, monkeypatch):
    import headreg.runtime.bundle as bundle_module

    monkeypatch.setattr(bundle_module, "SMALL_FILE_BYTES", 0)  # as if model.onnx were a big file
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-1] ^= 1  # the last byte of a protobuf string field: still loadable
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 differs"):
        Predictor(bundle, verify_files=True)


# --- fields of the wrong type or range ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m.update(head="seq_cls"), "head"),
        (lambda m: m.update(max_length=-5), "max_length"),
        (lambda m: m.update(max_length="128"), "max_length"),
        (lambda m: m.update(max_length=True), "max_length"),
        (lambda m: m.update(id2label={"zero": "neg", "1": "neu", "2": "pos"}), "id2label.zero"),
        (lambda m: m.update(id2label={"0": "a", "1": "b", "7": "c"}), "id2label"),
        (lambda m: m.update(num_labels=12_000_000), "num_labels"),
        (lambda m: m.update(padding_side="middle"), "padding_side"),
        (lambda m: m.update(inputs=["input_ids"]), "inputs"),
        (lambda m: m["tokenizer"].update(pad_token_id=-1), "tokenizer.pad_token_id"),
        (lambda m: m["tokenizer"].update(pair="yes"), "tokenizer.pair"),
        (lambda m: m["head"].update(level=3), "head.level"),
        (lambda m: m["variants"].update(default="fp16"), "variants.default"),
        (lambda m: m["variants"].update(int8="model.int8.onnx"), "variants.int8"),
        (lambda m: m.update(outputs={"logits": "batch,3"}), "outputs.logits"),
        (lambda m: m["verification"].update(atol="tiny"), "verification.atol"),
    ],
)
def test_type_corrupted_manifest_fields_are_bundle_errors_naming_the_field(bundle, change, field):
    edit(bundle, change)
    with pytest.raises(BundleError, match=f"field '{field}'"):
        read_manifest(bundle)
    with pytest.raises(BundleError, match="export the bundle again"):
        Predictor(bundle)


def test_duplicate_keys_and_nan_in_the_manifest_are_refused(bundle):
    text = (bundle / "headreg.json").read_text()
    (bundle / "headreg.json").write_text(text.replace('"pooling": {', '"pooling": {"strategy": "max"}, "pooling": {', 1))
    with pytest.raises(BundleError, match="duplicate key 'pooling'"):
        Predictor(bundle)
    (bundle / "headreg.json").write_text(text.replace('"num_labels": 3', '"num_labels": NaN', 1))
    with pytest.raises(BundleError, match="NaN is not valid JSON"):
        Predictor(bundle)


# --- the model against its labels and the tokenizer against the model -------------------------------------------------


def test_logits_wider_than_the_labels_are_refused_not_invented(bundle):
    def change(manifest):
        manifest["num_labels"] = 2
        manifest["id2label"] = {"0": "neg", "1": "pos"}
        manifest["outputs"]["logits"] = ["batch", 3]

    edit(bundle, change)
    with pytest.raises(BundleError, match="are 3 wide but the manifest has 2 labels"):
        Predictor(bundle)


def test_recorded_output_widths_must_match_the_graph(bundle):
    edit(bundle, lambda m: m["outputs"].update(logits=["batch", 7]))
    with pytest.raises(BundleError, match="'logits' is 3 wide but the manifest recorded 7"):
        Predictor(bundle)


def test_a_tokenizer_with_ids_beyond_the_vocabulary_is_refused(bundle):
    edit(bundle, lambda m: m["backbone"].update(vocab_size=1000))
    with pytest.raises(BundleError, match="vocabulary has 1000 rows"):
        Predictor(bundle)


# --- bounded reads in headreg verify -------------------------------------------------------------------------------


def test_a_golden_zip_bomb_is_refused_before_it_is_unpacked(bundle, monkeypatch):
    import headreg.manifest as manifest_module

    bomb = bundle / "golden.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("0.input.input_ids.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, np.zeros((4096, 4096), dtype=np.int64))  # 128 MB of zeros -> ~130 kB
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setattr(manifest_module, "GOLDEN_MAX_BYTES", 64 << 20)
    with pytest.raises(BundleError, match="unpacks to more than 64 MB"):
        verify_bundle(bundle)


def test_a_golden_member_declaring_a_huge_shape_over_little_data_is_refused(bundle):
    golden = bundle / "golden.npz"
    with zipfile.ZipFile(golden, "w") as archive:
        with archive.open("0.input.input_ids.npy", "w") as member:
            header = {"descr": "<i8", "fortran_order": False, "shape": (1 << 40,)}
            np.lib.format.write_array_header_1_0(member, header)
            member.write(b"\0" * 64)
    with pytest.raises(BundleError, match="declares .* bytes of data but holds"):
        verify_bundle(bundle)


def test_verify_does_not_build_a_head_larger_than_the_graph(bundle):
    """verify builds no torch head at all (results are read by the runtime postprocess), so a crafted head
    config allocates nothing: the edit is reported, not acted on."""
    def change(manifest):
        manifest["head"]["config"]["num_labels"] = 900_000

    edit(bundle, change)
    record = json.loads((bundle / "verification.json").read_text())
    record["manifest_sha256"] = sha256_file(bundle / "headreg.json")  # only the crafted config differs now
    (bundle / "verification.json").write_text(json.dumps(record))
    report = verify_bundle(bundle)
    assert report.passed, report.message()


def test_the_manifest_itself_may_not_be_a_symlink_out(bundle, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.move(bundle / "headreg.json", outside)
    os.symlink(outside, bundle / "headreg.json")
    with pytest.raises(BundleError, match="leads out of the bundle"):
        read_manifest(bundle)


def test_cli_verify_files_checks_the_model_hash(bundle):
    from click.testing import CliRunner

    from headreg.cli import cli

    ok = CliRunner().invoke(cli, ["predict", str(bundle), "--verify-files", "--json", "hi"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)[0]["result"]["label"] in {"neg", "neu", "pos"}
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-1] ^= 1
    (bundle / "model.onnx").write_bytes(bytes(data))
    bad = CliRunner().invoke(cli, ["predict", str(bundle), "--verify-files", "hi"])
    assert bad.exit_code == 1 and "sha256 differs" in bad.output
