"""The contenders of ``benchmarks.run``: the models, their bundles, and a runner per engine (PyTorch's
configurations and every headreg variant the bundle can run here), each ``run(feed) -> logits``."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


ENGINES = ("pytorch-sdpa", "pytorch-eager", "pytorch-bf16", "ort-fp32", "ort-fp32-fused", "ort-int8", "ov-bf16", "ov-int8",
           "ov-fp32")
LABELS = {
    "pytorch": "PyTorch (fastest configuration)",
    "pytorch-sdpa": "PyTorch fp32 sdpa",
    "pytorch-eager": "PyTorch fp32 eager",
    "pytorch-bf16": "PyTorch bf16 autocast (sdpa)",
    "ort-fp32": "headreg fp32 (onnxruntime)",
    "ort-fp32-fused": "headreg fp32 + onnxscript fusions",
    "ort-int8": "headreg int8 (onnxruntime)",
    "ov-bf16": "headreg bf16 (OpenVINO)",
    "ov-int8": "headreg int8-ov (OpenVINO, NNCF)",
    "ov-fp32": "OpenVINO fp32 (reference, not a variant)",
}
# engine -> the bundle variant it runs (the default variant is marked in the output)
VARIANT_OF = {"ort-fp32": "fp32", "ort-int8": "int8", "ov-bf16": "bf16", "ov-int8": "int8-ov"}
VARIANT_LABEL = {variant: engine for engine, variant in VARIANT_OF.items()}


def headreg_engines(names) -> list[str]:
    return [name for name in names if not name.startswith("pytorch")]


# --- models --------------------------------------------------------------------------------------------------


def _minilm():
    from transformers import AutoModel

    from headreg.model import quiet_transformers
    from headreg.testing import minilm_path

    with quiet_transformers():
        return AutoModel.from_pretrained(str(minilm_path()), attn_implementation="sdpa")


def _bert_base():
    from transformers import AutoModel, BertConfig

    from headreg.model import quiet_transformers

    with quiet_transformers():
        return AutoModel.from_config(BertConfig(), attn_implementation="sdpa")  # 110M, randomly initialised


def _tiny():
    from headreg.testing import tiny_backbone

    return tiny_backbone("bert", attn_implementation="sdpa")


# name: (description, backbone factory, shapes (batch, length), shapes in --quick, corpus too)
MODELS: dict[str, tuple[str, Callable[[], Any], list[tuple[int, int]], list[tuple[int, int]], bool]] = {
    "minilm": (
        "all-MiniLM-L6-v2 (real weights, 22.7M parameters)",
        _minilm,
        [(b, n) for n in (16, 128, 512) for b in (1, 8, 32)],
        [(1, 16), (1, 128), (8, 128), (32, 128)],
        True,
    ),
    "bert-base": (
        "BERT-base size, random init (110M parameters); to keep the run short: 32x128, 8x512, 32x512 and the "
        "corpus skipped, at least 3 repetitions",
        _bert_base,
        [(1, 16), (8, 16), (32, 16), (1, 128), (8, 128), (1, 512)],
        [(1, 16), (1, 128), (8, 128)],
        False,
    ),
    "tiny": ("tiny random BERT (tests only)", _tiny, [(1, 16), (4, 32)], [(1, 16), (4, 32)], True),
}


HEAD_STEPS = 30  # steps of training the head alone (backbone frozen) on the quickstart's sentences


def build_model(name: str):
    """The backbone with a seq_cls head trained briefly (``HEAD_STEPS``, backbone frozen): an untrained head's
    scores are near-ties everywhere, which makes the variants' agreement figures meaningless."""
    import torch

    from headreg import attach_head

    torch.manual_seed(0)  # the same head (and random backbone) every run, so a cached bundle stays valid
    backbone = MODELS[name][1]().eval()
    model = attach_head(backbone, "seq_cls", num_labels=2, id2label={0: "negative", 1: "positive"})
    if name != "tiny":
        _train_head(model, HEAD_STEPS)
    return model.eval()


def _train_head(model: Any, steps: int) -> None:
    import importlib.util

    import torch
    from transformers import AutoTokenizer

    from headreg.testing import minilm_path

    spec = importlib.util.spec_from_file_location("quickstart", Path(__file__).resolve().parent.parent / "examples" / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    TRAIN = quickstart.TRAIN
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    batch = tokenizer([text for text, _ in TRAIN], padding=True, return_tensors="pt")
    labels = torch.tensor([1 if label == "pos" else 0 for _, label in TRAIN])
    model.backbone.requires_grad_(False)
    head = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(head, lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.backbone.requires_grad_(True)
    print(f"  head trained {steps} steps (backbone frozen): loss {loss.item():.3f}", flush=True)


def build_bundle(name: str, model: Any, out: Path, rebuild: bool) -> Path:
    """Export (or reuse) ``model``'s bundle with its int8 (and, where verifiable, bf16) variant; fuse a copy of its
    fp32 graph."""
    from headreg.export import ExportOptions, export_onnx
    from headreg.export.optimize import fuse
    from headreg.testing import minilm_path

    from headreg.export.bf16 import bf16_unavailable
    from headreg.export.openvino_int8 import int8_ov_unavailable

    bundle = out / "bundles" / name
    fused = bundle.parent / f"{name}.fused.onnx"
    bf16 = bf16_unavailable() is None  # the bf16 variant wherever this machine can verify it
    # int8-ov too where it can be made (its agreement on a trained head: benchmarks/int8_ov.py)
    quantize = ("int8", "int8-ov") if int8_ov_unavailable() is None else ("int8",)
    stale = not (bundle / "headreg.json").is_file() or not (bundle / "model.int8.onnx").is_file()
    if not stale:
        have = json.loads((bundle / "headreg.json").read_text()).get("variants") or {}
        stale = (bf16 and "bf16" not in have) or ("int8-ov" in quantize and "int8-ov" not in have)
    if rebuild or stale:
        rebuild = True  # a fused graph of an older export must not be reused
        started = time.perf_counter()
        # int8 acceptance is measured by this benchmark on real text (reported), so the export does not gate it
        export_onnx(model, bundle, tokenizer=str(minilm_path()), overwrite=True,
                    options=ExportOptions(quantize=quantize, min_agreement=0.0, bf16=bf16))
        print(f"  exported {bundle} in {time.perf_counter() - started:.0f}s", flush=True)
    if rebuild or not fused.is_file():
        fuse(bundle / "model.onnx", fused)
    return bundle


# --- runners -------------------------------------------------------------------------------------------------


class FeedRow:
    """One row of a ready feed as the engine takes rows: its real tokens (right padding), ids and type ids."""

    def __init__(self, feed: dict[str, np.ndarray], row: int):
        real = feed["attention_mask"][row].astype(bool)
        self.ids = feed["input_ids"][row][real].tolist()
        self.type_ids = (feed["token_type_ids"][row][real].tolist() if "token_type_ids" in feed
                         else [0] * len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)


def predictor_runner(predictor: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A variant's production engine on a ready feed: the engine pads it (to the variant's token multiple too),
    runs the backend and cuts each row's logits, exactly as predict does."""
    from headreg.runtime.engine import Row

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        rows = [Row(i, FeedRow(feed, i)) for i in range(len(feed["input_ids"]))]
        outputs = predictor.engine.run_rows(rows, ["logits"], width=feed["input_ids"].shape[1])
        return np.stack([out["logits"] for out in outputs])

    return run


def ort_runner(session: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    names = [i.name for i in session.get_inputs()]

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(["logits"], {k: feed[k] for k in names})[0]

    return run


def make_engines(model: Any, bundle: Path, threads: int) -> dict[str, Callable]:
    """Every contender on this machine: PyTorch's configurations and every variant the bundle can run here."""
    from headreg.export.bf16 import bf16_unavailable
    from headreg.export.openvino_int8 import int8_ov_unavailable
    from headreg.export.torch_bench import torch_model_runner
    from headreg.runtime.variants import cpu_flags
    from headreg.runtime import Predictor
    from headreg.runtime.backends import OpenVINOBackend, bf16_cpu, openvino_version
    from headreg.runtime.session import create_session

    eager = copy.deepcopy(model)
    eager.backbone.set_attn_implementation("eager")
    model.backbone.set_attn_implementation("sdpa")
    fused = bundle.parent / f"{bundle.name}.fused.onnx"
    engines = {"pytorch-sdpa": torch_model_runner(model), "pytorch-eager": torch_model_runner(eager)}
    if bf16_cpu(cpu_flags()):
        engines["pytorch-bf16"] = torch_model_runner(model, bf16=True)
    engines["ort-fp32"] = predictor_runner(Predictor(bundle, variant="fp32", threads=threads))
    engines["ort-fp32-fused"] = ort_runner(create_session(fused, threads=threads))
    engines["ort-int8"] = predictor_runner(Predictor(bundle, variant="int8", threads=threads))
    variants = json.loads((bundle / "headreg.json").read_text()).get("variants") or {}
    if "bf16" in variants and bf16_unavailable() is None:
        engines["ov-bf16"] = predictor_runner(Predictor(bundle, variant="bf16", threads=threads))
    if "int8-ov" in variants and int8_ov_unavailable() is None:
        engines["ov-int8"] = predictor_runner(Predictor(bundle, variant="int8-ov", threads=threads))
    if openvino_version() is not None:
        backend = OpenVINOBackend(bundle / "model.onnx", threads=threads, precision="fp32")
        engines["ov-fp32"] = lambda feed: backend.run(feed, ["logits"])["logits"]
    return engines


def default_variant(bundle: Path) -> tuple[str, str]:
    """(variant, why): what ``Predictor(bundle)`` serves on this machine."""
    from headreg.runtime import Predictor

    predictor = Predictor(bundle, threads=1)
    return predictor.variant, getattr(predictor, "variant_reason", "the manifest's default")
