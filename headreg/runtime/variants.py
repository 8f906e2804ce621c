"""Which model variant a Predictor runs: a documented function of the bundle and of this machine.

A bundle lists its variants in ``manifest["variants"]``: one record per variant (see docs/bundle-format.md)::

    "int8": {"file": "model.int8.onnx", "precision": "int8", "backend": "onnxruntime",
             "quantization": {"kind": "static", "format": "qdq", ...},
             "requires_cpu": ["avx512_vnni", "avx_vnni", "amx_int8", "asimddp"],
             "acceptance": {"passed": true, ...}, "batch_invariance": {"passed": true, ...}}

The rule (no timing, nothing random; the same bundle on the same machine always serves the same variant):

1. ``requested`` (``Predictor(variant=...)``, ``--variant``) is used when the bundle has it, its backend is
   installed and the CPU has what it needs; otherwise it is an error, never a silent substitute.
2. Otherwise the first of ``PREFERENCE`` (int8-ov, bf16, int8, fp32) that is *eligible*: accepted at export,
   batch-invariant, its backend importable here, and (when its record names ``requires_cpu``) at least one
   of those CPU flags present. fp32 is always eligible, so the rule always ends somewhere. bf16 is also skipped
   on a CPU that computes it slower than fp32 (:func:`slow_bf16`: Intel AVX-512 BF16 without AMX).

   ``int8-ov`` (OpenVINO int8 by NNCF, ``--quantize int8-ov``) comes first: it is held to the same acceptance
   as bf16 (the same held-out texts, the same ``--min-agreement``), an export writes it only when it passed,
   and where it runs at all (a VNNI / AMX CPU with OpenVINO) it was the fastest (docs/performance.md). bf16
   comes before onnxruntime's int8, which keeps its down-projections in fp32 and was slower than bf16 on every
   CPU where bf16 is fast.

Bundles written before variant records (format 1 with a ``"default"`` key) keep loading: their int8 file is
onnxruntime *dynamic* int8, whose scores depend on the rest of the batch, so it is never chosen by the rule
(it still runs when asked for by name), and such bundles serve fp32 by default.

Torch-free and numpy-free: the production runtime imports this.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from functools import lru_cache
from typing import Any, Iterable, Mapping

from ..errors import BundleError
from ..manifest import MODEL_FILE

# Most preferred first: bf16 and int8 are the fast ones on the CPUs that have the instructions for them.
PREFERENCE = ("int8-ov", "bf16", "int8", "fp32")
# A backend is usable when this module imports.
BACKEND_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
# What the runtime assumes a record lacking a field means (records from format-1 bundles).
LEGACY_FP32 = {"file": MODEL_FILE, "precision": "fp32", "backend": "onnxruntime", "quantization": None}


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (x86 ``flags`` / arm ``Features`` of /proc/cpuinfo) and, on x86, its vendor
    (``GenuineIntel``, ``AuthenticAMD``: the same instructions run at different speeds on the two); empty where
    unreadable.

    ``HEADREG_CPU_FLAGS`` (space separated) replaces them: to check what another machine would serve.
    """
    override = os.environ.get("HEADREG_CPU_FLAGS")
    if override is not None:
        return frozenset(override.split())
    found: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    found.add(value.strip())
                elif key.strip() in ("flags", "Features"):
                    return frozenset(found | set(value.split()))
    except OSError:
        pass
    return frozenset(found)


def slow_bf16(flags: Iterable[str]) -> str | None:
    """Why this CPU computes bf16 slower than fp32, or None: an Intel CPU with AVX-512 BF16 but no AMX (a Xeon
    whose AMX the hypervisor hides, or one without it). There OpenVINO bf16 ran MiniLM at 0.68x the speed of
    onnxruntime fp32 and a bf16 matmul at 0.62x fp32 (docs/performance.md). AMX, and AVX-512 BF16 on AMD, ran
    bf16 faster than fp32 (1.6-1.9x)."""
    flags = frozenset(flags)
    if "GenuineIntel" in flags and "avx512_bf16" in flags and "amx_bf16" not in flags:
        return "this CPU runs bf16 slower than fp32 (Intel AVX-512 BF16 without AMX)"
    return None


def machine() -> dict[str, Any]:
    """What selection looked at, for reports: architecture and the CPU flags that matter to variants."""
    interesting = ("GenuineIntel", "AuthenticAMD", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile",
                   "asimddp", "bf16", "i8mm")
    flags = cpu_flags()
    return {"arch": platform.machine(), "cpu_flags": [f for f in interesting if f in flags]}


def backend_available(backend: str) -> bool:
    module = BACKEND_MODULES.get(backend)
    return module is not None and importlib.util.find_spec(module) is not None


def variant_records(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every variant record of the bundle with defaults filled in (format-1 records have fewer fields)."""
    raw = manifest.get("variants")
    if not isinstance(raw, Mapping):
        raw = {"fp32": {"file": MODEL_FILE}}
    records: dict[str, dict[str, Any]] = {}
    for name, record in raw.items():
        if not isinstance(record, Mapping) or "file" not in record:
            continue  # the format-1 "default" key, or junk #12's validation reports
        filled = {**LEGACY_FP32, "precision": name, **record}
        if name == "int8" and "quantization" not in record:
            # format 1 wrote onnxruntime dynamic int8 without saying so
            filled["quantization"] = {"kind": "dynamic"}
            filled.setdefault("batch_invariance", {"passed": False, "reason": "dynamic int8 (activation scales per batch)"})
        records[str(name)] = filled
    return records


def _flags_ok(record: Mapping[str, Any], flags: Iterable[str]) -> bool:
    needed = record.get("requires_cpu") or []
    return not needed or bool(set(needed) & set(flags))


def _passed(record: Mapping[str, Any], check: str) -> bool:
    """Whether the variant passed ``check`` (``acceptance``, ``batch_invariance``) at export."""
    if record.get("precision") == "fp32" and check not in record:
        return True  # fp32 passed export verification or there would be no bundle
    result = record.get(check)
    return isinstance(result, Mapping) and bool(result.get("passed"))


def why_not(record: Mapping[str, Any], flags: Iterable[str] | None = None, *, runs: bool = False) -> str | None:
    """Why the rule would skip this variant here, or None when it is eligible (``runs``: only what stops it from
    running here at all, as for a variant asked for by name)."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    if not _passed(record, "acceptance"):
        return "not accepted at export"
    if not _passed(record, "batch_invariance"):
        return "not batch-invariant"
    if not backend_available(str(record.get("backend"))):
        extra = f" (pip install 'headreg[{record.get('backend')}]')" if record.get("backend") != "onnxruntime" else ""
        return f"backend {record.get('backend')} is not installed{extra}"
    if not _flags_ok(record, flags):
        return f"this CPU has none of {', '.join(record.get('requires_cpu') or [])}"
    slow = None if runs or (record.get("backend"), record.get("precision")) != ("openvino", "bf16") else slow_bf16(flags)
    if slow:
        # int8-ov stays eligible there: its int8 products (VNNI) outweigh the bf16 between them (2.3x fp32 measured)
        return f"{slow}; ask for it by name (--variant bf16) to run it anyway"
    return None


def _describe(name: str, record: Mapping[str, Any]) -> str:
    kind = (record.get("quantization") or {}).get("kind") if isinstance(record.get("quantization"), Mapping) else None
    what = f"{kind} {name}" if kind else name
    return f"{what} on {record.get('backend')}"


def select_variant(
    manifest: Mapping[str, Any], requested: str | None = None, *, flags: Iterable[str] | None = None
) -> tuple[str, str]:
    """``(variant name, reason)`` by the rule in this module's docstring; BundleError when ``requested`` cannot run.

    ``flags`` replaces this CPU's flags (to ask what another machine would serve).
    """
    flags = cpu_flags() if flags is None else frozenset(flags)
    records = variant_records(manifest)
    if requested not in (None, "auto"):
        record = records.get(requested)
        if record is None:
            hint = f" Export it with --quantize {requested}." if requested in ("int8", "int8-ov") else ""
            raise BundleError(f"bundle has no {requested!r} variant (it has: {', '.join(sorted(records)) or 'none'}).{hint}")
        if not backend_available(str(record.get("backend"))):
            raise BundleError(
                f"variant {requested!r} runs on {record.get('backend')}, which is not installed: "
                f"pip install 'headreg[{record.get('backend')}]'"
            )
        if not _flags_ok(record, flags):
            raise BundleError(
                f"variant {requested!r} needs a CPU with one of {', '.join(record['requires_cpu'])}; this one has none "
                f"(it would not run as {record.get('precision')}). Choose another variant: {', '.join(sorted(records))}"
            )
        invariant = _passed(record, "batch_invariance")
        caveat = "" if invariant else "; its scores depend on the rest of the batch (not batch-invariant)"
        return requested, f"requested: {_describe(requested, record)}{caveat}"
    skipped = []
    for name in PREFERENCE:
        record = records.get(name)
        if record is None:
            continue
        problem = why_not(record, flags)
        if problem is None:
            others = f" ({'; '.join(skipped)})" if skipped else ""
            return name, f"{_describe(name, record)}: the most preferred eligible variant{others}"
        skipped.append(f"{name}: {problem}")
    if "fp32" in records:  # fp32's backend is missing: say so rather than pick nothing
        raise BundleError(f"no variant of this bundle can run here ({'; '.join(skipped)})")
    raise BundleError(f"bundle has no fp32 variant and none other can run here ({'; '.join(skipped) or 'no variants'})")


def describe_all(manifest: Mapping[str, Any], flags: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One row per variant: name, file, precision, backend, quantization kind, eligible here and why not."""
    rows = []
    for name, record in variant_records(manifest).items():
        quant = record.get("quantization")
        problem = why_not(record, flags)
        rows.append({
            "variant": name,
            "file": record.get("file"),
            "precision": record.get("precision"),
            "backend": record.get("backend"),
            "quantization": quant.get("kind") if isinstance(quant, Mapping) else None,
            "eligible": problem is None,
            "why_not": problem,
        })
    return rows
