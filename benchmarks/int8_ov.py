"""The OpenVINO int8 variant (``--quantize int8-ov``) against bf16, onnxruntime int8 and PyTorch, in one run:
``python -m benchmarks.int8_ov [--heads seq_cls,token_cls] [--threads 2] [--rounds 7]``.

Per trained head on the real MiniLM (int8 agreement means little on an untrained head, whose scores are
near-ties everywhere):

- seq_cls: the quickstart's model fine-tuned 60 steps (``examples/quickstart.py --steps 60``);
- token_cls: MiniLM with a token head fine-tuned 60 steps to tag capitalised words after the first as ENT
  (a rule the texts carry, so the head is confident where it should be and entity sets can be compared);

one export with ``--bf16 --quantize int8-ov`` at the default ``--min-agreement 0.99`` (what a user gets: the
variant is written only if it passes) and one with ``--quantize int8`` (onnxruntime static int8, not gated here:
its figures are reported). Then:

- an agreement table: every variant's held-out figures from its export record (per text: the label, or the
  exact entity set for token heads, against PyTorch), and batch invariance;
- latency at 1x128 and 32x128 of int8-ov, bf16, onnxruntime int8 and fp32 (each a ``Predictor`` with the
  variant named, padded as it serves) and PyTorch fp32 / bf16 autocast, called round-robin (A, B, C, A, B, C...)
  in this one process, p50 and ratios to bf16.

``--bert-base DIR`` times the BERT-base-size bundle of ``benchmarks.run`` the same way (speed only: its
backbone is random). Prints the CPU ISA and the load average (the machine may be shared) and writes ``int8_ov.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .machine import cpu_name, isa
from .engines import predictor_runner
from .timing import interleaved, random_feed

ROOT = Path(__file__).resolve().parent
SHAPES = ((1, 128, 8), (32, 128, 1))  # batch, length, calls per timed sample (a 1x128 call is a few ms)
STEPS = 60
TOKEN_LABELS = {0: "O", 1: "B-ENT", 2: "I-ENT"}


def seq_cls_model(out: Path) -> Path:
    """The quickstart's MiniLM fine-tuned ``STEPS`` steps, trained once and kept in ``out``."""
    model = out / "seq_cls" / "model"
    if not (model / "headreg_model.json").is_file():
        print(f"  fine-tuning the quickstart model ({STEPS} steps) ...", flush=True)
        subprocess.run([sys.executable, str(ROOT.parent / "examples" / "quickstart.py"), "--out", str(out / "seq_cls"),
                        "--steps", str(STEPS)], check=True, stdout=subprocess.DEVNULL)
    return model


def token_cls_model(out: Path) -> Path:
    """MiniLM + token_cls fine-tuned ``STEPS`` steps on the built-in texts: capitalised words after the first
    are ENT (B- on a word's first token, I- on the rest), everything else O."""
    model_dir = out / "token_cls" / "model"
    if (model_dir / "headreg_model.json").is_file():
        return model_dir
    import torch
    from transformers import AutoModel, AutoTokenizer

    from headreg import attach_head
    from headreg.data import builtin_texts
    from headreg.model import quiet_transformers
    from headreg.testing import minilm_path

    print(f"  fine-tuning a token_cls head ({STEPS} steps) ...", flush=True)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    with quiet_transformers():
        backbone = AutoModel.from_pretrained(str(minilm_path()))
    model = attach_head(backbone, "token_cls", num_labels=3, id2label=TOKEN_LABELS)
    texts = [t for t in builtin_texts(with_pairs=False) if isinstance(t, str)][::2]  # the other half stays unseen
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    labels = torch.full(batch["input_ids"].shape, -100)
    for row in range(len(texts)):
        words = batch.word_ids(row)
        for position, word in enumerate(words):
            if word is None:
                continue
            start, end = batch.word_to_chars(row, word)
            text = texts[row][start:end]
            entity = word > 0 and text[:1].isupper()
            first = position == 0 or words[position - 1] != word
            labels[row, position] = (1 if first else 2) if entity else 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for step in range(STEPS):
        rows = torch.randperm(len(texts))[:16]
        loss = model(**{k: v[rows] for k, v in batch.items()}, labels=labels[rows]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(model_dir, tokenizer=tokenizer, overwrite=True)
    print(f"  token_cls final loss {loss.item():.3f}", flush=True)
    return model_dir


def export_bundles(model_dir: Path, out: Path, rebuild: bool) -> tuple[Path, Path, dict[str, Any]]:
    """(bundle with bf16 + int8-ov at the default gate, bundle with onnxruntime int8 ungated, int8-ov result)."""
    from headreg import load_model
    from headreg.export import ExportOptions, export_onnx

    model = load_model(model_dir).eval()
    ov_bundle, ort_bundle = out / "bundle-ov", out / "bundle-ort-int8"
    result_file = out / "int8_ov_result.json"
    if rebuild or not result_file.is_file():
        started = time.perf_counter()
        from headreg.errors import VerificationError

        try:
            bundle = export_onnx(model, ov_bundle, str(model_dir), ExportOptions(bf16=True, quantize="int8-ov"),
                                 overwrite=True)
        except VerificationError as exc:  # a bf16 that fails the gate fails the export; int8-ov is judged alone
            print(f"  bf16 refused: {exc}", flush=True)
            bundle = export_onnx(model, ov_bundle, str(model_dir), ExportOptions(quantize="int8-ov"), overwrite=True)
        result_file.write_text(json.dumps(bundle.int8_ov, default=str))
        print(f"  exported {ov_bundle} (bf16 + int8-ov) in {time.perf_counter() - started:.0f}s", flush=True)
    if rebuild or not (ort_bundle / "model.int8.onnx").is_file():
        started = time.perf_counter()
        export_onnx(model, ort_bundle, str(model_dir), ExportOptions(quantize="int8", min_agreement=0.0), overwrite=True)
        print(f"  exported {ort_bundle} (onnxruntime int8, not gated) in {time.perf_counter() - started:.0f}s", flush=True)
    return ov_bundle, ort_bundle, json.loads(result_file.read_text())


def agreement_rows(ov_bundle: Path, ort_bundle: Path, int8_ov: dict[str, Any]) -> list[dict[str, Any]]:
    from headreg.manifest import read_manifest

    rows = []
    records = {**{f"{k} ({v.get('backend')})": v for k, v in read_manifest(ov_bundle)["variants"].items()},
               "int8 (onnxruntime)": read_manifest(ort_bundle)["variants"]["int8"]}
    for name, record in records.items():
        if "acceptance" not in record:
            continue
        figures, invariance = record["acceptance"], record["batch_invariance"]
        rows.append({"variant": name, "passed": figures["passed"], "agreement": figures.get("agreement"),
                     "identical": figures.get("identical"), "texts": figures.get("texts"),
                     "token_agreement": figures.get("token_agreement"), "metric": figures.get("metric"),
                     "batch_variance": invariance["max_abs_diff"], "invariant": invariance["passed"]})
    if "refused" in int8_ov:
        figures = next(iter((int8_ov.get("held_out") or {"": {}}).values()))
        rows.append({"variant": "int8-ov (openvino), REFUSED", "passed": False, "agreement": figures.get("agreement"),
                     "identical": figures.get("identical"), "texts": figures.get("texts"),
                     "token_agreement": figures.get("token_agreement"), "metric": figures.get("metric"),
                     "batch_variance": None, "invariant": None, "why": int8_ov["refused"]})
    return rows


def speed(model: Any, ov_bundle: Path, ort_bundle: Path, threads: int, rounds: int) -> list[dict[str, Any]]:
    from headreg.export.torch_bench import torch_model_runner
    from headreg.runtime import Predictor

    engines = {}
    variants = json.loads((ov_bundle / "headreg.json").read_text())["variants"]
    for variant in ("int8-ov", "bf16"):
        if variant in variants:
            engines[variant] = predictor_runner(Predictor(ov_bundle, variant=variant, threads=threads))
    engines["int8 (onnxruntime)"] = predictor_runner(Predictor(ort_bundle, variant="int8", threads=threads))
    engines["fp32 (onnxruntime)"] = predictor_runner(Predictor(ort_bundle, variant="fp32", threads=threads))
    engines["pytorch fp32"] = torch_model_runner(model)
    engines["pytorch bf16 autocast"] = torch_model_runner(model, bf16=True)
    names = Predictor(ort_bundle, variant="fp32").layout.input_names
    rows = []
    for batch, length, repeat in SHAPES:
        feed = random_feed(batch, length, names)
        calls = {name: (lambda run=run: [run(feed) for _ in range(repeat)]) for name, run in engines.items()}
        load = os.getloadavg()[0]
        times = interleaved(calls, budget_s=0, min_reps=rounds, max_reps=rounds)
        p50 = {name: float(np.median(t)) * 1e3 / repeat for name, t in times.items()}
        base = p50.get("bf16")
        rows.append({"shape": f"{batch}x{length}", "p50_ms": p50, "load_before": load, "load_after": os.getloadavg()[0],
                     "vs_bf16": {name: base / v for name, v in p50.items()} if base else None})
        line = "  ".join(f"{name} {v:.1f} ms" + (f" ({base / v:.2f}x bf16)" if base else "") for name, v in p50.items())
        print(f"  {batch}x{length}: {line}  [load {load:.1f} -> {rows[-1]['load_after']:.1f}]", flush=True)
    return rows


def _loaded(model_dir: Path) -> Any:
    from headreg import load_model

    return load_model(model_dir).eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8_ov", description=__doc__.splitlines()[0])
    parser.add_argument("--heads", default="seq_cls,token_cls", help="MiniLM heads (\"\" for none)")
    parser.add_argument("--no-speed", action="store_true", help="agreement only (exports, no timing)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7, help="round-robin rounds per shape (default 7)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "int8_ov")
    parser.add_argument("--rebuild", action="store_true", help="export the bundles again")
    parser.add_argument("--bert-base", type=Path, default=None, metavar="DIR",
                        help="also time the BERT-base-size bundle of benchmarks.run (its --out DIR; exported if missing)")
    args = parser.parse_args(argv)
    # PyTorch's OpenMP threads busy-wait by default; interleaved with other engines on a shared machine they steal
    # the next engine's cores (benchmarks/run.py measured 1x16 at 978 ms vs 11 ms under load). Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from headreg.export.openvino_int8 import int8_ov_unavailable

    reason = int8_ov_unavailable()
    if reason is not None:
        parser.exit(2, f"error: int8-ov cannot be made here: {reason}\n")
    report: dict[str, Any] = {"cpu": cpu_name(), "isa": isa(), "threads": args.threads,
                              "load_average_before": os.getloadavg(), "heads": {}}
    print(f"{report['cpu']} ({' '.join(report['isa'])}); {args.threads} threads; load {report['load_average_before']}")
    for head in [name for name in args.heads.split(",") if name]:  # --heads "": BERT-base only
        out = args.out / head
        out.mkdir(parents=True, exist_ok=True)
        print(f"\n== MiniLM {head}", flush=True)
        model_dir = {"seq_cls": seq_cls_model, "token_cls": token_cls_model}[head](args.out)
        ov_bundle, ort_bundle, int8_ov = export_bundles(model_dir, out, args.rebuild)
        agreement = agreement_rows(ov_bundle, ort_bundle, int8_ov)
        for row in agreement:
            token = f", tokens {row['token_agreement']:.2%}" if row.get("token_agreement") is not None else ""
            variance = f"{row['batch_variance']:.1e}" if row["batch_variance"] is not None else "-"
            print(f"  {row['variant']:<28} {row['metric']}: {row['identical']}/{row['texts']} = "
                  f"{row['agreement']:.2%}{token}; meets 0.99: {row['agreement'] >= 0.99}; batch variance {variance}")
        search = (int8_ov.get("record") or int8_ov)["quantization"]
        print(f"  int8-ov search: {json.dumps(search['search'])}; NNCF {search['seconds']} s")
        report["heads"][head] = {"agreement": agreement, "int8_ov_quantization": search,
                                 "speed": None if args.no_speed else speed(_loaded(model_dir), ov_bundle, ort_bundle,
                                                                           args.threads, args.rounds)}
    if args.bert_base is not None and not args.no_speed:
        from .engines import build_bundle, build_model

        print("\n== BERT-base size (random backbone, head trained 30 steps): benchmarks/run.py's bundle", flush=True)
        model = build_model("bert-base")
        bundle = build_bundle("bert-base", model, args.bert_base, False)
        report["bert-base"] = {"bundle": str(bundle), "speed": speed(model, bundle, bundle, args.threads, args.rounds)}
    report["load_average_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_ov.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nload average before {report['load_average_before']}, after {report['load_average_after']}; "
          f"wrote {args.out / 'int8_ov.json'}")
    return report


if __name__ == "__main__":
    main()
