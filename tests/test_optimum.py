"""The other direction: an arena export folder loads in optimum's ORTModelForSequenceClassification with arena's
logits. optimum-onnx pins transformers < 4.58, so this runs in its own venv (built by
benchmarks/optimum_roundtrip.sh) and skips, saying why, where that venv is absent."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.optimum
SCRIPT = ROOT / "benchmarks" / "optimum_roundtrip.py"
VENV = Path(os.environ.get("ARENA_OPTIMUM_VENV", ROOT / ".venv-optimum"))


@pytest.fixture(scope="session")
def optimum_python() -> Path:
    """The optimum venv's python; skips (before any model is built) where there is none."""
    python = VENV / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"no optimum venv at {VENV}: build it with benchmarks/optimum_roundtrip.sh (needs PyPI), or point "
                    "ARENA_OPTIMUM_VENV at one with optimum-onnx[onnxruntime]")
    probe = subprocess.run([str(python), "-c", "import optimum.onnxruntime"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"{VENV} cannot import optimum.onnxruntime ({probe.stderr.strip().splitlines()[-1:]}); rebuild it "
                    "with benchmarks/optimum_roundtrip.sh")
    return python


def test_arena_export_loads_in_optimum_with_arenas_logits(optimum_python, tmp_path, tiny_export):
    python = optimum_python
    spec = importlib.util.spec_from_file_location("optimum_roundtrip", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.arena_half(tiny_export, tmp_path, rows=32)
    done = subprocess.run([str(python), str(SCRIPT), "optimum", "--export", str(tiny_export), "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["passed"] and result["file"] == "model.onnx" and result["rows"] == 32
    assert result["max_abs_logit_diff"] <= 1e-4 and result["argmax_agreement"] == 1.0
    assert result["tokenizer_texts_identical"] == result["tokenizer_texts"] > 0
    assert result["id2label"] == {"0": "winner_model_a", "1": "winner_model_b", "2": "winner_tie"}
    assert result["versions"]["transformers"].startswith("4.")
