import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arena.data import Record
from arena.encode import ArenaEncoder, EncoderConfig, copy_backend, head_tail, pad_batch, segment_budget
from arena.errors import ConfigError
from arena.models.modeling import _auto_tokenizer, load_tokenizer
from tests.conftest import MISTRAL_TOKENIZER, TOKENIZER

WORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=400)
LONG_WORDS = st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta", "code()", "über", "数据", "\n", "1.5"]),
                      min_size=0, max_size=900).map(" ".join)
TURNS = st.lists(st.one_of(WORDS, LONG_WORDS), min_size=1, max_size=4).map(tuple)
RECORDS = st.builds(lambda p, a, b: Record("x", p, a, b), TURNS, TURNS, TURNS)


# ------------------------------------------------------------------------------------------------ segment_budget
@given(st.lists(st.integers(0, 2000), min_size=3, max_size=3),
       st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3), st.integers(12, 2000))
@settings(max_examples=500)
def test_segment_budget_properties(lengths, shares, available):
    budget = segment_budget(lengths, shares, available)
    assert all(0 <= b <= n for b, n in zip(budget, lengths, strict=True))
    assert sum(budget) == min(available, sum(lengths))
    total = sum(shares)
    for i in range(3):
        floor = int(available * shares[i] / total)
        if lengths[i] >= floor:
            assert budget[i] >= floor


def test_segment_budget_unused_share_flows_to_the_others():
    assert segment_budget([10, 1000, 1000], (0.2, 0.4, 0.4), 500) == [10, 245, 245]
    assert segment_budget([1000, 1000, 1000], (0.2, 0.4, 0.4), 500) == [100, 200, 200]
    assert segment_budget([0, 1000, 50], (0.2, 0.4, 0.4), 500) == [0, 450, 50]


def test_head_tail_keeps_both_ends():
    ids = list(range(100))
    assert head_tail(ids, ids, 10, 0.5) == [0, 1, 2, 3, 4, 95, 96, 97, 98, 99]
    assert head_tail(ids, ids, 10, 1.0) == list(range(10))
    assert head_tail([1, 2], [8, 9], 5, 0.5) is None


# ------------------------------------------------------------------------------------------------ encoder
@pytest.fixture(scope="module")
def encoder(tokenizer):
    return ArenaEncoder(tokenizer, EncoderConfig(max_length=128))


def test_exact_output_on_a_hand_built_row(tokenizer):
    enc = ArenaEncoder(tokenizer, EncoderConfig(max_length=64))
    rec = Record("1", ("What is 2+2?",), ("It is 4.",), ("Four.", "Anything else?"))
    ids = enc.encode([rec]).ids[0].tolist()
    tok = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    expected = ([1] + tok("Prompt:") + tok("What is 2+2?") + [2] + tok("Response A:") + tok("It is 4.") + [2]
                + tok("Response B:") + tok("Four.") + tok("||") + tok("Anything else?") + [2])
    assert ids == expected
    assert tokenizer.decode(ids) == ("[CLS] Prompt: What is 2+2?[SEP] Response A: It is 4.[SEP] Response B: Four. || "
                                     "Anything else?[SEP]")


def test_budget_truncation_keeps_response_b(tokenizer, train_records):
    """The notebook's format loses response B on long rows; the segment budget never does."""
    seg = ArenaEncoder(tokenizer, EncoderConfig(max_length=512))
    nb = ArenaEncoder(tokenizer, EncoderConfig(max_length=512, strategy="notebook"))
    rows = train_records[:300]
    seg_ids, nb_ids = seg.encode(rows).ids, nb.encode(rows).ids
    b_marker = tokenizer("response_b:", add_special_tokens=False)["input_ids"]
    lost = sum(1 for ids in nb_ids if not _contains(ids.tolist(), b_marker))
    assert lost > 50  # many real rows lose response B entirely in the notebook format
    for ids in seg_ids:
        segments = seg.decode_segments(ids.tolist())
        assert len(segments) == 3 and len(segments[2]) > 0


def _contains(seq, sub):
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_precut_equals_full_tokenization_on_the_real_sample(tokenizer, train_records):
    """The character pre-cut is only a speed-up: the ids must match tokenizing the whole text."""
    enc = ArenaEncoder(tokenizer, EncoderConfig(max_length=512))
    fast = enc.encode(train_records)
    full, retry = enc._encode_segments(train_records, precut=False)
    assert not retry
    same = sum(np.array_equal(a, b) for a, b in zip(fast.ids, full, strict=True))
    assert same == len(train_records)
    assert fast.fallbacks < len(train_records) * 0.05
    assert fast.lengths.max() == 512


PROPERTY_LENGTHS = (32, 64, 128, 512)


@pytest.fixture(scope="module")
def encoders(tokenizer):
    """One encoder per max length the property draws, built once (an encoder makes its own copy of the Rust
    tokenizer, see ``_raw_encoder``). An encoder holds no state between calls, so reusing it tests the same thing
    (and would expose state if it did)."""
    return {n: ArenaEncoder(tokenizer, EncoderConfig(max_length=n)) for n in PROPERTY_LENGTHS}


@given(rec=RECORDS, max_length=st.sampled_from(PROPERTY_LENGTHS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
def test_encoder_properties(tokenizer, encoders, rec, max_length):
    enc = encoders[max_length]
    ids = enc.encode([rec]).ids[0].tolist()
    assert len(ids) <= max_length
    assert ids[0] == enc.frame.begin[0] and ids[-1] == enc.frame.end[-1]
    assert enc.encode([rec]).ids[0].tolist() == ids  # deterministic
    segments = enc.decode_segments(ids)
    tok = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    for s, turns in enumerate((rec.prompt, rec.response_a, rec.response_b)):
        whole = sum(len(tok(t)) for t in turns) + 2 * (len(turns) - 1)
        if whole >= enc.share_floor[s]:
            # each segment keeps at least its share; with several turns, a remainder too small for another
            # turn (marker + min_turn_tokens) may stay unused
            slack = 0 if len(turns) == 1 else enc.config.min_turn_tokens + len(enc.marker_ids)
            assert len(segments[s]) >= enc.share_floor[s] - slack
        latest = tok(turns[-1])
        if latest and len(segments[s]) >= 2:
            kept = segments[s]
            # the latest turn survives: the segment ends with the latest turn's last token
            assert kept[-1] == latest[-1]
            if len(latest) <= len(kept):
                assert kept[-len(latest):] == latest  # it fits the segment, so it is kept whole


def test_latest_turn_kept_when_older_turns_are_long(tokenizer):
    enc = ArenaEncoder(tokenizer, EncoderConfig(max_length=64))
    rec = Record("1", ("old " * 500, "newest question"), ("a",), ("b",))
    prompt = tokenizer.decode(enc.decode_segments(enc.encode([rec]).ids[0].tolist())[0])
    assert prompt.endswith("newest question")


def test_swap_encodes_responses_exchanged(tokenizer):
    enc = ArenaEncoder(tokenizer, EncoderConfig(max_length=64))
    rec = Record("1", ("p",), ("alpha",), ("beta",))
    plain = enc.decode_segments(enc.encode([rec]).ids[0].tolist())
    swapped = enc.decode_segments(enc.encode([rec], swap=True).ids[0].tolist())
    assert plain[1] == swapped[2] and plain[2] == swapped[1]


def test_bad_config_is_rejected():
    with pytest.raises(ConfigError):
        EncoderConfig(strategy="nope")
    with pytest.raises(ConfigError):
        EncoderConfig(shares=(0.5, 0.5))
    with pytest.raises(ConfigError):
        EncoderConfig(max_length=8)


def test_config_round_trips_through_json():
    cfg = EncoderConfig(max_length=256, shares=(0.1, 0.45, 0.45))
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg


def test_pad_batch():
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=0)
    assert ids.shape == (2, 8) and ids.dtype == np.int64
    assert ids[1].tolist() == [8] + [0] * 7 and mask.sum(1).tolist() == [3, 1]
    with pytest.raises(ValueError):
        pad_batch([np.arange(10)], 0, length=4)


# ---------------------------------------------------------------------------------------------- load_tokenizer's cache
CACHE_TEXTS = ["Prompt: Hello, world! 123 \u00fcnicode", "  spaces\tand\nnew lines  ", "数据 code() [MASK] <s>"]


@pytest.mark.parametrize("which", ["deberta-v3", "mistral"])
def test_a_cached_tokenizer_encodes_as_an_uncached_one_and_each_call_gets_its_own(which, train_records):
    """load_tokenizer builds a folder's tokenizer once per process and hands out copies: the copies give the ids
    an uncached load gives (on real rows, through the encoder too), and changing one changes no other."""
    folder = str(TOKENIZER if which == "deberta-v3" else MISTRAL_TOKENIZER)
    uncached, first, second = _auto_tokenizer(folder, True), load_tokenizer(folder), load_tokenizer(folder)
    reference = ArenaEncoder(uncached)  # sets the pad token as load_tokenizer does
    assert first is not second and first._tokenizer is not second._tokenizer
    for got in (first, second):
        assert got(CACHE_TEXTS)["input_ids"] == uncached(CACHE_TEXTS)["input_ids"]
        assert got._tokenizer.to_str() == uncached._tokenizer.to_str()
        assert (got.pad_token_id, got.padding_side) == (uncached.pad_token_id, "right")
    rows = train_records[:40]
    expected = reference.encode(rows).ids
    for got in (first, second):
        assert all((a == b).all() for a, b in zip(ArenaEncoder(got).encode(rows).ids, expected, strict=True))

    before = second._tokenizer.to_str()
    first.pad_token, first.padding_side = first.eos_token, "left"
    first._tokenizer.enable_truncation(7)
    first._tokenizer.enable_padding(length=32)
    first.add_tokens(["<arena-test-token>"])
    assert first._tokenizer.to_str() != before  # the changes are real
    third = load_tokenizer(folder)
    for other in (second, third):
        assert other._tokenizer.to_str() == before
        assert (other.pad_token_id, other.padding_side) == (uncached.pad_token_id, "right")
        assert other(CACHE_TEXTS)["input_ids"] == uncached(CACHE_TEXTS)["input_ids"]
        assert "<arena-test-token>" not in other.get_vocab()
    # the quick backend copy keeps what was changed, added tokens' ids included
    assert copy_backend(first._tokenizer).to_str() == first._tokenizer.to_str()


def test_a_changed_tokenizer_file_is_read_again(tmp_path):
    """The cache is keyed by the files' contents: a folder whose tokenizer files change gets the new tokenizer."""
    folder = tmp_path / "tokenizer"
    shutil.copytree(TOKENIZER, folder)
    assert load_tokenizer(folder)("Hello World", add_special_tokens=False)["input_ids"] != \
        load_tokenizer(folder)("hello world", add_special_tokens=False)["input_ids"]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": True}))
    lowered = load_tokenizer(folder)
    assert lowered("Hello World", add_special_tokens=False)["input_ids"] == \
        lowered("hello world", add_special_tokens=False)["input_ids"]
