"""The OpenVINO int8 variant (``--quantize int8-ov``): NNCF's graph, accepted or refused, served by the rule.

Tiny random backbones (one layer) keep the export short; what the variant achieves on a trained MiniLM is
measured by ``python -m benchmarks.int8_ov`` (docs/performance.md), not asserted here. Skips where the
CPU has no VNNI + bf16 or OpenVINO / NNCF are missing: the variant cannot be made or checked there.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_export_matrix import tiny_model

from headreg.export.openvino_int8 import (ACCURACY_CONTROL_ITERATIONS, BIN_FILE, SMOOTH_QUANT_ALPHAS, XML_FILE,
                                         int8_ov_unavailable)
from headreg.export.production import variant_prefix
from headreg.runtime import Predictor
from headreg.runtime.variants import cpu_flags, select_variant
from headreg.testing import SAMPLE_TEXTS, load_tokenizer

MISSING = int8_ov_unavailable()
needs_int8_ov = pytest.mark.skipif(MISSING is not None, reason=f"int8-ov cannot be made here: {MISSING}")
TEXTS = [*SAMPLE_TEXTS, "ok", "Angela Merkel met Emmanuel Macron in Strasbourg. " * 4, "Emoji 🎉 and CJK 東京 in one line"]


def test_int8_ov_needs_int8_and_bf16_instructions():
    assert "avx512_vnni" in int8_ov_unavailable(frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert "avx512_bf16" in int8_ov_unavailable(frozenset({"avx2", "avx512f", "avx512_vnni"}))
    if MISSING is None:
        assert int8_ov_unavailable(frozenset({"avx512_vnni", "avx512_bf16"})) is None
        assert int8_ov_unavailable(frozenset({"amx_int8", "amx_bf16"})) is None


def test_export_int8_ov_where_the_cpu_cannot_is_a_usage_error(monkeypatch, tmp_path):
    from headreg.export import ExportOptions, export_onnx
    from headreg.export.pipeline import ExportOptionError

    monkeypatch.setenv("HEADREG_CPU_FLAGS", "avx2 avx512f avx512_bf16")  # bf16 without VNNI
    cpu_flags.cache_clear()
    try:
        with pytest.raises(ExportOptionError, match="no int8 dot-product"):
            export_onnx(tiny_model("bert", "seq_cls"), tmp_path / "b", load_tokenizer(), ExportOptions(quantize="int8-ov"))
    finally:
        cpu_flags.cache_clear()
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def token_bundle(tmp_path_factory):
    """A tiny token_cls model with bf16 and int8-ov; the random head's scores are near-ties everywhere, so the
    agreement bar is off here (what is checked is how the variant is made, recorded and served)."""
    if MISSING is not None:
        pytest.skip(f"int8-ov cannot be made here: {MISSING}")
    from headreg.export import ExportOptions, export_onnx

    out = tmp_path_factory.mktemp("int8ov") / "bert-token"
    bundle = export_onnx(tiny_model("bert", "token_cls"), out, load_tokenizer(),
                         ExportOptions(quantize="int8-ov", bf16=True, min_agreement=0.0, exporter="torchscript"))
    return out, bundle


@pytest.mark.slow
@needs_int8_ov
def test_int8_ov_record_files_and_selection(token_bundle, monkeypatch):
    out, bundle = token_bundle
    manifest = json.loads((out / "headreg.json").read_text())
    record = manifest["variants"]["int8-ov"]
    assert bundle.int8_ov == {"record": record}
    assert (record["file"], record["weights"], record["backend"], record["precision"]) == (
        XML_FILE, BIN_FILE, "openvino", "int8")
    assert (out / XML_FILE).is_file() and (out / BIN_FILE).is_file()
    assert {XML_FILE, BIN_FILE} <= set(manifest["files"])  # both hashed: a swapped weights file is caught
    quant = record["quantization"]
    assert quant["tool"] == "nncf" and quant["model_type"] == "transformer" and quant["fake_quantize_ops"] > 0
    search = quant["search"]  # min_agreement 0: NNCF's default alpha keeps enough, the search stops there
    assert search["tried"] == [{"smooth_quant_alpha": 0.95, "kept": search["kept"]}] and search["chosen"] == 0.95
    assert quant["calibration_rows"] == 64 and quant["size_ratio"] > 0
    assert record["acceptance"]["metric"] == "identical entity sets per text" and "token_agreement" in record["acceptance"]
    assert quant["method"] == "quantize" and "accuracy_control" not in quant  # the first alpha kept enough
    # proven at export through the variant's own engine (padded to 32-token multiples): exactly 0.0, every layout
    invariance = record["batch_invariance"]
    assert invariance["passed"] and invariance["max_abs_diff"] == 0.0 and invariance["decisions_differ"] == 0
    assert invariance["layouts"] == ["mixed lengths", "mixed lengths, reversed", "padded to max_length"]
    assert invariance["checks"] == 3 * invariance["texts"] > 0
    assert record["verified_on"]["inference_precision"] == "bf16"
    # the rule: int8-ov first, where the CPU has bf16 (which implies VNNI) and OpenVINO is installed
    assert bundle.serves_here()[0] == "int8-ov"
    assert select_variant(manifest, flags={"avx2", "avx512f", "avx512_vnni"})[0] == "fp32"  # no bf16: neither
    assert select_variant(manifest, "int8-ov")[0] == "int8-ov"
    assert json.loads((out / "verification.json").read_text())["int8_ov"] == {"record": record}


@pytest.mark.slow
@needs_int8_ov
def test_int8_ov_predictor_is_batch_invariant(token_bundle):
    out, _ = token_bundle
    predictor = Predictor(out, threads=2)
    assert predictor.variant == "int8-ov" and predictor.layout.pad_to_multiple_of == 16
    alone = [predictor.predict([text])[0] for text in TEXTS]
    together = predictor.predict(TEXTS, batch_size=len(TEXTS))
    reversed_ = predictor.predict(TEXTS[::-1], batch_size=3)[::-1]
    assert together == alone and reversed_ == alone  # entities, tags and every score, exactly


@pytest.mark.slow
@needs_int8_ov
def test_verify_reruns_int8_ov_production_cases(token_bundle):
    from headreg.export import verify_bundle

    out, _ = token_bundle
    recorded = json.loads((out / "verification.json").read_text())["production"]
    assert recorded["variant_rows"] == ["bf16", "int8-ov"]
    golden = np.load(out / "golden.npz")
    assert any(key.startswith(variant_prefix("int8-ov") + ".") for key in golden.files)
    report = verify_bundle(out)
    assert report.passed, report.failures
    note = next(n for n in report.notes if "Predictor (int8-ov)" in n)
    assert "against its own rows recorded at export: passes" in note


def _copy(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    return copy


@pytest.mark.slow
@needs_int8_ov
def test_verify_fails_where_int8_ov_rows_changed_in_golden(token_bundle, tmp_path):
    """golden.npz is not hashed: what catches a changed row is the re-run of the int8-ov engine against it."""
    from headreg.export import verify_bundle

    copy = _copy(token_bundle[0], tmp_path)
    arrays = dict(np.load(copy / "golden.npz"))
    key = f"{variant_prefix('int8-ov')}.0.0.logits"
    arrays[key] = arrays[key] + 0.5
    np.savez_compressed(copy / "golden.npz", **arrays)
    report = verify_bundle(copy)
    assert not report.passed
    assert any(p.startswith("int8-ov: predict: mixed lengths") and "logits differs" in p for p in report.problems)
    assert "int8-ov variant no longer gives the answers it was accepted with" in report.problems_are


@pytest.mark.slow
@needs_int8_ov
def test_verify_fails_where_int8_ov_weights_changed_even_with_the_hashes_updated(token_bundle, tmp_path):
    """A changed .bin fails on its hash; with the manifest's hashes rewritten to match, the re-run of the int8-ov
    production cases still catches it (the other variants' rows are untouched and pass)."""
    from headreg.export import verify_bundle
    from headreg.manifest import sha256_file

    copy = _copy(token_bundle[0], tmp_path)
    assert not verify_bundle(_tamper(copy)).passed  # the hashes alone
    manifest = json.loads((copy / "headreg.json").read_text())
    manifest["files"].update({name: sha256_file(copy / name) for name in (XML_FILE, BIN_FILE)})
    (copy / "headreg.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    verification = json.loads((copy / "verification.json").read_text())
    verification["manifest_sha256"] = sha256_file(copy / "headreg.json")
    (copy / "verification.json").write_text(json.dumps(verification))
    report = verify_bundle(copy)
    assert not report.passed
    assert report.problems and all(p.startswith("int8-ov: ") for p in report.problems), report.problems
    assert any("Predictor (bf16)" in n and n.endswith("passes") for n in report.notes)


@pytest.mark.slow
@needs_int8_ov
def test_int8_ov_weights_are_read_from_inside_the_bundle(token_bundle, tmp_path):
    """The IR's .bin is the file the variant record names, checked like every bundle path: a symlink that leads out
    of the bundle is refused before OpenVINO reads anything, even in a crafted manifest whose hash list leaves the
    .bin out (OpenVINO would otherwise find it by the .xml's name, unchecked)."""
    from headreg.errors import BundleError
    from headreg.runtime import Predictor

    copy = _copy(token_bundle[0], tmp_path)
    manifest = json.loads((copy / "headreg.json").read_text())
    del manifest["files"][BIN_FILE]
    (copy / "headreg.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    assert Predictor(copy, variant="int8-ov").variant == "int8-ov"
    outside = tmp_path / "elsewhere.bin"
    (copy / BIN_FILE).replace(outside)
    (copy / BIN_FILE).symlink_to(outside)
    with pytest.raises(BundleError, match=r"int8-ov weights file 'model.int8-ov.bin' leads out of the bundle"):
        Predictor(copy, variant="int8-ov")
    assert Predictor(copy, variant="bf16").variant == "bf16"  # the other variants do not read it


def _tamper(bundle):
    """One int8 weight of the IR with its rows in reverse order (finite, different answers); the IR rewritten."""
    import openvino as ov

    model = ov.Core().read_model(str(bundle / XML_FILE))
    weight = [op for op in model.get_ops() if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8][-1]
    weight.output(0).replace(ov.op.Constant(np.ascontiguousarray(np.array(weight.get_data())[::-1])).output(0))
    ov.save_model(model, str(bundle / "tampered.xml"), compress_to_fp16=False)
    del model, weight  # the .bin read above is mapped until the model is gone
    (bundle / "tampered.xml").replace(bundle / XML_FILE)
    (bundle / "tampered.bin").replace(bundle / BIN_FILE)
    return bundle


@pytest.mark.slow
@needs_int8_ov
def test_int8_ov_that_cannot_keep_the_results_is_refused_and_the_bundle_written_without_it(tmp_path):
    """A regression head allowed no error at all: no int8 graph can pass, so the search tries every alpha, the
    export writes the bundle without int8-ov, says why with the figures, and the rule serves what it would have
    served without it (fp32 here: bf16 could not pass a zero error either)."""
    from headreg.export import ExportOptions, export_onnx

    out = tmp_path / "bert-regression"
    bundle = export_onnx(tiny_model("bert", "regression"), out, load_tokenizer(),
                         ExportOptions(quantize=("int8-ov",), max_error=0.0, exporter="torchscript"))
    refusal = bundle.int8_ov
    assert "record" not in refusal and "changes too many held-out results" in refusal["refused"]
    held_out = refusal["held_out"][""]
    assert held_out["passed"] is False and held_out["max_abs_error"] > 0
    search = refusal["quantization"]["search"]
    assert [t["smooth_quant_alpha"] for t in search["tried"]] == list(SMOOTH_QUANT_ALPHAS)  # every alpha tried
    assert search["kept"] == max(t["kept"] for t in search["tried"])
    # then NNCF's accuracy control, with the search's measure as its validation function, bounded
    control = refusal["quantization"]["accuracy_control"]
    assert control["tool"] == "nncf.quantize_with_accuracy_control" and control["smooth_quant_alpha"] == search["chosen"]
    assert control["validations"] > 0 and control["max_iterations"] == ACCURACY_CONTROL_ITERATIONS
    assert control["used"] is False and control["kept"] == 0.0  # nothing keeps a zero error
    assert "max abs error" in control["plain_held_out"][""] and "max abs error" in control["held_out"][""]
    assert refusal["quantization"]["method"] == "quantize"
    assert set(bundle.manifest["variants"]) == {"fp32"}
    assert not (out / XML_FILE).exists() and not (out / BIN_FILE).exists()
    assert bundle.serves_here()[0] == "fp32"
    assert json.loads((out / "verification.json").read_text())["int8_ov"]["refused"] == refusal["refused"]


def test_export_line_names_the_accuracy_control_and_its_outcome():
    from headreg.cli.export import int8_ov_line

    quantization = {"nncf": "3.4.0", "calibration_rows": 64, "smooth_quant_alpha": 0.85,
                    "search": {"tried": [{"smooth_quant_alpha": 0.85, "kept": 0.984375}]},
                    "accuracy_control": {"used": False, "seconds": 647.0, "reverted": ["a", "b", "c", "d"],
                                         "held_out": {"": "97.38% identical entity sets per text"}}}
    line = int8_ov_line({"refused": "the int8 graph changes too many held-out results", "quantization": quantization})
    assert line.startswith("int8-ov NOT written (NNCF 3.4.0, calibrated on 64 texts, SmoothQuant alpha 0.85")
    assert ("NNCF accuracy control reverted 4 operations to floating point in 647 s (not used: held-out 97.38% "
            "identical entity sets per text)") in line
