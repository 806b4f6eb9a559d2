"""arena-train in a new user's hands, round three (issue 27): validation rows reaching training through --extra,
soft labels for other data, --overwrite of a folder arena-train never wrote, --resume with other settings, data or
a mistyped folder, --merge over its own output, a silent --max-steps 0, a silent Ctrl-C, and --compile.

Each mistake ends in exit code 2 with exactly one ``error:`` line naming what to change, and touches no file.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

from arena.artifacts import TRAIN_CONFIG, TRAIN_DATA
from arena.cli.safety import RUNNING, check_train_output, train_record
from arena.errors import ConfigError
from tests.conftest import TEST_CSV, TRAIN_CSV
from tests.test_cli_misuse import TRAIN, _main, with_
from tests.test_safety import copy_model, tree

PROBS = ["winner_model_a", "winner_model_b", "winner_tie"]


def _soft(path, ids, probs=(0.5, 0.3, 0.2)):
    pd.DataFrame({"id": [str(i) for i in ids], **{c: p for c, p in zip(PROBS, probs, strict=True)}}).to_csv(
        path, index=False)
    return path


def run_cli(ws, monkeypatch, capsys, args, *, on_step=None):
    """arena-train ``args`` in ``ws`` through its console entry point: (exit code, stdout, stderr). ``on_step``
    is handed to the training loop (to interrupt it)."""
    import arena.train.loop as loop

    if on_step is not None:
        real = loop.run_training
        monkeypatch.setattr(loop, "run_training", lambda cfg: real(cfg, on_step=on_step))
    monkeypatch.chdir(ws)
    monkeypatch.setattr(sys, "argv", ["arena-train", *args])
    try:
        _main("train")()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_checkpoint):
    """A user's folder: 60 training rows, other rows, a checkpoint to start from, a plain Hugging Face model folder
    (the same file names, no arena-train record), and an arena-train run interrupted at step 1."""
    ws = tmp_path_factory.mktemp("ws-train")
    frame = pd.read_csv(TRAIN_CSV)
    frame.head(60).to_csv(ws / "train.csv", index=False)
    frame.head(60).to_csv(ws / "train_copy.csv", index=False)
    frame.iloc[100:160].to_csv(ws / "other.csv", index=False)
    _soft(ws / "few_soft.csv", frame["id"].head(5))
    copy_model(tiny_checkpoint, ws / "ckpt")
    copy_model(tiny_checkpoint, ws / "hf_model", skip=("arena.json", TRAIN_CONFIG, TRAIN_DATA))
    (ws / "emptydir").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws)
        import arena.train.loop as loop

        real = loop.run_training

        def crash(step):
            if step == 1:
                raise Stop

        mp.setattr(loop, "run_training", lambda cfg: real(cfg, on_step=crash))
        mp.setattr(sys, "argv", ["arena-train", *with_(TRAIN, "--output", "cut", "--save-steps", "1")])
        with pytest.raises(Stop):
            _main("train")()
    assert (ws / "cut" / RUNNING).is_file() and (ws / "cut" / "state").is_dir()
    return ws


MISTAKES = {
    "soft labels for 5 of 20 rows": (with_(TRAIN, "--soft-labels", "few_soft.csv"), "few_soft.csv: its ids match "
                                                                                       "only 5 of the 20"),
    "overwrite a plain Hugging Face folder": (with_(TRAIN, "--output", "hf_model", "--overwrite"), "did not write"),
    "a plain Hugging Face folder is no earlier run": (with_(TRAIN, "--output", "hf_model"), "did not write"),
    "resume a plain Hugging Face folder": (with_(TRAIN, "--output", "hf_model", "--resume"), "did not write"),
    "resume a mistyped folder": (with_(TRAIN, "--output", "cutt", "--resume"), "--resume-or-start"),
    "resume an empty folder": (with_(TRAIN, "--output", "emptydir", "--resume"), "no run to resume"),
    "resume with another learning rate": (with_(TRAIN, "--output", "cut", "--resume", "--lr", "5e-4"),
                                          "--lr 2e-05 -> 0.0005"),
    "resume with another max length": (with_(TRAIN, "--output", "cut", "--resume", "--max-length", "32"),
                                       "--max-length 64 -> 32"),
    "resume with other rows": (with_(TRAIN, "--output", "cut", "--resume", "--data", "other.csv"),
                               "--data train.csv -> other.csv"),
    "resume with more rows": (with_(TRAIN, "--output", "cut", "--resume", "--max-rows", "40"),
                              "--max-rows 20 -> 40"),
    "resume with another seed": (with_(TRAIN, "--output", "cut", "--resume", "--seed", "1"), "--seed 42 -> 1"),
}


@pytest.mark.parametrize(("args", "says"), list(MISTAKES.values()), ids=list(MISTAKES))
def test_mistake_is_one_error_line_and_touches_nothing(ws, monkeypatch, capsys, args, says):
    before = tree(ws)
    code, out, err = run_cli(ws, monkeypatch, capsys, args)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"
    assert len(errors) == 1 and says in errors[0], err
    assert "earlier run" not in errors[0]
    assert tree(ws) == before, "files were created, changed or removed"


def test_resume_keeps_the_record_and_allows_what_does_not_change_the_result(ws, monkeypatch, capsys, tmp_path):
    """Another path to the same rows and another --save-steps may differ; the run's record stays as written."""
    run = tmp_path / "cut"
    shutil.copytree(ws / "cut", run)
    record = {name: (run / name).read_bytes() for name in (TRAIN_CONFIG, TRAIN_DATA)}
    code, out, err = run_cli(ws, monkeypatch, capsys, with_(TRAIN, "--output", str(run), "--resume", "--data",
                                                             "train_copy.csv", "--save-steps", "3"))
    assert code == 0, err[-2000:]
    assert {name: (run / name).read_bytes() for name in record} == record
    meta = json.loads((run / "arena.json").read_text())
    assert meta["train_config"]["save_steps"] == 1 and meta["data"].endswith("train.csv")
    assert json.loads(out.splitlines()[-1])["oof_log_loss"] > 0 and not (run / RUNNING).exists()


def test_resume_or_start_starts_where_there_is_nothing_to_resume(ws, monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(ws, monkeypatch, capsys, with_(TRAIN, "--output", str(tmp_path / "new"),
                                                             "--resume-or-start", "--max-steps", "1"))
    assert code == 0, err[-2000:]
    assert (tmp_path / "new" / "train_done.json").is_file() and train_record(tmp_path / "new") == TRAIN_CONFIG


def test_overwrite_replaces_arena_trains_own_output_only(ws, tmp_path):
    """A plain model folder holds arena-train's file names but not its record; a --max-steps 0 checkpoint from
    before the record existed is still arena-train's (its arena.json holds the run's configuration)."""
    with pytest.raises(ConfigError, match="did not write"):
        check_train_output(ws / "hf_model", resume=False, overwrite=True, inputs={})
    legacy = copy_model(ws / "ckpt", tmp_path / "legacy", skip=(TRAIN_CONFIG, TRAIN_DATA))
    check_train_output(legacy, resume=False, overwrite=True, inputs={})
    fake = copy_model(ws / "hf_model", tmp_path / "fake")
    (fake / TRAIN_CONFIG).write_text(json.dumps({"learning_rate": 1e-4}))  # another tool's file of that name
    with pytest.raises(ConfigError, match="did not write"):
        check_train_output(fake, resume=False, overwrite=True, inputs={})


# ------------------------------------------------------------------------------------------------ outputs


def test_max_steps_zero_prints_its_summary_and_json(ws, monkeypatch, capsys, tmp_path):
    code, out, err = run_cli(ws, monkeypatch, capsys, with_(TRAIN, "--output", str(tmp_path / "z"), "--max-steps",
                                                             "0"))
    assert code == 0, err[-2000:]
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("done:") and "untrained" in lines[0]
    assert json.loads(lines[1]) == {"trained": False, "steps": 0, "output": str(tmp_path / "z")}


def test_ctrl_c_says_what_was_kept_and_the_run_resumes(ws, monkeypatch, capsys, tmp_path):
    def ctrl_c(step):
        if step == 2:
            raise KeyboardInterrupt

    out_dir = tmp_path / "run"
    args = with_(TRAIN, "--output", str(out_dir), "--save-steps", "1")
    code, out, err = run_cli(ws, monkeypatch, capsys, args, on_step=ctrl_c)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 130 and len(lines) == 1, err[-2000:]
    assert "interrupted" in lines[0] and "state saved at step 2" in lines[0] and "--resume" in lines[0]
    monkeypatch.undo()
    code, out, err = run_cli(ws, monkeypatch, capsys, [*args, "--resume"])
    assert code == 0 and not (out_dir / RUNNING).exists(), err[-2000:]


def test_ctrl_c_in_any_command_prints_one_line(capsys):
    import typer

    from arena.cli.app import on_interrupt, run_app

    app = typer.Typer()

    @app.command()
    def work() -> None:
        on_interrupt(lambda: "kept the first chunk")
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exc:
        run_app(app, [])
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip() == "error: interrupted (Ctrl-C); kept the first chunk"


def test_compile_is_one_dynamic_compile(tmp_path, tiny_config, monkeypatch):
    import torch

    from tests.test_train import tiny_cfg

    calls = []

    def fake_compile(model, **kw):
        calls.append(kw)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    from arena.train.loop import run_training

    run_training(tiny_cfg(tiny_config, tmp_path / "c", compile=True, max_steps=2, max_rows=20))
    assert calls == [{"dynamic": True}]


# ------------------------------------------------------------------------------------------------ rows


def _extra_files(tmp_path, frame, test):
    """Extra file 1: five training rows (same ids), three with new ids but a training row's text (one A/B
    swapped), and the 3 test rows; file 2: a test row again and one new battle."""
    cols = list(test.columns)
    same_id = frame.head(5)[cols]
    same_text = frame.iloc[5:8][cols].copy()
    same_text["id"] = [90000001, 90000002, 90000003]
    first = same_text.index[0]
    same_text.loc[first, ["response_a", "response_b"]] = [same_text.loc[first, "response_b"],
                                                          same_text.loc[first, "response_a"]]
    new = frame.iloc[[50]][cols].copy()
    new["id"] = 90000009
    new["prompt"] = new["prompt"].str.slice(0, -1) + ', "and once more"]'
    pd.concat([same_id[cols], same_text[cols], test]).to_csv(tmp_path / "extra1.csv", index=False)
    pd.concat([test.head(1), new[cols]]).to_csv(tmp_path / "extra2.csv", index=False)
    ids = [*frame["id"].head(40), *test["id"], 90000009]
    _soft(tmp_path / "soft.csv", ids)
    return [str(tmp_path / "extra1.csv"), str(tmp_path / "extra2.csv")], str(tmp_path / "soft.csv")


@pytest.mark.parametrize("folds", [None, 3], ids=["holdout", "kfold"])
def test_validation_rows_never_train_by_any_path(tmp_path, tiny_config, monkeypatch, tokenizer, folds):
    """Every training row of every split, extra rows and A/B-swapped copies included, is compared as token ids
    with that split's validation rows: none is one of them."""
    from arena.train import trainer
    from tests.test_train import tiny_cfg

    frame, test = pd.read_csv(TRAIN_CSV).head(60), pd.read_csv(TEST_CSV)
    frame.to_csv(tmp_path / "train.csv", index=False)
    extra, soft = _extra_files(tmp_path, frame, test)
    seen = []
    real = trainer.build_trainer

    def spy(config, **kw):
        train = {tuple(ids) for ids in kw["rows"].ids}
        val = {tuple(ids) for ids in kw["val"].ids}
        seen.append((len(train & val), int((kw["rows"].labels == -1).sum()), len(kw["rows"].ids), len(val)))
        return real(config, **kw)

    monkeypatch.setattr(trainer, "build_trainer", spy)
    summary = run_training_with(tiny_cfg(tiny_config, tmp_path / "run", data=str(tmp_path / "train.csv"),
                                         folds=folds, soft_labels=soft, extra=tuple(extra), swap_augment=True,
                                         max_steps=1))
    assert seen and all(overlap == 0 for overlap, *_ in seen)
    assert all(n_extra == 2 * 4 for _, n_extra, _, _ in seen)  # 3 test rows + 1 new battle, and their swaps
    assert all(n_train == 2 * (40 - n_val) + 8 for _, _, n_train, n_val in seen)
    assert summary["extra_rows"] == {"files": extra, "kept": 4, "dropped": {
        "id_in_training_file": 5, "pair_in_training_file": 3, "repeated": 1}}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["extra_rows"]["kept"] == 4


def run_training_with(config):
    from arena.train.loop import run_training

    return run_training(config)


def test_extra_file_of_training_rows_only_is_refused(tmp_path, tiny_config):
    """The issue's case: --extra is the training file itself; its rows would train as 'pseudo-labelled'."""
    from tests.test_train import tiny_cfg

    frame = pd.read_csv(TRAIN_CSV).head(40)
    frame.to_csv(tmp_path / "train.csv", index=False)
    soft = _soft(tmp_path / "soft.csv", frame["id"])
    with pytest.raises(ConfigError, match="all 40 rows are rows of the training file"):
        run_training_with(tiny_cfg(tiny_config, tmp_path / "run", data=str(tmp_path / "train.csv"),
                                   soft_labels=str(soft), extra=str(tmp_path / "train.csv")))
    assert not (tmp_path / "run").exists()


def test_repeated_extra_takes_every_file(ws, monkeypatch, capsys):
    import arena.train.loop as loop

    got = []
    monkeypatch.setattr(loop, "run_training", lambda cfg: got.append(cfg) or {})
    code, _, err = run_cli(ws, monkeypatch, capsys, [*TRAIN, "--extra", "a.csv", "--extra", "b.csv"])
    assert code == 0, err
    assert got[0].extra == ("a.csv", "b.csv")


def test_soft_labels_for_the_extra_rows_only_are_pseudo_labelling(tmp_path, tiny_config):
    """A teacher file holding only the extra rows' ids is no mistake: the labelled rows keep their hard labels."""
    from tests.test_train import tiny_cfg

    test_ids = pd.read_csv(TEST_CSV)["id"]
    soft = _soft(tmp_path / "soft.csv", test_ids)
    summary = run_training_with(tiny_cfg(tiny_config, tmp_path / "run", soft_labels=str(soft), extra=str(TEST_CSV),
                                         max_steps=1))
    assert summary["soft_label_rows"] == 0 and summary["extra_rows"]["kept"] == 3


# ------------------------------------------------------------------------------------------------ resume, k-fold


def test_kfold_resumed_after_a_finished_fold_matches_uninterrupted(tmp_path, tiny_config):
    """A k-fold run interrupted in its second fold resumes there (the first fold kept, not trained again) and ends
    as an uninterrupted run does."""
    from tests.test_train import tiny_cfg

    kw = dict(folds=2, epochs=1, max_rows=24, save_steps=1)
    full = run_training_with(tiny_cfg(tiny_config, tmp_path / "full", **kw))
    from arena.train.loop import run_training

    def crash(step):
        crash.calls += 1
        if crash.calls == 3:  # fold 0 trains 2 steps; the third step is fold 1's first
            raise Stop

    crash.calls = 0
    with pytest.raises(Stop):
        run_training(tiny_cfg(tiny_config, tmp_path / "cut", **kw), on_step=crash)
    assert (tmp_path / "cut" / "fold_0" / "train_done.json").is_file()
    resumed = run_training(tiny_cfg(tiny_config, tmp_path / "cut", resume=True, **kw))
    for k in range(2):
        a = json.loads((tmp_path / "full" / f"fold_{k}" / "train_done.json").read_text())
        b = json.loads((tmp_path / "cut" / f"fold_{k}" / "train_done.json").read_text())
        assert a["weights_sha256"] == b["weights_sha256"]
    assert resumed["oof_log_loss"] == pytest.approx(full["oof_log_loss"])
    def losses(summary):  # everything but the speed, which differs run to run
        return [[(h["step"], h["log_loss"], h["train_loss"]) for h in s["history"]] for s in summary["splits"]]

    assert losses(resumed) == losses(full)


def test_merge_over_its_own_earlier_output(tmp_path, decoder_base):
    """peft's README.md beside a merged adapter is arena-train's: --overwrite replaces that run."""
    from typer.testing import CliRunner

    from arena.train.cli import app

    args = ["--data", str(TRAIN_CSV), "--model", str(decoder_base), "--output", str(tmp_path / "m"), "--max-rows",
            "16", "--max-length", "64", "--batch-size", "8", "--max-steps", "1", "--lora-r", "2", "--lora-targets",
            "q_proj", "--no-calibrate", "--no-swap-augment", "--merge"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert (tmp_path / "m" / "README.md").is_file() and not (tmp_path / "m" / "adapter_config.json").exists()
    again = CliRunner().invoke(app, [*args, "--overwrite"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output.strip().splitlines()[-1])["oof_log_loss"] > 0


def test_partition_invariants_catch_a_leak():
    """The check every run makes: a split whose training rows include a validation row, or an extra row that is
    a training-file row, is refused as a bug."""
    from pathlib import Path

    from arena.data import read_train
    from arena.train.partition import Partition, Split, check_partition

    rows = read_train(TRAIN_CSV)[:10]
    good = Split("holdout", Path("x"), np.arange(8), np.arange(8, 10))
    check_partition(Partition([good]), 10, rows)
    with pytest.raises(RuntimeError, match="overlap"):
        check_partition(Partition([Split("holdout", Path("x"), np.arange(9), np.arange(8, 10))]), 10, rows)
    with pytest.raises(RuntimeError, match="--extra"):
        check_partition(Partition([good], extra=[rows[3]]), 10, rows)
