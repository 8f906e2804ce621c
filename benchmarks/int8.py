"""Static (calibrated, QDQ) int8 vs dynamic int8 vs fp32 vs PyTorch, side by side in one run:
``python -m benchmarks.int8 [--model DIR] [--threads 2]``.

- the model: a saved headreg model (default: the fine-tuned quickstart MiniLM, trained once into ``--out``;
  int8 agreement means little on an untrained head, whose scores are near-ties everywhere);
- one export with ``--quantize int8`` (static int8, the shipped variant) and, from the same fp32 graph,
  dynamic int8 and static int8 with the other calibration methods (not shipped; measured here);
- agreement with PyTorch on the export's held-out texts (the same split and figures as export acceptance),
  and batch invariance (each text alone vs in batches of mixed length, reversed, padded to max_length);
- latency at 1x128, 8x128, 32x128, engines called round-robin (A, B, C, A, B, C...), p50 and ratios.

Prints the CPU ISA and the load average (the machine may be shared) and writes ``int8.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .report import machine_info
from .timing import interleaved, random_feed

ROOT = Path(__file__).resolve().parent
SHAPES = ((1, 128), (8, 128), (32, 128))


def trained_model(out: Path) -> Path:
    """The quickstart's fine-tuned MiniLM (examples/quickstart.py), trained once and kept in ``out``."""
    model = out / "quickstart" / "model"
    if not (model / "headreg_model.json").is_file():
        print("  fine-tuning the quickstart model (examples/quickstart.py) ...", flush=True)
        subprocess.run([sys.executable, str(ROOT.parent / "examples" / "quickstart.py"), "--out", str(out / "quickstart")],
                       check=True, stdout=subprocess.DEVNULL)
    return model


def build_variants(model_dir: Path, out: Path, rebuild: bool) -> tuple[Any, Path, dict[str, Path], dict]:
    """Export the bundle (static int8 shipped) and quantize the other contenders from its fp32 graph."""
    from headreg import load_model
    from headreg.export import ExportOptions, export_onnx
    from headreg.export.quantize import quantize_dynamic_int8
    from headreg.manifest import read_manifest

    model = load_model(model_dir).eval()
    bundle = out / "bundle"
    if rebuild or not (bundle / "model.int8.onnx").is_file():
        started = time.perf_counter()
        # acceptance is measured and reported here, so the export does not gate on it
        export_onnx(model, bundle, tokenizer=str(model_dir), overwrite=True,
                    options=ExportOptions(quantize="int8", min_agreement=0.0))
        print(f"  exported {bundle} in {time.perf_counter() - started:.0f}s", flush=True)
    manifest = read_manifest(bundle)
    method = manifest["variants"]["int8"]["quantization"]["method"]
    files = {"fp32": bundle / "model.onnx", f"int8 static ({method}, shipped)": bundle / "model.int8.onnx"}
    quantize_dynamic_int8(bundle / "model.onnx", out / "dynamic.onnx")
    files["int8 dynamic"] = out / "dynamic.onnx"
    return model, bundle, files, manifest


def acceptance_set(model: Any, bundle: Path, manifest: dict[str, Any]) -> Any:
    """The export's own held-out texts and PyTorch's rows on them (the runtime engine over PyTorch)."""
    from headreg.data import builtin_texts
    from headreg.export import acceptance as acc
    from headreg.export.torch_backend import TorchBackend
    from headreg.runtime import Predictor

    predictor = Predictor(bundle, variant="fp32")
    reference = predictor.engine.with_backend(TorchBackend(model))
    texts = acc.normalize_texts(builtin_texts("token_type_ids" in manifest["inputs"]), pairs=True)
    return acc.build_acceptance_set(predictor, reference, texts, source="builtin", options=acc.AcceptanceOptions())


def fidelity(accept: Any, path: Path, threads: int) -> dict[str, Any]:
    """One model file run by the fp32 bundle's engine (same plan, padding and postprocess) against PyTorch's rows."""
    from headreg.export import acceptance as acc
    from headreg.runtime.backends import open_backend

    engine = accept.engine.with_backend(open_backend({"backend": "onnxruntime"}, path, threads=threads))
    outputs, _ = engine.compute([accept.job])
    actual = outputs[accept.job]
    figures = acc.agreement(engine.heads[0], accept.job, accept.expected, actual)
    invariance = acc.engine_invariance(engine, accept.invariance_job(), max_length=accept.max_length)
    drift = max(float(np.abs(got["logits"] - want["logits"]).max()) for got, want in zip(actual, accept.expected))
    return {"agreement": figures, "batch_invariance": invariance, "max_logit_drift": drift}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="saved headreg model [default: the quickstart's]")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timing per shape")
    parser.add_argument("--methods", default="minmax", help="other calibration methods to measure, comma separated")
    parser.add_argument("--rebuild", action="store_true", help="export again even when --out has the bundle")
    parser.add_argument("--omp-wait-policy", default="default", choices=["default", "PASSIVE", "ACTIVE"],
                        help="PyTorch's OpenMP wait policy (PASSIVE is PyTorch's better setting on a loaded machine)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.omp_wait_policy != "default":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # read when torch is first imported, just below

    import torch

    from headreg.runtime.session import create_session
    from headreg.runtime.variants import select_variant

    torch.set_num_threads(args.threads)
    machine = machine_info()
    load_before = os.getloadavg()
    print(f"cpu: {machine['cpu']}  isa: {' '.join(machine['isa'])}  threads: {args.threads}  "
          f"load average: {load_before[0]:.2f}", flush=True)
    model_dir = args.model or trained_model(args.out)
    model, bundle, files, manifest = build_variants(model_dir, args.out, args.rebuild)
    from headreg.export.quantize import quantize_static_int8

    accept = acceptance_set(model, bundle, manifest)
    calibration = accept.calibration_feeds()
    for method in [m for m in args.methods.split(",") if m]:
        path = args.out / f"static-{method}.onnx"
        quantize_static_int8(bundle / "model.onnx", path, calibration, method=method)
        files[f"int8 static ({method})"] = path
    sessions = {name: create_session(path, threads=args.threads) for name, path in files.items()}

    report: dict[str, Any] = {
        "machine": machine, "threads": args.threads, "load_average_before": load_before,
        "omp_wait_policy": args.omp_wait_policy,
        "serves_here": dict(zip(("variant", "reason"), select_variant(manifest))),
        "held_out_texts": accept.split.record, "variants": {},
    }
    for name in sessions:
        report["variants"][name] = fidelity(accept, files[name], args.threads)
        fig = report["variants"][name]
        print(f"  {name:<32} {fig['agreement']['agreement']:.2%} identical held-out decisions "
              f"({fig['agreement']['disagreements']} differ, {fig['agreement']['near_ties']} near-ties), "
              f"max logit drift {fig['max_logit_drift']:.3g}, batch-invariant: {fig['batch_invariance']['passed']} "
              f"(max diff {fig['batch_invariance']['max_abs_diff']:.2g})", flush=True)

    model.backbone.set_attn_implementation("sdpa")
    names = manifest["inputs"]
    report["shapes"] = []
    for batch, length in SHAPES:
        feed = random_feed(batch, length, names)

        def torch_call(f=feed):
            with torch.inference_mode():
                return model(**{k: torch.from_numpy(v) for k, v in f.items()})

        calls: dict[str, Callable[[], Any]] = {"pytorch fp32 (sdpa)": torch_call}
        for name, session in sessions.items():
            calls[name] = lambda s=session, f=feed: s.run(["logits"], f)
        times = interleaved(calls, args.budget, min_reps=3, max_reps=30)
        p50 = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
        row = {"shape": f"{batch}x{length}", "p50_ms": p50,
               "vs_pytorch": {n: p50["pytorch fp32 (sdpa)"] / v for n, v in p50.items()},
               "vs_fp32": {n: p50["fp32"] / v for n, v in p50.items()}, "load_average": os.getloadavg()[0]}
        report["shapes"].append(row)
        print(f"  {row['shape']}: " + ", ".join(f"{n} {v:.1f} ms ({row['vs_pytorch'][n]:.2f}x torch)"
                                                for n, v in p50.items()) + f"  [load {row['load_average']:.1f}]",
              flush=True)
    report["load_average_after"] = os.getloadavg()
    print(markdown(report))
    (args.out / "int8.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def markdown(report: dict[str, Any]) -> str:
    names = list(report["variants"])
    lines = ["| engine | " + " | ".join(r["shape"] + " ms (vs PyTorch)" for r in report["shapes"])
             + " | held-out identical | near-ties of flips | max logit drift | batch-invariant (max diff) |",
             "|---|" + "---|" * (len(report["shapes"]) + 4)]
    for name in ["pytorch fp32 (sdpa)", *names]:
        cells = [f"{r['p50_ms'][name]:.1f} ({r['vs_pytorch'][name]:.2f}x)" for r in report["shapes"]]
        if name in report["variants"]:
            v = report["variants"][name]
            cells += [f"{v['agreement']['agreement']:.2%} of {v['agreement']['texts']}",
                      f"{v['agreement']['near_ties']}/{v['agreement']['disagreements']}", f"{v['max_logit_drift']:.3g}",
                      f"{'yes' if v['batch_invariance']['passed'] else 'NO'} ({v['batch_invariance']['max_abs_diff']:.2g})"]
        else:
            cells += ["reference", "", "", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    load = report["load_average_before"][0], report["load_average_after"][0]
    lines.append(f"\n{report['machine']['cpu']}, ISA {' '.join(report['machine']['isa'])}, {report['threads']} threads, "
                 f"load average {load[0]:.1f} -> {load[1]:.1f}, PyTorch OMP_WAIT_POLICY={report['omp_wait_policy']}. Serves here: {report['serves_here']['variant']} "
                 f"({report['serves_here']['reason']}).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
