"""Common mistakes, as a new user makes them, against every CLI (issue 14).

Each mistake must end in exit code 2 with exactly one ``error:`` line that names what to change, no traceback,
and no file created, changed or removed, inputs included. The CLIs run in this process through their console
entry points (``main()``), so usage errors (a missing argument, ``--batch-size abc``) are covered too.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys

import pandas as pd
import pytest

from tests.conftest import TEST_CSV, TRAIN_CSV
from tests.test_safety import copy_model, tree

GPU = pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="the mistake is a GPU on a CPU machine")


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_checkpoint, tiny_export, tiny_config):
    """A user's working folder: data, a checkpoint, an export, and files of their own."""
    ws = tmp_path_factory.mktemp("ws")
    pd.read_csv(TRAIN_CSV).head(60).to_csv(ws / "train.csv", index=False)
    shutil.copy2(TEST_CSV, ws / "test.csv")
    shutil.copy2(tiny_config, ws / "cfg.json")
    (ws / "notes.txt").write_text("my notes\n")
    (ws / "empty.csv").write_text("")
    (ws / "cut.csv.gz").write_bytes(gzip.compress(TEST_CSV.read_bytes())[:40])
    (ws / "sub.csv").write_text("id,winner_model_a,winner_model_b,winner_tie\n")
    (ws / "bad.json").write_text("{not json")
    (ws / "ratios.json").write_text(json.dumps({"ratios": [
        {"name": "r", "numerator": "onnx:int8/sorted", "denominator": "torch:fp32/notebook", "min": 1.0}]}))
    copy_model(tiny_checkpoint, ws / "ckpt")
    copy_model(tiny_checkpoint, ws / "ckpt_notok", skip=("tokenizer.json", "tokenizer_config.json"))
    copy_model(tiny_checkpoint, ws / "finished")
    (ws / "finished" / "train_done.json").write_text("{}")
    copy_model(tiny_export, ws / "export")
    copy_model(tiny_export, ws / "export_tampered")
    with open(ws / "export_tampered" / "tokenizer_config.json", "a") as fh:
        fh.write(" ")
    (ws / "kfold" / "fold_0").mkdir(parents=True)
    shutil.copy2(tiny_checkpoint / "config.json", ws / "kfold" / "fold_0" / "config.json")
    (ws / "emptydir").mkdir()
    (ws / "docs").mkdir()
    for name in ("data.md", "bench.md", "thesis.tex"):
        (ws / "docs" / name).write_text("mine")
    return ws


TRAIN = ["--data", "train.csv", "--model", "ckpt", "--head", "hf", "--max-length", "64", "--max-rows", "20",
         "--output", "new_run"]
EXPORT = ["ckpt", "--out", "new_export", "--data", "train.csv", "--parity-shapes", "1x17,2x64"]
INFER = ["test.csv", "--model", "export", "--out", "new_sub.csv"]
REPORT = ["train.csv", "--out", "new_report"]
BENCH = ["--model", "ckpt", "--export", "export", "--data", "train.csv", "--rows", "4", "--cells",
         "torch:fp32/sorted,onnx:fp32/sorted", "--repeats", "1", "--warmup", "0", "--out", "new_bench"]


def with_(base: list[str], *changes: str, drop: tuple[str, ...] = ()) -> list[str]:
    """``base`` with options replaced or added (``--flag value`` pairs, or a lone ``--switch``)."""
    args = list(base)
    for flag in drop:
        i = args.index(flag)
        del args[i:i + 2]
    changes_list = list(changes)
    while changes_list:
        item = changes_list.pop(0)
        if item.startswith("--") and changes_list and not changes_list[0].startswith("--"):
            value = changes_list.pop(0)
            if item in args:
                args[args.index(item) + 1] = value
            else:
                args += [item, value]
        elif item.startswith("--"):
            args.append(item)
        else:  # a positional: replaces the first argument
            args[0] = item
    return args


CASES = {
    # ---------------------------------------------------------------------------------------------- arena-train
    "train: data file missing": ("train", with_(TRAIN, "--data", "nope.csv"), "no such file"),
    "train: test.csv given to train": ("train", with_(TRAIN, "--data", "test.csv"), "unlabelled"),
    "train: data folder without train.csv": ("train", with_(TRAIN, "--data", "emptydir"), "no train.csv"),
    "train: data is not a CSV of battles": ("train", with_(TRAIN, "--data", "notes.txt"), "missing column"),
    "train: data file empty": ("train", with_(TRAIN, "--data", "empty.csv"), "empty"),
    "train: batch size zero": ("train", with_(TRAIN, "--batch-size", "0"), "--batch-size"),
    "train: batch size negative": ("train", with_(TRAIN, "--batch-size", "-4"), "--batch-size"),
    "train: batch size not a number": ("train", with_(TRAIN, "--batch-size", "abc"), "--batch-size"),
    "train: epochs zero": ("train", with_(TRAIN, "--epochs", "0"), "--epochs"),
    "train: negative learning rate": ("train", with_(TRAIN, "--lr", "-1e-5"), "--lr"),
    "train: grad accum zero": ("train", with_(TRAIN, "--grad-accum", "0"), "--grad-accum"),
    "train: max length too short": ("train", with_(TRAIN, "--max-length", "4"), "max_length"),
    "train: max rows zero": ("train", with_(TRAIN, "--max-rows", "0"), "--max-rows"),
    "train: val fraction one": ("train", with_(TRAIN, "--val-fraction", "1"), "--val-fraction"),
    "train: val fraction percent": ("train", with_(TRAIN, "--val-fraction", "20"), "--val-fraction"),
    "train: warmup ratio above one": ("train", with_(TRAIN, "--warmup-ratio", "5"), "--warmup-ratio"),
    "train: one fold": ("train", with_(TRAIN, "--folds", "1"), "--folds"),
    "train: fold out of range": ("train", with_(TRAIN, "--folds", "3", "--fold", "3"), "--fold"),
    "train: fold without folds": ("train", with_(TRAIN, "--fold", "0"), "--folds"),
    "train: eval steps zero": ("train", with_(TRAIN, "--eval-steps", "0"), "--eval-steps"),
    "train: save steps negative": ("train", with_(TRAIN, "--save-steps", "-1"), "--save-steps"),
    "train: early stopping zero": ("train", with_(TRAIN, "--early-stopping", "0"), "--early-stopping"),
    "train: max steps negative": ("train", with_(TRAIN, "--max-steps", "-1"), "--max-steps"),
    "train: unknown scheduler": ("train", with_(TRAIN, "--scheduler", "cosin"), "--scheduler"),
    "train: unknown precision": ("train", with_(TRAIN, "--precision", "fp8"), "--precision"),
    "train: unknown head": ("train", with_(TRAIN, "--head", "linear"), "--head"),
    "train: unknown strategy": ("train", with_(TRAIN, "--strategy", "smart"), "strategy"),
    "train: two shares": ("train", with_(TRAIN, "--shares", "0.5,0.5"), "--shares"),
    "train: head fraction above one": ("train", with_(TRAIN, "--head-fraction", "2"), "head_fraction"),
    "train: unknown option": ("train", with_(TRAIN, "--epoch", "2"), "No such option"),
    "train: model folder missing": ("train", with_(TRAIN, "--model", "./nope"), "does not exist"),
    "train: model is a CSV file": ("train", with_(TRAIN, "--model", "train.csv"), "is a file"),
    "train: model is a k-fold folder": ("train", with_(TRAIN, "--model", "kfold"), "k-fold"),
    "train: random init without tokenizer": ("train", with_(TRAIN, "--model", "cfg.json", "--random-init"),
                                             "--tokenizer"),
    "train: random init from a non-config": ("train", with_(TRAIN, "--model", "notes.txt", "--random-init",
                                                            "--tokenizer", "ckpt"), "config"),
    "train: tokenizer folder missing": ("train", with_(TRAIN, "--tokenizer", "./nope"), "--tokenizer"),
    "train: output is a file": ("train", with_(TRAIN, "--output", "notes.txt"), "is a file"),
    "train: output holds other files": ("train", with_(TRAIN, "--output", "docs", "--overwrite"), "did not write"),
    "train: output is the working folder": ("train", with_(TRAIN, "--output", ".", "--overwrite"), "--output"),
    "train: output is the model it starts from": ("train", with_(TRAIN, "--output", "ckpt", "--overwrite"),
                                                  "is the model"),
    "train: output is the data file": ("train", with_(TRAIN, "--output", "train.csv"), "is the training data"),
    "train: output under a file": ("train", with_(TRAIN, "--output", "notes.txt/run"), "is a file"),
    "train: rerun into a finished run": ("train", with_(TRAIN, "--output", "finished"), "--overwrite"),
    "train: resume a finished run": ("train", with_(TRAIN, "--output", "finished", "--resume"),
                                     "nothing to resume"),
    "train: resume and overwrite": ("train", with_(TRAIN, "--output", "finished", "--resume", "--overwrite"),
                                    "--resume"),
    "train: fp16 on a CPU": pytest.param("train", with_(TRAIN, "--precision", "fp16"), "GPU", marks=GPU),
    # ---------------------------------------------------------------------------------------------- arena-export
    "export: out is the checkpoint": ("export", with_(EXPORT, "--out", "ckpt", "--overwrite"), "checkpoint"),
    "export: out is a parent of it": ("export", with_(EXPORT, "--out", ".", "--overwrite"), "holds the"),
    "export: out inside the checkpoint": ("export", with_(EXPORT, "--out", "ckpt/export"), "inside"),
    "export: out holds other files": ("export", with_(EXPORT, "--out", "docs", "--overwrite"), "did not write"),
    "export: out exists, no overwrite": ("export", with_(EXPORT, "--out", "export"), "--overwrite"),
    "export: out is a file": ("export", with_(EXPORT, "--out", "notes.txt"), "is a file"),
    "export: out is the data file": ("export", with_(EXPORT, "--out", "train.csv", "--overwrite"), "--out"),
    "export: out missing": ("export", ["ckpt"], "--out"),
    "export: checkpoint missing": ("export", with_(EXPORT, "nope"), "does not exist"),
    "export: checkpoint is a file": ("export", with_(EXPORT, "train.csv"), "is a file"),
    "export: checkpoint is an export": ("export", with_(EXPORT, "export"), "arena-export folder"),
    # a k-fold folder is a fold ensemble for export and infer (issue 16): an incomplete fold is named
    "export: k-fold folder with an incomplete fold": ("export", with_(EXPORT, "kfold"), "fold_0"),
    "export: checkpoint without tokenizer": ("export", with_(EXPORT, "ckpt_notok"), "tokenizer"),
    "export: opset too old": ("export", with_(EXPORT, "--opset", "11"), "--opset"),
    "export: opset too new": ("export", with_(EXPORT, "--opset", "99"), "--opset"),
    "export: unknown exporter": ("export", with_(EXPORT, "--exporter", "onnxscript"), "--exporter"),
    "export: zero batch shape": ("export", with_(EXPORT, "--parity-shapes", "0x17"), "--parity-shapes"),
    "export: shape without length": ("export", with_(EXPORT, "--parity-shapes", "2x"), "--parity-shapes"),
    "export: shape not a shape": ("export", with_(EXPORT, "--parity-shapes", "big"), "--parity-shapes"),
    "export: negative tolerance": ("export", with_(EXPORT, "--fp32-tol", "-1"), "--fp32-tol"),
    "export: agreement above one": ("export", with_(EXPORT, "--min-agreement", "97"), "--min-agreement"),
    "export: zero buckets": ("export", with_(EXPORT, "--trt-buckets", "0"), "--trt-buckets"),
    "export: zero workspace": ("export", with_(EXPORT, "--workspace-gib", "0"), "--workspace-gib"),
    "export: parity data missing": ("export", with_(EXPORT, "--data", "nope.csv"), "no such file"),
    "export: parity data not battles": ("export", with_(EXPORT, "--data", "notes.txt"), "missing column"),
    "export: tensorrt on a CPU machine": pytest.param("export", with_(EXPORT, "--trt"), "--trt", marks=GPU),
    # ---------------------------------------------------------------------------------------------- arena-infer
    "infer: out is the input CSV": ("infer", with_(INFER, "--out", "test.csv"), "input CSV"),
    "infer: out is a model file": ("infer", with_(INFER, "--out", "export/model.onnx"), "model folder"),
    "infer: out inside the model folder": ("infer", with_(INFER, "--model", "ckpt", "--out", "ckpt/submission.csv"),
                                           "inside"),
    "infer: out is someone's file": ("infer", with_(INFER, "--out", "notes.txt"), "not a submission"),
    "infer: out is a folder": ("infer", with_(INFER, "--out", "docs"), "is a folder"),
    "infer: out compressed": ("infer", with_(INFER, "--out", "sub.csv.gz"), "plain CSV"),
    "infer: out under a file": ("infer", with_(INFER, "--out", "notes.txt/sub.csv"), "is a file"),
    "infer: test file missing": ("infer", with_(INFER, "nope.csv"), "does not exist"),
    "infer: test file is a folder": ("infer", with_(INFER, "emptydir"), "is a folder"),
    "infer: test file empty": ("infer", with_(INFER, "empty.csv"), "empty"),
    "infer: test file not battles": ("infer", with_(INFER, "notes.txt"), "missing column"),
    "infer: test file corrupt gzip": ("infer", with_(INFER, "cut.csv.gz"), "corrupt"),
    "infer: test file missing argument": ("infer", ["--model", "export"], "Missing argument"),
    "infer: model missing": ("infer", with_(INFER, "--model", "nope"), "does not exist"),
    "infer: model is a file": ("infer", with_(INFER, "--model", "notes.txt"), "is a file"),
    "infer: model is an empty folder": ("infer", with_(INFER, "--model", "emptydir"), "config.json"),
    "infer: k-fold folder with an incomplete fold": ("infer", with_(INFER, "--model", "kfold"), "fold_0"),
    "infer: model without tokenizer": ("infer", with_(INFER, "--model", "ckpt_notok"), "tokenizer"),
    "infer: export with a changed tokenizer": ("infer", with_(INFER, "--model", "export_tampered"), "sha256"),
    "infer: unknown backend": ("infer", with_(INFER, "--backend", "tensorflow"), "--backend"),
    "infer: onnx backend on a checkpoint": ("infer", with_(INFER, "--model", "ckpt", "--backend", "onnx"), "ONNX"),
    "infer: tensorrt without an engine": ("infer", with_(INFER, "--backend", "tensorrt"), "TensorRT"),
    "infer: unknown precision": ("infer", with_(INFER, "--precision", "int4"), "--precision"),
    "infer: int8 with torch": ("infer", with_(INFER, "--backend", "torch", "--precision", "int8"), "--precision"),
    "infer: export lacks fp16": ("infer", with_(INFER, "--precision", "fp16", "--backend", "onnx"), "fp16"),
    "infer: unknown tta": ("infer", with_(INFER, "--tta", "yes"), "--tta"),
    "infer: unknown policy": ("infer", with_(INFER, "--policy", "fastest"), "--policy"),
    "infer: unknown rule": ("infer", with_(INFER, "--rules", "ties"), "--rules"),
    "infer: zero max tokens": ("infer", with_(INFER, "--max-tokens", "0"), "--max-tokens"),
    "infer: max tokens below one row": ("infer", with_(INFER, "--max-tokens", "16"), "--max-tokens"),
    "infer: zero batch size": ("infer", with_(INFER, "--batch-size", "0"), "--batch-size"),
    "infer: zero chunk rows": ("infer", with_(INFER, "--chunk-rows", "0"), "--chunk-rows"),
    "infer: zero threads": ("infer", with_(INFER, "--threads", "0"), "--threads"),
    "infer: negative encode workers": ("infer", with_(INFER, "--encode-workers", "-1"), "--encode-workers"),
    "infer: compile with onnx": ("infer", with_(INFER, "--backend", "onnx", "--compile"), "--compile"),
    "infer: device gpu": ("infer", with_(INFER, "--device", "gpu"), "cuda"),
    "infer: device typo": ("infer", with_(INFER, "--device", "cuda1"), "--device"),
    "infer: zero devices": ("infer", with_(INFER, "--devices", "0"), "--devices"),
    "infer: empty device entry": ("infer", with_(INFER, "--devices", "cpu,"), "--devices"),
    "infer: device and devices": ("infer", with_(INFER, "--device", "cpu", "--devices", "cpu,cpu"), "not both"),
    "infer: device cuda on a CPU": pytest.param("infer", with_(INFER, "--device", "cuda", "--backend", "torch"),
                                                "no CUDA GPU", marks=GPU),
    "infer: device cuda:1 on a CPU": pytest.param("infer", with_(INFER, "--device", "cuda:1"), "no CUDA GPU",
                                                  marks=GPU),
    "infer: devices cuda:1 on a CPU": pytest.param("infer", with_(INFER, "--devices", "cuda:1"), "no CUDA GPU",
                                                   marks=GPU),
    "infer: two GPUs on a CPU": pytest.param("infer", with_(INFER, "--devices", "cuda:0,cuda:1", "--backend",
                                                            "torch"), "no CUDA GPU", marks=GPU),
    "infer: GPU count on a CPU": pytest.param("infer", with_(INFER, "--devices", "2"), "--devices", marks=GPU),
    "infer: fp16 torch on a CPU": pytest.param("infer", with_(INFER, "--backend", "torch", "--precision", "fp16"),
                                               "GPU", marks=GPU),
    # ---------------------------------------------------------------------------------------------- arena-report
    "report: file missing": ("report", with_(REPORT, "nope.csv"), "does not exist"),
    "report: folder instead of a file": ("report", with_(REPORT, "emptydir"), "is a folder"),
    "report: not battles": ("report", with_(REPORT, "notes.txt"), "missing column"),
    "report: out is a file": ("report", with_(REPORT, "--out", "notes.txt"), "is a file"),
    "report: out is the input": ("report", with_(REPORT, "--out", "train.csv"), "--out"),
    "report: out holds someone's data.md": ("report", with_(REPORT, "--out", "docs"), "not written by"),
    "report: tokenizer missing": ("report", with_(REPORT, "--tokenizer", "./nope"), "--tokenizer"),
    "report: tokenizer is a file": ("report", with_(REPORT, "--tokenizer", "./notes.txt"), "--tokenizer"),
    "report: tokenizer folder empty": ("report", with_(REPORT, "--tokenizer", "./emptydir"), "tokenizer"),
    # ---------------------------------------------------------------------------------------------- arena-bench
    "bench: model missing": ("bench", with_(BENCH, "--model", "nope"), "does not exist"),
    "bench: model is an export": ("bench", with_(BENCH, "--model", "export"), "model.safetensors"),
    "bench: export is a checkpoint": ("bench", with_(BENCH, "--export", "ckpt"), "manifest.json"),
    "bench: onnx cell without export": ("bench", with_(BENCH, drop=("--export",)), "--export"),
    "bench: cell without policy": ("bench", with_(BENCH, "--cells", "torch:fp32"), "--cells"),
    "bench: unknown backend": ("bench", with_(BENCH, "--cells", "jax:fp32/sorted"), "backend"),
    "bench: unknown precision": ("bench", with_(BENCH, "--cells", "torch:int8/sorted"), "precision"),
    "bench: unknown policy": ("bench", with_(BENCH, "--cells", "torch:fp32/fastest"), "policy"),
    "bench: cell twice": ("bench", with_(BENCH, "--cells", "torch:fp32/sorted,torch:fp32/sorted"), "twice"),
    "bench: export lacks the precision": ("bench", with_(BENCH, "--cells", "onnx:fp16/sorted"), "fp16"),
    "bench: zero rows": ("bench", with_(BENCH, "--rows", "0"), "--rows"),
    "bench: zero repeats": ("bench", with_(BENCH, "--repeats", "0"), "--repeats"),
    "bench: negative warmup": ("bench", with_(BENCH, "--warmup", "-1"), "--warmup"),
    "bench: max tokens below one row": ("bench", with_(BENCH, "--max-tokens", "8"), "--max-tokens"),
    "bench: max length too short": ("bench", with_(BENCH, "--max-length", "4"), "--max-length"),
    "bench: baseline not measured": ("bench", with_(BENCH, "--baseline", "onnx:int8/padded"), "--baseline"),
    "bench: check file missing": ("bench", with_(BENCH, "--check", "nope.json"), "--check"),
    "bench: check file not JSON": ("bench", with_(BENCH, "--check", "bad.json"), "not valid JSON"),
    "bench: check compares a cell not run": ("bench", with_(BENCH, "--check", "ratios.json"), "--cells"),
    "bench: out is a file": ("bench", with_(BENCH, "--out", "notes.txt"), "is a file"),
    "bench: out holds someone's bench.md": ("bench", with_(BENCH, "--out", "docs"), "not written by"),
    "bench: data missing": ("bench", with_(BENCH, "--data", "nope.csv"), "no such file"),
    "bench: fp16 torch on a CPU": pytest.param("bench", with_(BENCH, "--cells", "torch:fp16/sorted"), "GPU",
                                               marks=GPU),
}


def _main(cli: str):
    from arena.bench.cli import main as bench
    from arena.bench.data_report import main as report
    from arena.export.cli import main as export
    from arena.infer.cli import main as infer
    from arena.train.cli import main as train

    return {"train": train, "export": export, "infer": infer, "report": report, "bench": bench}[cli]


def run_cli(monkeypatch, capsys, folder, cli: str, args: list) -> tuple[int, str, str]:
    """Run ``arena-<cli> args`` in ``folder`` through its console entry point: (exit code, stdout, stderr)."""
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", [f"arena-{cli}", *map(str, args)])
    try:
        _main(cli)()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("cli", "args", "says"), list(CASES.values()), ids=list(CASES))
def test_mistake_is_one_error_line_and_touches_nothing(ws, monkeypatch, capsys, cli, args, says):
    before = tree(ws)
    code, out, err = run_cli(monkeypatch, capsys, ws, cli, args)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"
    assert len(errors) == 1, err
    assert [line for line in err.splitlines() if line.strip()] == errors, err  # nothing but the error line
    assert says in errors[0], errors[0]
    assert "Traceback" not in out + err
    assert tree(ws) == before, "files were created, changed or removed"


def test_the_list_covers_every_cli_with_many_mistakes():
    per_cli = {}
    for value in CASES.values():
        cli = value.values[0] if hasattr(value, "values") else value[0]
        per_cli[cli] = per_cli.get(cli, 0) + 1
    assert set(per_cli) == {"train", "export", "infer", "report", "bench"}
    assert min(per_cli.values()) >= 9 and sum(per_cli.values()) >= 120


def test_workspace_snapshot_sees_every_kind_of_change(tmp_path):
    (tmp_path / "a").write_text("x")
    before = tree(tmp_path)
    os.replace(tmp_path / "a", tmp_path / "b")
    assert tree(tmp_path) != before
