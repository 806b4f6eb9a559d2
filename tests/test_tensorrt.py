"""TensorRT: the planner, cache keys and error paths run everywhere; build and run need TensorRT and a GPU."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arena.artifacts import Profile, check_engine, engine_filename, engine_key, pick_profile
from arena.backends.tensorrt import tensorrt_available
from arena.batching import round_up, token_budget_batches
from arena.errors import BackendUnavailable, ConfigError
from arena.export.tensorrt import plan_profiles


@given(st.lists(st.integers(1, 512), min_size=1, max_size=300), st.integers(1, 6),
       st.sampled_from([4096, 8192, 16384]))
@settings(max_examples=200)
def test_every_batch_the_batcher_makes_has_a_profile(lengths, buckets, max_tokens):
    lengths = np.array(lengths)
    profiles = plan_profiles(lengths, max_length=512, max_tokens=max_tokens, buckets=buckets)
    assert 1 <= len(profiles) <= buckets
    assert profiles[0].seq_min == 8 and profiles[-1].seq_max == 512
    for a, b in zip(profiles, profiles[1:], strict=False):
        assert b.seq_min == a.seq_max + 8  # contiguous, non-overlapping buckets
    for p in profiles:
        assert p.seq_min <= p.seq_opt <= p.seq_max and p.batch_min <= p.batch_opt <= p.batch_max
    for batch in token_budget_batches(lengths, max_tokens, max_batch=256):
        seq = round_up(int(lengths[batch].max()), 8)
        k = pick_profile(profiles, len(batch), seq)
        assert profiles[k].fits(len(batch), seq)


def test_profiles_follow_the_real_length_distribution(train_records, tokenizer):
    from arena.encode import ArenaEncoder, EncoderConfig

    lengths = ArenaEncoder(tokenizer, EncoderConfig(max_length=512)).encode(train_records).lengths
    profiles = plan_profiles(lengths, max_length=512, max_tokens=16384, buckets=4)
    # half the real rows are cut at 512, so the last bucket is narrow around 512 and the others split the rest
    assert len(profiles) >= 2 and profiles[-1].seq_opt == 512
    assert profiles[0].batch_max > profiles[-1].batch_max


def test_engine_key_changes_with_every_input():
    profiles = [Profile(8, 64, 128, 1, 64, 256)]
    base = ("abc", "NVIDIA H100", "9.0", "10.3.0", "fp16", profiles)
    key = engine_key(*base)
    assert key == engine_key(*base)
    for i, other in enumerate(("abd", "NVIDIA T4", "7.5", "10.4.0", "fp32", [Profile(8, 64, 256, 1, 64, 256)])):
        changed = list(base)
        changed[i] = other
        assert engine_key(*changed) != key
    name = engine_filename("NVIDIA H100 80GB HBM3", "10.3.0", "fp16", key)
    assert name.startswith("model.fp16.nvidia-h100-80gb-hbm3.trt10.3.0.") and name.endswith(".engine")


def test_check_engine_names_what_differs():
    entry = {"gpu_name": "Tesla T4", "compute_capability": "7.5", "tensorrt_version": "10.3.0",
             "onnx_sha256": "abc"}
    check_engine(entry, gpu_name="Tesla T4", compute_capability="7.5", trt_version="10.3.0", onnx_sha256="abc")
    with pytest.raises(BackendUnavailable, match="gpu_name.*Tesla T4.*H100"):
        check_engine(entry, gpu_name="H100", compute_capability="7.5", trt_version="10.3.0", onnx_sha256="abc")
    with pytest.raises(BackendUnavailable, match="onnx_sha256"):
        check_engine(entry, gpu_name="Tesla T4", compute_capability="7.5", trt_version="10.3.0", onnx_sha256="x")


def test_planner_rejects_impossible_budgets():
    with pytest.raises(ConfigError):
        plan_profiles(np.array([100]), max_length=512, max_tokens=256)
    with pytest.raises(ConfigError):
        pick_profile([Profile(8, 16, 32, 1, 4, 8)], 9, 16)


def test_tensorrt_unavailable_reason_is_specific():
    ok, why = tensorrt_available()
    if not ok:
        assert "tensorrt" in why.lower() or "GPU" in why


@pytest.mark.tensorrt
def test_build_and_run_engine_matches_onnx(tmp_path, tiny_export):  # pragma: no cover - needs TensorRT + GPU
    from arena.backends.onnx import OnnxBackend
    from arena.backends.tensorrt import TensorRTRunner
    from arena.export.tensorrt import build_engine

    profiles = plan_profiles(np.array([17, 64, 128]), max_length=128, max_tokens=4096, buckets=2)
    engine = tmp_path / "m.engine"
    build_engine(tiny_export / "model.onnx", engine, profiles, timing_cache=tmp_path / "cache")
    runner, ref = TensorRTRunner(engine, profiles), OnnxBackend(tiny_export / "model.onnx")
    ids = np.random.default_rng(0).integers(5, 1000, size=(4, 64))
    mask = np.ones_like(ids)
    assert np.abs(runner(ids, mask) - ref(ids, mask)).max() < 5e-2
