"""Fold ensembles, blends, soft labels and pseudo-labelled rows (issue 16)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from arena.encode import EncoderConfig
from arena.errors import ConfigError
from arena.metrics import log_loss
from arena.serving.ensemble import combine, fit_weights, member_folders
from tests.conftest import TEST_CSV, TOKENIZER, TRAIN_CSV


def _train(out, tiny_config, **kw):
    from arena.train.loop import TrainConfig, run_training

    cfg = dict(data=str(TRAIN_CSV), model=str(tiny_config), tokenizer=str(TOKENIZER), random_init=True,
               output=str(out), epochs=1, max_rows=60, head="hf", batch_size=8, lr=1e-3,
               encoder=EncoderConfig(max_length=64))
    cfg.update(kw)
    return run_training(TrainConfig(**cfg))


@pytest.fixture(scope="module")
def cv(tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("cv") / "cv"
    _train(out, tiny_config, folds=3)
    return out


def test_fold_export_round_trip_scores_like_the_checkpoints(tmp_path, cv):
    from arena.export.cli import run_export
    from arena.infer.cli import run_infer

    export = tmp_path / "cv-export"
    summary = run_export(cv, export, int8=True, data=str(TRAIN_CSV), parity_shapes="1x17,4x64")
    assert set(summary["members"]) == {"fold_0", "fold_1", "fold_2"}
    assert all(p["fp32"] and p["int8"] for p in summary["parity"].values())  # (OpenVINO's checks beside them)
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["kind"] == "ensemble" and [m["folder"] for m in manifest["members"]] == ["fold_0", "fold_1",
                                                                                           "fold_2"]
    assert "fold_2/model.onnx" in manifest["files"] and (export / "oof.csv").is_file()
    assert member_folders(export) == [export / "fold_0", export / "fold_1", export / "fold_2"]
    torch_sub, onnx_sub = tmp_path / "t.csv", tmp_path / "o.csv"
    a = run_infer(TEST_CSV, [cv], torch_sub, backend="torch")
    b = run_infer(TEST_CSV, [export], onnx_sub, backend="onnx")
    assert a["models"] == b["models"] == 3 and "ensemble of 3" in b["backend"]
    ta, tb = pd.read_csv(torch_sub), pd.read_csv(onnx_sub)
    assert list(ta["id"]) == list(tb["id"]) == list(pd.read_csv(TEST_CSV)["id"])
    np.testing.assert_allclose(ta.iloc[:, 1:].to_numpy(), tb.iloc[:, 1:].to_numpy(), atol=1e-5)


def test_ensemble_is_the_mean_of_its_members_in_row_order(cv, train_records):
    from arena.serving.loading import open_models
    from arena.serving.scoring import ScoreConfig, scorer_for

    rows = train_records[100:140]
    folds = member_folders(cv)
    singles = []
    for f in folds:
        scorer = scorer_for(open_models([f], backend="torch"), ScoreConfig())
        singles.append(scorer.score(rows))
        scorer.close()
    for method in ("probs", "geometric"):
        scorer = scorer_for(open_models([cv], backend="torch", combine=method), ScoreConfig(batch_size=7))
        both = scorer.score(rows)
        scorer.close()
        assert both.shape == (40, 3)
        np.testing.assert_allclose(both, combine(singles, method=method), atol=1e-6)
    np.testing.assert_allclose(combine(singles, method="probs"), np.mean(singles, axis=0), atol=1e-12)


def test_combine_and_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    good = np.full((400, 3), 0.15)
    good[np.arange(400), y] = 0.7
    noise = rng.dirichlet(np.ones(3), 400)
    w = fit_weights([good, noise], y)
    assert w[0] > 0.8 and w.sum() == pytest.approx(1.0)
    assert log_loss(combine([good, noise], w), y) <= log_loss(combine([good, noise]), y)
    geo = combine([good, noise], method="geometric")
    assert np.allclose(geo.sum(1), 1.0) and not np.allclose(geo, combine([good, noise]))
    with pytest.raises(ConfigError, match="--weights"):
        combine([good, noise], [1.0])
    with pytest.raises(ConfigError, match="--combine"):
        combine([good], method="median")


def test_blend_weights_are_fitted_on_the_members_oof(tmp_path, cv, tiny_config):
    from arena.serving.loading import open_models

    other = tmp_path / "other"
    _train(other, tiny_config, folds=3, seed=5)
    ensemble = open_models([cv, other], backend="torch")
    assert len(ensemble.members) == 6 and ensemble.weights_reason.startswith("fitted on 60 shared")
    assert sum(ensemble.weights) == pytest.approx(1.0)
    assert len(set(np.round(ensemble.weights[:3], 12))) == 1  # a fold ensemble's weight is shared equally
    given = open_models([cv, other], backend="torch", weights=[3, 1])
    assert given.weights[0] == pytest.approx(0.25) and given.weights[3] == pytest.approx(0.25 / 3)
    with pytest.raises(ConfigError, match="one each"):
        open_models([cv, other], weights=[1.0])


def test_soft_label_loss_equals_hard_label_loss_on_one_hot_targets():
    from arena.train.trainer import forward_backward

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask):
            return type("O", (), {"logits": self.inner(input_ids.float())})()

    ids, mask = np.random.default_rng(0).integers(0, 9, (6, 4)), np.ones((6, 4), dtype=np.int64)
    y = np.array([0, 1, 2, 2, 1, 0])
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    hard = forward_backward(Wrap(), ids, mask, None, y, device=torch.device("cpu"), dtype=None, scaler=scaler)
    soft = forward_backward(Wrap(), ids, mask, None, np.eye(3, dtype=np.float32)[y], device=torch.device("cpu"),
                            dtype=None, scaler=scaler)
    assert float(hard) == pytest.approx(float(soft), abs=1e-6)


def test_soft_targets_mix_and_swap(train_records):
    from arena.data import labels_of
    from arena.encode import ArenaEncoder
    from arena.models.modeling import load_tokenizer
    from arena.train.targets import training_targets
    from arena.train.trainer import prepare_rows

    rows = train_records[:10]
    labels = labels_of(rows)
    soft = {str(rows[0].id): np.array([0.2, 0.5, 0.3])}
    targets, found = training_targets(rows, labels, soft, 0.5)
    assert found == 1 and np.allclose(targets[0], 0.5 * np.eye(3)[labels[0]] + 0.5 * np.array([0.2, 0.5, 0.3]))
    assert np.allclose(targets[1:], np.eye(3)[labels[1:]])
    enc = ArenaEncoder(load_tokenizer(TOKENIZER), EncoderConfig(max_length=64))
    prepared = prepare_rows(enc.encode(rows), labels, np.arange(10), enc.encode(rows, swap=True), targets)
    assert len(prepared.ids) == 20
    np.testing.assert_allclose(prepared.targets[10], targets[0][[1, 0, 2]])  # a <-> b, tie stays
    with pytest.raises(ConfigError, match="between 0 and 1"):
        training_targets(rows, labels, soft, 1.5)


def test_pseudo_labelled_rows_train_but_never_validate(tmp_path, tiny_config, monkeypatch):
    from arena.train import trainer

    test_ids = [str(i) for i in pd.read_csv(TEST_CSV)["id"]]
    soft = tmp_path / "soft.csv"
    pd.DataFrame({"id": test_ids, "winner_model_a": 0.6, "winner_model_b": 0.3, "winner_tie": 0.1}).to_csv(
        soft, index=False)
    seen = {}
    real = trainer.build_trainer

    def spy(config, **kw):
        seen.setdefault("train_rows", []).append(len(kw["rows"].ids))
        seen.setdefault("val_rows", []).append(len(kw["val"]))
        seen.setdefault("extra_labels", []).append(int((kw["rows"].labels == -1).sum()))
        return real(config, **kw)

    monkeypatch.setattr(trainer, "build_trainer", spy)
    summary = _train(tmp_path / "p", tiny_config, folds=3, soft_labels=str(soft), extra=str(TEST_CSV),
                     swap_augment=True)
    assert seen["extra_labels"] == [6, 6, 6]  # every fold trains on the 3 extra rows and their swapped copies
    assert seen["val_rows"] == [20, 20, 20] and seen["train_rows"] == [86, 86, 86]  # (40 labelled + 3 extra) x 2
    oof_ids = set(pd.read_csv(tmp_path / "p" / "oof.csv", dtype={"id": str})["id"])
    assert summary["validation_rows"] == 60 and not oof_ids & set(test_ids)
    with pytest.raises(ConfigError, match="no soft label"):
        bad = tmp_path / "bad.csv"
        pd.DataFrame({"id": test_ids[:1], "winner_model_a": 1.0, "winner_model_b": 0.0, "winner_tie": 0.0}).to_csv(
            bad, index=False)
        _train(tmp_path / "q", tiny_config, soft_labels=str(bad), extra=str(TEST_CSV))
