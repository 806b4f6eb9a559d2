import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arena.errors import ConfigError
from arena.serving.batching import (
    fixed_batches,
    length_grouped_batches,
    padding_stats,
    plan_batches,
    round_up,
    token_budget_batches,
)

LENGTHS = st.lists(st.integers(1, 512), min_size=0, max_size=400)


@given(LENGTHS, st.integers(512, 20000), st.integers(1, 128))
@settings(max_examples=300)
def test_token_budget_batches_cover_every_row_once_within_budget(lengths, max_tokens, max_batch):
    lengths = np.array(lengths, dtype=np.int64)
    batches = token_budget_batches(lengths, max_tokens, max_batch)
    seen = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= max_batch
        assert len(b) * round_up(int(lengths[b].max()), 8) <= max_tokens
    # restoring order: scattering per-batch results by index gives back the input order
    out = np.full(len(lengths), -1)
    for b in batches:
        out[b] = lengths[b]
    assert out.tolist() == lengths.tolist()


@given(LENGTHS)
def test_sorted_batches_are_sorted_longest_first(lengths):
    lengths = np.array(lengths)
    batches = token_budget_batches(lengths, 4096, 64)
    maxima = [int(lengths[b].max()) for b in batches]
    assert maxima == sorted(maxima, reverse=True)


def test_budget_smaller_than_a_row_is_an_error():
    with pytest.raises(ConfigError, match="max-tokens"):
        token_budget_batches(np.array([500]), 256)


@given(LENGTHS, st.integers(1, 32), st.integers(0, 10))
@settings(max_examples=100)
def test_length_grouped_batches_are_a_deterministic_permutation(lengths, batch_size, seed):
    lengths = np.array(lengths, dtype=np.int64)
    a = length_grouped_batches(lengths, batch_size, seed)
    b = length_grouped_batches(lengths, batch_size, seed)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    flat = np.concatenate(a) if a else np.array([])
    assert sorted(flat.tolist()) == list(range(len(lengths)))


def test_length_grouping_wastes_less_padding_than_random_batches(train_records, tokenizer):
    from arena.encode import ArenaEncoder, EncoderConfig

    lengths = ArenaEncoder(tokenizer, EncoderConfig(max_length=512)).encode(train_records).lengths
    grouped = padding_stats(length_grouped_batches(lengths, 16, 0), lengths).efficiency
    rng = np.random.default_rng(0)
    random_batches = [b for b in np.array_split(rng.permutation(len(lengths)), len(lengths) // 16)]
    plain = padding_stats(random_batches, lengths).efficiency
    assert grouped > plain + 0.1


def test_policies():
    lengths = np.array([10, 300, 20, 512])
    batches, fixed = plan_batches("padded", lengths, batch_size=2, max_tokens=4096, max_length=512)
    assert fixed == 512 and [b.tolist() for b in batches] == [[0, 1], [2, 3]]
    batches, fixed = plan_batches("notebook", lengths, batch_size=3, max_tokens=4096, max_length=512)
    assert fixed is None and [b.tolist() for b in batches] == [[0, 1, 2], [3]]
    batches, _ = plan_batches("sorted", lengths, batch_size=64, max_tokens=1024, max_length=512)
    assert batches[0].tolist() == [3, 1]
    assert fixed_batches(0, 4) == []
    with pytest.raises(ConfigError):
        plan_batches("bogus", lengths, batch_size=1, max_tokens=1024, max_length=512)


def test_default_budget_depends_on_device_and_architecture():
    from arena.serving.batching import default_max_tokens

    assert default_max_tokens("cpu", 512, "deberta-v2") == 1024
    assert default_max_tokens("cpu", 256, "bert") == 2 * 256
    assert default_max_tokens("cuda:0", 512, "deberta-v2") == 64 * 512
