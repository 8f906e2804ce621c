"""Bad inputs and per-call options answered with InputError; bounded work per input; CLI output that cannot be
hijacked by the text it shows. Real bundles, the real Predictor, the real `headreg` command in a subprocess."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import run_headreg
from test_runtime_predictor import tiny_bundle

from headreg.runtime import InputError, Predictor
from headreg.runtime.inputs import CHARS_PER_TOKEN, read_texts


@pytest.fixture(scope="module")
def seq():
    return Predictor(tiny_bundle("seq_cls"))


@pytest.fixture(scope="module")
def multi():
    return Predictor(tiny_bundle("multi_label"))


@pytest.fixture(scope="module")
def ner():
    return Predictor(tiny_bundle("token_cls"))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (None, "inputs are None"),
        (5, "inputs are int"),
        (b"abc", r"inputs are bytes, not text; decode them first"),
        ({"text": "x"}, "inputs are dict"),
        (["ok", b"abc"], r"input 1 is bytes, not text"),
        (["ok", "bad \udcff surrogate"], r"input 1 is not valid Unicode text: a lone surrogate"),
        ([("premise", "\ud800")], r"input 0 \(text_pair\) is not valid Unicode"),
    ],
)
def test_inputs_that_are_not_text_are_input_errors(seq, inputs, message):
    with pytest.raises(InputError, match=message):
        seq.predict(inputs)
    with pytest.raises(InputError, match=message):
        seq.embed(inputs)


def test_a_bad_input_in_a_later_chunk_names_its_index_in_the_whole_call(seq, monkeypatch):
    import headreg.runtime.predictor as predictor_module

    monkeypatch.setattr(predictor_module, "PREDICT_CHUNK", 4)
    texts = (text if i != 9 else None for i, text in enumerate(["fine"] * 12))  # a generator: read chunk by chunk
    with pytest.raises(InputError, match="input 9 is None"):
        seq.predict(texts)
    with pytest.raises(InputError, match="unknown option 'treshold'"):
        seq.predict([], treshold=0.5)


def test_unknown_options_are_named_with_the_valid_ones(seq, multi, ner):
    with pytest.raises(InputError, match=r"unknown option 'treshold' for head 'multi_label'; valid options: "
                                         r"long_text, max_windows, normalize, return_logits, threshold, thresholds, window_"):
        multi.predict(["x"], treshold=0.3)
    with pytest.raises(InputError, match=r"unknown option 'aggregation' for head 'seq_cls'; valid options: long_text, "):
        seq.predict(["x"], aggregation="max")
    with pytest.raises(InputError, match=r"unknown options 'thresholds', 'x' .* valid options: aggregation, ignore_labels"):
        ner.predict(["x"], thresholds=0.5, x=1)
    with pytest.raises(InputError, match="unknown option 'aggregation'"):
        seq.prepare(["x"], aggregation="max")  # the step headreg serve and the integrations call
    assert seq.valid_options() == ["long_text", "max_windows", "normalize", "return_logits", "window_reduce", "window_stride"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(thresholds=None), "thresholds must be a number between 0 and 1, got None"),
        (dict(thresholds=math.nan), "thresholds must be a number between 0 and 1, got nan"),
        (dict(thresholds=1.5), "between 0 and 1"),
        (dict(thresholds="0.3"), "between 0 and 1"),
        (dict(thresholds=[0.5, 0.5]), "thresholds has 2 values but the model has 3 labels"),
        (dict(thresholds={"toxic": math.inf}), "threshold for 'toxic' must be a number"),
        (dict(thresholds={"nope": 0.2}), "unknown label"),
        (dict(threshold=None), "thresholds must be a number"),
    ],
)
def test_bad_threshold_values_are_input_errors(multi, options, message):
    with pytest.raises(InputError, match=message):
        multi.predict(["some text"], **options)


def test_good_threshold_values_still_work(multi):
    off = multi.predict(["some text"], thresholds=1.0)
    on = multi.predict(["some text"], threshold=0.0)
    assert off[0]["labels"] == []
    assert on[0]["labels"] == ["toxic", "spam", "off_topic"]
    assert "spam" in multi.predict(["some text"], thresholds={"spam": 0.0})[0]["labels"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(ignore_labels=None), "ignore_labels must be a list of label names"),
        (dict(ignore_labels="O"), "ignore_labels must be a list of label names"),
        (dict(ignore_labels=[1]), "must contain label names"),
        (dict(aggregation="best"), "aggregation must be one of none, simple, first, average, max"),
        (dict(ignore_labels=["O", "MISC"]), "ignore_labels names unknown entity label.s. 'MISC'; this model's are: O, PER"),
    ],
)
def test_bad_token_options_are_input_errors(ner, options, message):
    with pytest.raises(InputError, match=message):
        ner.predict(["Angela Merkel went to Paris"], **options)


def test_bad_predictor_arguments_are_refused():
    with pytest.raises(TypeError, match="quantized"):  # the 0.1 alias of variant="int8" is gone
        Predictor(tiny_bundle("seq_cls"), quantized=True)
    with pytest.raises(InputError, match="batch_size must be a positive integer"):
        Predictor(tiny_bundle("seq_cls"), batch_size=0)


def test_a_huge_text_is_cut_before_tokenizing_and_gives_the_truncated_result(ner):
    limit = ner.max_length * CHARS_PER_TOKEN
    head = "Angela Merkel met Emmanuel Macron in Paris. " * 3
    huge = head + "x " * 5_000_000  # 10 M characters
    assert len(huge) > 100 * limit
    encoding = ner.encode([huge])[0]
    assert len(encoding) == ner.max_length
    assert ner.predict([huge])[0] == ner.predict([huge[:limit]])[0]
    assert ner.predict([huge])[0] == ner.predict([head + "x " * 2000])[0]  # the same tokens survive truncation


# --- reading --file -------------------------------------------------------------------------------------------------


def test_lines_end_only_at_newlines(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes("one\x0cstill one\u2028and\x85this\x1ctoo\r\ntwo\n\nfour\n".encode())
    assert read_texts(path) == ["one\x0cstill one\u2028and\x85this\x1ctoo", "two", "", "four"]


def test_jsonl_with_raw_line_separators_and_a_bom(tmp_path):
    path = tmp_path / "texts.jsonl"
    records = [{"text": "a\u2028b"}, {"text": "premise", "text_pair": "hypo\u2029thesis"}]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode())
    assert read_texts(path) == ["a\u2028b", ("premise", "hypo\u2029thesis")]
    plain = tmp_path / "bom.txt"
    plain.write_bytes(b'\xef\xbb\xbf{"text": "detected as JSONL despite the BOM"}\n')
    assert read_texts(plain) == ["detected as JSONL despite the BOM"]


def test_invalid_utf8_is_an_input_error_naming_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.txt:2: not valid UTF-8"):
        read_texts(path)
    (tmp_path / "bad.jsonl").write_text('{"text": 5}\n')
    with pytest.raises(InputError, match="'text' must be a string"):
        read_texts(tmp_path / "bad.jsonl")


# --- the CLI ----------------------------------------------------------------------------------------------------------


def test_cli_invalid_utf8_on_stdin_and_lone_surrogates_exit_2_with_a_message():
    bundle = str(tiny_bundle("seq_cls"))
    result = subprocess.run([sys.executable, "-m", "headreg.cli", "predict", bundle, "--file", "-"],
                            input=b"ok\n\xff\xfe broken\n", capture_output=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert b"not valid UTF-8" in result.stderr and b"Traceback" not in result.stderr
    # a command-line argument that is not valid UTF-8 reaches Python as lone surrogates
    result = subprocess.run([sys.executable, "-m", "headreg.cli", "predict", bundle, b"caf\xe9"],
                            capture_output=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert b"not valid Unicode text" in result.stderr and b"Traceback" not in result.stderr


def test_cli_table_shows_markup_and_escapes_as_text():
    bundle = str(tiny_bundle("seq_cls"))
    texts = ["[/]", "[bold red]x[/bold red]", "\x1b[31mred\x1b]8;;http://evil\x07link\x1b]8;;\x07"]
    result = run_headreg("predict", bundle, *texts, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "[/]" in result.stdout and "[bold red]x[/bold red]" in result.stdout
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b[31mred" in result.stdout


def test_cli_json_is_always_valid_json():
    bundle = str(tiny_bundle("regression"))
    result = run_headreg("predict", bundle, "--json", "a text", "\u2028", "[/]")
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)
    assert [row["text"] for row in parsed] == ["a text", "\u2028", "[/]"]


def test_emit_json_turns_nan_into_null(capsys):
    from headreg.cli.output import emit_json

    emit_json({"score": math.nan, "values": [1.0, math.inf, -math.inf], "nested": ({"x": math.nan},)})
    assert json.loads(capsys.readouterr().out) == {"score": None, "values": [1.0, None, None], "nested": [{"x": None}]}


def test_a_plugin_heads_own_option_must_be_json_of_its_exported_values_kind():
    from headreg.runtime.inputs import InputError, _same_kind

    accepted = [(True, False), (0.5, 3), (0.5, 2.5), (1, 10**400), ("a", "b"), ([1], (2, 3)), ({}, {"k": 1})]
    for default, value in accepted:
        assert _same_kind(value, default, "opt") == value
    refused = [(True, 1), (0.5, True), (0.5, float("nan")), (0.5, float("inf")), (0.5, "1"), ("a", 1), ([1], {}),
               ({}, [])]
    for default, value in refused:
        with pytest.raises(InputError, match="option opt must be like its exported value"):
            _same_kind(value, default, "opt")
