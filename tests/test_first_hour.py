"""What a new user meets first: fast answers to mistakes, one error style, progress on a terminal, readable
verification, .bin checkpoints, JSON in label order, help, a shadowing checkout, the exporter fallback.

Real commands in subprocesses (stderr on a real pseudo-terminal where progress matters), real tiny exports.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import REPO, run_headreg, write_plugin
from test_runtime_predictor import tiny_bundle, tiny_model

from headreg.testing import load_tokenizer


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADREG_")}
    return {**env, "TERM": "xterm", "COLUMNS": "100", **extra}


def run_on_terminal(*args: str, timeout: float = 300) -> tuple[int, str, str]:
    """``headreg ARGS`` with stderr on a pseudo-terminal, as in an interactive shell; (code, stdout, stderr)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "headreg.cli", *args], stdout=subprocess.PIPE,
                               stderr=follower, stdin=subprocess.DEVNULL, env=_env())
    os.close(follower)
    stdout: list[bytes] = []
    reader = threading.Thread(target=lambda: stdout.append(process.stdout.read()))
    reader.start()
    terminal = bytearray()
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    code = process.wait(timeout=timeout)
    reader.join(timeout)
    os.close(leader)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.decode(errors="replace"))  # colours, cursor moves
    return code, b"".join(stdout).decode(), plain


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "model"
    tiny_model("seq_cls").save_pretrained(path, tokenizer=load_tokenizer())
    return path


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    from headreg.testing import tiny_backbone

    path = tmp_path_factory.mktemp("backbone") / "tiny-bert"
    tiny_backbone("bert", num_hidden_layers=1).save_pretrained(path)
    load_tokenizer().save_pretrained(path)
    return path


# --- 1. mistakes are answered before torch is imported ------------------------------------------------------------

PROBE = """
import sys
from headreg.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    print(f"exit {exc.code}; torch imported: {'torch' in sys.modules}", file=sys.stderr)
"""


@pytest.mark.parametrize("args,message", [
    (["{missing}", "-o", "{out}"], "does not exist"),
    (["{backbone}/config.json", "-o", "{out}"], "is a file; pass a model directory"),
    (["{backbone}", "-o", "{out}"], "pass --head NAME --num-labels N"),
    (["{backbone}", "-o", "{out}", "--head", "seq_clf", "--num-labels", "2"], "did you mean 'seq_cls'?"),
    (["{backbone}", "-o", "{out}", "--head", "seq_cls"], "--head seq_cls needs --num-labels N"),
    (["{backbone}", "-o", "{out}", "--num-labels", "2"], "--num-labels needs --head NAME"),
], ids=["missing", "file", "no-head", "typo", "head-without-num-labels", "num-labels-without-head"])
def test_export_mistakes_exit_2_before_torch_is_imported(tmp_path, backbone_dir, args, message):
    values = {"missing": str(tmp_path / "nope"), "backbone": str(backbone_dir), "out": str(tmp_path / "out")}
    done = subprocess.run([sys.executable, "-c", PROBE, "export", *[a.format(**values) for a in args]],
                          capture_output=True, text=True, env=_env(), timeout=120)
    first, last = done.stderr.splitlines()[0], done.stderr.splitlines()[-1]
    assert first.startswith("error: ") and message in first, done.stderr
    assert last == "exit 2; torch imported: False"
    assert not (tmp_path / "out").exists()


# --- 5. one error style, exit 2 for usage and not-a-bundle, 1 for failures ----------------------------------------


def test_click_usage_errors_have_the_headreg_style():
    for args, needle in [(["predict", "--bogus"], "no such option '--bogus'; see 'headreg predict --help'"),
                         (["nope"], "no such command 'nope'; see 'headreg --help'"),
                         (["predict", "/no/such/bundle", "hi"], "does not exist; see 'headreg predict --help'")]:
        result = run_headreg(*args)
        assert result.returncode == 2
        assert result.stderr == f"error: {result.stderr[len('error: '):]}" and needle in result.stderr
        assert "Usage:" not in result.stderr and "Error:" not in result.stderr


def test_verify_of_a_folder_that_is_not_a_bundle_exits_2(tmp_path, saved_model):
    result = run_headreg("verify", str(tmp_path))
    assert result.returncode == 2 and "is not a headreg bundle" in result.stderr
    saved = run_headreg("verify", str(saved_model))
    assert saved.returncode == 2 and "is a saved headreg model, not a bundle: run headreg export" in saved.stderr


# --- 2. progress on a terminal, never under --json or in a pipe -----------------------------------------------------


@pytest.mark.slow
def test_export_shows_its_steps_on_a_terminal_and_not_under_json(tmp_path, saved_model):
    code, stdout, terminal = run_on_terminal("export", str(saved_model), "-o", str(tmp_path / "a"))
    assert code == 0, terminal
    for step in ("load", "tokenizer", "cases", "trace", "verify", "write bundle"):
        assert f"✓ {step}" in terminal
    code, stdout, terminal = run_on_terminal("export", str(saved_model), "-o", str(tmp_path / "b"), "--json")
    assert code == 0 and json.loads(stdout)["passed"] is True
    assert "✓" not in terminal and "trace" not in terminal
    # exporter "auto" took TorchScript, which verified; the CLI's own load step leads the steps
    assert json.loads((tmp_path / "b" / "headreg.json").read_text())["exporter"] == "torchscript"
    assert [step["name"] for step in json.loads(stdout)["steps"]][:2] == ["load", "tokenizer"]


def test_bench_on_a_corpus_shows_progress_on_a_terminal_and_not_under_json(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["short", "a longer line " * 8] * 4) + "\n")
    args = ("bench", str(tiny_bundle("seq_cls")), "--texts", str(corpus), "--passes", "2", "--threads", "1")
    code, stdout, terminal = run_on_terminal(*args)
    assert code == 0, terminal
    assert "benchmarking 2 engine(s) on 8 rows" in terminal and "6/6" in terminal  # (1 warm-up + 2) x 2 engines
    code, stdout, terminal = run_on_terminal(*args, "--json")
    assert code == 0 and json.loads(stdout)["engines"]
    assert terminal.strip() == ""


def test_export_onnx_from_python_is_silent_unless_asked(tmp_path, capfd):
    from headreg.export import export_onnx

    export_onnx(tiny_model("seq_cls"), tmp_path / "quiet", tokenizer=load_tokenizer())
    assert capfd.readouterr().err == ""
    seen = []
    export_onnx(tiny_model("seq_cls"), tmp_path / "told", tokenizer=load_tokenizer(),
                progress=lambda name, state, info: seen.append((name, state)))
    assert ("trace", "done") in seen and ("verify", "done") in seen


# --- 4. verification output reads right -----------------------------------------------------------------------------


@pytest.mark.slow
def test_verify_shows_the_rule_the_bound_ratio_and_the_int8_threshold(tmp_path, saved_model):
    from headreg.export import ExportOptions, export_onnx
    from headreg.export import verify_bundle

    bundle = tmp_path / "bundle"
    export_onnx(tiny_model("seq_cls"), bundle, tokenizer=load_tokenizer(),
                options=ExportOptions(quantize="int8", min_agreement=0.5))
    report = verify_bundle(bundle)
    for name, worst in report.worst().items():
        assert 0 <= worst["bound_ratio"] <= 1, name  # passed, so every element within the bound
    result = run_headreg("verify", str(bundle))
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "|onnxruntime - PyTorch| <= atol + rtol * |PyTorch|" in text and "logits / allowed" in text
    assert re.search(r"model\.int8\.onnx: decision agreement [\d.]+% on the production cases, required >= [\d.]+% "
                     r"\(at export: [\d.]+%\): passes", text), text


def test_verify_without_torch_checks_what_a_full_install_checks(tmp_path):
    probe = textwrap.dedent("""
        import sys
        for name in ("torch", "transformers", "onnx"):
            sys.modules[name] = None
        from headreg.cli import main
        main(["verify", sys.argv[1]])
    """)
    done = subprocess.run([sys.executable, "-c", probe, str(tiny_bundle("seq_cls"))], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    # the same checks as a full install: the results are read by the runtime postprocess, which needs no torch
    assert "cases passed" in text and "rows alone vs in their batch" in text
    assert "production cases (mixed-length batches, windows, pairs) against PyTorch's recorded rows: passes" in text
    assert "torch" not in text and "No module named" not in text and "error" not in done.stderr


# --- 6. checkpoints with pytorch_model.bin ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bin_checkpoint(tmp_path_factory) -> Path:
    """A transformers task checkpoint in the older format: weights only as pytorch_model.bin."""
    import torch
    from transformers import BertForSequenceClassification

    from headreg.testing import tiny_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bin") / "checkpoint"
    model = BertForSequenceClassification(tiny_config("bert", num_hidden_layers=1, num_labels=2)).eval()
    model.save_pretrained(path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    load_tokenizer().save_pretrained(path)
    return path


@pytest.mark.slow
def test_a_bin_checkpoint_is_refused_with_the_way_forward_then_loaded_on_request(tmp_path, bin_checkpoint):
    refused = run_headreg("export", str(bin_checkpoint), "-o", str(tmp_path / "refused"))
    assert refused.returncode == 2
    assert "pytorch_model.bin, a pickle" in refused.stderr and "--allow-bin" in refused.stderr
    assert "headreg convert" in refused.stderr and not (tmp_path / "refused").exists()

    allowed = run_headreg("export", str(bin_checkpoint), "-o", str(tmp_path / "allowed"), "--allow-bin", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert "torch.load(weights_only=True)" in allowed.stderr and json.loads(allowed.stdout)["passed"]


@pytest.mark.slow
def test_convert_writes_safetensors_that_export_takes_without_unpickling(tmp_path, bin_checkpoint):
    converted = tmp_path / "converted"
    done = run_headreg("convert", str(bin_checkpoint), str(converted))
    assert done.returncode == 0, done.stderr
    assert (converted / "model.safetensors").is_file() and not (converted / "pytorch_model.bin").exists()
    assert (converted / "tokenizer.json").is_file() and (converted / "config.json").is_file()
    exported = run_headreg("export", str(converted), "-o", str(tmp_path / "bundle"), "--json")
    assert exported.returncode == 0, exported.stderr
    assert "weights_only" not in exported.stderr


# --- 7. JSON scores in label-id order -------------------------------------------------------------------------------


def test_predict_json_lists_scores_in_label_id_order(tmp_path):
    from headreg import attach_head
    from headreg.export import ExportOptions, export_onnx
    from headreg.testing import tiny_backbone

    model = attach_head(tiny_backbone("bert", num_hidden_layers=1), "seq_cls", num_labels=12).eval()
    export_onnx(model, tmp_path / "bundle", tokenizer=load_tokenizer(), options=ExportOptions(exporter="torchscript"))
    result = run_headreg("predict", str(tmp_path / "bundle"), "hello", "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)[0]["result"]["scores"]
    assert list(scores) == [f"LABEL_{i}" for i in range(12)]  # not LABEL_0, LABEL_1, LABEL_10, ...
    manifest = json.loads((tmp_path / "bundle" / "headreg.json").read_text())
    assert list(manifest["id2label"]) == [str(i) for i in range(12)]


# --- 8. help and narrow terminals -------------------------------------------------------------------------------------


def test_every_option_has_help_and_every_command_examples():
    from click.testing import CliRunner

    from headreg.cli import cli

    for name, command in cli.commands.items():
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, f"headreg {name} {param.opts[0]} has no help"
        page = CliRunner().invoke(cli, [name, "--help"], env={"COLUMNS": "80"}).output
        assert "Example" in page, f"headreg {name} --help has no examples"
    top = CliRunner().invoke(cli, ["--help"], env={"COLUMNS": "80"}).output
    summaries = top.split("Commands:")[1].split("Examples:")[0]
    assert "..." not in summaries and all(len(line) <= 80 for line in top.splitlines())


def test_heads_at_80_columns_breaks_no_word():
    from headreg.installed import list_heads

    result = run_headreg("heads", env={"COLUMNS": "80"})
    assert result.returncode == 0
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    flowing = " ".join(result.stdout.split())  # line breaks and indents as spaces: a broken word would not match
    for spec in list_heads():
        for text in (spec.name, spec.task, spec.plugin, " ".join(spec.description.split())):
            assert text in flowing, text


# --- 9. a checkout named headreg in the working directory -------------------------------------------------------------


@pytest.mark.slow
def test_a_folder_named_headreg_beside_a_script_does_not_shadow_the_package(tmp_path):
    """A checkout named headreg, with a script run from its parent: Python sees a folder ``headreg/`` without
    ``__init__.py`` first. The install puts the package's directory on sys.path (no import hook), so the real
    package wins over that namespace folder; the README's one-line check says which one Python found."""
    import headreg

    (tmp_path / "headreg").mkdir()
    (tmp_path / "train.py").write_text("import headreg\nfrom headreg import attach_head\nprint(headreg.__file__)\n")
    env = _env(PYTHONPATH="")
    ran = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == headreg.__file__
    readme = (REPO / "README.md").read_text()
    check = next(line.strip() for line in readme.splitlines() if line.strip().startswith("python -c") and "__path__" in line)
    shown = subprocess.run(check, shell=True, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert shown.stdout.split() == [headreg.__file__] and "namespace" not in shown.stdout


# --- 10. exporter=auto: TorchScript first, dynamo when its graph does not verify -----------------------------------

TRACING_PLUGIN = """
import torch
from headreg import hookimpl
from headreg.heads.seq_cls import SeqClsHead


class TracedDifferentHead(SeqClsHead):
    def forward(self, pooled_output, sequence_output, attention_mask):
        logits = super().forward(pooled_output, sequence_output, attention_mask)
        return logits + 1.0 if torch.jit.is_tracing() else logits


@hookimpl
def register_heads(register):
    register(name="traced_different", cls="tracing_plugin:TracedDifferentHead", task="sequence-classification")
"""


@pytest.mark.slow
def test_auto_falls_back_to_dynamo_when_the_torchscript_graph_does_not_verify(tmp_path, plugin_site, backbone_dir):
    site = plugin_site(write_plugin(tmp_path / "src", "tracing-plugin", "tracing_plugin", TRACING_PLUGIN))
    result = run_headreg("export", str(backbone_dir), "-o", str(tmp_path / "bundle"), "--head", "traced_different",
                         "--num-labels", "2", "--json", site=site)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [step["name"] for step in summary["steps"]].count("trace") == 2
    manifest = json.loads((tmp_path / "bundle" / "headreg.json").read_text())
    assert manifest["exporter"] == "dynamo"
    notes = json.loads((tmp_path / "bundle" / "verification.json").read_text())["notes"]
    assert any("torchscript exporter: its graph failed verification" in note for note in notes)
