"""A foreign ONNX export (optimum's layout, no manifest) goes through the same up-front checks and the same safety
rule as a checkpoint (issue 27 item 1, issue 22): ``--overwrite`` can never delete the source, a folder holding it,
or a folder of files arena-export did not write; ``--opset`` / ``--exporter`` (re-tracing only) are refused.

Each mistake ends in exit code 2 with exactly one ``error:`` line, and nothing in the working folder is created,
changed or removed. The CLI runs through its console entry point, as a user runs it.
"""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from tests.conftest import TRAIN_CSV
from tests.test_foreign import write_optimum_layout
from tests.test_safety import tree


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_checkpoint):
    """A user's folder: an optimum export with the files optimum writes beside it, data, notes, a folder of theirs."""
    from arena.models.modeling import load_classifier

    ws = tmp_path_factory.mktemp("foreign-ws")
    src = write_optimum_layout(load_classifier(tiny_checkpoint, require_three_labels=True), ws / "src")
    (src / "README.md").write_text("model card\n")
    (src / "ort_config.json").write_text("{}\n")
    pd.read_csv(TRAIN_CSV).head(60).to_csv(ws / "train.csv", index=False)
    (ws / "notes.txt").write_text("my notes\n")
    (ws / "other").mkdir()
    (ws / "other" / "thesis.tex").write_text("mine")
    return ws


BASE = ["src", "--data", "train.csv", "--parity-shapes", "1x17,2x64"]
CASES = {
    # data loss (issue 27 item 1): each of these deleted files before
    "out is the source, --overwrite": (["--out", "src", "--overwrite"], "is the foreign ONNX export"),
    "out holds the source, --overwrite": (["--out", ".", "--overwrite"], "holds the foreign ONNX export"),
    "out holds other files, --overwrite": (["--out", "other", "--overwrite"], "did not write"),
    "out inside the source": (["--out", "src/export"], "inside the foreign ONNX export"),
    "out is the data file": (["--out", "train.csv", "--overwrite"], "--out"),
    # options that only apply to tracing a PyTorch checkpoint (issue 27: silently ignored before)
    "opset given": (["--out", "new", "--opset", "18"], "--opset only apply when tracing"),
    "exporter given": (["--out", "new", "--exporter", "dynamo"], "--exporter only apply when tracing"),
    "opset and exporter given": (["--out", "new", "--opset", "17", "--exporter", "torchscript"],
                                 "--opset and --exporter"),
    # the same option checks as a checkpoint export
    "parity shape too short": (["--out", "new", "--parity-shapes", "2x4"], "--parity-shapes"),
    "zero calibration rows": (["--out", "new", "--calibration-rows", "0"], "--calibration-rows"),
    "negative tolerance": (["--out", "new", "--fp32-tol", "-1"], "--fp32-tol"),
    "data not battles": (["--out", "new", "--data", "notes.txt"], "missing column"),
}


@pytest.mark.parametrize(("args", "says"), list(CASES.values()), ids=list(CASES))
def test_foreign_export_mistake_is_one_error_line_and_deletes_nothing(ws, monkeypatch, capsys, args, says):
    from arena.export.cli import main

    monkeypatch.chdir(ws)
    monkeypatch.setattr(sys, "argv", ["arena-export", *BASE, *args])
    before = tree(ws)
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, f"stdout: {out[-1500:]}\nstderr: {err[-1500:]}"
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert says in lines[0], lines[0]
    assert tree(ws) == before, "files were created, changed or removed"
    assert (ws / "src" / "README.md").read_text() == "model card\n" and (ws / "other" / "thesis.tex").is_file()
    assert not (ws / "new").exists()


def test_overwrite_still_replaces_an_earlier_export_of_the_foreign_folder(ws, tmp_path, capsys):
    """The rule refuses what arena did not write, and still lets ``--overwrite`` replace its own earlier export."""
    import json

    from arena.export.cli import run_export

    out = tmp_path / "export"
    run_export(ws / "src", out, data=str(ws / "train.csv"), parity_shapes="1x17,2x64", openvino=False)
    first = json.loads((out / "manifest.json").read_text())["created"]
    summary = run_export(ws / "src", out, data=str(ws / "train.csv"), parity_shapes="1x17,2x64", openvino=False,
                         overwrite=True)
    assert summary["parity"] == {"fp32": True}
    assert json.loads((out / "manifest.json").read_text())["created"] >= first
    assert (ws / "src" / "README.md").is_file()
