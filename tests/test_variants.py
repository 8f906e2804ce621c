"""The variant rule (headreg.runtime.variants): a function of the bundle's records and the machine, nothing else."""

from __future__ import annotations

import pytest

from headreg.errors import BundleError
from headreg.runtime.variants import cpu_flags, describe_all, select_variant, variant_records

FP32 = {"file": "model.onnx", "precision": "fp32", "backend": "onnxruntime", "quantization": None}
INT8 = {
    "file": "model.int8.onnx", "precision": "int8", "backend": "onnxruntime",
    "quantization": {"kind": "static", "format": "qdq"}, "requires_cpu": ["avx512_vnni", "avx_vnni"],
    "acceptance": {"passed": True}, "batch_invariance": {"passed": True},
}
BF16 = {
    "file": "model.onnx", "precision": "bf16", "backend": "openvino", "quantization": None,
    "requires_cpu": ["avx512_bf16", "amx_bf16"], "acceptance": {"passed": True}, "batch_invariance": {"passed": True},
}
VNNI = ["avx2", "avx512_vnni"]


def manifest(**variants):
    return {"variants": {"fp32": FP32, **variants}}


def test_int8_serves_where_the_cpu_has_int8_dot_products_and_fp32_elsewhere():
    bundle = manifest(int8=INT8)
    assert select_variant(bundle, flags=VNNI)[0] == "int8"
    name, reason = select_variant(bundle, flags=["avx2"])
    assert name == "fp32" and "int8: this CPU has none of avx512_vnni, avx_vnni" in reason


def test_the_rule_takes_no_timing_at_export_or_now():
    """Speeds recorded at export change nothing, and choosing calls no clock and runs no model."""
    import sys

    fast = manifest(int8={**INT8, "speedup_vs_fp32": {"onnxruntime": 3.0}})
    slow = manifest(int8={**INT8, "speedup_vs_fp32": {"onnxruntime": 0.2}})
    plain = manifest(int8=INT8)
    timings: list[str] = []

    def watch(frame, event, arg):  # every C call (time.perf_counter & co.) and every onnxruntime Python frame
        if event == "c_call" and getattr(arg, "__module__", None) == "time":
            timings.append(f"time.{arg.__name__}")
        elif event == "call" and "onnxruntime" in frame.f_code.co_filename:
            timings.append(f"onnxruntime {frame.f_code.co_name}")

    sys.setprofile(watch)
    try:
        chosen = [select_variant(bundle, flags=flags) for bundle in (fast, slow, plain) for flags in (VNNI, ["avx2"])]
    finally:
        sys.setprofile(None)
    assert not timings, timings
    assert [name for name, _ in chosen] == ["int8", "fp32"] * 3
    assert chosen[0] == chosen[2] == chosen[4], "the recorded speeds changed the choice or its reason"


def test_a_variant_that_failed_acceptance_or_invariance_is_never_chosen_by_the_rule():
    for field in ("acceptance", "batch_invariance"):
        bundle = manifest(int8={**INT8, field: {"passed": False}})
        name, reason = select_variant(bundle, flags=VNNI)
        assert name == "fp32" and ("not accepted" in reason or "not batch-invariant" in reason)


def test_bf16_is_preferred_only_with_its_backend_installed_and_bf16_in_the_cpu(monkeypatch):
    import headreg.runtime.variants as variants

    bundle = manifest(int8=INT8, bf16=BF16)
    monkeypatch.setattr(variants, "backend_available", lambda backend: True)
    assert select_variant(bundle, flags=[*VNNI, "avx512_bf16"])[0] == "bf16"
    assert select_variant(bundle, flags=VNNI)[0] == "int8"
    monkeypatch.setattr(variants, "backend_available", lambda backend: backend == "onnxruntime")
    name, reason = select_variant(bundle, flags=[*VNNI, "avx512_bf16"])
    assert name == "int8" and "backend openvino is not installed (pip install 'headreg[openvino]')" in reason
    with pytest.raises(BundleError, match="runs on openvino, which is not installed"):
        select_variant(bundle, "bf16", flags=["avx512_bf16"])


def test_bf16_is_not_chosen_where_the_cpu_runs_it_slower_than_fp32(monkeypatch):
    import headreg.runtime.variants as variants

    monkeypatch.setattr(variants, "backend_available", lambda backend: True)
    intel = [*VNNI, "avx512_bf16", "GenuineIntel"]  # a Xeon whose AMX is absent or hidden: bf16 0.6x fp32
    name, reason = select_variant(manifest(int8=INT8, bf16=BF16), flags=intel)
    assert name == "int8" and "bf16: this CPU runs bf16 slower than fp32" in reason
    assert select_variant(manifest(bf16=BF16), flags=intel)[0] == "fp32"
    assert select_variant(manifest(int8=INT8, bf16=BF16), flags=[*intel, "amx_bf16"])[0] == "bf16"
    assert select_variant(manifest(int8=INT8, bf16=BF16), flags=[*VNNI, "avx512_bf16", "AuthenticAMD"])[0] == "bf16"
    name, reason = select_variant(manifest(bf16=BF16), "bf16", flags=intel)  # asked for by name, it runs
    assert name == "bf16" and reason.startswith("requested")
    assert variants.why_not(BF16, intel, runs=True) is None  # what `headreg verify` re-runs there
    int8_ov = {**BF16, "file": "model.int8-ov.xml", "precision": "int8", "quantization": {"kind": "static"}}
    assert select_variant(manifest(bf16=BF16, **{"int8-ov": int8_ov}), flags=intel)[0] == "int8-ov"  # 2.3x fp32 there


def test_int8_ov_comes_first_where_accepted_and_the_cpu_has_bf16_and_vnni():
    int8_ov = {**BF16, "file": "model.int8-ov.xml", "weights": "model.int8-ov.bin", "precision": "int8",
               "quantization": {"kind": "static", "tool": "nncf"}}
    bundle = manifest(int8=INT8, bf16=BF16, **{"int8-ov": int8_ov})
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        pytest.skip("OpenVINO is not installed")
    assert select_variant(bundle, flags=[*VNNI, "avx512_bf16"])[0] == "int8-ov"
    assert select_variant(bundle, flags=VNNI)[0] == "int8"  # no bf16: neither OpenVINO variant
    refused = manifest(bf16=BF16, **{"int8-ov": {**int8_ov, "acceptance": {"passed": False}}})
    name, reason = select_variant(refused, flags=[*VNNI, "avx512_bf16"])
    assert name == "bf16" and "int8-ov: not accepted at export" in reason
    with pytest.raises(BundleError, match="Export it with --quantize int8-ov"):
        select_variant(manifest(bf16=BF16), "int8-ov")


def test_a_requested_variant_runs_or_fails_clearly_never_a_silent_substitute():
    bundle = manifest(int8=INT8)
    name, reason = select_variant(bundle, "fp32", flags=VNNI)
    assert name == "fp32" and reason.startswith("requested")
    assert select_variant(bundle, "auto", flags=VNNI)[0] == "int8"
    with pytest.raises(BundleError, match=r"needs a CPU with one of avx512_vnni, avx_vnni"):
        select_variant(bundle, "int8", flags=["avx2"])
    with pytest.raises(BundleError, match=r"no 'int8' variant \(it has: fp32\).*--quantize int8"):
        select_variant(manifest(), "int8")


def test_format_1_bundles_serve_fp32_and_run_their_dynamic_int8_only_when_asked():
    v1 = {"variants": {"default": "int8", "fp32": {"file": "model.onnx", "optimized": False},
                       "int8": {"file": "model.int8.onnx", "decision_agreement": 1.0, "min_agreement": 0.95}}}
    records = variant_records(v1)
    assert set(records) == {"fp32", "int8"} and records["int8"]["quantization"] == {"kind": "dynamic"}
    name, reason = select_variant(v1, flags=VNNI)
    assert name == "fp32" and "int8: not accepted" in reason
    name, reason = select_variant(v1, "int8", flags=VNNI)
    assert name == "int8" and "not batch-invariant" in reason
    assert select_variant({}, flags=[])[0] == "fp32", "a manifest without variants has its model.onnx"


def test_describe_all_lists_every_variant_and_why_it_is_skipped():
    rows = {row["variant"]: row for row in describe_all(manifest(int8=INT8), flags=["avx2"])}
    assert rows["fp32"]["eligible"] and rows["fp32"]["why_not"] is None
    assert not rows["int8"]["eligible"] and rows["int8"]["quantization"] == "static"


def test_cpu_flags_come_from_the_machine_or_the_override(monkeypatch):
    cpu_flags.cache_clear()
    monkeypatch.setenv("HEADREG_CPU_FLAGS", "avx2 avx512_bf16")
    try:
        assert cpu_flags() == {"avx2", "avx512_bf16"}
    finally:
        cpu_flags.cache_clear()
    monkeypatch.delenv("HEADREG_CPU_FLAGS")
    real = cpu_flags()
    cpu_flags.cache_clear()
    with open("/proc/cpuinfo") as handle:
        text = handle.read()
    assert ("avx2" in text) == ("avx2" in real)
    for vendor in ("GenuineIntel", "AuthenticAMD"):  # the vendor joins the flags: bf16's speed depends on it
        assert (f": {vendor}" in text) == (vendor in real)
