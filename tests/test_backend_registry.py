"""A backend is declared once and everything else follows: a toy backend registered the way the README's
"Extending" section says runs through arena-infer and arena-bench unchanged, and is chosen by ``--backend auto``
when its declared speed makes it the fastest. Also: what each real backend declares, and that no command line can
name a precision its backend does not declare."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from arena.serving.backends import register, specs, unregister
from arena.serving.backends.contract import BackendSpec, Limits, Variant
from tests.conftest import TRAIN_CSV

TOY_FILE = "toy.json"


class ToyBackend:
    """Logits from the rows' token counts alone: model_a's logit grows with the padded batch's real length."""

    name = "toy"
    device = "cpu"
    needs_features = False
    limits = Limits(max_length=512)
    calls = 0

    def __init__(self, scale: float) -> None:
        self.scale = scale

    @property
    def description(self) -> str:
        return f"toy (scale {self.scale}, cpu)"

    def __call__(self, input_ids, attention_mask, features=None):
        ToyBackend.calls += 1
        real = attention_mask.sum(axis=1).astype(np.float32)
        return np.stack([real * self.scale, np.zeros_like(real), -real * self.scale], axis=1)


def _toy_variants(folder, devices=("auto",)):
    if not (folder.path / TOY_FILE).is_file():
        return []
    return [Variant("toy", "fp32", "cpu", TOY_FILE, speed=100.0)]


def _toy_open(folder, variant, options):
    return ToyBackend(json.loads((folder.path / variant.file).read_text())["scale"])


TOY = BackendSpec(name="toy", precisions=("fp32",), devices=("cpu",), reads="export", variants=_toy_variants,
                  open=_toy_open, absent=lambda folder: f"{folder.path} has no {TOY_FILE}",
                  summary="a test's toy backend")


@pytest.fixture
def toy_export(tmp_path, tiny_export):
    folder = tmp_path / "export"
    shutil.copytree(tiny_export, folder)
    (folder / TOY_FILE).write_text(json.dumps({"scale": 0.01}))
    register(TOY)
    yield folder
    unregister("toy")


def _rows(tmp_path, n=24):
    path = tmp_path / "rows.csv"
    pd.read_csv(TRAIN_CSV).iloc[:n][["id", "prompt", "response_a", "response_b"]].to_csv(path, index=False)
    return path


def test_toy_backend_runs_through_arena_infer(tmp_path, toy_export):
    from arena.infer.cli import app

    rows = _rows(tmp_path)
    ToyBackend.calls = 0
    result = CliRunner().invoke(app, [str(rows), "--model", str(toy_export), "--out", str(tmp_path / "sub.csv"),
                                      "--backend", "toy", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["backend"].startswith("toy (scale 0.01") and summary["rows"] == 24 and ToyBackend.calls > 0
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert list(sub["id"].astype(str)) == list(pd.read_csv(rows)["id"].astype(str))
    probs = sub[["winner_model_a", "winner_model_b", "winner_tie"]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1) and (probs[:, 0] > probs[:, 2]).all()
    assert probs[:, 0].std() > 0  # longer rows, larger logits: the toy's numbers reached the submission


def test_toy_backend_is_the_automatic_choice_by_its_declared_speed(tmp_path, toy_export):
    from arena.serving.choice import choose_backend

    choice = choose_backend("auto", toy_export)
    assert choice.backend == "toy" and "fastest CPU option" in choice.reason
    (toy_export / TOY_FILE).unlink()
    assert choose_backend("auto", toy_export).backend != "toy"


def test_toy_backend_runs_through_arena_bench(tmp_path, tiny_checkpoint, toy_export):
    from arena.bench.cli import app

    rows = _rows(tmp_path, 16)
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["--model", str(tiny_checkpoint), "--export", str(toy_export), "--data",
                                      str(rows), "--rows", "16", "--repeats", "1", "--warmup", "0", "--cells",
                                      "torch:fp32/sorted,toy:fp32/sorted", "--baseline", "torch:fp32/sorted",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    names = [c["name"] for c in report["cells"]]
    assert "toy:fp32/sorted" in names
    toy = next(c for c in report["cells"] if c["name"] == "toy:fp32/sorted")
    assert toy["backend"].startswith("toy") and toy["rows_per_s"] > 0


def test_unknown_backend_and_undeclared_precision_are_one_error_line(tmp_path, toy_export):
    from arena.infer.cli import app

    rows = _rows(tmp_path, 4)
    for args, expected in ((["--backend", "jax"], "--backend must be one of auto, torch, onnx, openvino, "
                                                  "tensorrt, toy"),
                           (["--backend", "toy", "--precision", "int8"], "--precision for backend toy must be "
                                                                        "one of auto, fp32")):
        result = CliRunner().invoke(app, [str(rows), "--model", str(toy_export), "--out",
                                          str(tmp_path / "s.csv"), *args])
        assert result.exit_code == 2 and expected in result.output, result.output
        assert not (tmp_path / "s.csv").exists()


def test_every_real_backend_declares_itself():
    declared = specs()
    assert list(declared)[:4] == ["torch", "onnx", "openvino", "tensorrt"]
    assert declared["torch"].precisions == ("fp32", "fp16", "bf16", "4bit", "8bit")
    assert declared["onnx"].precisions == ("fp32", "fp32_fused", "fp16", "int8")
    assert declared["openvino"].precisions == ("fp32", "bf16", "int8") and declared["openvino"].devices == ("cpu",)
    assert declared["tensorrt"].devices == ("cuda",)
    assert {s.reads for s in declared.values()} <= {"checkpoint", "export"}
    with pytest.raises(ValueError, match="already registered"):
        register(BackendSpec(name="onnx", precisions=(), devices=(), reads="export", variants=lambda f, d: [],
                             open=lambda *a: None))


def test_a_checkpoint_and_an_export_offer_their_variants(tiny_checkpoint, tiny_export):
    from arena.serving.folder import read_folder

    ckpt, export = read_folder(tiny_checkpoint), read_folder(tiny_export)
    assert ckpt.kind == "checkpoint" and export.kind == "export"
    offered = {(v.backend, v.precision, v.device) for v in ckpt.variants() if v.usable}
    assert ("torch", "fp32", "cpu") in offered and not any(b == "onnx" for b, _, _ in offered)
    exported = {(v.backend, v.precision) for v in export.variants() if v.usable and v.device == "cpu"}
    assert {("onnx", "fp32"), ("onnx", "int8")} <= exported and not any(b == "torch" for b, _ in exported)
    missing = {v.precision: v.why_not for v in export.variants() if v.backend == "onnx" and v.device == "cpu"}
    assert "--fp16" in missing["fp16"] and "--optimize" in missing["fp32_fused"]


def test_the_readme_backend_table_is_the_declarations():
    from pathlib import Path

    from arena.serving.backends import table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table() in readme, "the README's backend table differs from the declarations: paste backends.table()"
