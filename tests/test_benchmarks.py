"""The benchmark harness's arithmetic and reporting (no timing is asserted anywhere)."""

from __future__ import annotations

import json

import pytest

from benchmarks import engines, report
from benchmarks.corpus import mixed_corpus, sentences
from benchmarks.flops import batch_flops, flops_per_token, sequence_flops


def test_flops_match_a_hand_count_for_a_tiny_config():
    from headreg.testing import tiny_config

    config = tiny_config("bert")  # H=32, I=64, 2 layers
    length = 10
    per_layer_per_token = 8 * 32 * 32 + 4 * 32 * 64 + 4 * length * 32
    expected = length * 2 * per_layer_per_token + 2 * 32 * 32 + 2 * 32 * 3
    assert sequence_flops(config, length, num_labels=3) == expected
    assert batch_flops(config, [10, 10], num_labels=3) == 2 * expected


def test_minilm_flops_per_token_at_128():
    from transformers import BertConfig

    minilm = BertConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12)
    assert flops_per_token(minilm, 128) / 1e6 == pytest.approx(22.41, abs=0.01)


def test_corpus_is_real_text_of_varied_length_and_deterministic():
    texts = mixed_corpus(200, seed=1)
    assert texts == mixed_corpus(200, seed=1)
    words = [len(t.split()) for t in texts]
    assert min(words) <= 6 and max(words) >= 80
    vocabulary = {w for s in sentences() for w in s.split()}
    assert all(w in vocabulary for t in texts for w in t.split())


def _fake_report():
    def engine(p50, ratio):
        return {"p50_ms": p50, "p90_ms": p50 * 1.1, "min_ms": p50, "runs": 5, "throughput_rows_s": 1e3 / p50,
                "pct_of_floor": 50.0, "ratio_vs_pytorch": ratio}

    shape = lambda b, n: {  # noqa: E731
        "batch": b, "length": n, "gflop": 1.0, "floor_ms": 1.0, "pytorch_best": "pytorch-sdpa",
        "engines": {name: engine(2.0, 1.0) for name in engines.ENGINES},
    }
    corpus = {
        "rows": 4, "tokens": 40, "length_min_median_max": [5, 10, 15], "padded_tokens": {"arrival": 60, "bucketed": 45},
        "batch_size": 2, "max_batch_tokens": 4096, "floor_ms": 1.0,
        "engines": {"ort-fp32 arrival": engine(4.0, 1.0), "ort-fp32 bucketed": engine(2.0, 2.0)},
        "bucketing_speedup_ort_fp32": 2.0, "bucketing_speedup_pytorch": 1.5,
        "agreement_vs_pytorch": {"ort-int8 bucketed": {"identical_decisions_pct": 100.0, "score_drift_max": 0.01,
                                                       "score_drift_mean": 0.001, "logit_max_abs_diff": 0.02}},
    }
    model = {"description": "tiny", "mflop_per_token_128": 0.1, "shapes": [shape(1, 16), shape(8, 16)], "corpus": corpus}
    return {
        "threads": 2, "machine": {"cpu": "test cpu", "isa": ["avx2"]}, "matmul_gflops": {"best": 100.0, "median": 90.0},
        "load_average_before": [0.5, 0.5, 0.5], "load_average_after": [0.6, 0.5, 0.5], "omp_wait_policy": "default",
        "models": {"tiny": model},
    }


def test_summary_table_and_chart(tmp_path):
    fake = _fake_report()
    table = report.summary_table(fake)
    assert "1 x 16" in table and "x1.00" in table and "bucketing vs arrival order: x2.00" in table
    assert "100.00% identical decisions" in table
    markdown = report.markdown(fake)
    assert "| 1 x 16 | 1.0 | 2.0 / 2.2 (sdpa) |" in markdown and "Bucketing vs arrival order: x2.00" in markdown
    report.chart(fake, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").stat().st_size > 1000
    json.dumps(fake)


def test_lines_of_code_leave_out_blanks_comments_and_docstrings_but_not_strings():
    from benchmarks.loc import by_area, count

    source = '"""Module doc,\non two lines."""\n\n# a comment\nx = 1  # trailing\n\n\ndef f():\n    """Doc."""\n    return """a\nstring"""\n'
    assert count(source) == (11, 4)  # x = 1, def f():, and the two lines of the returned string
    areas = by_area({"headreg/a.py": source, "headreg/serve/b.py": "y = 2\n", "headreg/serve/c.py": "z = 3\n"})
    assert areas == {"(top-level modules)": (11, 4), "serve": (2, 2)}
