"""Issue 14: no command destroys a user's files or gives silently wrong output. One test per reported scenario."""

import json
import logging
import os
import shutil

import pandas as pd
import pytest

from arena.cli.safety import (
    RUNNING,
    check_export_out,
    check_train_output,
    is_arena_export,
    unfinished_reason,
    warn_if_unfinished,
)
from arena.errors import ConfigError, ModelError
from tests.conftest import TEST_CSV, TOKENIZER, TRAIN_CSV


def tree(folder):
    """Every file under ``folder`` with its size, mtime and inode: any write, replacement or deletion shows."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), folder)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def copy_model(src, dst, *, skip=()):
    """A copy of a model folder; big files hard-linked (nothing here may write them)."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.name in skip:
            continue
        if p.stat().st_size > 1_000_000 and not p.name.startswith("tokenizer"):
            os.link(p, dst / p.name)
        else:
            shutil.copy2(p, dst / p.name)
    return dst


# ------------------------------------------------------------------------------------------------ export --out


def test_export_onto_its_own_checkpoint_is_refused(tmp_path, tiny_checkpoint):
    from arena.export.cli import run_export

    ckpt = copy_model(tiny_checkpoint, tmp_path / "run" / "model")
    for name in ("metrics.json", "oof.csv"):
        (ckpt / name).write_text("precious")
    (tmp_path / "run" / "notes.txt").write_text("unrelated")
    before = tree(tmp_path)
    for out in (ckpt, tmp_path / "run", tmp_path):  # the checkpoint itself, and folders above it
        with pytest.raises(ConfigError, match="checkpoint"):
            run_export(ckpt, out, overwrite=True, data=str(TRAIN_CSV))
    assert tree(tmp_path) == before


def test_export_overwrite_replaces_only_an_earlier_export(tmp_path, tiny_checkpoint, tiny_export):
    from arena.export.cli import run_export

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="did not write"):
        run_export(tiny_checkpoint, foreign, overwrite=True, data=str(TRAIN_CSV))
    assert (foreign / "thesis.tex").read_text() == "years of work"

    earlier = copy_model(tiny_export, tmp_path / "export")
    assert is_arena_export(earlier)
    (earlier / "submission.csv").write_text("id\n")  # a file arena-export did not write makes it someone's folder
    assert not is_arena_export(earlier)
    with pytest.raises(ConfigError, match="did not write.*submission.csv"):
        check_export_out(earlier, checkpoint=tiny_checkpoint, data=None, overwrite=True)
    (earlier / "submission.csv").unlink()
    with pytest.raises(ConfigError, match="--overwrite"):
        check_export_out(earlier, checkpoint=tiny_checkpoint, data=None, overwrite=False)
    summary = run_export(tiny_checkpoint, earlier, overwrite=True, data=str(TRAIN_CSV),
                         parity_shapes="1x17,4x64")
    assert summary["parity"]["fp32"] is True and is_arena_export(earlier)
    assert not (earlier / "model.int8.onnx").exists()  # replaced whole, not merged


def test_export_into_an_empty_folder_is_allowed(tmp_path, tiny_checkpoint):
    (tmp_path / "empty").mkdir()
    check_export_out(tmp_path / "empty", checkpoint=tiny_checkpoint, data=TRAIN_CSV, overwrite=False)


# ------------------------------------------------------------------------------------------------ tokenizer


def test_checkpoint_without_tokenizer_files_is_refused_everywhere(tmp_path, tiny_checkpoint):
    from arena.export.cli import run_export
    from arena.infer.cli import run_infer

    bare = copy_model(tiny_checkpoint, tmp_path / "bare", skip=("tokenizer.json", "tokenizer_config.json"))
    with pytest.raises(ModelError, match="no usable tokenizer"):
        run_export(bare, tmp_path / "export", data=str(TRAIN_CSV))
    assert not (tmp_path / "export").exists()
    with pytest.raises(ModelError, match="no usable tokenizer"):
        run_infer(TEST_CSV, bare, tmp_path / "sub.csv", backend="torch")
    assert not (tmp_path / "sub.csv").exists()


def test_tokenizer_larger_than_the_embedding_is_refused(tmp_path, tiny_checkpoint):
    from arena.models.modeling import load_tokenizer

    small = copy_model(tiny_checkpoint, tmp_path / "small")
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    with pytest.raises(ModelError, match="belongs to another model"):
        load_tokenizer(small)


def test_export_manifest_hashes_and_guards_the_tokenizer(tmp_path, tiny_export):
    from arena.infer.cli import run_infer

    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= set(manifest["files"])
    tampered = copy_model(tiny_export, tmp_path / "tampered")
    (tampered / "tokenizer.json").write_text((tampered / "tokenizer.json").read_text().replace('"▁the"', '"▁teh"'))
    with pytest.raises(ModelError, match="tokenizer.json does not match the sha256"):
        run_infer(TEST_CSV, tampered, tmp_path / "a.csv")
    missing = copy_model(tiny_export, tmp_path / "missing", skip=("tokenizer.json",))
    with pytest.raises(ModelError, match="tokenizer.json is missing"):
        run_infer(TEST_CSV, missing, tmp_path / "b.csv")
    assert not (tmp_path / "a.csv").exists() and not (tmp_path / "b.csv").exists()


# ------------------------------------------------------------------------------------------------ devices


@pytest.fixture
def no_gpu(monkeypatch):
    import arena.machine.devices

    monkeypatch.setattr(arena.machine.devices, "torch_gpus", lambda: 0)
    monkeypatch.setattr(arena.machine.devices, "ort_cuda", lambda: False)


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_a_gpu_asked_for_on_a_cpu_machine_is_an_error(tmp_path, tiny_export, no_gpu, device):
    from arena.infer.cli import run_infer

    for kwargs in ({"device": device}, {"devices": device}, {"devices": f"{device},cuda:2"}):
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            run_infer(TEST_CSV, tiny_export, tmp_path / "s.csv", backend="torch", **kwargs)
    assert not (tmp_path / "s.csv").exists()


def test_devices_with_one_value_is_used_not_ignored(tmp_path, tiny_export, monkeypatch):
    import arena.machine.devices
    import arena.machine.gpu
    from arena.infer.cli import check_infer_request

    monkeypatch.setattr(arena.machine.devices, "torch_gpus", lambda: 2)
    monkeypatch.setattr(arena.machine.gpu, "torch_gpus", lambda: 2)  # the torch backend's own request check
    kwargs = dict(backend="torch", precision="auto", tta="none", policy="sorted", max_tokens=None, batch_size=64,
                  chunk_rows=100, threads=None, encode_workers=0, compile=False, device="auto")
    out = tmp_path / "s.csv"
    assert check_infer_request(TEST_CSV, tiny_export, out, devices="cuda:1", **kwargs) == ("cuda:1", None)
    assert check_infer_request(TEST_CSV, tiny_export, out, devices="cuda:0,cuda:1", **kwargs) == (
        "auto", ["cuda:0", "cuda:1"])
    with pytest.raises(ConfigError, match="2 CUDA GPU"):
        check_infer_request(TEST_CSV, tiny_export, out, devices="cuda:2", **kwargs)
    with pytest.raises(ConfigError, match="not both"):
        check_infer_request(TEST_CSV, tiny_export, out, devices="cuda:0,cuda:1", **{**kwargs, "device": "cpu"})


def test_devices_cpu_runs_on_the_cpu(tmp_path, tiny_export):
    from arena.infer.cli import run_infer

    summary = run_infer(TEST_CSV, tiny_export, tmp_path / "s.csv", devices="cpu")
    assert "cpu" in summary["backend"] and "processes" not in summary["backend"]


# ------------------------------------------------------------------------------------------------ infer --out


def test_infer_never_overwrites_its_input_or_a_model_file(tmp_path, tiny_export):
    from arena.infer.cli import run_infer

    test = tmp_path / "test.csv"
    shutil.copy2(TEST_CSV, test)
    model = copy_model(tiny_export, tmp_path / "export")
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    before = tree(tmp_path)
    for out, why in ((test, "input CSV"), (model / "model.onnx", "model folder"), (model / "new.csv", "inside"),
                     (tmp_path / "notes.csv", "not a submission"), (tmp_path, "is a folder"),
                     (tmp_path / "s.csv.gz", "plain CSV")):
        with pytest.raises(ConfigError, match=why):
            run_infer(test, model, out)
    assert tree(tmp_path) == before
    run_infer(test, model, tmp_path / "sub.csv")
    run_infer(test, model, tmp_path / "sub.csv")  # an earlier submission may be replaced


def test_infer_reads_a_gzipped_test_file(tmp_path, tiny_export):
    import gzip

    from arena.infer.cli import run_infer

    (tmp_path / "test.csv.gz").write_bytes(gzip.compress(TEST_CSV.read_bytes()))
    run_infer(tmp_path / "test.csv.gz", tiny_export, tmp_path / "sub.csv")
    ids = pd.read_csv(TEST_CSV)["id"].tolist()
    assert pd.read_csv(tmp_path / "sub.csv")["id"].tolist() == ids


# ------------------------------------------------------------------------------------------------ training


def _train_cfg(tiny_config, out, **kw):
    from arena.encode import EncoderConfig
    from arena.train.loop import TrainConfig

    base = dict(data=str(TRAIN_CSV), model=str(tiny_config), tokenizer=str(TOKENIZER), random_init=True,
                output=str(out), encoder=EncoderConfig(max_length=64), batch_size=8, lr=3e-3, warmup_ratio=0.0,
                max_rows=40, calibrate=False, head="hf", swap_augment=False, epochs=1)
    return TrainConfig(**{**base, **kw})


def test_rerunning_train_into_a_finished_output_needs_overwrite(tmp_path, tiny_config):
    from arena.train.loop import run_training

    out = tmp_path / "run"
    run_training(_train_cfg(tiny_config, out))
    before = tree(out)
    assert {"train_done.json", "metrics.json", "oof.csv"} <= set(before) and RUNNING not in before
    with pytest.raises(ConfigError, match="finished run.*--overwrite"):
        run_training(_train_cfg(tiny_config, out))
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_training(_train_cfg(tiny_config, out, resume=True))
    assert tree(out) == before
    run_training(_train_cfg(tiny_config, out, overwrite=True, seed=7))
    assert json.loads((out / "train_config.json").read_text())["seed"] == 7


def test_interrupted_fresh_run_is_marked_and_loading_it_warns(tmp_path, tiny_config, caplog):
    from arena.infer.cli import run_infer
    from arena.train.loop import run_training

    class Crash(Exception):
        pass

    def crash(step):
        if step == 2:
            raise Crash

    out = tmp_path / "run"
    run_training(_train_cfg(tiny_config, out))  # a finished run first: the Ctrl-C scenario of the issue
    with pytest.raises(Crash):
        run_training(_train_cfg(tiny_config, out, overwrite=True, eval_steps=1, epochs=2), on_step=crash)
    assert (out / RUNNING).is_file() and (out / "model.safetensors").is_file()
    assert not (out / "train_done.json").exists() and not (out / "metrics.json").exists()  # no stale results
    assert unfinished_reason(out)
    with pytest.raises(ConfigError, match="unfinished run.*--resume"):
        check_train_output(out, resume=False, overwrite=False, inputs={})
    check_train_output(out, resume=True, overwrite=False, inputs={})  # resuming it is allowed
    with caplog.at_level(logging.WARNING, logger="arena.cli.safety"):
        run_infer(TEST_CSV, out, tmp_path / "sub.csv", backend="torch")
    assert "half-trained" in caplog.text
    run_training(_train_cfg(tiny_config, out, resume=True, eval_steps=1, epochs=2))
    assert not (out / RUNNING).exists() and unfinished_reason(out) is None


def test_export_of_an_unfinished_checkpoint_says_so(tmp_path, tiny_checkpoint, caplog):
    ckpt = copy_model(tiny_checkpoint, tmp_path / "ckpt")
    (ckpt / RUNNING).write_text("{}")
    with caplog.at_level(logging.WARNING, logger="arena.cli.safety"):
        assert warn_if_unfinished(ckpt)
    assert "half-trained" in caplog.text
    export = tmp_path / "export"
    export.mkdir()
    (export / "manifest.json").write_text(json.dumps({"source_training": "unfinished", "files": {},
                                                      "artifacts": {}}))
    assert "not finished" in unfinished_reason(export)


def test_train_output_never_holds_foreign_files_or_inputs(tmp_path, tiny_checkpoint):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "cv.pdf").write_text("x")
    with pytest.raises(ConfigError, match="did not write.*cv.pdf"):
        check_train_output(tmp_path / "docs", resume=False, overwrite=True, inputs={})
    with pytest.raises(ConfigError, match="is the model"):
        check_train_output(tiny_checkpoint, resume=False, overwrite=True, inputs={"model": tiny_checkpoint})
    with pytest.raises(ConfigError, match="holds the training data"):
        check_train_output(TRAIN_CSV.parent, resume=False, overwrite=True, inputs={"training data": TRAIN_CSV})


# ------------------------------------------------------------------------------------------------ report


def _report(args):
    from typer.testing import CliRunner

    from arena.bench.data_report import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_report_on_an_unlabelled_file_says_so(tmp_path):
    out = tmp_path / "rep"
    result = _report([TEST_CSV, "--out", out])
    assert result.exit_code == 0, result.output
    text = (out / "data.md").read_text()
    assert "unlabelled" in text and "%)" not in text.split("multi-turn")[0]  # no class shares
    assert "data.png" not in text and not (out / "data.png").exists()
    assert json.loads((out / "data.json").read_text())["labelled"] is False


def test_report_reused_folder_shows_no_stale_plot(tmp_path):
    out = tmp_path / "rep"
    assert _report([TRAIN_CSV, "--out", out]).exit_code == 0
    assert (out / "data.png").exists()
    assert _report([TEST_CSV, "--out", out]).exit_code == 0
    assert not (out / "data.png").exists() and "data.png" not in (out / "data.md").read_text()


def test_report_does_not_overwrite_files_it_did_not_write(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "data.md").write_text("my notes")
    result = _report([TEST_CSV, "--out", out])
    assert result.exit_code == 2 and "not written by arena-report" in result.output
    assert (out / "data.md").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == ["data.md"]
