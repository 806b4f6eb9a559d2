import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from arena.encode import EncoderConfig
from arena.errors import ConfigError, DataError, ModelError
from arena.metrics import UNIFORM_LOG_LOSS, baselines, class_prior, fit_temperature, log_loss, softmax
from arena.train.cli import app
from arena.train.folds import holdout_split, stratified_folds
from arena.train.loop import TrainConfig, run_training
from tests.conftest import ROOT, TEST_CSV, TOKENIZER, TRAIN_CSV


def tiny_cfg(tiny_config, out, **kw) -> TrainConfig:
    base = dict(data=str(TRAIN_CSV), model=str(tiny_config), tokenizer=str(TOKENIZER), random_init=True,
                output=str(out), encoder=EncoderConfig(max_length=64), batch_size=8, lr=3e-3, warmup_ratio=0.0,
                max_rows=40, calibrate=False, head="hf", swap_augment=False)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------------------------------------ metrics, folds
def test_log_loss_and_baselines():
    labels = np.array([0, 1, 2, 2])
    assert log_loss(np.full((4, 3), 1 / 3), labels) == pytest.approx(UNIFORM_LOG_LOSS)
    assert log_loss(np.eye(3)[labels], labels) == pytest.approx(0.0, abs=1e-12)
    prior = class_prior(labels)
    assert prior.sum() == pytest.approx(1.0) and prior[2] > prior[0]
    b = baselines(labels, labels)
    assert b["uniform_log_loss"] == pytest.approx(1.0986, abs=1e-4)
    assert b["prior_log_loss"] < b["uniform_log_loss"]


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 3)) * 2
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    t = fit_temperature(true_logits * 3.0, labels)  # over-confident by a factor 3
    assert t == pytest.approx(3.0, rel=0.15)


def test_stratified_folds_are_balanced_and_seeded():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    folds = stratified_folds(labels, 5, seed=1)
    assert np.array_equal(folds, stratified_folds(labels, 5, seed=1))
    for k in range(5):
        assert np.bincount(labels[folds == k], minlength=3).tolist() == [10, 6, 4]
    train, val = holdout_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 100
    assert np.bincount(labels[val]).tolist() == [10, 6, 4]
    with pytest.raises(ConfigError):
        stratified_folds(labels, 1, 0)


# ------------------------------------------------------------------------------------------------ training
def test_overfits_32_real_rows(tmp_path, tiny_config):
    """Capacity and plumbing: a tiny model memorises 32 real rows (training loss < 0.1)."""
    cfg = tiny_cfg(tiny_config, tmp_path / "m", max_rows=40, val_fraction=0.2, epochs=60, lr=5e-3,
                   batch_size=8)
    summary = run_training(cfg)
    history = summary["splits"][0]["history"]
    assert history[-1]["train_loss"] < 0.1
    assert history[0]["train_loss"] > history[-1]["train_loss"]
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert summary["uniform_log_loss"] == pytest.approx(1.0986, abs=1e-4)
    assert "prior_log_loss" in summary and summary["validation_rows"] == 8


def test_checkpoint_folder_contents(tmp_path, tiny_config):
    out = tmp_path / "m"
    summary = run_training(tiny_cfg(tiny_config, out, epochs=1, calibrate=True, max_rows=60))
    for name in ("config.json", "model.safetensors", "tokenizer.json", "arena.json", "train_config.json",
                 "metrics.json", "oof.csv"):
        assert (out / name).is_file(), name
    assert not (out / "state").exists()  # removed after a successful run
    meta = json.loads((out / "arena.json").read_text())
    assert meta["encoder"]["max_length"] == 64 and meta["temperature"] > 0
    import pandas as pd

    oof = pd.read_csv(out / "oof.csv")
    assert list(oof.columns[:4]) == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert len(oof) == summary["validation_rows"]
    assert np.allclose(oof[["winner_model_a", "winner_model_b", "winner_tie"]].sum(axis=1), 1.0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["splits"][0]["history"][0]["step"] >= 1


def test_kfold_writes_one_checkpoint_per_fold_and_full_oof(tmp_path, tiny_config):
    out = tmp_path / "cv"
    summary = run_training(tiny_cfg(tiny_config, out, folds=3, epochs=1, max_rows=30))
    assert [s["name"] for s in summary["splits"]] == ["fold0", "fold1", "fold2"]
    assert all((out / f"fold_{k}" / "model.safetensors").is_file() for k in range(3))
    import pandas as pd

    oof = pd.read_csv(out / "oof.csv")
    assert sorted(oof["id"].astype(str)) == sorted(r.id for r in __import__("arena.data").data.read_train(
        TRAIN_CSV)[:30])


def test_resume_ends_with_the_same_weights(tmp_path, tiny_config):
    """Interrupt after step 3 (a crash), resume, and compare with an uninterrupted run."""
    from safetensors.numpy import load_file

    kw = dict(epochs=2, max_rows=48, save_steps=1, keep_state=True)
    run_training(tiny_cfg(tiny_config, tmp_path / "full", **kw))

    class Crash(Exception):
        pass

    def crash(step):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        run_training(tiny_cfg(tiny_config, tmp_path / "cut", **kw), on_step=crash)
    state = json.loads((tmp_path / "cut" / "state" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    run_training(tiny_cfg(tiny_config, tmp_path / "cut", resume=True, **kw))
    a = load_file(str(tmp_path / "full" / "state" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "state" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    done_a = json.loads((tmp_path / "full" / "train_done.json").read_text())
    done_b = json.loads((tmp_path / "cut" / "train_done.json").read_text())
    assert done_a["weights_sha256"] == done_b["weights_sha256"]


def torchrun_train(out, tiny_config, *extra: str) -> subprocess.CompletedProcess:
    """arena-train under torchrun with 2 gloo ranks (one thread each) on 48 real rows of the tiny model; ``extra``
    options appended (``--fsdp``, ``--keep-state`` ...)."""
    import socket

    with socket.socket() as sock:  # a free port, so parallel CI jobs on one machine do not collide
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
           "-m", "arena.train.cli", "--data", str(TRAIN_CSV), "--model", str(tiny_config), "--random-init",
           "--tokenizer", str(TOKENIZER), "--max-rows", "48", "--max-length", "64", "--epochs", "1",
           "--batch-size", "4", "--lr", "1e-3", "--output", str(out), "--no-calibrate", "--no-swap-augment", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_ddp_two_cpu_processes_agree(tmp_path, tiny_config):
    """torchrun with 2 gloo ranks: both ranks end with identical weights (checked inside the run)."""

    out = tmp_path / "ddp"
    # the default head (hybrid): DDP over the encoder and the head, started from the same regression on each rank
    proc = torchrun_train(out, tiny_config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads((out / "train_done.json").read_text())
    assert done["world_size"] == 2
    assert done["ranks_agree"] is True and len(set(done["rank_weights_sha256"])) == 1


# ------------------------------------------------------------------------------------------------ errors
def test_errors_before_any_compute(tmp_path, tiny_config):
    with pytest.raises(ConfigError, match="out of range"):
        run_training(tiny_cfg(tiny_config, tmp_path / "x", folds=5, fold=5))
    with pytest.raises(DataError, match="winner_model_a"):
        run_training(tiny_cfg(tiny_config, tmp_path / "x", data=str(TEST_CSV)))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 128100, "hidden_size": 32,
                                                  "num_hidden_layers": 1, "num_attention_heads": 2,
                                                  "intermediate_size": 64, "max_position_embeddings": 128}))
    with pytest.raises(ConfigError, match="beyond what this bert model supports"):
        run_training(tiny_cfg(bert / "config.json", tmp_path / "x", encoder=EncoderConfig(max_length=256)))


def test_model_name_without_network_gets_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runner = CliRunner()
    result = runner.invoke(app, ["--model", "microsoft/deberta-v3-small", "--data", str(TRAIN_CSV),
                                 "--output", str(tmp_path / "o"), "--max-rows", "10"])
    assert result.exit_code == 2
    assert "needs the hub" in result.output or "Loading by name needs the hub" in result.output
    assert "Traceback" not in result.output


def test_pickle_only_checkpoint_is_refused(tmp_path):
    from arena.models.modeling import load_classifier

    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelError, match="pickle"):
        load_classifier(folder)


def test_nan_loss_stops_with_the_step(tmp_path, tiny_config):
    from arena.errors import TrainingError

    with pytest.raises(TrainingError, match=r"the loss became nan by step \d+ .* Try a lower --lr"):
        run_training(tiny_cfg(tiny_config, tmp_path / "nan", lr=1e30, epochs=3, max_rows=40,
                              max_grad_norm=float("inf")))


def test_swap_augment_doubles_the_training_rows(tmp_path, tiny_config):
    plain = run_training(tiny_cfg(tiny_config, tmp_path / "p", epochs=1, max_rows=40))
    swapped = run_training(tiny_cfg(tiny_config, tmp_path / "s", epochs=1, max_rows=40, swap_augment=True))
    assert swapped["splits"][0]["steps"] == 2 * plain["splits"][0]["steps"]  # 32 rows -> 64 rows, batch 8
    assert json.loads((tmp_path / "s" / "train_config.json").read_text())["swap_augment"] is True


def test_early_stopping_stops_after_patience(tmp_path, tiny_config):
    summary = run_training(tiny_cfg(tiny_config, tmp_path / "e", epochs=30, max_rows=40, lr=0.5, eval_steps=1,
                                    early_stopping=2))
    history = summary["splits"][0]["history"]
    losses = [h["log_loss"] for h in history]
    planned = 30 * 4  # 30 epochs of 32 training rows in batches of 8, one evaluation per step
    assert len(history) < planned and history[-1]["step"] < planned  # stopped long before the planned steps
    best_at = losses.index(min(losses))
    # patience 2: the run stops right after the second evaluation in a row that does not beat the best
    assert best_at == len(losses) - 3, losses
    assert all(x >= losses[best_at] for x in losses[-2:])
    stale, best, stop_at = 0, float("inf"), None  # replay the rule: it must fire first at the last evaluation
    for i, x in enumerate(losses):
        stale, best = (0, x) if x < best else (stale + 1, best)
        if stale >= 2 and stop_at is None:
            stop_at = i
    assert stop_at == len(losses) - 1


def test_single_fold_writes_a_checkpoint_at_the_output(tmp_path, tiny_config):
    summary = run_training(tiny_cfg(tiny_config, tmp_path / "f", folds=4, fold=2, epochs=1, max_rows=40))
    assert [s["name"] for s in summary["splits"]] == ["fold2"] and summary["validation_rows"] == 10
    assert (tmp_path / "f" / "model.safetensors").is_file()


def test_kfold_output_folder_points_to_a_fold(tmp_path):
    from arena.models.modeling import check_model_folder

    (tmp_path / "cv" / "fold_0").mkdir(parents=True)
    (tmp_path / "cv" / "fold_0" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="k-fold training output.*fold_0"):
        check_model_folder(tmp_path / "cv")
