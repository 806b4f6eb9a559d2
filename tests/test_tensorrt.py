"""TensorRT: the planner, the budget contract between export and inference, engine identity, the runtime's pure
parts and every refusal run everywhere; building and running an engine need TensorRT and a GPU (``tensorrt``)."""

import hashlib
import json
import sys
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arena.artifacts import (
    INPUT_IDS,
    MANIFEST,
    Profile,
    check_engine,
    engine_filename,
    engine_key,
    engine_mismatches,
    pick_profile,
    read_engine,
    select_engine,
)
from arena.encode import pad_batch
from arena.errors import BackendUnavailable, ConfigError, ModelError
from arena.export.tensorrt import DEFAULT_MAX_BATCH, plan_profiles, planned_budget
from arena.machine.gpu import check_tensorrt_version, parse_version, tensorrt_available
from arena.serving.backends.tensorrt import engine_profiles, limits_for_profiles
from arena.serving.batching import default_max_tokens, plan_batches, resolve_budget, round_up, token_budget_batches
from tests.conftest import FP16_REL, TRAIN_CSV, assert_logits_close, informative_batch

# ------------------------------------------------------------------------------------------------ the planner


@given(st.lists(st.integers(1, 512), min_size=1, max_size=300), st.integers(1, 6),
       st.sampled_from([4096, 8192, 16384, 32768]))
@settings(max_examples=200)
def test_profiles_tile_every_length_and_batch_ranges_never_grow(lengths, buckets, max_tokens):
    profiles = plan_profiles(np.array(lengths), max_length=512, max_tokens=max_tokens, buckets=buckets)
    assert 1 <= len(profiles) <= buckets
    assert profiles[0].seq_min == 1 and profiles[-1].seq_max == 512
    for a, b in zip(profiles, profiles[1:], strict=False):
        assert b.seq_min == a.seq_max + 1  # no gap, no overlap: every length has exactly one profile
        assert b.batch_max <= a.batch_max  # a batch that fits its rounded-up length fits its exact length too
    for p in profiles:
        assert p.seq_min <= p.seq_opt <= p.seq_max and p.batch_min <= p.batch_opt <= p.batch_max
        assert p.batch_max <= DEFAULT_MAX_BATCH and p.batch_max <= max(1, max_tokens // p.seq_min)
    for batch in token_budget_batches(np.array(lengths), max_tokens, max_batch=DEFAULT_MAX_BATCH):
        seq = round_up(int(np.array(lengths)[batch].max()), 8)
        assert profiles[pick_profile(profiles, len(batch), seq)].fits(len(batch), seq)


def test_profiles_follow_the_real_length_distribution(real_lengths):
    profiles = plan_profiles(real_lengths, max_length=512, max_tokens=planned_budget(None, 512), buckets=4)
    # many real rows are cut at 512, so the last bucket is narrow around 512 and the others split the rest
    assert len(profiles) >= 2 and profiles[-1].seq_opt == 512
    assert profiles[0].seq_opt < profiles[-1].seq_opt


def test_planner_rejects_impossible_budgets():
    with pytest.raises(ConfigError):
        plan_profiles(np.array([100]), max_length=512, max_tokens=256)
    with pytest.raises(ConfigError):
        plan_profiles(np.array([100]), max_length=512, max_tokens=4096, buckets=0)
    with pytest.raises(ConfigError):
        pick_profile([Profile(8, 16, 32, 1, 4, 8)], 9, 16)


# ------------------------------------------------------------------- the budget: one number, export and inference


@pytest.fixture(scope="module")
def real_lengths(tokenizer):
    """Encoded lengths (max length 512, the default recipe) of every row of the real sample."""
    from arena.data import read_train
    from arena.encode import ArenaEncoder, EncoderConfig

    return ArenaEncoder(tokenizer, EncoderConfig(max_length=512)).encode(read_train(TRAIN_CSV)).lengths


def test_export_default_budget_is_what_inference_packs_on_a_gpu():
    """Before: arena-export planned profiles for 16,384 tokens while arena-infer packed 64 x 512 = 32,768."""
    import inspect

    from arena.export.cli import run_export

    assert inspect.signature(run_export).parameters["max_tokens"].default is None
    for max_length in (128, 256, 500, 512, 1024):
        planned = planned_budget(None, max_length)
        assert planned == default_max_tokens("cuda", max_length) == resolve_budget(None, device="cuda",
                                                                                    max_length=max_length)
        limits = limits_for_profiles(plan_profiles(np.array([max_length]), max_length=max_length,
                                                   max_tokens=planned), planned)
        assert resolve_budget(None, device="cuda", max_length=max_length, limit=limits.max_tokens) == planned
    with pytest.raises(ConfigError, match="--max-tokens 65536 is more than"):
        resolve_budget(65536, device="cuda", max_length=512, limit=planned_budget(None, 512))


@given(data=st.data(), max_length=st.sampled_from([128, 256, 500, 512, 1024]), buckets=st.integers(1, 6),
       budget_choice=st.sampled_from(["default", "lower", "export-lower"]),
       policy=st.sampled_from(["sorted", "sorted", "notebook", "padded"]))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_batch_inference_plans_fits_a_profile(real_lengths, data, max_length, buckets, budget_choice, policy):
    """Real length mixes (rows of the real sample, at the model's max length, mixed with arbitrary lengths) under
    the inference defaults (and larger ``--batch-size``): plan with the engine's limits, pad as the executor pads,
    and every batch has a profile.

    The export plans on one sample of rows (its parity data) and inference runs on others, so the two are drawn
    independently; the export may also be built for a smaller budget than the default (``export-lower``)."""
    pool = np.minimum(real_lengths, max_length)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    plan_rows = rng.choice(pool, size=data.draw(st.integers(1, 256), label="export rows"))
    n = data.draw(st.integers(1, 3000), label="inference rows")
    real_share = data.draw(st.floats(0, 1), label="share of real rows")
    rows = np.where(rng.random(n) < real_share, rng.choice(pool, size=n), rng.integers(1, max_length + 1, size=n))
    one_row = round_up(max_length, 8)
    export_budget = planned_budget(max(one_row, planned_budget(None, max_length) // 4)
                                   if budget_choice == "export-lower" else None, max_length)
    profiles = plan_profiles(plan_rows, max_length=max_length, max_tokens=export_budget, buckets=buckets)
    limits = limits_for_profiles(profiles, export_budget)
    requested = max(one_row, export_budget // 2) if budget_choice == "lower" else None
    budget = resolve_budget(requested, device="cuda", max_length=max_length, limit=limits.max_tokens)
    assert budget <= export_budget
    batch_size = data.draw(st.sampled_from([64, 64, 128, 256]), label="--batch-size")  # 64: the default
    try:
        batches, fixed = plan_batches(policy, rows, batch_size=batch_size, max_tokens=budget,
                                      max_length=max_length, max_rows=limits.max_rows)
    except ConfigError as exc:  # a fixed-size policy asked for more rows than the engine takes: refused up front
        assert policy != "sorted" and "--batch-size" in str(exc)
        assert budget_choice == "export-lower" or batch_size > DEFAULT_MAX_BATCH  # never under the defaults
        return
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(rows)))  # every row exactly once
    for batch in batches:
        ids, _ = pad_batch([np.ones(int(rows[i]), dtype=np.int64) for i in batch], 0, length=fixed)
        k = pick_profile(profiles, *ids.shape)  # raises ConfigError when no profile holds the batch
        assert profiles[k].fits(*ids.shape)
        if policy == "sorted":
            assert ids.size <= budget


def test_the_old_mismatch_is_what_the_limits_prevent():
    """Control: profiles planned for 16,384 tokens and batches packed for 64 x 512 without the limits fail."""
    rows = np.tile(np.arange(8, 513, 8), 4)
    profiles = plan_profiles(rows, max_length=512, max_tokens=16384, max_batch=256)
    unlimited, _ = plan_batches("sorted", rows, batch_size=64, max_tokens=32768, max_length=512)
    assert len(unlimited[0]) == 64
    with pytest.raises(ConfigError, match="no TensorRT profile"):
        pick_profile(profiles, len(unlimited[0]), 512)
    limits = limits_for_profiles(profiles, 16384)
    limited, _ = plan_batches("sorted", rows, batch_size=64, max_tokens=resolve_budget(
        None, device="cuda", max_length=512, limit=limits.max_tokens), max_length=512, max_rows=limits.max_rows)
    for b in limited:
        seq = round_up(int(rows[b].max()), 8)
        assert profiles[pick_profile(profiles, len(b), seq)].fits(len(b), seq)


# --------------------------------------------------------------------------------------- engine identity


def test_engine_key_changes_with_every_input():
    profiles = [Profile(8, 64, 128, 1, 64, 256)]
    base = ("abc", "NVIDIA H100", "9.0", "10.13.0", "fp16", profiles)
    key = engine_key(*base)
    assert key == engine_key(*base)
    for i, other in enumerate(("abd", "NVIDIA T4", "7.5", "11.0.0", "fp32", [Profile(8, 64, 256, 1, 64, 256)])):
        changed = list(base)
        changed[i] = other
        assert engine_key(*changed) != key
    name = engine_filename("NVIDIA H100 80GB HBM3", "10.13.0", "fp16", key)
    assert name.startswith("model.fp16.nvidia-h100-80gb-hbm3.trt10.13.0.") and name.endswith(".engine")


ENTRY = {"file": "model.fp16.h100.engine", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
         "tensorrt_version": "11.0.0", "onnx_file": "model.fp16.onnx", "onnx_sha256": "f16"}
HERE = {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "trt_version": "11.0.0"}
T4 = {"gpu_name": "Tesla T4", "compute_capability": "7.5", "trt_version": "11.0.0"}


def manifest_with(*entries, files=None):
    return {"source_checkpoint": "/runs/model", "tensorrt": {"status": "built", "max_tokens": 32768,
                                                              "engines": list(entries)},
            "files": files if files is not None else {"model.fp16.onnx": "f16"}}


def test_engine_built_on_another_gpu_is_refused_with_the_rebuild_command():
    assert engine_mismatches(ENTRY, **HERE) == []
    diffs = engine_mismatches(ENTRY, **T4)
    assert diffs == ["gpu_name: engine 'NVIDIA H100 80GB HBM3' vs here 'Tesla T4'",
                     "compute_capability: engine '9.0' vs here '7.5'"]
    with pytest.raises(BackendUnavailable, match="gpu_name.*H100.*Tesla T4"):
        check_engine(ENTRY, **T4)
    with pytest.raises(BackendUnavailable, match=r"arena-export /runs/model --out exp --fp16 --trt"):
        select_engine(manifest_with(ENTRY), folder="exp", **T4)
    with pytest.raises(BackendUnavailable, match="tensorrt_version: engine '11.0.0' vs here '10.13.0'"):
        select_engine(manifest_with(ENTRY), folder="exp", **{**HERE, "trt_version": "10.13.0"})
    assert select_engine(manifest_with(dict(ENTRY, gpu_name="Tesla T4", compute_capability="7.5"), ENTRY),
                         **HERE) == ENTRY  # the folder may hold engines for several GPUs


def test_engine_from_another_onnx_file_is_refused():
    with pytest.raises(BackendUnavailable, match="built from another model.fp16.onnx"):
        select_engine(manifest_with(ENTRY, files={"model.fp16.onnx": "changed"}), **HERE)
    with pytest.raises(BackendUnavailable, match="has no TensorRT engine"):
        select_engine(manifest_with(), **HERE)


def test_engine_bytes_are_checked_before_they_are_deserialised(tmp_path):
    engine = tmp_path / ENTRY["file"]
    engine.write_bytes(b"serialized engine")
    good = manifest_with(ENTRY, files={ENTRY["file"]: hashlib.sha256(b"serialized engine").hexdigest()})
    assert read_engine(tmp_path, good, ENTRY) == b"serialized engine"
    engine.write_bytes(b"serialized engine, tampered")
    with pytest.raises(ModelError, match="does not match the sha256.*--trt"):
        read_engine(tmp_path, good, ENTRY)
    with pytest.raises(ModelError, match="records no sha256"):
        read_engine(tmp_path, manifest_with(ENTRY, files={}), ENTRY)
    engine.unlink()
    with pytest.raises(ModelError, match="cannot read"):
        read_engine(tmp_path, good, ENTRY)


# ----------------------------------------------------------------------------------- TensorRT version, runtime


def test_tensorrt_versions_below_10_12_are_refused_with_what_to_install():
    assert parse_version("10.13.0.35") == (10, 13, 0, 35) and parse_version("11.0.0rc1") == (11, 0, 0)
    for ok in ("10.12.0.36", "10.13.0.35", "11.0.0", "11.4.1"):
        check_tensorrt_version(ok)
    for old in ("10.3.0", "10.11.0.33", "8.6.1"):
        with pytest.raises(BackendUnavailable, match=r"10\.12 or newer.*pip install 'tensorrt>=10.12'"):
            check_tensorrt_version(old)
    with pytest.raises(BackendUnavailable, match="not TensorRT's Python package"):
        check_tensorrt_version(None)


def test_the_stub_package_is_not_taken_for_tensorrt(monkeypatch):
    """``tensorrt-stubs`` installs a ``tensorrt`` folder of .pyi files, which imports as an empty namespace."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    ok, why = tensorrt_available()
    assert not ok and "type stubs" in why
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    ok, why = tensorrt_available()
    assert not ok and "10.12" in why


def test_profiles_and_limits_come_from_the_engine():
    class Engine:  # the two ICudaEngine members engine_profiles reads
        num_optimization_profiles = 2

        def get_tensor_profile_shape(self, name, k):
            assert name == INPUT_IDS
            return [[(1, 1), (64, 100), (64, 200)], [(1, 201), (48, 400), (40, 512)]][k]

    profiles = engine_profiles(Engine())
    assert profiles == [Profile(1, 100, 200, 1, 64, 64), Profile(201, 400, 512, 1, 48, 40)]
    limits = limits_for_profiles(profiles, max_tokens=16384)
    assert limits.max_length == 512 and limits.max_batch == 64 and limits.max_tokens == 16384
    assert limits.max_rows(200) == 64 and limits.max_rows(208) == 40 and limits.max_rows(512) == 32
    assert limits.max_rows(520) == 0


def test_manifest_of_a_real_export_says_no_engine(tiny_export):
    manifest = json.loads((tiny_export / MANIFEST).read_text())
    assert manifest["tensorrt"] == {"status": "not requested"}
    with pytest.raises(BackendUnavailable, match="has no TensorRT engine"):
        select_engine(manifest, **HERE)


# ------------------------------------------------------------------------------------------ GPU + TensorRT


@pytest.mark.tensorrt
def test_build_and_run_engine_matches_onnx(tmp_path, tiny_checkpoint):  # pragma: no cover - needs TensorRT + GPU
    from arena.export.cli import run_export
    from arena.export.tensorrt import build_engine
    from arena.serving.backends.onnx import OnnxBackend
    from arena.serving.backends.tensorrt import TensorRTRunner

    export = tmp_path / "export"
    run_export(tiny_checkpoint, export, fp16=True, data=str(TRAIN_CSV), parity_shapes="1x17,7x64,16x128")
    profiles = plan_profiles(np.array([17, 64, 128]), max_length=128, max_tokens=4096, buckets=2)
    engine = tmp_path / "m.engine"
    info = build_engine(export / "model.fp16.onnx", engine, profiles, timing_cache=tmp_path / "cache")
    assert info["strongly_typed"]
    runner, ref = TensorRTRunner(engine.read_bytes()), OnnxBackend(export / "model.onnx", device="cpu")
    assert runner.profiles == profiles  # read back from the engine
    ids, mask, _ = informative_batch(tiny_checkpoint)  # real rows, on which the fixture's logits spread
    want, got = [], []
    for batch, seq in ((1, 5), (4, 64), (32, 120), (2, 128), (16, 17)):  # several profiles, back and forth
        rows = slice(8, 8 + batch)
        want.append(ref(ids[rows, :seq], mask[rows, :seq]))
        got.append(runner(ids[rows, :seq], mask[rows, :seq]))
    assert_logits_close(np.concatenate(want), np.concatenate(got), rel=FP16_REL)  # a strongly typed FP16 engine


@pytest.mark.tensorrt
def test_export_with_trt_records_the_engine_and_passes_parity(tmp_path, tiny_checkpoint):  # pragma: no cover
    from arena.export.cli import run_export
    from arena.serving.loading import open_model

    export = tmp_path / "export"
    summary = run_export(tiny_checkpoint, export, trt=True, data=str(TRAIN_CSV), parity_shapes="1x17,7x64,16x128")
    assert summary["parity"]["fp16"]
    manifest = json.loads((export / MANIFEST).read_text())
    section = manifest["tensorrt"]
    assert section["max_tokens"] == planned_budget(None, 128)
    entry = section["engines"][0]
    assert entry["onnx_file"] == "model.fp16.onnx" and entry["strongly_typed"] and entry["parity"]["passed"]
    loaded = open_model(export, backend="tensorrt")
    assert loaded.runner.limits.max_tokens == section["max_tokens"]
    assert [p.__dict__ for p in loaded.runner.runner.profiles] == entry["profiles"]
