"""headreg export / verify: the bundle, the real MiniLM through the CLI, sources, and every kind of bad input.

Real exports and real onnxruntime sessions throughout; tiny random backbones except for the MiniLM test.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO, run_headreg, write_plugin
from test_export_matrix import exported, tiny_model  # noqa: F401  (exported is a fixture)

from headreg.cli import cli
from headreg.errors import BundleError, VerificationError
from headreg.export import ExportOptions, export_onnx, verify_bundle
from headreg.export.verify import VerificationFailed
from headreg.manifest import read_manifest
from headreg.testing import load_tokenizer

# A plugin head that adds 1 to its logits only while being exported: its ONNX graph differs from PyTorch.
MISBEHAVING_PLUGIN = """
import torch
from headreg import hookimpl
from headreg.heads.seq_cls import SeqClsHead


class ExportDifferentHead(SeqClsHead):
    def forward(self, pooled_output, sequence_output, attention_mask):
        logits = super().forward(pooled_output, sequence_output, attention_mask)
        return logits + 1.0 if torch.compiler.is_exporting() else logits


@hookimpl
def register_heads(register):
    register(name="export_different", cls="misbehaving_plugin:ExportDifferentHead", task="sequence-classification")
"""


@pytest.mark.slow
def test_a_model_whose_rows_depend_on_their_batchmates_is_not_exported(tmp_path):
    """onnxruntime reproduces PyTorch exactly, but each row's logits depend on the rest of its batch: the export
    fails (nothing written) and says what to fix, rather than writing a bundle no variant of which can serve."""
    from headreg.heads.seq_cls import SeqClsHead
    from test_runtime_predictor import tiny_model as tiny_head_model

    class BatchStatisticsHead(SeqClsHead):
        def forward(self, pooled_output, sequence_output, attention_mask):
            logits = super().forward(pooled_output, sequence_output, attention_mask)
            return logits - logits.mean(0, keepdim=True)

    model = copy.deepcopy(tiny_head_model("seq_cls"))  # the cached model is shared by other tests
    model.head.__class__ = BatchStatisticsHead
    with pytest.raises(VerificationFailed) as failed:
        export_onnx(model, tmp_path / "bundle", tokenizer=load_tokenizer(),
                    options=ExportOptions(exporter="torchscript"))
    message = str(failed.value)
    assert "not batch-invariant" in message and "output logits moves by up to" in message
    assert all(case.passed for case in failed.value.report.cases)  # the engines agreed; invariance failed
    assert not (tmp_path / "bundle").exists()


def invoke(*args: str):
    """Run a headreg command in-process (the real click command; no subprocess import cost)."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def entries(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    """A tiny BERT backbone saved with transformers' save_pretrained, plus MiniLM's tokenizer."""
    from headreg.testing import tiny_backbone

    path = tmp_path_factory.mktemp("backbone") / "tiny-bert"
    tiny_backbone("bert", num_hidden_layers=1).save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path


# --- the bundle -------------------------------------------------------------------------------------------------


def test_bundle_has_the_documented_files_and_manifest(exported):
    bundle = exported("bert", "token_cls")
    assert entries(bundle.path) == {"model.onnx", "headreg.json", "tokenizer.json", "verification.json", "golden.npz"}
    manifest = read_manifest(bundle.path)
    for key in ("head", "postprocess_config", "num_labels", "id2label", "pooling", "backbone", "inputs", "outputs",
                "opset", "max_length", "padding_side", "tokenizer", "files", "variants", "verification", "source",
                "versions"):
        assert key in manifest, key
    assert manifest["head"] | {"config": None} == {
        "name": "token_cls", "plugin": "headreg", "plugin_version": manifest["headreg_version"],
        "task": "token-classification", "level": "token",
        "problem_type": "token_classification", "postprocess": "headreg.runtime.postprocess:token_cls", "config": None,
    }
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest["outputs"] == {"logits": ["batch", "sequence", 5], "pooled_output": ["batch", 32]}
    assert manifest["source"] == {"path": None, "kind": "python"}
    assert manifest["verification"]["passed"] and manifest["verification"]["cases"] >= 7
    assert list(manifest["variants"]) == ["fp32"], "no int8 unless asked for, and no timing-based 'default'"
    fp32 = manifest["variants"]["fp32"]
    assert fp32 | {"batch_invariance": None} == {"file": "model.onnx", "precision": "fp32", "backend": "onnxruntime",
                                                 "quantization": None, "optimized": False, "batch_invariance": None}
    invariance = fp32["batch_invariance"]
    recorded = json.loads((bundle.path / "verification.json").read_text())
    cases = recorded["case_results"]
    batched = [case for case in cases if case["shape"][0] > 1 or min(case["lengths"]) < case["shape"][1]]
    assert invariance["passed"] and invariance["max_abs_diff"] <= invariance["tolerance"]
    assert invariance["layouts"] == [case["name"] for case in batched]  # every batch verification ran
    assert invariance["checks"] == sum(case["shape"][0] for case in batched)  # every row of it, alone
    assert any(case["shape"][1] == manifest["max_length"] for case in batched)  # rows padded to max_length too
    assert not any("sentences" in case["name"] for case in recorded["production"]["cases"]), "the int8 corpus only with int8"

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundle.path / "tokenizer.json"))
    assert tokenizer.truncation is None and tokenizer.padding is None, "the runtime sets these from the manifest"
    pair = tokenizer.encode("Is it raining?", "No.")
    assert pair.type_ids[0] == 0 and pair.type_ids[-1] == 1, "pairs keep their token types"


# --- verification that fails ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_graph_that_differs_from_pytorch_fails_with_exit_1_and_no_bundle(tmp_path, plugin_site, backbone_dir):
    site = plugin_site(write_plugin(tmp_path / "src", "misbehaving-plugin", "misbehaving_plugin", MISBEHAVING_PLUGIN))
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    # dynamo: the exporter under which this head misbehaves (tests/test_first_hour.py covers --exporter auto)
    result = run_headreg("export", str(backbone_dir), "-o", str(out_parent / "bundle"), "--head", "export_different",
                         "--num-labels", "2", "--exporter", "dynamo", site=site, env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 1, result.stderr
    assert "onnxruntime disagrees with PyTorch" in result.stderr
    assert "logits" in result.stderr and "random b1 len1" in result.stderr, "the report lists the failing cases"
    assert "no bundle was written" in result.stderr
    assert entries(out_parent) == set(), "no bundle and no staging dir beside it"


def test_extra_outputs_and_an_int8_model_that_disagrees(tmp_path):
    """A CRF-like head with a constant ``transitions`` output, which fp32 reproduces; its int8 variant changes
    the entities of held-out texts: the export is refused and writes nothing."""
    import torch

    from headreg.heads.token_cls import TokenClsHead

    class TransitionsHead(TokenClsHead):
        def __init__(self, config, hidden_size):
            super().__init__(config, hidden_size)
            self.transitions = torch.nn.Parameter(torch.randn(config.num_labels, config.num_labels))

        def export_extras(self):
            return {"transitions": self.transitions}

    model = tiny_model("bert", "token_cls", seed=1)
    custom = TransitionsHead(model.head.config, 32)
    custom.classifier.load_state_dict(model.head.classifier.state_dict())
    model.head = custom
    steps = []
    with pytest.raises(VerificationError, match=r"int8 model does not match PyTorch closely enough on held-out texts"):
        export_onnx(model, tmp_path / "bundle", load_tokenizer(),
                    progress=lambda name, state, info: steps.append((name, state, info)),
                    options=ExportOptions(quantize="int8", min_agreement=0.9))
    verified = next(info for name, state, info in steps if name == "verify" and state == "done")
    assert verified["passed"], "fp32 (with the transitions output) verified"
    assert entries(tmp_path) == set()


@pytest.mark.slow
def test_verification_failure_in_the_api_carries_the_report(tmp_path):
    from headreg.heads.regression import RegressionHead

    class NaNWhenExported(RegressionHead):
        def forward(self, pooled_output, sequence_output, attention_mask):
            import torch

            values = super().forward(pooled_output, sequence_output, attention_mask)
            traced = torch.compiler.is_exporting() or torch.jit.is_tracing()  # under both exporters
            return values * float("nan") if traced else values

    model = tiny_model("distilbert", "regression")
    bad = NaNWhenExported(model.head.config, 32)
    bad.load_state_dict(model.head.state_dict())
    model.head = bad
    with pytest.raises(VerificationFailed) as failure:
        export_onnx(model, tmp_path / "bundle", load_tokenizer())
    report = failure.value.report
    assert not report.passed and all(not case.outputs["logits"].finite for case in report.cases)
    assert "onnxruntime produced NaN/Inf" in str(failure.value)
    assert not (tmp_path / "bundle").exists()
    # exporter="auto" tried TorchScript first and says so; the report is dynamo's, the last attempt
    assert any(note.startswith("tried first: torchscript exporter: its graph failed verification")
               for note in report.notes), report.notes


# --- headreg verify on changed bundles --------------------------------------------------------------------------


def test_verify_passes_on_an_intact_bundle_and_fails_on_a_tampered_model(exported, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(exported("bert", "token_cls").path, copy)
    result = invoke("verify", str(copy))
    assert result.exit_code == 0, result.output
    assert "cases passed" in result.output
    rows = read_manifest(copy)["variants"]["fp32"]["batch_invariance"]["checks"]
    assert f"batch invariance, max abs diff 0.0e+00 over {rows} rows alone vs in their batch (tolerance" in result.output
    assert "production cases (mixed-length batches, windows, pairs) against PyTorch's recorded rows: passes" in " ".join(result.output.split())

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(copy / "model.onnx"))
    weight = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
    onnx.save(model, str(copy / "model.onnx"))
    result = invoke("verify", str(copy))
    assert result.exit_code == 1
    assert "model.onnx was modified after export" in result.output
    assert "max abs diff" in result.output, "and the numbers no longer match"


def test_verify_fails_on_a_tampered_manifest(exported, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(exported("roberta", "multi_label").path, copy)
    manifest = json.loads((copy / "headreg.json").read_text())
    manifest["id2label"]["0"] = "renamed"
    (copy / "headreg.json").write_text(json.dumps(manifest))
    report = verify_bundle(copy)
    assert not report.passed
    assert any("headreg.json was modified after export" in problem for problem in report.problems)
    (copy / "golden.npz").unlink()
    with pytest.raises(BundleError, match="has no golden.npz"):
        verify_bundle(copy)


def test_verify_runs_on_a_runtime_only_install_and_reports_a_broken_int8_model(exported, tmp_path):
    """`headreg verify` needs neither torch, transformers nor onnx: production images re-check bundles too."""
    copy = tmp_path / "bundle"
    shutil.copytree(exported("bert", "seq_cls").path, copy)
    probe = (
        "import sys\n"
        "for name in ('torch', 'transformers', 'onnx'):\n"
        "    sys.modules[name] = None\n"
        "from headreg.cli import main\n"
        "main(['verify', sys.argv[1], '--json'])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(copy)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["passed"] is True

    manifest = json.loads((copy / "headreg.json").read_text())
    manifest["variants"]["int8"] = {"file": "model.int8.onnx", "decision_agreement": 1.0, "min_agreement": 0.95}
    (copy / "headreg.json").write_text(json.dumps(manifest))
    report = verify_bundle(copy)
    assert not report.passed
    assert any("cannot load model.int8.onnx" in problem for problem in report.problems)


def test_export_leaves_a_model_in_training_mode_in_training_mode(tmp_path):
    model = tiny_model("bert", "seq_cls").train()
    export_onnx(model, tmp_path / "bundle", load_tokenizer(), options=ExportOptions(exporter="torchscript"))
    assert model.training and model.backbone.training and model.head.training


# --- sources and usage errors -----------------------------------------------------------------------------------


def test_output_dir_that_is_not_empty_is_refused_untouched(tmp_path, backbone_dir):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("export", str(backbone_dir), "-o", str(out), "--head", "seq_cls", "--num-labels", "2")
    assert result.exit_code == 2
    assert "exists and is not empty" in result.output and "--overwrite" in result.output
    assert entries(out) == {"keep.txt"} and (out / "keep.txt").read_text() == "mine"


def test_missing_or_non_model_source_is_a_usage_error(tmp_path):
    result = invoke("export", str(tmp_path / "nope"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    result = invoke("export", str(tmp_path / "notes"), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and "not a model directory" in result.output
    assert not (tmp_path / "out").exists()


def test_backbone_without_head_and_unknown_head_are_usage_errors(tmp_path, backbone_dir, capsys):
    result = invoke("export", str(backbone_dir), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and "--head NAME --num-labels N" in result.output
    from headreg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(backbone_dir), "-o", str(tmp_path / "out"), "--head", "seq_clss", "--num-labels", "2"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "unknown head 'seq_clss'" in stderr and "seq_cls" in stderr
    assert not (tmp_path / "out").exists()


def test_transformers_checkpoint_with_a_task_head_exports_its_own_logits(tmp_path):
    import torch
    from transformers import BertForSequenceClassification

    from headreg.testing import tiny_config

    torch.manual_seed(0)
    hf = BertForSequenceClassification(tiny_config("bert", num_hidden_layers=1, num_labels=2,
                                                   id2label={0: "no", 1: "yes"})).eval()
    hf.save_pretrained(tmp_path / "checkpoint")
    load_tokenizer().save_pretrained(tmp_path / "checkpoint")
    # also the explicit choice of exporter (the default, auto, starts with torchscript too)
    result = invoke("export", str(tmp_path / "checkpoint"), "-o", str(tmp_path / "bundle"), "--json",
                    "--exporter", "torchscript")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["passed"] and summary["cases"] >= 7
    manifest = read_manifest(tmp_path / "bundle")
    assert manifest["source"] == {"path": str((tmp_path / "checkpoint").resolve()), "kind": "transformers"}
    assert manifest["id2label"] == {"0": "no", "1": "yes"}
    assert manifest["exporter"] == "torchscript" and manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    golden = np.load(tmp_path / "bundle" / "golden.npz")
    inputs = {k: torch.from_numpy(golden[f"5.input.{k}"]) for k in manifest["inputs"]}
    with torch.no_grad():
        assert np.allclose(hf(**inputs).logits.numpy(), golden["5.output.logits"], atol=1e-5)


@pytest.mark.slow
def test_saved_headreg_model_with_optimize_and_int8(tmp_path):
    model = tiny_model("bert", "seq_cls")
    model.save_pretrained(tmp_path / "saved", tokenizer=load_tokenizer())
    out = tmp_path / "bundle"
    result = invoke("export", str(tmp_path / "saved"), "-o", str(out), "--optimize", "--quantize", "int8",
                    "--min-agreement", "0.5")
    assert result.exit_code == 0, result.output
    for title in ("worst abs diff", "model.int8.onnx", "peak RSS", "held-out texts", "batch-invariant", "optimize: fused Attention 1"):
        assert title in result.stdout
    manifest = read_manifest(out)
    assert manifest["source"] == {"path": str((tmp_path / "saved").resolve()), "kind": "headreg"}
    record = json.loads((out / "verification.json").read_text())
    assert record["optimization"]["fused"] == {"Attention": 1, "BiasGelu": 1, "SkipLayerNormalization": 2}
    assert manifest["variants"]["fp32"]["optimized"] == record["optimization"]["accepted"]
    fused_invariance = record["optimization"]["batch_invariance"]  # the fused graph's own, measured before keeping it
    assert fused_invariance["passed"] and fused_invariance["checks"] >= 30
    if record["optimization"]["accepted"]:
        assert manifest["variants"]["fp32"]["batch_invariance"] == fused_invariance
    int8 = manifest["variants"]["int8"]
    assert int8["quantization"]["kind"] == "static" and int8["quantization"]["format"] == "qdq"
    assert int8["acceptance"]["passed"] and int8["acceptance"]["agreement"] >= 0.5
    assert int8["batch_invariance"]["passed"] and int8["batch_invariance"]["max_abs_diff"] <= 1e-5
    split = int8["acceptance"]["texts_split"]
    assert split["disjoint"] and split["calibration_rows"] + split["acceptance_rows"] <= split["texts"]
    assert record["variants"]["int8"]["acceptance"] == int8["acceptance"], "verification.json records every figure"
    assert manifest["files"].keys() == {"model.onnx", "model.int8.onnx"}
    assert "default" not in manifest["variants"], "the variant is chosen where the bundle runs, not at export"
    from headreg.runtime import Predictor
    from headreg.runtime.variants import select_variant

    serving = Predictor(out)
    assert (serving.variant, serving.variant_reason) == select_variant(manifest)
    assert "serves here: " + serving.variant in result.stdout
    assert Predictor(out, variant="fp32").variant == "fp32"
    assert Predictor(out, variant="int8").variant == "int8"
    rerun = invoke("verify", str(out))
    assert rerun.exit_code == 0, rerun.output
    assert "model.int8.onnx: decision agreement" in rerun.output
    golden = f"{int8['golden_agreement']:.1%}"  # the figure verify holds int8 to is shown at export too
    assert f"on the production cases {golden} identical results" in " ".join(result.stdout.split())
    assert f"(at export: {golden})" in " ".join(rerun.output.split())


@pytest.mark.slow
def test_real_minilm_backbone_with_a_fresh_head(tmp_path, minilm_path, capsys, monkeypatch):
    from headreg.cli import main

    monkeypatch.setenv("HEADREG_PROGRESS", "1")  # the step lines, although stderr is captured (not a terminal)

    out = tmp_path / "minilm"
    # --max-length 128 keeps the test quick; the default is 512, what the position table allows
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(minilm_path), "-o", str(out), "--head", "seq_cls", "--num-labels", "3", "--max-length", "128"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 0, captured.err
    assert "freshly initialised (untrained)" in captured.err
    for step in ("load", "tokenizer", "cases", "trace", "verify", "write bundle"):
        assert f"✓ {step}" in captured.err
    assert "worst abs diff" in captured.out
    manifest = read_manifest(out)
    assert manifest["max_length"] == 128 and manifest["backbone"]["hidden_size"] == 384
    assert manifest["source"] == {"path": str(minilm_path.resolve()), "kind": "backbone"}
    pooling = manifest["pooling"]
    assert (pooling["strategy"], pooling.get("normalize")) == ("mean", True), "the checkpoint's modules.json"
    assert all(diff["abs"] < 1e-4 for diff in manifest["verification"]["worst"].values())


# --- interrupted exports ----------------------------------------------------------------------------------------


def _start_export(backbone_dir: Path, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADREG_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "headreg.cli", "export", str(backbone_dir), "-o", str(out), "--head", "seq_cls",
         "--num-labels", "2", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if any((d / "tokenizer.json").exists() for d in out.parent.glob(f".{out.name}.*.incoming")):
            return process  # mid-export: the bundle is being built in its private staging dir beside ``out``
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"the export never started staging: {process.communicate()[1].decode()[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_an_interrupted_export_leaves_no_bundle(tmp_path, backbone_dir, sig):
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    process = _start_export(backbone_dir, out_parent / "bundle")
    staging = next(out_parent.glob(".bundle.*.incoming"))
    assert staging.stat().st_mode & 0o777 == 0o700, "staging is private to the exporting user"
    process.send_signal(sig)
    process.communicate(timeout=60)
    assert process.returncode != 0
    if sig == signal.SIGTERM:
        assert entries(out_parent) == set(), "SIGTERM cleans its staging dir; no bundle"
    else:
        assert entries(out_parent) == {staging.name}, "a SIGKILLed process cannot clean up: its hidden staging dir stays"
        from headreg.atomic import atomic_directory

        with atomic_directory(out_parent / "bundle", overwrite=False) as tmp:
            (tmp / "x").write_text("new")  # the next write to the same target removes dead processes' leftovers
        assert entries(out_parent) == {"bundle"}


@pytest.mark.parametrize("options, refused", [
    ({"min_agreement": 2}, "min_agreement must be a number in 0..1, got 2"),
    ({"atol": -1}, "atol must be a number >= 0"),
    ({"rtol": float("nan")}, "rtol must be a number >= 0, got nan"),
    ({"max_length": 0}, "max_length must be an integer >= 1"),
    ({"max_length": True}, "max_length must be an integer"),
    ({"opset": 5}, "opset must be an integer >= 14"),
    ({"near_tie": -1}, "near_tie must be a number in 0..1"),
    ({"bf16": "yes"}, "bf16 must be True or False"),
    ({"optimize": True, "bf16": True}, "optimize and bf16 do not go together"),
    ({"quantize": "int8", "calibration_texts": "texts.txt"}, "calibration_texts takes the texts themselves"),
])
def test_export_options_that_cannot_work_are_refused_when_built(options, refused):
    """What `headreg export`'s flags refuse, ExportOptions refuses before any work (optimize + bf16 used to fail
    only after the optimize step had run)."""
    from headreg.export.pipeline import ExportOptionError

    with pytest.raises(ExportOptionError, match=refused.replace("(", r"\(").replace(".", r"\.")):
        ExportOptions(**options)
    assert ExportOptions(opset=np.int64(17), max_length=np.int64(128), atol=0, min_agreement=1).max_length == 128


def test_export_onnx_names_what_options_must_be(tmp_path):
    from headreg.export.pipeline import ExportOptionError

    with pytest.raises(ExportOptionError, match=r"options must be an ExportOptions, got dict.*ExportOptions\(\*\*options\)"):
        export_onnx(object(), tmp_path / "b", None, {"quantize": "int8"})
    assert not (tmp_path / "b").exists()


def test_a_max_length_the_special_tokens_fill_is_refused_naming_the_smallest(tmp_path):
    """The tokenizer cannot cut a text below its special tokens: --max-length 2 traced 34-token rows into a graph
    built for 2 and failed with a raw traceback; a Predictor asked for it silently ran longer rows."""
    from headreg.export.pipeline import ExportOptionError
    from headreg.runtime import InputError, Predictor

    with pytest.raises(ExportOptionError, match=r"max_length=2 leaves no room.*2 special tokens; pass --max-length 3"):
        export_onnx(tiny_model("bert", "seq_cls"), tmp_path / "b", load_tokenizer(), ExportOptions(max_length=2))
    assert not (tmp_path / "b").exists()
    bundle = export_onnx(tiny_model("bert", "seq_cls"), tmp_path / "ok", load_tokenizer(), ExportOptions(max_length=3))
    assert Predictor(bundle.path).max_length == 3
    with pytest.raises(InputError, match="max_length=2 leaves no room"):
        Predictor(bundle.path, max_length=2)
