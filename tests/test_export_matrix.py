"""Export + verify across architectures and heads: tiny random backbones, real onnxruntime sessions.

Each architecture is exported once, the built-in heads rotated over them so every head runs on at least
two architectures (the decoder with last-token pooling and left padding). HEADREG_FULL_MATRIX=1 runs
every architecture with every head (32 exports; several minutes on a small machine).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from headreg.export import verify_bundle
from headreg.export.trace import graph_signature
from headreg.manifest import MODEL_DATA_FILE, read_manifest

HEAD_OPTIONS = {
    "seq_cls": {"num_labels": 3, "id2label": {0: "neg", 1: "neu", 2: "pos"}},
    "multi_label": {"num_labels": 4},
    "regression": {"num_labels": 1},
    "token_cls": {"num_labels": 5},
}
_BUNDLES: dict[tuple[str, str], object] = {}


def tiny_model(arch: str, head: str, seed: int = 0):
    """A tiny random ``arch`` backbone with ``head`` (seeded: the same weights every run).

    One layer (tracing time grows with depth), except ModernBERT, whose second layer is its local
    (sliding-window) attention.
    """
    import torch

    from headreg import attach_head
    from headreg.testing import tiny_backbone

    layers = {"distilbert": {"n_layers": 1}, "modernbert": {}}.get(arch, {"num_hidden_layers": 1})
    backbone = tiny_backbone(arch, seed=seed, **layers)
    torch.manual_seed(seed)
    return attach_head(backbone, head, **HEAD_OPTIONS[head]).eval()


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(arch, head)``: that tiny model's bundle, exported once per session; treat it as read-only."""
    from headreg.export import export_onnx
    from headreg.testing import load_tokenizer

    root: Path = tmp_path_factory.mktemp("bundles")

    def get(arch: str, head: str):
        if (arch, head) not in _BUNDLES:
            _BUNDLES[arch, head] = export_onnx(tiny_model(arch, head), root / f"{arch}-{head}", load_tokenizer())
        return _BUNDLES[arch, head]

    return get


ROTATION = [
    ("bert", "token_cls"),
    ("roberta", "multi_label"),
    ("distilbert", "regression"),
    ("electra", "seq_cls"),
    ("deberta-v2", "token_cls"),
    ("xlm-roberta", "regression"),
    ("modernbert", "multi_label"),
    ("llama", "seq_cls"),
]
ARCHS = [arch for arch, _ in ROTATION]
# pooling="auto" per architecture: (strategy, projection, activation) of transformers' own
# *ForSequenceClassification. Token heads pool the first token (decoders: the last real one), unprojected.
AUTO_POOLING = {
    "bert": ("pooler", False, None),
    "roberta": ("cls", True, "tanh"),
    "distilbert": ("cls", True, "relu"),
    "electra": ("cls", True, "gelu"),
    "deberta-v2": ("cls", True, "gelu"),
    "xlm-roberta": ("cls", True, "tanh"),
    "modernbert": ("cls", True, "gelu"),
    "llama": ("last", False, None),
}
MATRIX = list(itertools.product(ARCHS, HEAD_OPTIONS)) if os.environ.get("HEADREG_FULL_MATRIX") else ROTATION


@pytest.mark.parametrize("arch,head", MATRIX, ids=[f"{a}-{h}" for a, h in MATRIX])
def test_export_verifies_and_bundle_reverifies(exported, arch, head):
    bundle = exported(arch, head)
    report = bundle.report
    assert report.passed, report.message()
    worst = report.worst()
    assert set(worst) == {"logits", "pooled_output"}
    assert all(diff["abs"] <= 1e-4 for diff in worst.values())

    manifest = read_manifest(bundle.path)
    decoder = arch == "llama"
    token = head == "token_cls"
    assert manifest["head"]["name"] == head
    assert manifest["padding_side"] == ("left" if decoder else "right")
    pooling = manifest["pooling"]
    expected = AUTO_POOLING[arch] if not token else ("last" if decoder else "cls", False, None)
    assert (pooling["strategy"], pooling["projection"], pooling["activation"]) == expected
    assert manifest["max_length"] == 128  # every tiny config's position table (RoBERTa: 130 - pad 1 - 1)

    inputs, outputs, opset = graph_signature(bundle.path / "model.onnx")
    assert all(dims[:2] == ["batch", "sequence"] for dims in inputs.values())
    assert outputs["logits"][: 2 if token else 1] == (["batch", "sequence"] if token else ["batch"])
    assert outputs["pooled_output"] == ["batch", 32]
    assert ("token_type_ids" in inputs) == (arch in ("bert", "electra"))
    assert manifest["opset"] == opset and not (bundle.path / MODEL_DATA_FILE).exists()

    recorded = json.loads((bundle.path / "verification.json").read_text())
    cases = recorded["case_results"]
    sides = {case["padding_side"] for case in cases}
    assert sides == {"left" if decoder else "right"}
    shapes = [tuple(case["shape"]) for case in cases]
    assert (1, 1) in shapes and (1, 128) in shapes and any(b >= 3 for b, _ in shapes)
    assert any(s % 2 for _, s in shapes), "an odd length"
    assert any(len(set(case["lengths"])) > 1 for case in cases), "different padding per row in one batch"
    assert any(case["kind"] == "pair" for case in cases) == ("token_type_ids" in inputs)
    production = recorded["production"]["cases"]
    assert all(case["passed"] for case in production)
    for case in production:  # every input's result as PyTorch's, counted by each head's runtime postprocess
        counts = case["agreement"][""]
        assert counts["same"] == counts["of"] > 0
        assert counts["by"] == ("pooled_output" if head == "regression" else "results")
        assert case["decisions_equal"] == f"{case['inputs']}/{case['inputs']}"

    rerun = verify_bundle(bundle.path)
    assert rerun.passed, rerun.message()
    assert rerun.worst()["logits"]["abs"] == pytest.approx(worst["logits"]["abs"], abs=1e-6)


def test_decoder_pools_the_last_real_token_with_left_padding(exported):
    bundle = exported("llama", "seq_cls")
    golden = np.load(bundle.path / "golden.npz")
    recorded = json.loads((bundle.path / "verification.json").read_text())
    cases = recorded["case_results"]
    index = next(i for i, case in enumerate(cases) if case["kind"] == "text" and len(set(case["lengths"])) > 1)
    mask = golden[f"{index}.input.attention_mask"]
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any(), "left padded: every row ends with a real token"
