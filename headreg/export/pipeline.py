"""``export_onnx``: trace -> verify -> (optimize) -> (quantize) -> write the bundle, all or nothing.

The bundle is built in a private staging directory beside ``out_dir`` and renamed into place only after
every check passed (see headreg/atomic.py), so a failed or interrupted export leaves no partial bundle.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..atomic import atomic_directory, check_target
from ..errors import HeadregError
from ..manifest import BUNDLE_KIND, GOLDEN_FILE, is_bundle, INT8_FILE, MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE, VERIFICATION_FILE, sha256_file, write_json
from ..runtime.session import create_session
from . import bundle as bundle_mod
from .cases import Case, equal_length_cases, make_cases
from .tokenizer import TokenizerError, bundle_tokenizer
from .trace import AUTO_ORDER, AUTO_ORDER_OPTIMIZE, EXPORTERS, ExportError, ExportWrapper, eval_mode, graph_signature, input_names_for, trace
from . import acceptance as acc
from . import production as prod
from .quantize import DEFAULT_METHOD, INT8_REQUIRES_CPU, METHODS
from .verify import Report, VerificationFailed, compare_cases, run_cases, run_onnx, save_golden

Progress = Callable[[str, str, dict], None]
QUANTIZE_MODES = ("int8", "int8-ov")
# Variants whose own rows on the production cases are kept in golden.npz for headreg verify to re-run: OpenVINO's
# (their answers are reproduced exactly on the same OpenVINO and CPU; measured: 0.0 difference at 1, 2 and all
# threads). onnxruntime int8 is re-checked by its decision agreement on the production cases instead.
RECHECKED_VARIANTS = ("int8-ov", "bf16")


@dataclass
class Step:
    name: str
    seconds: float
    peak_rss_mb: float  # the process's peak resident memory when the step ended


@dataclass
class Bundle:
    """What ``export_onnx`` wrote: the directory, its manifest and how each step went."""

    path: Path
    manifest: dict[str, Any]
    report: Report
    steps: list[Step] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    optimization: dict[str, Any] | None = None
    int8: dict[str, Any] | None = None
    bf16: dict[str, Any] | None = None  # the bf16 record (ExportOptions(bf16=True))
    int8_ov: dict[str, Any] | None = None  # quantize="int8-ov": {"record": ...} or {"refused": why, ...}

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "passed": self.report.passed,
            "cases": len(self.report.cases),
            "worst": self.report.worst(),
            "sizes": self.sizes,
            "steps": [vars(step) for step in self.steps],
            "optimization": self.optimization,
            "int8": self.int8,
            "bf16": self.bf16,
            "int8_ov": self.int8_ov,
            "variants": self.manifest.get("variants"),
            "serves_here": dict(zip(("variant", "reason"), self.serves_here())),
        }

    def serves_here(self) -> tuple[str, str]:
        """The variant a Predictor of this bundle uses on this machine, and why (headreg.runtime.variants)."""
        from ..runtime.variants import select_variant

        return select_variant(self.manifest)


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class _Steps:
    def __init__(self, progress: Progress):
        self.progress = progress
        self.done: list[Step] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[dict]:
        info: dict[str, Any] = {}
        self.progress(name, "start", info)
        start = time.perf_counter()
        try:
            yield info
        except BaseException:
            self.progress(name, "failed", {**info, "seconds": round(time.perf_counter() - start, 3)})
            raise
        step = Step(name, round(time.perf_counter() - start, 3), round(peak_rss_mb(), 1))
        self.done.append(step)
        self.progress(name, "done", {**info, "seconds": step.seconds})


def _protected(model: Any, tokenizer: Any, source: dict[str, Any] | None) -> list[Any]:
    """What the export reads from: ``out_dir`` must be none of these, nor a directory holding one."""
    from ..model import _local_source

    paths = [(source or {}).get("path"), _local_source(model.backbone)]
    if isinstance(tokenizer, (str, os.PathLike)):
        paths.append(tokenizer)
    return [path for path in paths if path]


def _tokenizer_for(model: Any, tokenizer: Any) -> Any:
    if tokenizer is not None:
        return tokenizer
    from ..model import _local_source

    path = _local_source(model.backbone)
    if path is None:
        raise TokenizerError(
            "export_onnx needs the model's tokenizer: pass tokenizer=AutoTokenizer.from_pretrained(...) "
            "(or a tokenizer.json path)"
        )
    return path


def _check_tokenizer(tok: Any, cases: list[Case], max_length: int) -> None:
    """The bundle's tokenizer.json must give the ids the source tokenizer gives, or the runtime sees other input."""
    source = tok.source
    if source is None:
        return
    for case in cases:
        if case.kind == "random":
            continue
        texts = case.texts
        args = ([t[0] for t in texts], [t[1] for t in texts]) if case.kind == "pair" else (texts,)
        want = source(*args, truncation=True, max_length=max_length)["input_ids"]
        mask = case.inputs["attention_mask"].astype(bool)
        got = [row[m].tolist() for row, m in zip(case.inputs["input_ids"], mask)]
        if [list(w) for w in want] != got:
            raise TokenizerError(
                f"tokenizer.json tokenizes the verification texts differently from {type(source).__name__} "
                f"(case {case.name!r}); the runtime would see different input ids. Save the tokenizer as a fast "
                "tokenizer and export again."
            )


def _beside(pytorch_side: Callable[[], Any], onnxruntime_side: Callable[[], Any]) -> tuple[Any, Any]:
    """(what ``pytorch_side()`` returned, what ``onnxruntime_side()`` returned), computed side by side.

    PyTorch runs in a worker thread with one intra-op thread while onnxruntime runs here (it releases the GIL):
    the two engines share the cores instead of taking turns, and PyTorch's OpenMP threads cannot stall each
    other on a busy machine (measured: 2.3 s side by side vs 3.5 s in turns with two busy processes beside,
    1.45 s vs 1.23 s on an idle machine; production cases on MiniLM: 13 s in turns at load 16).
    """
    import concurrent.futures

    def reference() -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return pytorch_side()
        finally:
            torch.set_num_threads(threads)

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="headreg-reference") as pool:
        expected = pool.submit(reference)
        try:
            mine = onnxruntime_side()
        finally:
            reference_outputs = expected.result()
    return reference_outputs, mine


class PaddingDependent(Exception):
    """PyTorch's own outputs for a row change with the padding beside it: the model's property, not the export's."""

    def __init__(self, record: dict[str, Any], exporter: str):
        super().__init__(record)
        self.record, self.exporter = record, exporter


def _trace_and_verify(model: Any, path: Path, step: _Steps, *, exporter: str, opset: int | None,
                      cases: list[Case], wrapper: ExportWrapper, checks: dict, padding_side: str,
                      optimize: bool = False, padding_check: bool = True):
    """Trace with each exporter of ``exporter`` ("auto": AUTO_ORDER, or AUTO_ORDER_OPTIMIZE) until one verifies.

    Returns (trace result, report, PyTorch's outputs, fp32's batch-invariance record). The PyTorch reference is
    computed once, beside the first attempt's onnxruntime runs, and serves every attempt. onnxruntime runs every
    case batched (compared with PyTorch) and every row of it alone (compared with the batched run: fp32's batch
    invariance, at ``checks["atol"]``). Raises the last attempt's ExportError / VerificationFailed, with what the
    earlier attempts hit in its message or notes. With ``padding_check``, a graph that matches PyTorch but is not
    batch-invariant is compared with PyTorch's own rows alone: PaddingDependent when PyTorch moves as well.
    """
    candidates = (AUTO_ORDER_OPTIMIZE if optimize else AUTO_ORDER) if exporter == "auto" else (exporter,)
    earlier: list[str] = []
    expected: list[dict[str, np.ndarray]] | None = None
    torch_run = _torch_run(wrapper)
    for attempt, name in enumerate(candidates, 1):
        last = attempt == len(candidates)
        try:  # an ExportError (a failed trace, a graph onnxruntime cannot load): the next exporter may do better
            with step("trace") as info:
                info["exporter"] = name
                traced = trace(model, path, opset=opset, exporter=name)
                info["opset"] = traced.opset
            with step("verify") as info:

                def onnxruntime_side():  # the session is made here too, beside the reference
                    try:
                        session = create_session(path)
                    except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph, ...)
                        first = (str(exc).strip().splitlines() or [""])[0]
                        raise ExportError(
                            f"onnxruntime cannot load the {name} graph: {type(exc).__name__}: {first}") from exc
                    actual = run_cases(session, cases)
                    return actual, acc.alone_outputs(functools.partial(run_onnx, session), cases,
                                                     padding_side=padding_side)

                if expected is None:  # PyTorch's outputs for every case; both sides see every case
                    expected, (actual, alone) = _beside(lambda: [torch_run(case.inputs) for case in cases],
                                                        onnxruntime_side)
                else:
                    actual, alone = onnxruntime_side()
                report = compare_cases(cases, expected, actual, **checks)
                if report.passed:
                    invariance = acc.case_invariance(cases, actual, alone, padding_side=padding_side,
                                                     token_outputs=checks["token_outputs"], tolerance=checks["atol"])
                    info["batch_invariance"] = f"{invariance['max_abs_diff']:.1e} over {invariance['checks']} rows"
                    if not invariance["passed"] and padding_check and not invariance.get("errors"):
                        # PyTorch's rows alone vs its padded batches: does the model itself depend on padding?
                        own = acc.session_invariance(torch_run, cases, expected, padding_side=padding_side,
                                                     token_outputs=checks["token_outputs"], tolerance=checks["atol"])
                        if not own["passed"]:
                            raise PaddingDependent(own, name)
                    if not invariance["passed"]:
                        report.problems.append(_not_invariant(invariance))
                        report.problems_are = "onnxruntime agrees with PyTorch, but the model is not batch-invariant"
                info.update(cases=len(cases), passed=report.passed)
        except ExportError as exc:
            if last:
                raise ExportError("; ".join([*earlier, str(exc)])) from exc
            earlier.append(f"{name} exporter: {exc}")
            continue
        if report.passed or last:
            report.notes.extend(f"tried first: {failure}" for failure in earlier)
            report.raise_for_failure()
            return traced, report, expected, invariance
        earlier.append(f"{name} exporter: its graph failed verification ({report.failures[0]})")
    raise AssertionError("unreachable: the last candidate returns or raises")


def _not_invariant(record: dict[str, Any]) -> str:
    found = "; ".join(record.get("errors", [])) or (
        f"output {record['worst_output']} moves by up to {record['max_abs_diff']:.2e} between a row alone and the "
        f"same row in its batch, over {record['checks']} rows (allowed: {record['tolerance']:g})"
    )
    return (f"batch invariance: a text's result depends on what else shares its batch ({found}). A head or pooling "
            "that mixes rows (batch statistics, for example) gives answers no server can keep stable: compute each "
            "row from its own inputs only, then export again")


def _torch_run(wrapper: ExportWrapper) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            values = wrapper(**{k: torch.from_numpy(v) for k, v in feed.items()})
        return {n: v.detach().float().cpu().numpy() for n, v in zip(wrapper.output_names, values)}

    return run


def _acceptance_set(twin: "_Twin", texts: Sequence[Any] | None, *, pairs: bool,
                    options: "acc.AcceptanceOptions") -> "acc.AcceptanceSet":
    """Held-out texts and PyTorch's rows on them: computed once, every reduced-precision variant is judged on them."""
    from ..data import builtin_texts

    if texts is None:
        texts, source = builtin_texts(with_pairs=pairs), "builtin"
    else:
        source = "user"
    try:
        texts = acc.normalize_texts(list(texts), pairs=True)
        return acc.build_acceptance_set(twin.predictor, twin.reference, texts, source=source, options=options)
    except acc.AcceptanceError as exc:
        raise ExportOptionError(str(exc)) from exc


def _variant_int8(staging: Path, acceptance: "acc.AcceptanceSet", method: str, step: "_Steps",
                  stage: Callable[..., Any]) -> dict[str, Any]:
    """Quantize the unfused fp32 graph (static QDQ int8), then accept it on held-out texts and batch invariance,
    run by the int8 variant's own production engine (its ``golden_agreement`` is counted with the production cases)."""
    from .quantize import quantize_static_int8

    with step("quantize") as info:
        quantization = quantize_static_int8(staging / MODEL_FILE, staging / INT8_FILE,
                                            acceptance.calibration_feeds(), method=method)
        quantization["calibration_source"] = acceptance.split.record["source"]
        info.update(method=method, calibration_rows=quantization["calibration_rows"])
    with step("accept int8") as info:
        predictor = stage("int8", bundle_mod.int8_record({"quantization": quantization}))
        judged = acceptance.judge_variant("int8", predictor.engine)
        figures = judged["acceptance"]
        info.update(agreement=figures.get("agreement", figures.get("max_abs_error")),
                    invariant=judged["batch_invariance"]["passed"])
    return {"quantization": quantization, "requires_cpu": list(INT8_REQUIRES_CPU), **judged}


@contextlib.contextmanager
def _naming_architecture(model: Any) -> Iterator[None]:
    """A refusal at trace or verification names the architecture it refuses (the model type and backbone class)."""
    try:
        yield
    except VerificationFailed as exc:
        raise VerificationFailed(f"{_architecture(model)}: {exc}", exc.report) from exc
    except ExportError as exc:
        raise ExportError(f"{_architecture(model)}: {exc}") from exc


def _architecture(model: Any) -> str:
    return f"{model.config.model_type} ({type(model.backbone).__name__})"


def _padding_record(model: Any, own: dict[str, Any]) -> dict[str, Any]:
    """What verification.json says about a model whose own outputs change with padding."""
    reason = (f"{model.config.model_type} outputs change with the padding beside a row, in PyTorch itself "
              f"({own['worst_output']} moves by up to {own['max_abs_diff']:.2g} between a row alone and padded in "
              f"a batch, over {own['checks']} rows)")
    return {"allowed": False, "reason": reason, "pytorch": own}


@dataclass
class _Twin:
    """The staged bundle's Predictor (a variant's production engine) and its engine over PyTorch."""

    predictor: Any
    reference: Any


class ExportOptionError(HeadregError, ValueError):
    """An export option that cannot work for this model (a usage error: exit code 2)."""


def resolve_max_length(model: Any, max_length: int | None) -> int:
    limit = bundle_mod.position_limit(model)
    if max_length is None:
        if limit is None:
            raise ExportOptionError(
                f"{model.config.model_type} declares no position limit; pass max_length (--max-length)"
            )
        return limit
    if max_length < 1 or (limit is not None and max_length > limit):
        raise ExportOptionError(f"max_length={max_length} is outside 1..{limit}, what the position table of this backbone allows")
    return max_length


@dataclass(frozen=True)
class ExportOptions:
    """What ``export_onnx`` traces, verifies and adds to a bundle: one field per ``headreg export`` flag, checked
    when built (ExportOptionError).

    ``exporter``: "auto" (TorchScript, then dynamo when TorchScript cannot trace the model or its graph does not
    verify; dynamo first with ``optimize=True``), "torchscript" or "dynamo". ``max_length``: the longest input the
    bundle accepts and is verified at (default: what the backbone's position table allows). ``atol`` / ``rtol``:
    the verification tolerances. ``optimize``: fuse for onnxruntime, kept only if it verifies and is not slower.

    ``quantize="int8"`` adds a static int8 variant, calibrated on part of ``calibration_texts`` (strings or
    ``(text, text_pair)``; default: headreg's built-in texts) with ``calibration_method``, and accepted on the
    disjoint rest when at least ``min_agreement`` of those texts get the same user-visible result as PyTorch
    (regression: max abs error within ``max_error`` x max(std of the values, 1)) and its outputs move by at most
    ``invariance_tolerance`` between a text alone and in any batch. ``near_tie`` only sets what the report counts
    as a near-tie. ``bf16=True`` adds an OpenVINO bf16 variant (the same ``model.onnx``), judged like int8; it
    needs a CPU with AVX-512 BF16 or AMX and ``headreg[openvino]``.

    ``quantize="int8-ov"`` (or both: ``quantize=("int8", "int8-ov")``) adds OpenVINO int8 made by NNCF with a
    search over SmoothQuant alphas (:mod:`headreg.export.openvino_int8`), held to the same acceptance; where it
    cannot pass, it is left out and ``Bundle.int8_ov`` says why with the figures (the export does not fail).

    >>> ExportOptions(quantize="int8", min_agreement=0.98, max_length=256)   # doctest: +SKIP
    """

    exporter: str = "auto"
    opset: int | None = None
    max_length: int | None = None
    atol: float = 1e-4
    rtol: float = 1e-3
    optimize: bool = False
    quantize: str | Sequence[str] | None = None
    bf16: bool = False
    calibration_texts: Sequence[Any] | None = None
    calibration_method: str = DEFAULT_METHOD
    min_agreement: float = acc.MIN_AGREEMENT
    near_tie: float = acc.NEAR_TIE
    max_error: float = acc.MAX_ERROR
    invariance_tolerance: float = acc.INVARIANCE_TOLERANCE

    def __post_init__(self) -> None:
        for mode in self.modes:
            if mode not in QUANTIZE_MODES:
                raise ExportOptionError(f"unknown quantization {mode!r}; choose one of {', '.join(QUANTIZE_MODES)}")
        if self.exporter not in ("auto", *EXPORTERS):
            raise ExportOptionError(f"unknown exporter {self.exporter!r}; choose one of auto, {', '.join(EXPORTERS)}")
        if self.calibration_method not in METHODS:
            raise ExportOptionError(
                f"unknown calibration method {self.calibration_method!r}; choose one of {', '.join(METHODS)}"
            )
        if isinstance(self.calibration_texts, (str, bytes, os.PathLike)):
            raise ExportOptionError("calibration_texts takes the texts themselves (a list of strings or (text, "
                                    "text_pair) pairs), not a file; read a file with "
                                    "headreg.runtime.inputs.read_texts(path)")
        # the ranges of the matching `headreg export` flags, so a script gets the CLI's answer before any work
        ranges = {"opset": (14, None), "max_length": (1, None), "atol": (0, None), "rtol": (0, None),
                  "min_agreement": (0, 1), "near_tie": (0, 1), "max_error": (0, None), "invariance_tolerance": (0, None)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if value is None and name in ("opset", "max_length"):
                continue
            integer = name in ("opset", "max_length")
            number = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real) and math.isfinite(value)
            if isinstance(value, bool) or not number or value < low or (high is not None and value > high):
                kind = "an integer" if integer else "a number"
                raise ExportOptionError(f"{name} must be {kind} " + (f"in {low}..{high}" if high is not None else
                                        f">= {low}") + f", got {value!r}")
        for name in ("optimize", "bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ExportOptionError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.optimize and self.bf16:
            raise ExportOptionError("optimize and bf16 do not go together: optimize fuses onnxruntime-only operators "
                                    "into model.onnx, which OpenVINO (bf16) cannot read; export one of them")

    @property
    def modes(self) -> list[str]:
        """The quantizations asked for ("int8", "int8-ov"), whether ``quantize`` named one or several."""
        return [self.quantize] if isinstance(self.quantize, str) else list(self.quantize or ())

    def acceptance(self) -> "acc.AcceptanceOptions":
        """The thresholds a reduced-precision variant is held to."""
        return acc.AcceptanceOptions(min_agreement=self.min_agreement, near_tie=self.near_tie,
                                     max_error=self.max_error, invariance_tolerance=self.invariance_tolerance)


def export_onnx(
    model: Any,
    out_dir: str | Path,
    tokenizer: Any = None,
    options: ExportOptions | None = None,
    *,
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
    progress: Progress | bool | None = None,
) -> Bundle:
    """Export a HeadedModel to a verified ONNX bundle in ``out_dir`` and return what was written.

    Raises VerificationFailed (with ``.report``) when onnxruntime disagrees with PyTorch; nothing is
    written then. ``tokenizer`` is a transformers tokenizer, a ``tokenizers.Tokenizer`` or a path; it
    defaults to the backbone's own directory. ``options``: how to trace, verify and which variants to add
    (:class:`ExportOptions`; default: fp32 only, verified at the default tolerances). ``overwrite``: replace a
    bundle already in ``out_dir`` (never another directory). ``source``: where the model came from, recorded in
    the manifest. ``progress``: None shows each step on stderr when stderr is a terminal, True/False force it
    on/off, a callable ``progress(step, state, info)`` receives the steps ("start", "done" or "failed").

    >>> bundle = export_onnx(model, "bundle/", tokenizer, ExportOptions(quantize="int8"))   # doctest: +SKIP
    >>> bundle.report.worst()["logits"]                                                     # doctest: +SKIP
    {'abs': 2.4e-07, 'rel': 3.1e-06}
    """
    options = options if options is not None else ExportOptions()
    if not isinstance(options, ExportOptions):
        raise ExportOptionError(f"options must be an ExportOptions, got {type(options).__name__}; write "
                                "ExportOptions(quantize='int8', ...) (for a dict: ExportOptions(**options))")
    out_dir = Path(out_dir)
    target = dict(overwrite=overwrite, replaceable=is_bundle, what=BUNDLE_KIND, protect=_protected(model, tokenizer, source))
    check_target(out_dir, **target)
    acceptance = options.acceptance()
    max_length = resolve_max_length(model, options.max_length)
    if "int8-ov" in options.modes:
        from .openvino_int8 import int8_ov_unavailable

        reason = int8_ov_unavailable()
        if reason is not None:
            raise ExportOptionError(f"cannot make an OpenVINO int8 variant here: {reason}")
    if not callable(progress):
        from ..progress import StepProgress

        progress = StepProgress(progress)
    step = _Steps(progress)
    input_names = input_names_for(model)
    padding_side = "left" if model._decoder else "right"
    checks = dict(token_outputs=acc.token_outputs_of(model), atol=options.atol, rtol=options.rtol)

    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ExportOptionError("export traces and verifies on the CPU: move the model there first (model.cpu())")

    # eval for the reference pass; a model being trained comes back in training mode
    with eval_mode(model), atomic_directory(out_dir, **target) as staging:
        with step("tokenizer"):
            # some configs (CodeGen) have no pad_token_id attribute at all
            pad_token_id = getattr(model.config, "pad_token_id", None)
            tok = bundle_tokenizer(_tokenizer_for(model, tokenizer), pad_token_id=pad_token_id)
            special = tok.tokenizer.num_special_tokens_to_add(False)
            if max_length <= special:  # the tokenizer cannot cut a text below its own special tokens
                raise ExportOptionError(f"max_length={max_length} leaves no room for text beside the tokenizer's "
                                        f"{special} special tokens; pass --max-length {special + 1} or more")
            tok.save(staging / TOKENIZER_FILE)
        with step("cases") as info:
            vocab_size = getattr(model.config, "vocab_size", None)
            if not isinstance(vocab_size, int):  # CANINE reads code points, not token ids
                raise ExportOptionError(f"{_architecture(model)} has no token vocabulary (its config has no "
                                        "vocab_size): bundles are served with a tokenizer's ids")
            cases = make_cases(
                input_names=input_names,
                vocab_size=vocab_size,
                max_length=max_length,
                pad_id=tok.pad_token_id,
                padding_side=padding_side,
                tokenizer=tok.tokenizer,
                pairs="token_type_ids" in input_names,
            )
            _check_tokenizer(tok, cases, max_length)
            info["cases"] = len(cases)
        wrapper = ExportWrapper(model, input_names).eval()
        trace_args = dict(opset=options.opset, wrapper=wrapper, checks=checks, padding_side=padding_side,
                          optimize=options.optimize)
        batch_padding: dict[str, Any] = {"allowed": True}
        try:
            with _naming_architecture(model):
                traced, report, expected, fp32_invariance = _trace_and_verify(
                    model, staging / MODEL_FILE, step, exporter=options.exporter, cases=cases, **trace_args)
        except PaddingDependent as found:
            # Served exactly all the same: rows are batched only with rows of their own length (no padding), and
            # verification checks the graph the way it will run, on the same cases split into equal-length batches.
            batch_padding = _padding_record(model, found.record)
            if options.quantize or options.bf16:
                raise ExportOptionError(
                    f"{model.config.model_type}: {batch_padding['reason']}; int8 and bf16 acceptance compare "
                    "padded batches, so such a model exports in fp32 only: export again without --quantize / --bf16"
                ) from None
            cases = equal_length_cases(cases)
            with _naming_architecture(model):
                traced, report, expected, fp32_invariance = _trace_and_verify(
                    model, staging / MODEL_FILE, step, exporter=found.exporter, cases=cases, padding_check=False,
                    **trace_args)
            report.notes.append(f"batch_padding false: {batch_padding['reason']}; rows are batched only with rows "
                                "of the same length, and every case was verified that way")

        optimization = None
        int8 = None
        variants = {"fp32": bundle_mod.fp32_record()}
        variants["fp32"]["batch_invariance"] = fp32_invariance
        fused = False  # --optimize kept a fused model.onnx (read by manifest_for when it is called)
        head_agreement: dict[str, float | None] = {}  # each head's, on the production cases (once they ran)
        # An in-memory model has no directory that holds backbone *and* head; the CLI passes the one it loaded.
        source_info = source if source is not None else {"path": None, "kind": "python"}

        def manifest_for(variants: dict[str, Any], verification: dict[str, Any]) -> dict[str, Any]:
            graph_outputs = graph_signature(staging / MODEL_FILE)[1] if fused else traced.output_dims
            return bundle_mod.build_manifest(
                model, graph_outputs=graph_outputs, input_names=input_names, opset=traced.opset,
                max_length=max_length, padding_side=padding_side, tokenizer=tok, staging=staging, variants=variants,
                verification=verification, source=source_info, exporter=traced.exporter,
                batch_padding=batch_padding["allowed"],
                head_verification=lambda member: report.head_summary(
                    member.outputs, head_agreement.get(member.name if model.multi_head else "")
                ),
            )

        def stage(variant: str = "fp32", record: dict[str, Any] | None = None) -> Any:
            """The staged bundle opened as production opens it, serving ``variant`` (``record``: its record so far)."""
            from ..runtime.predictor import Predictor

            write_json(staging / MANIFEST_FILE, manifest_for({**variants, **({variant: record} if record else {})},
                                                             report.summary()))
            return Predictor(staging, variant=variant)

        @functools.cache
        def twin() -> _Twin:
            """The staged fp32 Predictor and its engine over PyTorch (made once; only prepare is read from it)."""
            from .torch_backend import TorchBackend

            predictor = stage()
            return _Twin(predictor, predictor.engine.with_backend(TorchBackend(model)))

        @functools.cache
        def acceptance_set() -> acc.AcceptanceSet:
            """Held-out texts and PyTorch's outputs on them, built once for every reduced-precision variant."""
            with step("acceptance texts") as info:
                built = _acceptance_set(twin(), options.calibration_texts, pairs="token_type_ids" in input_names,
                                        options=acceptance)
                info.update(calibration=built.split.record["calibration_rows"],
                            held_out=built.split.record["acceptance_rows"])
            return built

        if "int8" in options.modes:
            int8 = _variant_int8(staging, acceptance_set(), options.calibration_method, step, stage)
            variants["int8"] = bundle_mod.int8_record(int8)
        int8_ov = None
        if "int8-ov" in options.modes:
            int8_ov = _variant_int8_ov(staging, acceptance_set(), tok, step, stage)
            if "record" in int8_ov:
                variants["int8-ov"] = int8_ov["record"]
        if options.optimize:
            from .optimize import optimize_graph

            with step("optimize") as info:
                optimization = optimize_graph(staging / MODEL_FILE, cases, expected, checks=checks,
                                              padding_side=padding_side)
                info.update(accepted=optimization["accepted"], fused=optimization["fused"])
            variants["fp32"]["optimized"] = optimization["accepted"]
            fused_report = optimization.pop("report", None)
            fused = bool(optimization["accepted"])
            if optimization["accepted"]:
                variants["fp32"]["batch_invariance"] = optimization["batch_invariance"]  # the graph that ships
                optimization["unfused_verification"] = report.summary()
                report = fused_report
                report.target = MODEL_FILE

        bf16_record = None
        if options.bf16:
            bf16_record = _variant_bf16(staging, acceptance_set, step, fused=fused, stage=stage)
            variants["bf16"] = bf16_record

        with step("verify predict") as info:
            production = _verify_production(stage, twin, variants, max_length=max_length,
                                            pairs="token_type_ids" in input_names, atol=options.atol,
                                            rtol=options.rtol, fused=fused)
            head_agreement.update(prod.agreements(production["record"]["cases"], results_only=True))
            if int8 is not None:
                int8.update(production["golden"])
                variants["int8"].update(production["golden"])
            info.update(cases=len(production["record"]["cases"]), passed=production["record"]["passed"])
            if not production["record"]["passed"]:
                report.problems.extend(prod.failures(production["record"]))
                report.problems_are = ("the graph verified, but the bundle's own Predictor (its batching, padding and "
                                       "postprocess) does not reproduce PyTorch or crashes")
                report.raise_for_failure()

        with step("write bundle"):
            extra = prod.golden_arrays(production["expected"])
            for name, rows in production["variant_rows"].items():
                extra.update(prod.golden_arrays(rows, prefix=prod.variant_prefix(name)))
            save_golden(staging / GOLDEN_FILE, cases, expected, extra=extra)
            manifest = manifest_for(variants, {**report.summary(), "production": _production_summary(production["record"])})
            write_json(staging / MANIFEST_FILE, manifest)
            write_json(
                staging / VERIFICATION_FILE,
                {
                    **report.to_dict(),
                    "manifest_sha256": sha256_file(staging / MANIFEST_FILE),
                    "optimization": optimization,
                    "int8": int8,
                    "bf16": bf16_record,
                    "int8_ov": int8_ov,
                    "variants": variants,
                    "batch_padding": batch_padding,
                    "production": {**production["record"], "described": prod.describe(production["cases"])},
                },
            )
            sizes = bundle_mod.file_sizes(staging)
    return Bundle(out_dir, manifest, report, step.done, sizes, optimization, int8, bf16_record, int8_ov)


def _variant_int8_ov(staging: Path, acceptance: "acc.AcceptanceSet", tok: Any, step: "_Steps",
                     stage: Callable[..., Any]) -> dict[str, Any]:
    """OpenVINO int8 by NNCF (headreg.export.openvino_int8), judged by its own production engine; a refusal is
    kept, not raised."""
    from .openvino_int8 import quantize_int8_ov

    with step("quantize int8-ov") as info:
        result = quantize_int8_ov(staging / MODEL_FILE, staging, acceptance, stage)
        search = result.get("record", result)["quantization"]["search"]
        info.update(smooth_quant_alpha=search["chosen"], kept=search["kept"], accepted="record" in result)
        if "record" in result:
            figures = result["record"]["acceptance"]
            info["agreement"] = figures.get("agreement", figures.get("max_abs_error"))
    return result


def _variant_bf16(staging: Path, acceptance_set: Callable[[], "acc.AcceptanceSet"], step: "_Steps", *,
                  fused: bool, stage: Callable[..., Any]) -> dict[str, Any]:
    """The OpenVINO bf16 record, judged like int8 on the held-out texts and batch invariance, run by the bf16
    variant's own production engine (OpenVINO, padded to the block multiple).

    ExportOptionError where this machine cannot check it; VerificationError when it fails a check.
    """
    from .bf16 import bf16_record, bf16_unavailable

    reason = bf16_unavailable()
    if reason is None and fused:
        reason = "--optimize fused onnxruntime-only operators into model.onnx, which OpenVINO cannot read"
    if reason is not None:
        raise ExportOptionError(f"cannot verify a bf16 variant here: {reason}")
    acceptance = acceptance_set()
    with step("accept bf16") as info:
        predictor = stage("bf16", bf16_record({}, None))
        judged = acceptance.judge_variant("bf16", predictor.engine)
        figures = judged["acceptance"]
        info.update(agreement=figures.get("agreement", figures.get("max_abs_error")),
                    invariant=judged["batch_invariance"]["passed"])
    return bf16_record(judged, predictor.backend)


def _verify_production(stage: Callable[..., Any], twin: Callable[[], "_Twin"], variants: dict[str, Any], *,
                       max_length: int, pairs: bool, atol: float, rtol: float, fused: bool) -> dict[str, Any]:
    """The staged bundle's own Predictor on the production cases (production.py) against its engine over PyTorch;
    every other verified variant must run them too (its answers were judged by acceptance), and the rows of those
    in RECHECKED_VARIANTS are kept for headreg verify. An int8 variant's record gets its ``golden_agreement``
    there: how many of the cases' inputs its engine answers as PyTorch's rows do (headreg verify re-counts it)."""
    cases = prod.production_cases(max_length, pairs=pairs, sentences="int8" in variants)
    reference = twin()
    # the final fp32 graph: the twin's own unless --optimize kept a fused one (opening a bundle again costs a session)
    predictor = stage() if fused else reference.predictor
    expected, actual = _beside(lambda: prod.reference_rows(reference.predictor, reference.reference, cases),
                               lambda: prod.case_rows(predictor, cases))
    record = prod.verify_production(predictor, cases, expected, atol=atol, rtol=rtol, actual=actual)
    kept: dict[str, list[list[dict[str, np.ndarray]]]] = {}
    golden: dict[str, Any] = {}
    for name in variants:
        if name == "fp32":
            continue
        variant = stage(name)
        rows = prod.case_rows(variant, cases)
        failed = False
        for case, computed in zip(cases, rows):
            if isinstance(computed, BaseException):
                failed = record["passed"] = False
                record["cases"].append({"name": f"{name}: {case.name}", "passed": False,
                                        "problems": [f"the {name} variant's engine failed: {computed}"]})
        if failed:
            continue
        if name in RECHECKED_VARIANTS:
            kept[name] = rows
        if name == "int8":
            try:
                by_head = prod.variant_agreement(variant, cases, expected, rows)
            except HeadregError as exc:
                record["passed"] = False
                record["cases"].append({"name": f"{name}: results", "passed": False,
                                        "problems": [f"the {name} variant's results failed: {exc}"]})
                continue
            golden["golden_agreement"] = round(min(by_head.values(), default=1.0), 6)
            golden["golden_agreement_on"] = "production cases"  # older bundles counted it on the graph's text cases
            if variant.engine.by_head:
                golden["golden_agreement_by_head"] = {head: round(value, 6) for head, value in by_head.items()}
    if kept:
        record["variant_rows"] = sorted(kept)
    return {"record": record, "cases": cases, "expected": expected, "variant_rows": kept, "golden": golden}


def _production_summary(record: dict[str, Any]) -> dict[str, Any]:
    worst: dict[str, float] = {}
    for case in record["cases"]:
        for name, figures in (case.get("worst") or {}).items():
            worst[name] = max(worst.get(name, 0.0), figures["abs"])
    return {"passed": record["passed"], "cases": len(record["cases"]), "worst_abs": worst}


__all__ = ["Bundle", "ExportError", "ExportOptionError", "ExportOptions", "VerificationFailed", "export_onnx"]
