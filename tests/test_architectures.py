"""The architecture matrix: every text model type of the installed transformers, tiny and random, with a sequence
and a token head: attach -> export (verified) -> verify_bundle -> predict in truncate and window mode, labels equal
to PyTorch's argmax for each text alone (headreg/architectures.py; the table is docs/architectures.md).

A model type is either served or refused at export with an error that names it; anything else (a crash, a wrong
label, a refusal that does not say which architecture) fails. The whole matrix is slow (about 150 types, some
only through the dynamo exporter); the fast subset keeps one architecture per kind of fix.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from headreg import architectures as A

HEADS = tuple(A.HEAD_OPTIONS)
# Refused at export, with the reason in the error (docs/architectures.md says why each one is).
REFUSED = {
    "canine": "it reads code points, not token ids: no vocabulary for a tokenizer's ids",
    # the refusals the matrix found (docs/architectures.md): both exporters tried, the error names the type
    "cpmant": "TorchScript cannot export a bitwise OR on integers and dynamo's graph fails verification",
    "deepseek_v4": "onnxruntime disagrees with PyTorch on some verification cases",
    "ergo": "onnxruntime disagrees with PyTorch on some verification cases",
    "helium": "onnxruntime disagrees with PyTorch on some verification cases",
    "openai_privacy_filter": "the TorchScript graph is sized at the trace shape; dynamo's graph fails verification",
    "rwkv": "the TorchScript graph is sized at the trace shape; dynamo's graph fails verification",
    "mamba": "the TorchScript graph is sized at the trace shape; dynamo's graph fails verification",
    "falcon_mamba": "the TorchScript graph is sized at the trace shape; dynamo's graph fails verification",
    "olmo_hybrid": "aten::linalg_solve_triangular has no ONNX symbolic",
    "falcon_h1": "its Mamba-2 scan pads to the chunk size in Python: onnxruntime disagrees with PyTorch (both exporters)",
    "nemotron_h": "its Mamba-2 scan pads to the chunk size in Python: onnxruntime disagrees with PyTorch (both exporters)",
    "lara_mini": "aten::linalg_solve_triangular has no ONNX symbolic; dynamo's graph keeps the trace shape",
    "llama4_text": "its rotary embedding multiplies complex tensors (aten::polar): neither exporter converts it",
}
# One per kind of fix: an encoder, a position table offset (mpnet: 2), a model whose outputs depend on padding
# (batch_padding false), mixture-of-experts routing, a decoder (last-token pooling, left and right padding),
# Longformer's sliding window traced as a banded mask.
FAST = ("bert", "mpnet", "convbert", "qwen3_moe", "qwen2", "longformer")


@pytest.fixture(scope="module")
def tokenizer():
    from headreg.testing import load_tokenizer

    return load_tokenizer()


def check_round_trip(model_type: str, heads: tuple[str, ...], workdir, tokenizer) -> dict[str, A.Result]:
    probe = A.probe(model_type)
    results = A.round_trip_heads(model_type, heads, workdir, tokenizer=tokenizer) if probe.runs else {}
    if os.environ.get("HEADREG_MATRIX_RESULTS"):  # the rows docs/architectures.md's table is made from
        with open(os.environ["HEADREG_MATRIX_RESULTS"], "a") as out:
            out.writelines(json.dumps(row) + "\n" for row in A.result_rows(probe, results, heads))
    if not probe.runs:
        pytest.skip(f"{model_type}: the tiny config does not run in PyTorch ({probe.reason})")
    for head, result in results.items():
        if model_type in REFUSED:
            assert result.status == "refused", f"{model_type} is listed as refused but was {result.status}: {result.reason}"
            assert model_type in result.reason
        else:
            assert result.served, f"{model_type} {head}: {result.status}: {result.reason}"
    return results


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("model_type", FAST)
def test_fast_subset(model_type, head, tmp_path, tokenizer, single_torch_thread):
    """Each head alone, in its single-head bundle (the matrix runs both heads in one multi-head bundle)."""
    result = check_round_trip(model_type, (head,), tmp_path, tokenizer)[head]
    assert result.batch_padding == (model_type != "convbert")


def rotation(day: int, count: int = 2) -> list[str]:
    """The model types the default run adds to the fast subset on ``day`` (a date's ordinal): the next ``count``
    whose tiny config runs, walking the matrix's types (not FAST, not REFUSED) from a point that moves each day."""
    pool = [t for t in A.MODEL_TYPES if t not in FAST and t not in REFUSED]
    start = day * count % len(pool)
    return [t for t in pool[start:] + pool[:start] if A.probe(t).runs][:count]


# Not marked slow: the rotation belongs to the inner loop too (about 10 s for two TorchScript types; a day that
# picks a dynamo-only type takes up to about two minutes).
def test_matrix_rotation(tmp_path, tokenizer, single_torch_thread):
    """Two more of the matrix's types each day, both heads in one bundle, in the fast subset and the default run
    (the whole matrix is -m matrix). HEADREG_MATRIX_ROTATION=<day ordinal> reruns another day's pick."""
    import datetime

    day = int(os.environ.get("HEADREG_MATRIX_ROTATION") or datetime.date.today().toordinal())
    picked = rotation(day)
    print(f"HEADREG_MATRIX_ROTATION={day}: {picked}")  # shown with a failure, to rerun the same pick
    assert len(picked) == 2
    for model_type in picked:
        check_round_trip(model_type, HEADS, tmp_path / model_type, tokenizer)


# The whole matrix takes longer than the rest of the suite together (both heads in one multi-head bundle per
# model type; some only through the dynamo exporter, minutes each): `python -m pytest -m matrix
# tests/test_architectures.py` runs it, and `python -m benchmarks.architectures run` regenerates
# docs/architectures.md from the same round trips.
@pytest.mark.slow
@pytest.mark.matrix
@pytest.mark.parametrize("model_type", A.MODEL_TYPES)
def test_matrix(model_type, tmp_path, tokenizer, single_torch_thread):
    check_round_trip(model_type, HEADS, tmp_path, tokenizer)


@pytest.mark.slow
def test_candidates_cover_the_named_families():
    assert A.candidate_model_types() == A.MODEL_TYPES, "transformers changed: regenerate headreg.architectures.MODEL_TYPES"
    found = set(A.MODEL_TYPES)
    named = {"bert", "roberta", "deberta-v2", "modernbert", "gemma3_text", "qwen3", "qwen2", "llama", "gpt2", "gpt_neo",
             "cohere", "longformer", "convbert", "nystromformer", "yoso", "fnet", "mpnet", "ibert", "xmod",
             "mixtral", "qwen2_moe", "qwen3_moe"}
    assert named <= found, sorted(named - found)
    assert {"esm", "mpt"} <= found, "a sub-config that is part of a text model (ESM's folding trunk) keeps it"
    assert not found & {"bart", "t5", "mt5", "qwen3_5", "gemma3"}, "encoder-decoders and composites are not text backbones"


# --- the pieces the matrix needed -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type,expected,table_ends_there",
    [
        ("bert", 128, True),  # a plain table of 128 positions
        ("roberta", 127, True),  # positions start after the padding index (0 here): 128 rows - 1
        ("mpnet", 126, True),  # starts at 2 whatever the padding index
        ("ibert", 127, True),  # its table is a QuantEmbedding, not an nn.Embedding
        ("nystromformer", 128, True),  # 130 rows starting at 2
        ("opt", 128, True),  # a learned table with an offset of 2 (130 rows)
        ("llama", 128, False),  # rotary: no table, the declared limit
    ],
)
def test_position_limit_is_derived_from_how_the_model_builds_positions(model_type, expected, table_ends_there,
                                                                       single_torch_thread):
    import torch

    from headreg import attach_head
    from headreg.export.bundle import position_limit

    model = attach_head(A.tiny_backbone(model_type), "seq_cls", num_labels=2).eval()

    def run(length: int) -> None:
        ids = torch.full((1, length), 1000)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))

    assert position_limit(model) == expected
    run(expected)  # the limit itself runs
    if table_ends_there:  # and one more token overruns the table
        with pytest.raises((IndexError, RuntimeError)):  # RuntimeError: BERT's buffered token types end there too
            run(expected + 1)


def test_position_limit_without_a_declared_limit_is_none(single_torch_thread):
    from headreg import attach_head
    from headreg.export.bundle import position_limit

    assert position_limit(attach_head(A.tiny_backbone("xlnet"), "seq_cls", num_labels=2)) is None


def test_last_token_index_left_and_right_padding():
    import torch

    from headreg.pooling import last_token_index

    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 4, 0, 4]


def test_plan_batches_equal_lengths_never_pads():
    from headreg.runtime.batching import plan_batches

    lengths = [5, 100, 7, 90, 5, 7, 5, 0, 1]
    for plan in (plan_batches(lengths, 3, equal_lengths=True), plan_batches(lengths, 3, sort=False, equal_lengths=True),
                 plan_batches(lengths, 8, 12, equal_lengths=True)):
        assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
        assert all(len({max(lengths[i], 1) for i in batch}) == 1 for batch in plan), plan
        assert all(len(batch) <= 8 for batch in plan)
    assert plan_batches(lengths, 3, equal_lengths=True)[:2] == [[7, 8], [0, 4, 6]]


def test_equal_length_cases_keep_every_row_unpadded():
    from headreg.export.cases import equal_length_cases, random_case

    rng = np.random.default_rng(0)
    for side in ("left", "right"):
        case = random_case("mixed", [5, 3, 5, 1], 6, input_names=("input_ids", "attention_mask"), vocab_size=3000,
                           pad_id=0, padding_side=side, rng=rng)
        split = equal_length_cases([case])
        assert [c.mask.shape for c in split] == [(1, 1), (1, 3), (2, 5)]
        assert all(c.mask.all() for c in split)
        rows = {tuple(row) for c in split for row in c.inputs["input_ids"]}
        real = {tuple(ids[m.astype(bool)]) for ids, m in zip(case.inputs["input_ids"], case.mask)}
        assert rows == real


def test_padding_dependent_model_is_served_without_padding(tmp_path, tokenizer, single_torch_thread):
    """convbert's outputs change with padding in PyTorch itself: the bundle says so, verification ran equal-length
    batches only, and the Predictor never pads a row, so a text's result is the same whatever shares its batch."""
    import json

    import torch

    from headreg import attach_head
    from headreg.export import export_onnx, verify_bundle
    from headreg.runtime import Predictor

    torch.manual_seed(0)
    model = attach_head(A.tiny_backbone("convbert"), "seq_cls", num_labels=3).eval()
    bundle = export_onnx(model, tmp_path / "b", tokenizer, progress=False)
    assert bundle.manifest["batch_padding"] is False
    record = json.loads((tmp_path / "b" / "verification.json").read_text())["batch_padding"]
    assert record["allowed"] is False and "convbert" in record["reason"]
    assert record["pytorch"]["max_abs_diff"] > 1e-4  # PyTorch itself moves: the model's property
    cases = json.loads((tmp_path / "b" / "verification.json").read_text())["case_results"]
    assert all(len(set(case["lengths"])) == 1 and case["shape"][1] == case["lengths"][0] for case in cases)
    assert verify_bundle(tmp_path / "b").passed

    predictor = Predictor(tmp_path / "b")
    texts = list(A.TEXTS[:5]) * 2
    masks = []
    backend = predictor.engine.backend

    class Recording:  # the real backend, keeping each batch's attention mask as predict hands it over
        def run(self, feed, names):
            masks.append(feed["attention_mask"])
            return backend.run(feed, names)

    predictor.engine.backend = Recording()
    together = predictor.embed(texts)
    assert masks and all(mask.all() for mask in masks)  # no batch holds a padded row
    assert any(len(mask) > 1 for mask in masks)  # rows of equal length still share batches
    alone = np.stack([predictor.embed([text])[0] for text in texts])
    assert np.abs(together - alone).max() <= 1e-5


def test_padding_dependent_model_refuses_int8_with_a_reason(tmp_path, tokenizer, single_torch_thread):
    import torch

    from headreg import attach_head
    from headreg.export import ExportOptions, export_onnx
    from headreg.export.pipeline import ExportOptionError

    torch.manual_seed(0)
    model = attach_head(A.tiny_backbone("convbert"), "seq_cls", num_labels=3).eval()
    with pytest.raises(ExportOptionError, match="convbert.*padding.*without --quantize"):
        export_onnx(model, tmp_path / "b", tokenizer, progress=False, options=ExportOptions(quantize="int8"))
    assert not (tmp_path / "b").exists()


def test_torchscript_symbolics_for_ops_backbones_use(tmp_path):
    """expm1 (Apertus' xIELU) and rms_norm (DiffLlama) have no TorchScript ONNX symbolic of torch's own."""
    import onnxruntime
    import torch

    from headreg.export.trace import _torchscript_symbolics

    class Ops(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, 8))

        def forward(self, x):
            return torch.expm1(x) + torch.rms_norm(x, (8,), self.weight, 1e-6)

    x = torch.randn(2, 3, 8)
    with _torchscript_symbolics(17):
        torch.onnx.export(Ops(), (x,), str(tmp_path / "ops.onnx"), input_names=["x"], dynamo=False, opset_version=17,
                          dynamic_axes={"x": {0: "batch", 1: "sequence"}})
    session = onnxruntime.InferenceSession(str(tmp_path / "ops.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 5, 8)
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        assert np.abs(got - Ops()(x).numpy()).max() <= 1e-5


def test_a_model_without_a_token_vocabulary_is_refused_by_name(tmp_path, tokenizer, single_torch_thread):
    from headreg import attach_head
    from headreg.export import export_onnx
    from headreg.export.pipeline import ExportOptionError

    model = attach_head(A.tiny_backbone("canine"), "seq_cls", num_labels=2).eval()
    with pytest.raises(ExportOptionError, match=r"canine \(CanineModel\) has no token vocabulary"):
        export_onnx(model, tmp_path / "b", tokenizer, progress=False)
    assert not (tmp_path / "b").exists()


def test_longformer_sliding_window_is_traced_for_every_length(tmp_path, tokenizer, single_torch_thread):
    """Longformer pads to its window and reshapes by the padded length in Python; the export traces its local
    attention as a banded mask instead, so one graph serves lengths below, at and across the window (8 here), in
    one padded batch, as PyTorch gives each row alone; the model itself is left unpatched."""
    import onnxruntime
    import torch

    from headreg import attach_head
    from headreg.export import export_onnx

    torch.manual_seed(0)
    model = attach_head(A.tiny_backbone("longformer"), "token_cls", num_labels=3).eval()
    bundle = export_onnx(model, tmp_path / "b", tokenizer, progress=False)
    assert bundle.manifest["exporter"] == "torchscript"
    assert not any("forward" in vars(m) for m in model.modules()), "the trace-time attention is not left behind"
    session = onnxruntime.InferenceSession(str(tmp_path / "b" / "model.onnx"), providers=["CPUExecutionProvider"])
    lengths, width = [1, 5, 8, 9, 31], 31
    ids = torch.randint(1000, 2000, (len(lengths), width))
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    types = torch.zeros_like(ids)
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
    logits = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))["logits"]
    for row, n in enumerate(lengths):
        one = slice(row, row + 1), slice(0, n)
        with torch.no_grad():
            alone = model(input_ids=ids[one], attention_mask=mask[one], token_type_ids=types[one]).logits[0].numpy()
        assert np.abs(logits[row, :n] - alone).max() <= 1e-4, (n, np.abs(logits[row, :n] - alone).max())
