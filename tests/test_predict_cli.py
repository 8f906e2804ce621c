"""``headreg predict`` and ``headreg bench``, run as the real command in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner
from conftest import run_headreg
from test_runtime_predictor import tiny_bundle, tiny_model

from headreg.cli import cli
from headreg.runtime import Predictor


def bench(*args: str):
    """``headreg bench`` in this process (torch is already imported here; a subprocess would import it again)."""
    return CliRunner().invoke(cli, ["bench", str(tiny_bundle("seq_cls")), *args])


def test_predict_prints_a_table_of_labels_and_scores():
    result = run_headreg("predict", str(tiny_bundle("seq_cls")), "I loved it", "Terrible service.")
    assert result.returncode == 0, result.stderr
    expected = Predictor(tiny_bundle("seq_cls")).predict(["I loved it", "Terrible service."])
    assert "seq_cls" in result.stdout and "Terrible service." in result.stdout
    for row in expected:
        assert row["label"] in result.stdout and f"{row['score']:.4f}" in result.stdout


def test_predict_reads_jsonl_pairs_and_prints_json_only(tmp_path):
    records = [{"text": "A man plays guitar.", "text_pair": "Someone makes music."}, {"text": "just one"}]
    path = tmp_path / "inputs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    result = run_headreg("predict", str(tiny_bundle("multi_label")), "--file", str(path), "--json", "--batch-size", "1")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["text"] for row in rows] == ["A man plays guitar.", "just one"]
    assert rows[0]["text_pair"] == "Someone makes music." and "text_pair" not in rows[1]
    expected = Predictor(tiny_bundle("multi_label")).predict([("A man plays guitar.", "Someone makes music."), "just one"])
    assert [row["result"]["labels"] for row in rows] == [r["labels"] for r in expected]


def test_predict_reads_one_text_per_line_and_shows_entities(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("Angela Merkel visited Paris.\n\nBerlin\n")
    result = run_headreg("predict", str(tiny_bundle("token_cls")), "--file", str(path), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [row["text"] for row in rows] == ["Angela Merkel visited Paris.", "", "Berlin"]
    assert rows[1]["result"] == {"entities": [], "tokens": []}
    table = run_headreg("predict", str(tiny_bundle("token_cls")), "--file", str(path))
    entities = rows[0]["result"]["entities"]
    assert entities and f"{entities[0]['word']} [{entities[0]['label']}]" in table.stdout


@pytest.mark.slow
def test_predict_takes_the_heads_per_call_options(tmp_path):
    """--option NAME=VALUE reaches Predictor.predict (JSON values, or plain strings), checked the same way; a
    per-call option typed as a flag of its own is pointed at --option."""
    bundle = str(tiny_bundle("token_cls"))
    text = "Angela Merkel visited Paris."
    result = run_headreg("predict", bundle, text, "--json", "--option", "aggregation=max",
                         "--option", 'ignore_labels=["PER"]')
    assert result.returncode == 0, result.stderr
    expected = Predictor(bundle).predict([text], aggregation="max", ignore_labels=["PER"])
    assert [row["result"] for row in json.loads(result.stdout)] == expected
    assert all(entity["label"] != "PER" for entity in expected[0]["entities"])
    for args, message in [
        (("--option", "aggregation=best"), "error: aggregation must be one of none, simple, first, average, max"),
        (("--option", 'ignore_labels=["MISC"]'), "error: ignore_labels names unknown entity label(s) 'MISC'"),
        (("--option", "nope=1"), "error: unknown option 'nope' for head 'token_cls'"),
        (("--option", "aggregation"), "error: --option takes NAME=VALUE"),
        (("--aggregation", "max"), "error: no such option '--aggregation'; per-call options go through --option: "
                                   "--option aggregation=VALUE"),
        (("--thread", "2"), "error: no such option '--thread'. Did you mean '--threads'? See 'headreg predict --help'"),
    ]:
        failed = run_headreg("predict", bundle, text, *args)
        assert failed.returncode == 2 and failed.stderr.startswith(message), (args, failed.stderr)
        assert failed.stdout == ""


def test_predict_does_not_import_torch():
    script = textwrap.dedent(f"""
        import sys
        from headreg.cli import cli
        cli.main(args=["predict", {str(tiny_bundle("seq_cls"))!r}, "hello", "--json"], standalone_mode=False)
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules), file=sys.stderr)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stderr.strip().splitlines()[-1] == "[]", out.stderr
    assert json.loads(out.stdout)[0]["text"] == "hello"


def test_predict_usage_errors_exit_2_and_broken_bundles_exit_1(tmp_path):
    bundle = str(tiny_bundle("seq_cls"))
    no_texts = run_headreg("predict", bundle)
    assert no_texts.returncode == 2 and "give texts" in no_texts.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": null}\n')
    none_text = run_headreg("predict", bundle, "--file", str(bad))
    assert none_text.returncode == 2 and "bad.jsonl:2: 'text' must be a string, got NoneType" in none_text.stderr
    bad.write_text('{"txt": "typo"}\n')
    typo = run_headreg("predict", bundle, "--file", str(bad))
    assert typo.returncode == 2 and "'text' field" in typo.stderr
    retired = run_headreg("predict", bundle, "hi", "--quantized")  # the 0.1 alias of --variant int8 is gone
    assert retired.returncode == 2 and "no such option '--quantized'" in retired.stderr
    empty = tmp_path / "empty-bundle"
    empty.mkdir()
    not_a_bundle = run_headreg("predict", str(empty), "hello")
    assert not_a_bundle.returncode == 2 and "is not a headreg bundle" in not_a_bundle.stderr
    broken = tmp_path / "broken-bundle"
    shutil.copytree(bundle, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    corrupt = run_headreg("predict", str(broken), "hello")
    assert corrupt.returncode == 1 and corrupt.stderr.startswith("error: ")
    # a bundle whose manifest was edited into one that fails its checks is a broken bundle (1), not a usage error
    edited = tmp_path / "edited-bundle"
    shutil.copytree(bundle, edited)
    manifest = json.loads((edited / "headreg.json").read_text())
    (edited / "headreg.json").write_text(json.dumps({**manifest, "max_length": -5}))
    for command in (("predict", str(edited), "hello"), ("verify", str(edited))):
        failed = run_headreg(*command)
        assert failed.returncode == 1 and "field 'max_length' must be an integer >= 1" in failed.stderr, command
    as_json = run_headreg("verify", str(edited), "--json")  # --json answers JSON for a broken bundle too
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["passed"] is False
    assert "max_length" in json.loads(as_json.stdout)["error"]
    threads = run_headreg("predict", bundle, "hello", "--threads", "100000")  # onnxruntime would start them all
    assert threads.returncode == 2 and "threads=100000 is more than 8 per CPU" in threads.stderr


def test_predict_table_shows_the_heads_a_call_selected(multi_head_bundle):
    only = run_headreg("predict", str(multi_head_bundle), "Berlin is nice", "--option", 'heads=["sentiment"]')
    assert only.returncode == 0, only.stderr
    table = only.stdout.split("\n", 1)[1]  # below the title, which names the bundle's heads
    assert "sentiment" in table and "entities" not in table


def test_predict_on_a_saved_model_says_to_export_it(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model("seq_cls").save_pretrained(model_dir)
    result = run_headreg("predict", str(model_dir), "hello")
    assert result.returncode == 2
    assert f"{model_dir} is a saved headreg model, not a bundle: run headreg export {model_dir} -o BUNDLE" in result.stderr


def test_bench_reports_latency_and_throughput_per_engine_against_torch(tmp_path):
    model_dir = tmp_path / "model"
    tiny_model("seq_cls").save_pretrained(model_dir)
    result = bench("--batch-size", "2", "--seq-len", "16", "--rows", "4", "--passes", "2", "--threads", "1",
                   "--compare-torch", "--model", str(model_dir), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    engines = {engine["engine"]: engine for engine in report["engines"]}
    from headreg.runtime.variants import cpu_flags
    from headreg.runtime.backends import bf16_cpu

    manifest = json.loads((tiny_bundle("seq_cls") / "headreg.json").read_text())
    variants = {name for name, record in manifest["variants"].items() if isinstance(record, dict)}
    default = next(name for name in engines if name.endswith(", default)"))
    assert {name.split(" ")[0] for name in engines if not name.startswith("torch")} == variants  # every variant
    torch_engines = {"torch fp32"} | ({"torch bf16 autocast"} if bf16_cpu(cpu_flags()) else set())
    assert {name for name in engines if name.startswith("torch")} == torch_engines
    assert report["torch_baseline"] in torch_engines and engines[report["torch_baseline"]]["vs_torch"] == 1.0
    assert all(engines[name]["vs_torch"] <= 1.0 for name in torch_engines)  # the baseline is the fastest PyTorch
    assert report["machine"]["isa"] and len(report["machine"]["load_average"]) == 3
    fp32 = engines[default]
    assert fp32["rows"] == 4 and fp32["tokens"] == 4 * 16 and fp32["passes"] == 2
    assert 0 < fp32["latency_ms"]["p50"] <= fp32["latency_ms"]["p90"] <= fp32["latency_ms"]["p99"]
    assert fp32["vs_torch"] > 0


def test_bench_on_a_corpus_compares_bucketing_with_arrival_order(tmp_path):
    corpus = tmp_path / "corpus.txt"
    long = "a much longer line " * 10
    corpus.write_text("\n".join(["short", long, "short", "short", long, "short", "short", "short"]) + "\n")
    result = bench("--texts", str(corpus), "--batch-size", "4", "--passes", "1", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "arrival order" in result.stdout and "length bucketing vs arrival order" in result.stdout
    assert "vs torch" not in result.stdout  # no empty column without --compare-torch
    report = json.loads(bench("--texts", str(corpus), "--batch-size", "4", "--passes", "1", "--threads", "1", "--json").stdout)
    bucketed = report["engines"][0]
    arrival = next(engine for engine in report["engines"] if engine["engine"].endswith("arrival order"))
    assert bucketed["padded_tokens"] < arrival["padded_tokens"]  # sorting removed padding
    assert report["bucketing_speedup"] > 0


def test_bench_compare_torch_without_a_model_is_a_usage_error():
    result = bench("--compare-torch", "--rows", "1", "--passes", "1")
    assert result.exit_code == 2 and "--model DIR" in result.output


NOISY_PLUGIN = """
import os

from headreg import hookimpl

print("noisy plugin imported")

def post(outputs, context):
    from headreg.runtime.postprocess import seq_cls
    print("noise from print in the postprocess")
    os.write(1, b"noise written to fd 1\\n")
    return seq_cls(outputs, context)

@hookimpl
def register_heads(register):
    register(name="noisy", cls="noisy_plugin.head:Head", task="sequence-classification", postprocess="noisy_plugin:post",
             postprocess_contract=2)
"""


@pytest.mark.slow
def test_predict_json_stays_json_when_a_plugin_postprocess_prints(tmp_path, plugin_site):
    from conftest import write_plugin

    site = plugin_site(write_plugin(tmp_path / "src", "headreg-plugin-noisy", "noisy_plugin", NOISY_PLUGIN))
    bundle = tmp_path / "noisy"
    shutil.copytree(tiny_bundle("seq_cls"), bundle)
    manifest = json.loads((bundle / "headreg.json").read_text())
    manifest["head"].update(name="noisy", postprocess="noisy_plugin:post", plugin="headreg-plugin-noisy")
    (bundle / "headreg.json").write_text(json.dumps(manifest))
    result = run_headreg("predict", str(bundle), "I loved it", "--json", site=site)
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)  # nothing but the results on stdout
    assert parsed[0]["result"] == Predictor(tiny_bundle("seq_cls")).predict("I loved it")
    assert "noise from print in the postprocess" in result.stderr and "noise written to fd 1" in result.stderr
