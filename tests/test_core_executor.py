"""The one batch executor and the batch policies, pinned with a fake backend whose logits name their row.

Fast (numpy only): part of the mutation-testing selection (``make mutation``). The fake backend returns, per row,
``(first token, real length, padded width)``, so any row put back in the wrong place, any batch padded to the wrong
width and any mask that is off shows up as a wrong number."""

from __future__ import annotations

import numpy as np
import pytest

from arena.encode import Encoded
from arena.errors import ConfigError
from arena.serving.backends.contract import Limits, ShapeRange
from arena.serving.batching import (
    default_max_tokens,
    fixed_batches,
    length_grouped_batches,
    padding_stats,
    plan_batches,
    resolve_budget,
    round_up,
    token_budget_batches,
)
from arena.serving.executor import BatchExecutor, PaddedBatch, Prepared, Timings

PAD = 0


class RowEcho:
    """A backend: logits (first id, mask sum, padded width) per row; records every batch's shape. It states what
    the backend contract asks (name, device, needs_features, limits, description)."""

    name = "echo"
    needs_features = False
    description = "echo (cpu)"

    def __init__(self, limits: Limits = Limits(), device: str = "cpu", **attrs) -> None:
        self.limits, self.device, self.shapes, self.features = limits, device, [], []
        self.__dict__.update(attrs)

    def __call__(self, input_ids, attention_mask, features=None):
        self.shapes.append(input_ids.shape)
        self.features.append(features)
        width = np.full(len(input_ids), input_ids.shape[1])
        return np.stack([input_ids[:, 0], attention_mask.sum(1), width], axis=1).astype(np.float32)


class MappedEcho(RowEcho):
    """A several-device backend: takes every batch at once through ``map``."""

    def map(self, batches):
        self.mapped = len(batches)
        return [self(*b) for b in batches]


def encoded(lengths, features: bool = False) -> Encoded:
    ids = [np.arange(100 + i * 1000, 100 + i * 1000 + n, dtype=np.int32) for i, n in enumerate(lengths)]
    feats = np.arange(len(lengths) * 2, dtype=np.float32).reshape(-1, 2) if features else None
    return Encoded(ids, features=feats)


LENGTHS = [5, 40, 3, 17, 64, 9, 33, 1]


@pytest.mark.parametrize("policy", ["sorted", "notebook", "padded"])
def test_logits_come_back_in_input_order_with_the_right_padding(policy):
    enc = encoded(LENGTHS)
    backend = RowEcho()
    ex = BatchExecutor(backend, pad_id=PAD, max_length=64, policy=policy, batch_size=3, max_tokens=200)
    out = ex(enc)
    assert out.dtype == np.float32 and out.shape == (len(LENGTHS), 3)
    np.testing.assert_array_equal(out[:, 0], [100 + i * 1000 for i in range(len(LENGTHS))])
    np.testing.assert_array_equal(out[:, 1], LENGTHS)
    widths = {  # the padded width each row was run at
        "padded": [64] * len(LENGTHS),
        "notebook": [40, 40, 40, 64, 64, 64, 33, 33],  # file order, 3 rows a batch, padded to the batch's longest
        "sorted": [24, 64, 8, 24, 64, 24, 64, 8],  # longest first, 3 rows a batch: 64, 40, 33 | 17, 9, 5 | 3, 1
    }[policy]
    np.testing.assert_array_equal(out[:, 2], widths)


def test_sorted_batches_respect_the_token_budget_and_the_backend_limits():
    enc = encoded(LENGTHS)
    limits = Limits(max_length=64, ranges=(ShapeRange(1, 16, 3), ShapeRange(17, 64, 1)))
    backend = RowEcho(limits)
    out = BatchExecutor(backend, pad_id=PAD, max_length=64, max_tokens=10_000)(enc)
    np.testing.assert_array_equal(out[:, 1], LENGTHS)
    assert all(rows * width <= 10_000 for rows, width in backend.shapes)
    assert all(rows == 1 for rows, width in backend.shapes if width > 16)
    assert max(rows for rows, width in backend.shapes if width <= 16) == 3


def test_features_travel_with_their_rows():
    enc = encoded(LENGTHS, features=True)
    backend = RowEcho()
    ex = BatchExecutor(backend, pad_id=PAD, max_length=64, max_tokens=100)
    prepared = ex.prepare(enc)
    ex.run(prepared)
    for batch, feats in zip(prepared.batches, backend.features, strict=True):
        np.testing.assert_array_equal(feats, enc.features[batch.rows])
    assert BatchExecutor(RowEcho(), pad_id=PAD, max_length=64).prepare(encoded([3])).batches[0].features is None


def test_padding_uses_the_pad_id_and_a_matching_mask():
    enc = encoded([3, 6])
    prepared = BatchExecutor(RowEcho(), pad_id=7, max_length=16, policy="padded", batch_size=2).prepare(enc)
    (batch,) = prepared.batches
    assert batch.input_ids.shape == (2, 16) and (batch.input_ids[0, 3:] == 7).all()
    np.testing.assert_array_equal(batch.attention_mask.sum(1), [3, 6])
    np.testing.assert_array_equal(batch.rows, [0, 1])
    assert prepared.n_rows == 2 and prepared.real_tokens == 9 and prepared.computed_tokens == 32


def test_prepare_takes_given_batches_and_length():
    enc = encoded([3, 6, 2])
    ex = BatchExecutor(RowEcho(), pad_id=PAD, max_length=16)
    prepared = ex.prepare(enc, [np.array([2, 0]), np.array([1])], length=12)
    assert [b.input_ids.shape for b in prepared.batches] == [(2, 12), (1, 12)]
    np.testing.assert_array_equal(ex.run(prepared)[:, 1], [3, 6, 2])
    assert prepared.real_tokens == 11 and prepared.computed_tokens == 36 and prepared.pad_s >= 0


class FakeClock:
    """``time.perf_counter`` for the executor: starts far from 0, ticks 1 ms per reading; a backend call takes
    exactly 250 ms."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now - 0.001


def test_timings_are_measured_on_the_clock_per_batch_and_accumulate(monkeypatch):
    import arena.serving.executor as executor

    clock = FakeClock()
    monkeypatch.setattr(executor.time, "perf_counter", clock)

    class Slow(RowEcho):
        def __call__(self, *args):
            clock.now += 0.25
            return super().__call__(*args)

    ex = BatchExecutor(Slow(), pad_id=PAD, max_length=64, max_tokens=100)
    prepared = ex.prepare(encoded(LENGTHS))
    assert prepared.pad_s == pytest.approx(0.001)
    n = len(prepared.batches)
    timings = Timings()
    ex.run(prepared, timings)
    assert timings.batch_ms == pytest.approx([251.0] * n)  # the call plus one tick, in milliseconds
    assert timings.model_s == pytest.approx(0.001 + n * 0.252) and timings.scatter_s == pytest.approx(0.001)
    ex.run(prepared, timings)
    assert timings.model_s == pytest.approx(2 * (0.001 + n * 0.252))
    assert timings.scatter_s == pytest.approx(0.002) and timings.pad_s == pytest.approx(0.002)


def test_a_several_device_backend_that_loses_a_batch_is_an_error():
    class Lossy(MappedEcho):
        def map(self, batches):
            return super().map(batches)[:-1]

    with pytest.raises(ValueError):
        BatchExecutor(Lossy(), pad_id=PAD, max_length=64, max_tokens=100)(encoded(LENGTHS))


def test_default_batch_size_is_64_rows():
    backend = RowEcho()
    BatchExecutor(backend, pad_id=PAD, max_length=8, max_tokens=10_000)(encoded([1] * 100))
    assert [rows for rows, _ in backend.shapes] == [64, 36]


def test_notebook_batches_count_their_exact_padding():
    ex = BatchExecutor(RowEcho(), pad_id=PAD, max_length=64, policy="notebook", batch_size=3)
    prepared = ex.prepare(encoded(LENGTHS))
    assert prepared.computed_tokens == 3 * 40 + 3 * 64 + 2 * 33 and prepared.real_tokens == sum(LENGTHS)


def test_timings_accumulate_over_passes():
    enc = encoded(LENGTHS)
    ex = BatchExecutor(RowEcho(), pad_id=PAD, max_length=64, max_tokens=100)
    timings = Timings()
    prepared = ex.prepare(enc)
    ex.run(prepared, timings)
    n = len(prepared.batches)
    assert timings.batches == n and len(timings.batch_ms) == n and all(ms >= 0 for ms in timings.batch_ms)
    assert timings.real_tokens == sum(LENGTHS) == prepared.real_tokens
    assert timings.computed_tokens == prepared.computed_tokens > sum(LENGTHS)
    assert timings.model_s > 0 and timings.scatter_s > 0 and timings.pad_s == prepared.pad_s
    ex.run(prepared, timings)
    assert timings.batches == 2 * n and len(timings.batch_ms) == 2 * n
    assert timings.real_tokens == 2 * sum(LENGTHS) and timings.computed_tokens == 2 * prepared.computed_tokens
    assert timings.pad_s == pytest.approx(2 * prepared.pad_s)


def test_a_several_device_backend_gets_every_batch_in_one_map_call():
    backend = MappedEcho()
    timings = Timings()
    ex = BatchExecutor(backend, pad_id=PAD, max_length=64, max_tokens=100)
    out = ex(encoded(LENGTHS), timings)
    np.testing.assert_array_equal(out[:, 1], LENGTHS)
    assert backend.mapped == timings.batches > 1 and timings.batch_ms == []


def test_the_budget_comes_from_the_device_the_request_and_the_limits():
    assert BatchExecutor(RowEcho(), pad_id=PAD, max_length=100).budget == 2 * 104
    assert BatchExecutor(RowEcho(device="cuda:1"), pad_id=PAD, max_length=100).budget == 64 * 104
    assert BatchExecutor(RowEcho(Limits(max_tokens=300), device="cuda"), pad_id=PAD, max_length=100).budget == 300
    assert BatchExecutor(RowEcho(), pad_id=PAD, max_length=100, max_tokens=999).budget == 999
    assert BatchExecutor(object(), pad_id=PAD, max_length=100).limits == Limits()
    with pytest.raises(ConfigError, match="--max-tokens 999 .*\\(300\\)"):
        BatchExecutor(RowEcho(Limits(max_tokens=300)), pad_id=PAD, max_length=100, max_tokens=999)


def test_the_executor_refuses_what_the_backend_cannot_run_before_any_batch():
    with pytest.raises(ConfigError, match="--batch-size must be at least 1, got 0"):
        BatchExecutor(RowEcho(), pad_id=PAD, max_length=64, batch_size=0)
    BatchExecutor(RowEcho(), pad_id=PAD, max_length=64, batch_size=1)
    BatchExecutor(RowEcho(Limits(max_length=64)), pad_id=PAD, max_length=64)
    with pytest.raises(ConfigError, match="max length 65 is beyond what engine X takes \\(64 tokens\\); use "
                                          "--max-length 64"):
        BatchExecutor(RowEcho(Limits(max_length=64), description="engine X"), pad_id=PAD, max_length=65)
    with pytest.raises(ConfigError, match=r"beyond what echo \(cpu\) takes \(8 tokens\)"):
        BatchExecutor(RowEcho(Limits(max_length=8)), pad_id=PAD, max_length=9)


def test_a_padded_batch_runs_its_own_arrays():
    batch = PaddedBatch(np.array([0]), np.array([[5, 6]]), np.array([[1, 1]]), np.array([[0.5, 1.0]]))
    backend = RowEcho()
    np.testing.assert_array_equal(batch.run(backend), [[5, 2, 2]])
    np.testing.assert_array_equal(backend.features[0], [[0.5, 1.0]])
    assert Prepared(0, []).real_tokens == 0 and Prepared(0, []).pad_s == 0.0


def test_timings_summary_reports_rates_and_latency_percentiles():
    t = Timings(rows=10, batches=4, wall_s=2.000049, model_s=0.500049, encode_s=0.123456, pad_s=0.100049,
                scatter_s=0.010049, write_s=0.020049, real_tokens=300, computed_tokens=900,
                batch_ms=[float(x) for x in range(1, 101)])
    s = t.summary()
    assert s["rows"] == 10 and s["batches"] == 4 and s["wall_s"] == 2.0 and isinstance(s["wall_s"], float)
    assert s["rows_per_s"] == 10 / 2.000049 and s["model_rows_per_s"] == 10 / 0.500049
    assert s["tokens_per_s"] == 300 / 2.000049
    assert s["encode_s"] == 0.1235 and s["pad_s"] == 0.1 and s["model_s"] == 0.5
    assert s["scatter_s"] == 0.01 and s["write_s"] == 0.02 and s["padding_efficiency"] == 0.3333
    assert s["batch_ms_p50"] == pytest.approx(50.5) and s["batch_ms_p90"] == pytest.approx(90.1)
    assert s["batch_ms_p99"] == pytest.approx(99.01)
    empty = Timings().summary()
    assert empty["rows_per_s"] == empty["model_rows_per_s"] == empty["tokens_per_s"] == 0.0
    assert empty["padding_efficiency"] == 1.0 and empty["batch_ms_p99"] == 0.0
    assert Timings(real_tokens=1, computed_tokens=3).padding_efficiency == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------ batching


def test_round_up_and_the_default_budgets():
    assert [round_up(n, 8) for n in (0, 1, 8, 9)] == [0, 8, 8, 16] and round_up(3, 2) == 4
    assert round_up(13, 1) == 13 and round_up(13, 0) == 13
    assert default_max_tokens("cuda:0", 500) == 64 * 504 and default_max_tokens("cpu", 500) == 2 * 504
    assert resolve_budget(None, device="cuda", max_length=512) == 64 * 512
    assert resolve_budget(None, device="cuda", max_length=512, limit=1000) == 1000
    assert resolve_budget(1000, device="cpu", max_length=512, limit=1000) == 1000
    assert resolve_budget(1, device="cpu", max_length=512) == 1
    for bad in (0, -5):
        with pytest.raises(ConfigError, match=f"--max-tokens must be positive, got {bad}"):
            resolve_budget(bad, device="cpu", max_length=512)
    with pytest.raises(ConfigError, match="--max-tokens 1001 .*\\(1000\\); use --max-tokens 1000"):
        resolve_budget(1001, device="cpu", max_length=512, limit=1000)


def test_token_budget_batches_edges():
    assert token_budget_batches(np.array([], dtype=np.int64), 10) == []
    with pytest.raises(ConfigError, match="--max-tokens 15 is smaller than one padded row \\(16 tokens\\)"):
        token_budget_batches(np.array([9]), 15)
    assert [len(b) for b in token_budget_batches(np.array([9]), 16)] == [1]
    assert [len(b) for b in token_budget_batches(np.ones(300, dtype=np.int64), 10**6)] == [256, 44]
    assert [len(b) for b in token_budget_batches(np.zeros(3, dtype=np.int64), 16)] == [2, 1]  # empty rows: 8
    assert [len(b) for b in token_budget_batches(np.array([4, 4, 4]), 12, pad_multiple=1)] == [3]
    capped = token_budget_batches(np.array([30, 30, 30, 5, 5]), 1000, max_rows=lambda w: 2 if w > 8 else 3)
    assert [len(b) for b in capped] == [2, 2, 1]
    with pytest.raises(ConfigError, match="^the backend takes no batch of rows padded to 32 tokens \\(its limits: see "
                                          "the model's description\\); lower --max-length or rebuild the model for "
                                          "that length$"):
        token_budget_batches(np.array([30]), 1000, max_rows=lambda w: 0)
    assert [len(b) for b in token_budget_batches(np.zeros(4, dtype=np.int64), 2, pad_multiple=1)] == [2, 2]
    np.testing.assert_array_equal(np.concatenate(token_budget_batches(np.array([5, 7, 7, 2]), 8, pad_multiple=1)),
                                  [1, 2, 0, 3])  # longest first, ties in file order
    many = np.random.default_rng(0).integers(1, 4, 2000)  # large enough for numpy's unstable default sort
    order = np.concatenate(token_budget_batches(many, 10**6, max_batch=5000, pad_multiple=1))
    assert all((np.diff(order[many[order] == k]) > 0).all() for k in (1, 2, 3))
    unsigned = token_budget_batches(np.array([0, 5, 3], dtype=np.uint32), 5, pad_multiple=1)
    assert [b.tolist() for b in unsigned] == [[1], [2], [0]]  # any integer type: -0 is not the longest


def test_fixed_batches():
    assert [b.tolist() for b in fixed_batches(5, 2)] == [[0, 1], [2, 3], [4]]
    assert [b.tolist() for b in fixed_batches(2, 1)] == [[0], [1]]
    assert [b.tolist() for b in fixed_batches(4, 4)] == [[0, 1, 2, 3]]
    with pytest.raises(ConfigError, match="batch size must be at least 1, got 0"):
        fixed_batches(3, 0)


def test_length_grouped_batches_group_by_length_within_mega_batches():
    lengths = np.random.default_rng(3).integers(1, 500, 300)
    batches = length_grouped_batches(lengths, 4, seed=7)
    assert [len(b) for b in batches].count(4) == 75
    assert sorted(np.concatenate(batches).tolist()) == list(range(300))
    perm = np.random.default_rng(7).permutation(300)  # the documented first draw: mega-batches of 32 x 4 rows
    chunk_of = {int(row): k // 128 for k, row in enumerate(perm)}
    for b in batches:
        assert len({chunk_of[int(r)] for r in b}) == 1
        assert (np.diff(lengths[b]) <= 0).all()
    assert [b.tolist() for b in batches] == [b.tolist() for b in length_grouped_batches(lengths, 4, seed=7)]
    assert [b.tolist() for b in batches] != [b.tolist() for b in length_grouped_batches(lengths, 4, seed=8)]
    small = length_grouped_batches(lengths, 4, seed=7, mega_factor=0)  # at least one batch per mega-batch
    chunk_of = {int(row): k // 4 for k, row in enumerate(perm)}
    assert all(len({chunk_of[int(r)] for r in b}) == 1 for b in small)


def test_plan_batches_per_policy():
    lengths = np.array([5, 30, 12])
    batches, fixed = plan_batches("padded", lengths, batch_size=2, max_tokens=100, max_length=64)
    assert [b.tolist() for b in batches] == [[0, 1], [2]] and fixed == 64
    batches, fixed = plan_batches("notebook", lengths, batch_size=2, max_tokens=100, max_length=64)
    assert [b.tolist() for b in batches] == [[0, 1], [2]] and fixed is None
    batches, fixed = plan_batches("sorted", lengths, batch_size=2, max_tokens=1000, max_length=64)
    assert [b.tolist() for b in batches] == [[1, 2], [0]] and fixed is None
    batches, _ = plan_batches("sorted", lengths, batch_size=0, max_tokens=1000, max_length=64)
    assert [len(b) for b in batches] == [1, 1, 1]
    with pytest.raises(ConfigError, match="unknown batch policy 'fast'; choose one of notebook, padded, sorted"):
        plan_batches("fast", lengths, batch_size=2, max_tokens=100, max_length=64)


def test_fixed_policies_are_checked_against_the_backend_rows_limit():
    lengths = np.array([5, 31, 13])
    seen = []

    def max_rows(width):
        seen.append(width)
        return 2 if width < 100 else 1

    plan_batches("notebook", lengths, batch_size=2, max_tokens=100, max_length=64, max_rows=max_rows)
    assert seen == [31, 13]  # each batch at its own longest row, no rounding
    plan_batches("padded", lengths, batch_size=2, max_tokens=100, max_length=64, max_rows=max_rows)
    assert seen[2:] == [64, 64]
    with pytest.raises(ConfigError, match="--batch-size 3: the backend takes at most 2 rows of 31 tokens"):
        plan_batches("notebook", lengths, batch_size=3, max_tokens=100, max_length=64, max_rows=max_rows)


def test_padding_stats_count_real_and_computed_tokens():
    lengths = np.array([5, 30, 12])
    stats = padding_stats([np.array([0, 2]), np.array([1])], lengths)
    assert (stats.real_tokens, stats.computed_tokens) == (47, 16 * 2 + 32)
    assert stats.efficiency == pytest.approx(47 / 64)
    stats = padding_stats([np.array([0, 2]), np.array([1])], lengths, pad_multiple=1)
    assert stats.computed_tokens == 12 * 2 + 30
    stats = padding_stats([np.array([0, 1, 2])], lengths, fixed_length=64)
    assert stats.computed_tokens == 192 and stats.real_tokens == 47
    assert padding_stats([], lengths).efficiency == 1.0
