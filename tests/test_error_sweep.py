"""A newcomer's mistakes and a crafted bundle: one line ``error: what; what to do``, exit 2 for usage errors,
never a traceback. The real ``headreg`` command in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import run_headreg
from test_runtime_predictor import tiny_bundle
from test_serve import crf_bundle

from headreg.errors import BundleError
from headreg.runtime import Predictor

# A runtime-only install: torch, transformers and onnx cannot be imported.
RUNTIME_ONLY = (
    "import sys\n"
    "for name in ('torch', 'transformers', 'onnx'):\n"
    "    sys.modules[name] = None\n"
    "from headreg.cli import main\n"
    "main()\n"
)


def runtime_only(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNTIME_ONLY, *args], capture_output=True, text=True, timeout=120)


def test_export_and_convert_on_a_runtime_only_install_say_which_extra_in_one_line(tmp_path):
    from headreg.testing import minilm_path

    exported = runtime_only("export", str(minilm_path()), "-o", str(tmp_path / "bundle"), "--head", "seq_cls",
                            "--num-labels", "2")
    assert exported.returncode == 2, exported.stderr
    assert exported.stderr.splitlines() == [
        "error: headreg export needs 'torch', which is not installed. Install it with: pip install 'headreg[export]'"
    ]
    source = tmp_path / "checkpoint"
    source.mkdir()
    (source / "pytorch_model.bin").write_bytes(b"not read")
    converted = runtime_only("convert", str(source), str(tmp_path / "converted"))
    assert converted.returncode == 2 and len(converted.stderr.splitlines()) == 1, converted.stderr
    assert "headreg convert needs 'torch'" in converted.stderr and "headreg[export]" in converted.stderr
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "converted").exists()


def test_an_unknown_variant_is_a_usage_error_for_serve_as_for_predict():
    bundle = str(tiny_bundle("seq_cls"))
    for command in (["serve", bundle, "--port", "0"], ["predict", bundle, "text"]):
        result = run_headreg(*command, "--variant", "int9", timeout=60)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: invalid value for '--variant': 'int9' is not one of 'auto', 'fp32'")


def test_an_empty_file_says_it_is_empty(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = run_headreg("predict", str(tiny_bundle("seq_cls")), "--file", str(empty))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: --file {empty} is empty (no lines of text); put one text per line in it, "
                                     "or give texts as arguments")


def test_verify_reports_a_token_head_named_over_a_sequence_graph_instead_of_crashing(tmp_path):
    crafted = tmp_path / "crafted"
    shutil.copytree(tiny_bundle("seq_cls"), crafted)
    manifest = json.loads((crafted / "headreg.json").read_text())
    manifest["head"] = json.loads((crf_bundle() / "headreg.json").read_text())["head"]
    (crafted / "headreg.json").write_text(json.dumps(manifest))
    for extra in ([], ["--json"]):
        result = run_headreg("verify", str(crafted), *extra)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert "head 'crf' is a token-level head (it reads logits with 3 dimensions) but the graph's 'logits' output " \
               "has 2" in result.stdout + result.stderr
    report = json.loads(run_headreg("verify", str(crafted), "--json").stdout)
    assert report["passed"] is False
    try:
        Predictor(crafted)
    except BundleError as exc:
        assert "token-level head" in str(exc)
    else:
        raise AssertionError("the Predictor loaded a token head over a sequence graph")


def test_predict_max_windows_sets_the_ceiling_on_ones_own_machine():
    bundle = str(tiny_bundle("seq_cls"))
    text = "word " * 25_000  # 263 windows of the tiny bundle's 128 tokens
    refused = run_headreg("predict", bundle, text, "--long-text", "window", "--json")
    assert refused.returncode == 2 and "at least 263 windows" in refused.stderr and "max_windows=256" in refused.stderr
    allowed = run_headreg("predict", bundle, text, "--long-text", "window", "--max-windows", "300", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)[0]["result"]["label"] in ("neg", "neu", "pos")
