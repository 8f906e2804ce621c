"""Cold start of headreg's Predictor against a bare onnxruntime + tokenizers script doing the same work.

Each contender runs in a fresh interpreter (import + load + first prediction), alternating, so a busy
machine slows both alike. Usage:  python benchmarks/runtime_cold_start.py BUNDLE_DIR [--runs 5] [--torch MODEL_DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEADREG = """
import sys
from headreg.runtime import Predictor
print(Predictor(sys.argv[1]).predict(["The service was excellent."])[0]["label"])
"""

# What a careful hand-written service does: no validation, no batching, no postprocess beyond argmax.
BARE = """
import sys, json
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
bundle = sys.argv[1]
manifest = json.load(open(bundle + "/headreg.json"))
tokenizer = Tokenizer.from_file(bundle + "/tokenizer.json")
tokenizer.enable_truncation(manifest["max_length"])
session = ort.InferenceSession(bundle + "/model.onnx", providers=["CPUExecutionProvider"])
encoding = tokenizer.encode("The service was excellent.")
feed = {"input_ids": np.array([encoding.ids]), "attention_mask": np.array([encoding.attention_mask])}
if "token_type_ids" in [i.name for i in session.get_inputs()]:
    feed["token_type_ids"] = np.array([encoding.type_ids])
logits = session.run(["logits"], feed)[0]
print(manifest["id2label"][str(int(logits[0].argmax()))])
"""

TORCH = """
import sys
import torch
from tokenizers import Tokenizer
from headreg import load_model
model = load_model(sys.argv[2])
tokenizer = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
encoding = tokenizer.encode("The service was excellent.")
with torch.inference_mode():
    out = model(input_ids=torch.tensor([encoding.ids]), attention_mask=torch.tensor([encoding.attention_mask]))
print(out.logits.argmax(-1).item())
"""


def cold(script: str, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", script, *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--torch", dest="model_dir", help="also time PyTorch eager from this saved headreg model")
    args = parser.parse_args()
    contenders = {"headreg Predictor": (HEADREG, args.bundle), "bare onnxruntime + tokenizers": (BARE, args.bundle)}
    if args.model_dir:
        contenders["torch + transformers (headreg load_model)"] = (TORCH, args.bundle, args.model_dir)
    cold(BARE, args.bundle)  # warm the page cache for everyone
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.runs):
        for name, (script, *script_args) in contenders.items():
            times[name].append(cold(script, *script_args))
    bare = statistics.median(times["bare onnxruntime + tokenizers"])
    print(f"cold start: import + load + first prediction, median of {args.runs} fresh interpreters")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:45s} {median:6.2f} s   {median / bare:5.2f}x bare   (min {min(values):.2f} s)")


if __name__ == "__main__":
    main()
