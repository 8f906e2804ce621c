"""The README's quickstart script runs end to end (attach, train, save, load, export, torch-free predict)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_predicts_after_verified_export(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cases verified" in result.stdout
    assert (tmp_path / "bundle" / "model.onnx").is_file() and (tmp_path / "model" / "head.safetensors").is_file()
    predictions = [line.split()[0] for line in result.stdout.splitlines()[-2:]]
    assert predictions == ["pos", "neg"]
