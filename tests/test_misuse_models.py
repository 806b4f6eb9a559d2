"""Issue 27, the model side: a LoRA adapter on the wrong base, partial fold ensembles, a bench export of another
model, and error messages that name the option the user actually gave.

Each misuse ends in exit code 2 with one ``error:`` line naming what to change, and touches no file
(:func:`run_cli`, the same contract as tests/test_cli_misuse.py).
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from arena.errors import ModelError
from tests.conftest import MISTRAL_TOKENIZER, TEST_CSV, TRAIN_CSV, lora_config
from tests.test_cli_misuse import run_cli
from tests.test_decoder import tiny_decoder_config
from tests.test_safety import copy_model, tree


def refused(monkeypatch, capsys, folder, cli: str, args: list[str], *says: str) -> str:
    """Assert that the command is one ``error:`` line (exit 2) containing every ``says`` and changes nothing."""
    before = tree(folder)
    code, out, err = run_cli(monkeypatch, capsys, folder, cli, args)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert code == 2, f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in says:
        assert text in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert tree(folder) == before, "files were created, changed or removed"
    return lines[0]


# ------------------------------------------------------------------------------------------------ LoRA base
def _decoder_base(root, family: str, **overrides):
    """A tiny random ``family`` classifier saved as a base folder (weights, config, the Mistral tokenizer)."""
    from arena.encode import EncoderConfig
    from arena.train.loop import TrainConfig, run_training

    config_dir = root / f"{family}-config"
    tiny_decoder_config(family, **overrides).save_pretrained(config_dir)
    out = root / f"{family}-base"
    run_training(TrainConfig(data=str(TRAIN_CSV), model=str(config_dir / "config.json"),
                             tokenizer=str(MISTRAL_TOKENIZER), random_init=True, output=str(out), max_steps=0,
                             lora_r=0, encoder=EncoderConfig(max_length=64)))
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Llama and Qwen2 bases of the same width (their LoRA module names agree), and a 3-layer Llama."""
    root = tmp_path_factory.mktemp("bases")
    return {"llama": _decoder_base(root, "llama"), "qwen2": _decoder_base(root, "qwen2"),
            "llama3": _decoder_base(root / "deep", "llama", num_hidden_layers=3)}


@pytest.fixture(scope="module")
def llama_adapter(tmp_path_factory, bases):
    from arena.train.loop import run_training

    out = tmp_path_factory.mktemp("llama-adapter") / "adapter"
    run_training(lora_config(bases["llama"], out, max_rows=16, max_steps=1, lora_r=4))
    return out


def test_adapter_records_its_base_fingerprint(llama_adapter, bases):
    from arena.models.lora import base_fingerprint
    from arena.models.modeling import read_meta

    recorded = read_meta(llama_adapter).head["base_fingerprint"]
    assert recorded == base_fingerprint(str(bases["llama"]))
    assert recorded["model_type"] == "llama" and recorded["hidden_size"] == 64
    assert recorded["num_hidden_layers"] == 2 and recorded["vocab_size"] == 32000
    assert recorded["backbone_tensors"] > 10 and len(recorded["backbone_sha256"]) == 64


def test_llama_adapter_on_a_qwen2_base_is_refused(llama_adapter, bases, monkeypatch, capsys, tmp_path):
    from arena.models.modeling import load_classifier

    monkeypatch.setenv("ARENA_BASE_MODEL", str(bases["qwen2"]))
    with pytest.raises(ModelError, match="model_type llama vs qwen2") as info:
        load_classifier(llama_adapter)
    assert str(bases["llama"].resolve()) in str(info.value) and str(bases["qwen2"]) in str(info.value)
    shutil.copy2(TEST_CSV, tmp_path / "test.csv")
    import arena.serving.loading as loading

    monkeypatch.setattr(loading, "open_model", lambda *a, **k: pytest.fail("refused only after loading models"))
    refused(monkeypatch, capsys, tmp_path, "infer", ["test.csv", "--model", llama_adapter, "--out", "sub.csv"],
            "ARENA_BASE_MODEL", "model_type llama vs qwen2")
    assert not (tmp_path / "sub.csv").exists()


def test_adapter_on_a_deeper_base_of_its_own_family_is_refused(llama_adapter, bases, monkeypatch):
    from arena.models.modeling import load_classifier

    monkeypatch.setenv("ARENA_BASE_MODEL", str(bases["llama3"]))
    with pytest.raises(ModelError, match="num_hidden_layers 2 vs 3"):
        load_classifier(llama_adapter)


def test_recorded_base_replaced_by_another_model_is_refused(llama_adapter, bases, tmp_path, monkeypatch):
    """The check runs on every load, not only where ARENA_BASE_MODEL is set: a base folder that now holds another
    model (same path) is caught too."""
    from arena.models.modeling import load_classifier

    monkeypatch.delenv("ARENA_BASE_MODEL", raising=False)
    adapter = copy_model(llama_adapter, tmp_path / "adapter")
    meta = json.loads((adapter / "arena.json").read_text())
    meta["head"]["base"] = str(bases["qwen2"])
    (adapter / "arena.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="its recorded base"):
        load_classifier(adapter)


def test_same_base_resharded_or_as_a_causal_lm_still_loads(llama_adapter, bases, tmp_path, monkeypatch):
    """The fingerprint is the backbone's tensor names and shapes: a re-sharded copy of the base, or its causal-LM
    form (``lm_head`` instead of ``score``: the adapter carries its own head), is the same base."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from arena.models.modeling import load_classifier

    sharded = tmp_path / "sharded"
    AutoModelForSequenceClassification.from_pretrained(bases["llama"]).save_pretrained(sharded,
                                                                                        max_shard_size="1MB")
    assert (sharded / "model.safetensors.index.json").is_file()
    causal = tmp_path / "causal"
    AutoModelForCausalLM.from_pretrained(bases["llama"]).save_pretrained(causal)
    for copy in (sharded, causal):
        monkeypatch.setenv("ARENA_BASE_MODEL", str(copy))
        assert load_classifier(llama_adapter, require_three_labels=True).config.num_labels == 3


def test_adapter_written_before_fingerprints_loads_with_a_warning(llama_adapter, bases, tmp_path, monkeypatch,
                                                                  caplog):
    from arena.models.modeling import load_classifier

    old = copy_model(llama_adapter, tmp_path / "old")
    meta = json.loads((old / "arena.json").read_text())
    del meta["head"]["base_fingerprint"]
    (old / "arena.json").write_text(json.dumps(meta))
    monkeypatch.setenv("ARENA_BASE_MODEL", str(bases["qwen2"]))  # unknowable without a fingerprint: a warning
    with caplog.at_level("WARNING"):
        load_classifier(old)
    assert any("before arena recorded its base's fingerprint" in r.message for r in caplog.records)


def test_fingerprint_reads_headers_not_weights(bases, tmp_path):
    """Only the safetensors headers are read: a file whose tensor bytes are cut off still fingerprints the same;
    a corrupt header is a ModelError naming the file."""
    from arena.models.lora import base_fingerprint

    cut = copy_model(bases["llama"], tmp_path / "cut", skip=("model.safetensors",))
    data = (bases["llama"] / "model.safetensors").read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    (cut / "model.safetensors").write_bytes(data[:header + 16])
    assert base_fingerprint(str(cut)) == base_fingerprint(str(bases["llama"]))
    (cut / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError, match="model.safetensors"):
        base_fingerprint(str(cut))


# ------------------------------------------------------------------------------------------------ workspace
@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_checkpoint, tiny_export, tiny_config):
    """A user's folder: test data, a checkpoint, its export, a checkpoint without tokenizer files, a second
    checkpoint with other weights, and a 2-fold training output."""
    from arena.encode import EncoderConfig
    from arena.train.loop import TrainConfig, run_training
    from tests.conftest import TOKENIZER

    ws = tmp_path_factory.mktemp("ws")
    pd.read_csv(TRAIN_CSV).head(40).to_csv(ws / "train.csv", index=False)
    shutil.copy2(TEST_CSV, ws / "test.csv")
    (ws / "notes.txt").write_text("my notes\n")
    copy_model(tiny_checkpoint, ws / "ckpt")
    copy_model(tiny_checkpoint, ws / "ckpt_notok", skip=("tokenizer.json", "tokenizer_config.json", "spm.model"))
    copy_model(tiny_export, ws / "export")
    common = dict(data=str(TRAIN_CSV), model=str(tiny_config), tokenizer=str(TOKENIZER), random_init=True,
                  head="hf", encoder=EncoderConfig(max_length=64))
    run_training(TrainConfig(**common, output=str(ws / "other"), max_steps=0, seed=7))
    run_training(TrainConfig(**common, output=str(ws / "cv"), folds=2, max_rows=24, max_steps=1, batch_size=8,
                             calibrate=False))
    return ws


def _partial_copies(ws):
    """``cv_gap``: fold_1's folder deleted; ``cv_cut``: fold_1 interrupted (no train_done.json, the run still
    marked running, no metrics.json), as a killed run leaves it."""
    for name in ("cv_gap", "cv_cut"):
        if not (ws / name).exists():
            shutil.copytree(ws / "cv", ws / name)
    shutil.rmtree(ws / "cv_gap" / "fold_1", ignore_errors=True)
    (ws / "cv_cut" / "fold_1" / "train_done.json").unlink(missing_ok=True)
    (ws / "cv_cut" / "metrics.json").unlink(missing_ok=True)
    (ws / "cv_cut" / "train_running.json").write_text("{}")


# ------------------------------------------------------------------------------------------------ partial ensembles
def test_fold_set_is_the_one_completeness_rule(ws):
    from arena.serving.ensemble import fold_set, member_folders

    _partial_copies(ws)
    whole = fold_set(ws / "cv")
    assert whole.complete and whole.describe() == "2 of 2 folds" and member_folders(ws / "cv") == whole.members
    gap, cut = fold_set(ws / "cv_gap"), fold_set(ws / "cv_cut")
    assert (gap.expected, gap.missing, gap.unfinished, [m.name for m in gap.members]) == (2, ["fold_1"], [],
                                                                                          ["fold_0"])
    assert (cut.expected, cut.missing, cut.unfinished, [m.name for m in cut.members]) == (2, [], ["fold_1"],
                                                                                          ["fold_0"])
    assert fold_set(ws / "ckpt") is None and fold_set(ws / "export") is None


@pytest.mark.parametrize(("folder", "says"), [("cv_gap", "fold_1 missing"), ("cv_cut", "fold_1 did not finish")])
def test_partial_training_output_is_refused_by_infer_and_export(ws, monkeypatch, capsys, folder, says):
    _partial_copies(ws)
    refused(monkeypatch, capsys, ws, "infer", ["test.csv", "--model", folder, "--out", "sub.csv"],
            says, "incomplete 2-fold", "--allow-partial")
    refused(monkeypatch, capsys, ws, "export", [folder, "--out", "ex", "--data", "train.csv", "--no-openvino"],
            says, "--allow-partial")


def test_allow_partial_says_k_of_n_folds_everywhere(ws, monkeypatch, capsys):
    """Scored with --allow-partial: the summary line and the JSON line say 1 of 2 folds; exported with it: the
    manifest and the JSON line say so, and scoring that export is refused again without --allow-partial."""
    _partial_copies(ws)
    code, out, err = run_cli(monkeypatch, capsys, ws, "infer", ["test.csv", "--model", "cv_cut", "--out", "p.csv",
                                                                "--backend", "torch", "--allow-partial"])
    assert code == 0, err
    line, summary = out.strip().splitlines()[-2:]
    assert "cv_cut: 1 of 2 folds" in line and json.loads(summary)["folds"] == {"cv_cut": "1 of 2 folds"}
    assert json.loads(summary)["models"] == 1

    code, out, err = run_cli(monkeypatch, capsys, ws, "export", [
        "cv_gap", "--out", "gap_export", "--data", "train.csv", "--parity-shapes", "1x17,2x64", "--no-openvino",
        "--allow-partial"])
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["folds"] == "1 of 2 folds"
    manifest = json.loads((ws / "gap_export" / "manifest.json").read_text())
    assert manifest["folds"]["describe"] == "1 of 2 folds" and manifest["folds"]["missing"] == ["fold_1"]
    member = json.loads((ws / "gap_export" / "fold_0" / "manifest.json").read_text())
    assert member["source_training"] == "finished"
    refused(monkeypatch, capsys, ws, "infer", ["test.csv", "--model", "gap_export", "--out", "sub.csv"],
            "fold_1 not in the export", "--allow-partial")
    code, out, err = run_cli(monkeypatch, capsys, ws, "infer", ["test.csv", "--model", "gap_export", "--out",
                                                                "g.csv", "--allow-partial"])
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["folds"] == {"gap_export": "1 of 2 folds"}
    shutil.rmtree(ws / "gap_export")
    for name in ("p.csv", "g.csv"):
        (ws / name).unlink()


def test_export_whose_member_came_from_an_unfinished_run_is_refused(ws, monkeypatch, capsys):
    """An export made before this check (the issue's case): the root manifest looks whole, the member's own
    manifest says its training had not finished. Every member's manifest is read when the export is scored."""
    from arena.artifacts import write_manifest
    from arena.serving.ensemble import ENSEMBLE_KIND

    old = ws / "old_export"
    copy_model(ws / "export", old / "fold_0")
    body = json.loads((old / "fold_0" / "manifest.json").read_text())
    body["source_training"] = "unfinished"
    (old / "fold_0" / "manifest.json").write_text(json.dumps(body))
    write_manifest(old, {"kind": ENSEMBLE_KIND, "source_checkpoint": str(ws / "cv"),
                         "members": [{"folder": "fold_0", "weight": 1.0}]})
    refused(monkeypatch, capsys, ws, "infer", ["test.csv", "--model", "old_export", "--out", "sub.csv"],
            "fold_0 exported from a run that had not finished")
    shutil.rmtree(old)


# ------------------------------------------------------------------------------------------------ bench source
def test_bench_refuses_an_export_of_another_checkpoint(ws, monkeypatch, capsys):
    args = ["--export", "export", "--data", "train.csv", "--rows", "4", "--cells", "torch:fp32/sorted,onnx:fp32/sorted",
            "--repeats", "1", "--warmup", "0", "--out", "bench"]
    refused(monkeypatch, capsys, ws, "bench", ["--model", "other", *args], "--export export was made from",
            "not from --model other", "model.safetensors")


def test_bench_source_check_accepts_a_copy_and_checks_old_manifests_by_path(ws, tmp_path):
    from arena.bench.precheck import check_export_source
    from arena.errors import ConfigError

    manifest = json.loads((ws / "export" / "manifest.json").read_text())
    assert manifest["source_weights_sha256"]["model.safetensors"]
    check_export_source(ws / "ckpt", ws / "export", manifest)  # a copy of the source: the same weights
    old = {k: v for k, v in manifest.items() if k != "source_weights_sha256"}
    check_export_source(ws / "ckpt", ws / "export", {**old, "source_checkpoint": str(ws / "ckpt")})
    with pytest.raises(ConfigError, match="their weights differ"):
        check_export_source(ws / "other", ws / "export", {**old, "source_checkpoint": str(ws / "ckpt")})


# ------------------------------------------------------------------------------------------------ messages
@pytest.mark.parametrize(("target", "says"), [
    ("test.csv", "--save-logits test.csv is the input CSV"),
    ("logits.csv.gz", "--save-logits logits.csv.gz: arena-infer writes a plain CSV"),
    ("ckpt/logits.csv", "--save-logits ckpt/logits.csv is inside the model folder"),
    ("notes.txt", "--save-logits notes.txt exists and is not a logits file"),
    ("new_sub.csv", "--save-logits new_sub.csv is also --out"),
])
def test_save_logits_errors_name_save_logits(ws, monkeypatch, capsys, target, says):
    line = refused(monkeypatch, capsys, ws, "infer", ["test.csv", "--model", "ckpt", "--out", "new_sub.csv",
                                                      "--save-logits", target], says)
    assert "--out " not in line.replace("is also --out", "")


def test_save_logits_may_replace_its_own_file_only(ws, monkeypatch, capsys):
    args = ["test.csv", "--model", "export", "--out", "s.csv", "--save-logits", "l.csv"]
    for _ in range(2):  # the second run replaces the logits file the first wrote
        code, _, err = run_cli(monkeypatch, capsys, ws, "infer", args)
        assert code == 0, err
    header = (ws / "l.csv").read_text().splitlines()[0]
    assert header == "id,winner_model_a,winner_model_b,winner_tie,logit_a,logit_b,logit_tie"
    refused(monkeypatch, capsys, ws, "infer", [*args[:-1], "s.csv", "--out", "s2.csv"],
            "not a logits file arena-infer wrote")  # a submission is not a logits file
    for name in ("s.csv", "l.csv"):
        (ws / name).unlink()


@pytest.mark.parametrize(("cli", "args", "offers_option"), [
    ("infer", ["test.csv", "--model", "ckpt_notok", "--out", "sub.csv"], False),
    ("export", ["ckpt_notok", "--out", "ex", "--data", "train.csv", "--no-openvino"], False),
    ("train", ["--data", "train.csv", "--model", "ckpt_notok", "--max-rows", "20", "--output", "run",
               "--head", "hf"], True),
    ("report", ["train.csv", "--out", "rep", "--tokenizer", "ckpt_notok"], True),
])
def test_missing_tokenizer_offers_tokenizer_only_where_the_command_has_it(ws, monkeypatch, capsys, cli, args,
                                                                         offers_option):
    line = refused(monkeypatch, capsys, ws, cli, args, "no usable tokenizer")
    assert ("--tokenizer" in line) == offers_option, line
    if not offers_option:
        assert "copy them into ckpt_notok" in line, line


@pytest.mark.parametrize("weights", ["nan,1", "inf,1", "1e308,1e308", "-1,2", "0,0", "1"])
def test_weights_are_checked_before_any_model_loads(ws, monkeypatch, capsys, weights):
    import arena.serving.loading as loading

    monkeypatch.setattr(loading, "open_model", lambda *a, **k: pytest.fail("a model was loaded"))
    refused(monkeypatch, capsys, ws, "infer", ["test.csv", "--model", "ckpt", "--model", "export", "--out",
                                               "sub.csv", "--weights", weights], f"--weights {weights}")
