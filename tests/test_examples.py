"""The README's quickstart script runs end to end (attach, train, save, load, export, torch-free predict)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs the examples end to end (training, export, predict) in subprocesses

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_predicts_after_verified_export(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cases verified" in result.stdout
    assert "Loading weights" not in result.stderr  # transformers' progress bar is off in the example
    assert (tmp_path / "bundle" / "model.onnx").is_file() and (tmp_path / "model" / "head.safetensors").is_file()
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[-3:-1]] == ["pos", "neg"]
    assert lines[-1] == f"kept: saved model {tmp_path / 'model'}, bundle {tmp_path / 'bundle'}"


def test_quickstart_without_out_keeps_nothing(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py"), "--steps", "1"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "removed the temporary model and bundle" in result.stdout
    # `import onnxruntime` itself writes its telemetry session file $TMPDIR/.ses (onnxruntime#32476): not ours.
    assert [p for p in scratch.rglob("*") if p.is_file() and p.name != ".ses"] == []


def test_multi_task_example_trains_exports_and_predicts_both_heads(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "multi_task.py"), "--steps", "4", "--no-serve"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    # one graph, both heads' logits; MiniLM's authored pooling (mean) serves both heads, so one pooled output
    exported = next(line for line in out.splitlines() if line.startswith("exported "))
    assert exported.endswith("outputs pooled_output, sentiment.logits, entities.logits"), exported
    assert "head sentiment: worst |diff|" in out and "head entities: worst |diff|" in out
    assert "heads=['sentiment'] -> ['sentiment']" in out
    assert "removed the temporary model and bundle" in out
    assert [p for p in scratch.rglob("*") if p.is_file() and p.name != ".ses"] == []
