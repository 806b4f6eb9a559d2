"""The hybrid head (issue 8): features as a third model input through train -> checkpoint -> export -> infer."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from arena.artifacts import Profile
from arena.data import labels_of, swap_ab
from arena.encode import ArenaEncoder, EncoderConfig
from arena.errors import ConfigError, ModelError
from arena.features import BASELINE_FEATURES, FEATURE_NAMES, PER_RESPONSE, LogisticRegression, feature_matrix
from arena.infer.cli import run_infer
from arena.models.hybrid import (
    HEAD_FILE,
    Z_CLIP,
    HybridClassifier,
    build_hybrid,
    init_from_logistic_regression,
    is_hybrid,
)
from arena.models.modeling import load_classifier, read_meta
from tests.conftest import TEST_CSV, TRAIN_CSV

N = len(PER_RESPONSE)


def test_features_are_symmetric_under_the_ab_swap(train_records):
    x = feature_matrix(train_records[:300])
    s = feature_matrix([swap_ab(r) for r in train_records[:300]])
    assert x.shape == (300, len(FEATURE_NAMES)) and np.isfinite(x).all()
    np.testing.assert_array_equal(s[:, :N], x[:, N:2 * N])  # a_* <-> b_*
    np.testing.assert_array_equal(s[:, N:2 * N], x[:, :N])
    np.testing.assert_allclose(s[:, 2 * N:3 * N], -x[:, 2 * N:3 * N], atol=1e-6)  # diff_* flips sign
    np.testing.assert_array_equal(s[:, 3 * N:], x[:, 3 * N:])  # identical, prompt, turns, absdiff_* unchanged
    assert FEATURE_NAMES[:len(BASELINE_FEATURES)] == BASELINE_FEATURES


def test_encoder_computes_features_only_when_asked(tokenizer, train_records):
    rows = train_records[:50]
    plain = ArenaEncoder(tokenizer, EncoderConfig(max_length=128)).encode(rows)
    enc = ArenaEncoder(tokenizer, EncoderConfig(max_length=128, features=True))
    with_f, swapped = enc.encode(rows), enc.encode(rows, swap=True)
    assert plain.features is None and plain.feature_rows([0, 1]) is None
    assert [list(a) for a in with_f.ids] == [list(a) for a in plain.ids]  # token ids do not change
    np.testing.assert_array_equal(with_f.features, feature_matrix(rows))
    np.testing.assert_array_equal(swapped.features, feature_matrix([swap_ab(r) for r in rows]))
    np.testing.assert_array_equal(with_f.feature_rows(np.array([3, 1])), with_f.features[[3, 1]])


@pytest.fixture(scope="module")
def hybrid_parts(tiny_config, train_records):
    torch.manual_seed(0)
    model = build_hybrid(str(tiny_config), random_init_from=str(tiny_config)).eval()
    x, y = feature_matrix(train_records[:400]), labels_of(train_records[:400])
    init_from_logistic_regression(model, x, y)
    return model, x, y


def test_untrained_hybrid_predicts_exactly_the_feature_regression(hybrid_parts, tokenizer, train_records):
    """Head at zero + feature path copied from the regression: the network starts as the baseline."""
    model, x, y = hybrid_parts
    lr = LogisticRegression(0.1, clip=Z_CLIP).fit(x.astype(np.float64), y)
    enc = ArenaEncoder(tokenizer, EncoderConfig(max_length=64, features=True)).encode(train_records[:16])
    from arena.encode import pad_batch

    ids, mask = pad_batch(enc.ids, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                       features=torch.from_numpy(enc.features)).logits.numpy()
    np.testing.assert_allclose(logits, lr.decision_function(enc.features), atol=1e-4)
    assert model.head.weight.abs().sum() == 0
    with pytest.raises(ValueError, match="features"):
        model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))


def test_hybrid_head_parameters_exclude_the_encoder(hybrid_parts):
    model, _, _ = hybrid_parts
    from arena.train.trainer import param_groups as _param_groups

    head = {id(p) for p in model.head_parameters()}
    assert head and all(not n.startswith("backbone.") for n, p in model.named_parameters() if id(p) in head)
    groups = _param_groups(model, 0.01, 5e-5, 1e-3)
    assert {g["lr"] for g in groups} == {5e-5, 1e-3}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert all(id(p) in head for g in groups if g["lr"] == 1e-3 for p in g["params"])


def test_hybrid_training_writes_a_hybrid_checkpoint(hybrid_checkpoint):
    out, summary = hybrid_checkpoint
    meta = read_meta(out)
    assert meta.head["kind"] == "hybrid" and tuple(meta.head["features"]) == FEATURE_NAMES
    assert meta.encoder.features  # inference will compute the third input
    assert (out / HEAD_FILE).is_file() and (out / "model.safetensors").is_file()
    history = summary["splits"][0]["history"]
    assert history[0]["step"] == 0  # the starting point (the regression) was evaluated and could be selected
    assert np.isfinite(summary["oof_log_loss"])
    model = load_classifier(out, require_three_labels=True)
    assert is_hybrid(model) and isinstance(model, HybridClassifier)


def test_hybrid_checkpoint_reloads_to_the_same_validation_logits(hybrid_checkpoint, tokenizer, train_records):
    out, _ = hybrid_checkpoint
    from arena.train.folds import holdout_split
    from arena.train.trainer import predict_logits

    model = load_classifier(out, require_three_labels=True).eval()
    rows = train_records[:240]
    _, val = holdout_split(labels_of(rows), 0.2, 42)
    enc = ArenaEncoder(tokenizer, read_meta(out).encoder).encode(rows)
    logits = predict_logits(model, enc, val, tokenizer.pad_token_id, torch.device("cpu"), None, 4096)
    np.testing.assert_allclose(logits, np.load(out / "val_logits.npy"), atol=1e-5)


@pytest.fixture(scope="module")
def hybrid_export(tmp_path_factory, hybrid_checkpoint):
    from arena.export.cli import run_export

    out = tmp_path_factory.mktemp("hybrid-export") / "export"
    summary = run_export(hybrid_checkpoint[0], out, int8=True, data=str(TRAIN_CSV), parity_shapes="1x17,7x64,16x96")
    return out, summary


def test_hybrid_export_has_three_inputs_and_passes_parity(hybrid_export):
    import onnx

    out, summary = hybrid_export
    # OpenVINO runs the three-input graph too (its features input is fed under every name OpenVINO gives it)
    assert {"fp32", "int8", "openvino_fp32"} <= set(summary["parity"]) and all(summary["parity"].values())
    graph = onnx.load(str(out / "model.onnx")).graph
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert inputs == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
                      "features": ["batch", len(FEATURE_NAMES)]}
    manifest = json.loads((out / "manifest.json").read_text())
    spec = {i["name"]: i for i in manifest["onnx"]["inputs"]}
    assert spec["features"]["dtype"] == "float32" and spec["features"]["columns"] == list(FEATURE_NAMES)
    assert manifest["head"]["kind"] == "hybrid" and manifest["encoder"]["features"] is True
    assert manifest["artifacts"]["fp32"]["parity"]["shapes"][0]["max_logit_diff"] < 1e-4
    if manifest["openvino"]["status"] == "checked":  # a DeBERTa hybrid: OpenVINO's rewritten IR takes the features
        assert manifest["openvino"]["precisions"]["fp32"]["file"] == "model.ov.xml"


def test_hybrid_infer_onnx_matches_torch_with_tta(tmp_path, hybrid_checkpoint, hybrid_export):
    frame = pd.read_csv(TRAIN_CSV).iloc[:60][["id", "prompt", "response_a", "response_b"]]
    frame.to_csv(tmp_path / "t.csv", index=False)
    run_infer(tmp_path / "t.csv", hybrid_export[0], tmp_path / "onnx.csv", backend="onnx", tta=True,
              max_tokens=1024)
    run_infer(tmp_path / "t.csv", hybrid_checkpoint[0], tmp_path / "torch.csv", backend="torch", tta=True)
    a = pd.read_csv(tmp_path / "onnx.csv", dtype={"id": str})
    b = pd.read_csv(tmp_path / "torch.csv", dtype={"id": str})
    assert a["id"].tolist() == frame["id"].astype(str).tolist() == b["id"].tolist()
    pa, pb = a.iloc[:, 1:].to_numpy(), b.iloc[:, 1:].to_numpy()
    assert np.abs(pa - pb).max() < 1e-5 and np.allclose(pa.sum(1), 1.0)
    summary = run_infer(TEST_CSV, hybrid_export[0], tmp_path / "sub.csv")
    assert summary["rows"] == 3


def test_hybrid_runner_without_features_is_a_clear_error(hybrid_export):
    from arena.serving.loading import open_model

    loaded = open_model(hybrid_export[0], backend="onnx")
    assert loaded.encoder.config.features and loaded.runner.needs_features
    ids = np.ones((1, 16), dtype=np.int64)
    with pytest.raises(ConfigError, match="third input"):
        loaded.runner(ids, ids)


def test_changed_feature_set_or_missing_head_is_refused(tmp_path, hybrid_checkpoint):
    import shutil

    src, _ = hybrid_checkpoint
    bad = tmp_path / "renamed"
    shutil.copytree(src, bad)
    meta = json.loads((bad / "arena.json").read_text())
    meta["head"]["features"] = meta["head"]["features"][:-1] + ["old_feature"]
    (bad / "arena.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="different feature set.*old_feature"):
        load_classifier(bad, require_three_labels=True)
    gone = tmp_path / "nohead"
    shutil.copytree(src, gone)
    (gone / HEAD_FILE).unlink()
    with pytest.raises(ModelError, match=f"{HEAD_FILE} is missing"):
        load_classifier(gone, require_three_labels=True)


def test_tensorrt_profiles_give_the_features_input_the_batch_range():
    p = Profile(8, 64, 128, 1, 16, 64)
    assert set(p.input_shapes()) == {"input_ids", "attention_mask"}
    shapes = p.input_shapes(len(FEATURE_NAMES))
    assert shapes["features"] == ((1, len(FEATURE_NAMES)), (16, len(FEATURE_NAMES)), (64, len(FEATURE_NAMES)))
    assert shapes["input_ids"] == ((1, 8), (16, 64), (64, 128))


def test_a_feature_constant_in_training_cannot_explode_at_inference(tiny_config):
    """Regression: in one real fold no training row had exactly one empty answer; its std was ~0 and the one
    validation row that had one became a z-score of a million."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, len(FEATURE_NAMES))).astype(np.float32)
    x[:, FEATURE_NAMES.index("diff_empty")] = 0.0
    y = rng.integers(0, 3, 200)
    lr = LogisticRegression(0.1).fit(x, y)
    assert lr.std[FEATURE_NAMES.index("diff_empty")] == 1.0
    row = x[:1].copy()
    row[0, FEATURE_NAMES.index("diff_empty")] = 1.0
    np.testing.assert_allclose(lr.predict_proba(row), lr.predict_proba(x[:1]), atol=1e-9)
    torch.manual_seed(0)
    model = build_hybrid(str(tiny_config), random_init_from=str(tiny_config)).eval()
    init_from_logistic_regression(model, x, y)
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight)  # as if trained: the non-linear path now counts
        huge = torch.from_numpy(row * 1e6)
        ids = torch.ones((1, 8), dtype=torch.int64)
        logits = model(input_ids=ids, attention_mask=ids, features=huge).logits
    assert torch.isfinite(logits).all() and logits.abs().max() < 1e4
