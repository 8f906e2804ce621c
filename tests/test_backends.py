"""Runtime backends (onnxruntime, OpenVINO) and the verified bf16 variant.

OpenVINO tests skip where OpenVINO is not installed; bf16 tests skip where the CPU has no native bf16
(AVX-512 BF16 / AMX), since OpenVINO would then silently run f32 and nothing bf16 could be checked.
"""

from __future__ import annotations

import dataclasses

import json
import sys
import threading

import numpy as np
import pytest

from headreg.errors import BundleError, MissingExtraError
from headreg.export.bf16 import PAD_MULTIPLE, bf16_unavailable
from headreg.runtime import Predictor
from headreg.runtime.backends import OnnxruntimeBackend, OpenVINOBackend, bf16_cpu, open_backend, openvino_version
from headreg.runtime.variants import cpu_flags, slow_bf16

from test_runtime_predictor import TEXTS, tiny_bundle

needs_openvino = pytest.mark.skipif(openvino_version() is None, reason="OpenVINO is not installed (headreg[openvino])")
BF16_MISSING = bf16_unavailable()
needs_bf16 = pytest.mark.skipif(BF16_MISSING is not None, reason=f"bf16 cannot be checked here: {BF16_MISSING}")


def _feeds(predictor: Predictor, texts) -> dict[str, np.ndarray]:
    return predictor.engine.pad(predictor.encode(texts))


# --- the adapters -------------------------------------------------------------------------------------------


@needs_openvino
def test_openvino_fp32_runs_the_same_model_as_onnxruntime():
    bundle = tiny_bundle("token_cls")
    predictor = Predictor(bundle, variant="fp32")
    ort = OnnxruntimeBackend(bundle / "model.onnx", threads=1)
    ov = OpenVINOBackend(bundle / "model.onnx", threads=1, precision="fp32")
    assert sorted(ov.input_names) == sorted(ort.input_names)
    assert sorted(ov.output_names) == sorted(ort.output_names)
    assert ov.input_dtype == ort.input_dtype == np.int64
    assert ov.inference_precision == "f32"
    for texts in (TEXTS[:1], TEXTS):  # dynamic batch and sequence axes: two shapes on one compiled model
        feeds = _feeds(predictor, texts)
        want, got = ort.run(feeds), ov.run(feeds)
        for name in ort.output_names:
            assert got[name].shape == want[name].shape
            np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=1e-3)
    assert list(ov.run(feeds, ["pooled_output"])) == ["pooled_output"]


@needs_openvino
def test_openvino_threads_are_not_pinned_unless_asked(monkeypatch):
    """Pinned, every process on a host takes the same cores (Ray actors, Spark workers, server replicas);
    HEADREG_OPENVINO_PINNING=1 restores OpenVINO's pinning for a host that runs one process."""
    model = tiny_bundle("seq_cls") / "model.onnx"
    monkeypatch.delenv("HEADREG_OPENVINO_PINNING", raising=False)
    assert OpenVINOBackend(model, threads=1, precision="fp32").compiled.get_property("ENABLE_CPU_PINNING") is False
    monkeypatch.setenv("HEADREG_OPENVINO_PINNING", "1")
    assert OpenVINOBackend(model, threads=1, precision="fp32").compiled.get_property("ENABLE_CPU_PINNING") is True


@needs_openvino
def test_openvino_backend_can_be_shared_by_threads():
    bundle = tiny_bundle("seq_cls")
    predictor = Predictor(bundle, variant="fp32")
    backend = OpenVINOBackend(bundle / "model.onnx", threads=1, precision="fp32")
    batches = [_feeds(predictor, TEXTS[i: i + 3]) for i in range(0, 9, 3)]
    expected = [backend.run(feeds)["logits"] for feeds in batches]
    failures: list[str] = []

    def worker(seed: int) -> None:
        for step in range(6):
            index = (seed + step) % len(batches)
            got = backend.run(batches[index])["logits"]
            if not np.array_equal(got, expected[index]):
                failures.append(f"thread {seed} step {step}: batch {index} differs")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
    assert backend._requests.qsize() >= 1  # requests went back to the pool


def test_missing_openvino_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(MissingExtraError, match=r"headreg\[openvino\]"):
        OpenVINOBackend(tmp_path / "model.onnx", precision="bf16")


def test_unknown_backend_or_precision_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="unknown backend 'tensorrt'"):
        open_backend({"backend": "tensorrt", "precision": "fp16"}, tmp_path / "model.onnx")
    if openvino_version() is not None:
        with pytest.raises(BundleError, match="not 'int4'"):
            open_backend({"backend": "openvino", "precision": "int4"}, tmp_path / "model.onnx")


def test_bf16_needs_the_cpu_and_openvino():
    assert "avx512_bf16" in bf16_unavailable(frozenset({"avx2", "avx512f", "avx512_vnni"}))
    assert bf16_cpu({"avx512_bf16", "amx_bf16"}) == "amx_bf16"
    assert bf16_cpu({"avx512_bf16"}) == "avx512_bf16"
    if openvino_version() is not None:
        assert bf16_unavailable(frozenset({"avx512_bf16"})) is None


# --- the bf16 variant: verified at export, batch-invariant in the Predictor --------------------------------------


@pytest.fixture(scope="module")
def minilm_bf16(tmp_path_factory):
    """The real MiniLM with a seq_cls head, exported once with its bf16 variant (max_length 128 keeps it short)."""
    if BF16_MISSING is not None:
        pytest.skip(f"bf16 cannot be checked here: {BF16_MISSING}")
    import torch
    from transformers import AutoModel

    from headreg import attach_head
    from headreg.export import ExportOptions, export_onnx
    from headreg.model import quiet_transformers
    from headreg.testing import minilm_path

    torch.manual_seed(0)
    with quiet_transformers():
        backbone = AutoModel.from_pretrained(str(minilm_path()))
    model = attach_head(backbone, "seq_cls", num_labels=3, id2label={0: "a", 1: "b", 2: "c"}).eval()
    out = tmp_path_factory.mktemp("bf16") / "minilm"
    bundle = export_onnx(model, out, tokenizer=str(minilm_path()),
                         options=ExportOptions(max_length=128, bf16=True, exporter="torchscript"))
    return out, bundle, model


@pytest.mark.slow
@needs_bf16
def test_minilm_bf16_record_is_verified_and_served_by_default(minilm_bf16):
    out, bundle, _ = minilm_bf16
    record = json.loads((out / "headreg.json").read_text())["variants"]["bf16"]
    assert bundle.bf16 == record
    assert (record["file"], record["backend"], record["precision"]) == ("model.onnx", "openvino", "bf16")
    assert record["pad_to_multiple_of"] == PAD_MULTIPLE == 16
    assert record["verified_on"]["inference_precision"] == "bf16"  # OpenVINO did not fall back to f32
    acceptance, invariance = record["acceptance"], record["batch_invariance"]
    assert acceptance["passed"] and acceptance["agreement"] >= acceptance["min_agreement"] >= 0.99
    assert invariance["passed"] and invariance["decisions_differ"] == 0
    assert invariance["max_abs_diff"] <= invariance["tolerance"] <= 1e-5
    assert json.loads((out / "verification.json").read_text())["bf16"] == record
    predictor = Predictor(out, threads=2)  # the rule: bf16 first where the CPU and OpenVINO allow, and it is fast
    expected = "fp32" if slow_bf16(cpu_flags()) else "bf16"
    assert predictor.variant == expected and predictor.backend.name == {"bf16": "openvino", "fp32": "onnxruntime"}[expected]
    assert bundle.serves_here()[0] == expected
    assert Predictor(out, variant="bf16", threads=2).backend.name == "openvino"


@pytest.mark.slow
@needs_bf16
def test_minilm_bf16_predictor_is_batch_invariant_and_agrees_with_fp32(minilm_bf16):
    from benchmarks.corpus import mixed_corpus

    out, _, _ = minilm_bf16
    texts = mixed_corpus(48, seed=3)
    bf16 = Predictor(out, variant="bf16", threads=2)
    fp32 = Predictor(out, variant="fp32", threads=2)
    assert bf16.layout.pad_to_multiple_of == 16 and fp32.layout.pad_to_multiple_of == 1
    assert _feeds(bf16, texts[:3])["input_ids"].shape[1] % 16 == 0
    batched = bf16.predict(texts, batch_size=16)
    alone = [bf16.predict(text) for text in texts]
    assert batched == alone  # labels and every score, exactly
    reference = fp32.predict(texts)
    same = sum(a["label"] == b["label"] for a, b in zip(batched, reference))
    assert same >= 0.99 * len(texts)
    drift = max(abs(a["scores"][k] - b["scores"][k]) for a, b in zip(batched, reference) for k in a["scores"])
    assert 0 < drift <= 0.01  # bf16 really ran (not f32), and stayed close


@needs_bf16
@pytest.mark.slow  # the MiniLM bf16 export it shares with the two tests above
def test_bf16_without_its_padding_multiple_is_caught_by_the_invariance_check(minilm_bf16):
    """Without the padding multiple, a row's bf16 result moves with the batch's padded length; the check says so."""
    from benchmarks.corpus import mixed_corpus
    from headreg.export.acceptance import engine_invariance

    out, _, _ = minilm_bf16
    bf16 = Predictor(out, variant="bf16")
    job = bf16.prepare(mixed_corpus(16, seed=5))
    padded = engine_invariance(bf16.engine, job, max_length=128)
    assert bf16.engine.layout.pad_to_multiple_of == 16 and padded["max_abs_diff"] == 0.0
    bf16.engine.layout = dataclasses.replace(bf16.engine.layout, pad_to_multiple_of=1)
    loose = engine_invariance(bf16.engine, job, max_length=128)
    if "amx_bf16" not in cpu_flags():  # measured on AVX-512 BF16 (and AMX, benchmarks/backend_probe.py)
        assert not loose["passed"] and loose["max_abs_diff"] > 1e-5


def test_export_bf16_where_the_cpu_cannot_is_a_usage_error(monkeypatch, tmp_path):
    from headreg.export import ExportOptions, export_onnx
    from headreg.export.pipeline import ExportOptionError
    from headreg.testing import load_tokenizer
    from test_runtime_predictor import tiny_model

    monkeypatch.setenv("HEADREG_CPU_FLAGS", "avx2 avx512f avx512_vnni")  # what a CPU without bf16 reports
    cpu_flags.cache_clear()
    try:
        with pytest.raises(ExportOptionError, match="no native bf16"):
            export_onnx(tiny_model("seq_cls"), tmp_path / "b", tokenizer=load_tokenizer(),
                        options=ExportOptions(exporter="torchscript", bf16=True))
    finally:
        cpu_flags.cache_clear()
    assert not (tmp_path / "b").exists()  # nothing written


def test_no_runtime_module_names_torch_side_code():
    """runtime/ (and what serves from it) imports neither torch nor the torch side of headreg, even lazily."""
    import ast
    from pathlib import Path

    import headreg

    root = Path(headreg.__file__).parent
    torch_side = ("torch", "transformers", "headreg.model", "headreg.interop", "headreg.export", "headreg.testing")
    offenders = []
    for package in ("runtime", "serve", "integrations"):
        for path in sorted((root / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:  # relative: resolve against headreg.<package>
                        parts = ["headreg", package][: 3 - node.level] if node.level <= 2 else []
                        base = ".".join(parts + ([base] if base else []))
                    names = [base] + [f"{base}.{alias.name}" for alias in node.names]
                else:
                    continue
                bad = [n for n in names if any(n == t or n.startswith(t + ".") for t in torch_side)]
                if bad:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno} imports {bad[0]}")
    assert not offenders, offenders
