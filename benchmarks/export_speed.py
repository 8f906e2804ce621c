"""`headreg export` (fp32, full verification) against an optimum-style export of the same model, side by side.

The optimum-style contender does what optimum's ONNX exporter does for a sequence-classification model:
load ``AutoModelForSequenceClassification``, ``torch.onnx.export`` with the TorchScript exporter and dynamic
batch/sequence axes, then one onnxruntime check on one dummy batch. Every contender runs in a fresh
interpreter (imports included, as a user pays them), the contenders alternate round by round so a busy
machine slows them alike, and the report gives medians, ratios to the baseline and headreg's per-step times.

    python -m benchmarks.export_speed [--model DIR] [--rounds 3] [--exporters auto,dynamo] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# What optimum's `main_export` + `validate_model_outputs` amount to for this model: one export, one check.
BASELINE = """
import json, sys, time
t = {"start": time.perf_counter()}
import numpy as np, onnxruntime as ort, torch
from transformers import AutoModelForSequenceClassification
t["import"] = time.perf_counter()
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], num_labels=2).eval()
t["load"] = time.perf_counter()
names = ["input_ids", "attention_mask", "token_type_ids"]
dummy = {n: torch.ones(2, 16, dtype=torch.long) for n in names}
dummy["input_ids"] = torch.randint(1000, model.config.vocab_size, (2, 16))
dummy["token_type_ids"].zero_()
axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
with torch.no_grad():
    torch.onnx.export(model, tuple(dummy[n] for n in names), sys.argv[2], input_names=names, output_names=["logits"],
                      dynamic_axes=axes, opset_version=17, dynamo=False)
t["trace"] = time.perf_counter()
check = {n: torch.ones(3, 9, dtype=torch.long) for n in names}
check["input_ids"] = torch.randint(1000, model.config.vocab_size, (3, 9))
check["token_type_ids"].zero_()
with torch.no_grad():
    want = model(**check).logits.numpy()
session = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
got = session.run(["logits"], {n: v.numpy() for n, v in check.items()})[0]
assert np.allclose(got, want, atol=1e-4), abs(got - want).max()
t["verify"] = time.perf_counter()
keys = list(t)
print(json.dumps({"steps": [{"name": b, "seconds": t[b] - t[a]} for a, b in zip(keys, keys[1:])]}))
"""


def machine() -> dict[str, Any]:
    from .machine import cpu_name, isa

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "isa": isa()}


def run_once(command: list[str]) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, json.loads(done.stdout)


# headreg's CLI freezes the garbage collector before it exits (cli.skip_final_collection), which spares it the
# ~1 s final collection over torch's and transformers' objects; the same line added to the baseline shows how
# much of headreg's ratio that alone is worth.
FROZEN = "\nimport gc\ngc.freeze()\n"
BASELINE_NAME = "optimum-style (torchscript + 1 check)"
FROZEN_NAME = "optimum-style + gc.freeze() at exit"


def contenders(model: str, out: Path, exporters: list[str]) -> dict[str, list[str]]:
    commands = {
        BASELINE_NAME: [sys.executable, "-c", BASELINE, model, str(out / "baseline.onnx")],
        FROZEN_NAME: [sys.executable, "-c", BASELINE + FROZEN, model, str(out / "baseline-frozen.onnx")],
    }
    for exporter in exporters:
        commands[f"headreg export --exporter {exporter}"] = [
            sys.executable, "-m", "headreg.cli", "export", model, "--head", "seq_cls", "--num-labels", "2",
            "-o", str(out / f"bundle-{exporter}"), "--overwrite", "--json", "--exporter", exporter,
        ]
    return commands


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="backbone directory [default: the packaged MiniLM-L6]")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every contender once")
    parser.add_argument("--exporters", default="auto,dynamo", help="headreg --exporter values to time")
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    args = parser.parse_args(argv)
    if args.model is None:
        from headreg.testing import minilm_path

        args.model = str(minilm_path())
    report: dict[str, Any] = {"machine": machine(), "model": args.model, "rounds": args.rounds,
                              "load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="headreg-export-speed-") as tmp:
        commands = contenders(args.model, Path(tmp), [e for e in args.exporters.split(",") if e])
        walls: dict[str, list[float]] = {name: [] for name in commands}
        steps: dict[str, dict[str, list[float]]] = {name: {} for name in commands}
        for _ in range(max(1, args.rounds)):
            for name, command in commands.items():
                seconds, result = run_once(command)
                walls[name].append(seconds)
                for step in result["steps"]:
                    steps[name].setdefault(step["name"], []).append(step["seconds"])
    report["load_average_after"] = os.getloadavg()
    base = statistics.median(walls[BASELINE_NAME])
    frozen = statistics.median(walls[FROZEN_NAME])
    report["contenders"] = {
        name: {
            "wall_s": walls[name], "median_s": statistics.median(walls[name]),
            "ratio_to_baseline": statistics.median(walls[name]) / base,
            "ratio_to_frozen_baseline": statistics.median(walls[name]) / frozen,
            "steps_median_s": {step: statistics.median(values) for step, values in steps[name].items()},
        }
        for name in commands
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    info = report["machine"]
    print(f"{info['cpu']}, {info['cores']} cores, ISA: {', '.join(info['isa']) or 'none of interest'}")
    print(f"load average before {report['load_average_before'][0]:.2f}, after {report['load_average_after'][0]:.2f}")
    print(f"wall time of a fresh process (imports + load + export + checks), median of {args.rounds} interleaved rounds")
    for name, entry in report["contenders"].items():
        print(f"  {name:42s} {entry['median_s']:6.1f} s  {entry['ratio_to_baseline']:5.2f}x baseline, "
              f"{entry['ratio_to_frozen_baseline']:5.2f}x the frozen one")
        print("      " + ", ".join(f"{step} {seconds:.1f}" for step, seconds in entry["steps_median_s"].items()))
    return report


if __name__ == "__main__":
    main()
