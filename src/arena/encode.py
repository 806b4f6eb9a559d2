"""Text -> token ids: the segment budget and truncation rules, in one place, used by train and infer.

Layout of one row (``segments`` strategy), framed by the tokenizer's own special tokens (:class:`Frame`)::

    encoders:  [CLS] <prompt header> prompt [SEP] <response A header> response_a [SEP] <B header> response_b [SEP]
    decoders:  <bos> <prompt header> prompt \n\n <response A header> response_a \n\n <B header> response_b <eos>

A decoder's classifier reads the hidden state of the last real token (it finds it as the rightmost token that is not
the pad token), so rows are right-padded, the pad token is set where the tokenizer has none (:func:`ensure_pad_token`)
and a row never ends with the pad id: where the only candidate pad token is EOS, rows end without it.

Inside a segment, turns are joined by a turn marker. When the row does not fit ``max_length``:

* each segment gets a share of the token budget (default prompt 20% / A 40% / B 40%); a segment that needs less
  than its share gives the rest to the others (:func:`segment_budget`, water-filling);
* inside a segment the latest turns are kept first; older turns are kept while whole, one older turn may be cut;
* a turn that does not fit keeps its head and its tail (``head_fraction`` of the budget from the start).

Speed: tokenizing whole arena texts is slow (~1,500 rows/s on 2 cores), and most of that text is thrown away.
Each segment is first cut to a character budget derived from an *estimated* token budget (``chars_per_token`` x
tokens, head and tail pieces tokenized separately), then budgets are computed on the real token counts. Where the
pre-cut text turns out too short for the final budget (rare: unusual text), that row is tokenized again in full, so
the result is the same as tokenizing everything; ``tests/test_encode.py`` checks this on the real sample.

The ``notebook`` strategy reproduces the plain format of the original starter notebook for comparison: one
string ``prompt: ... response_a: ... response_b: ...`` cut at the end, which loses response B on long rows.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arena.artifacts import SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG, TOKENIZER_JSON
from arena.data import Record, swap_ab
from arena.errors import ConfigError, ModelError

STRATEGIES = ("segments", "notebook")


@dataclass(frozen=True)
class EncoderConfig:
    """How rows become token ids. Saved with every checkpoint and export so inference encodes as training did."""

    max_length: int = 512
    strategy: str = "segments"
    shares: tuple[float, float, float] = (0.2, 0.4, 0.4)
    head_fraction: float = 0.5
    """Share of a cut turn's budget taken from its start; the rest comes from its end."""
    chars_per_token: float = 7.0
    """Pre-cut multiple: a segment with a budget of n tokens is first cut to ``n * chars_per_token`` characters."""
    estimate_chars_per_token: float = 4.0
    """Used only to plan the pre-cut (over-estimating tokens is safe); real arena text averages ~3.6."""
    headers: tuple[str, str, str] = ("Prompt:", "Response A:", "Response B:")
    turn_marker: str = "||"
    min_turn_tokens: int = 8
    """An older turn is cut into the space left only if at least this many of its tokens fit."""
    features: bool = False
    """Also compute the hand-crafted features (:mod:`arena.features`) of every row: the hybrid head's third input."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown encoder strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if len(self.shares) != 3 or any(s < 0 for s in self.shares) or sum(self.shares) <= 0:
            raise ConfigError(f"--shares needs three non-negative numbers for prompt, A, B; got {self.shares}")
        if not 0.0 <= self.head_fraction <= 1.0:
            raise ConfigError(f"head_fraction must be within [0, 1], got {self.head_fraction}")
        if self.max_length < 16:
            raise ConfigError(f"max_length {self.max_length} is too short for a prompt and two responses")
        object.__setattr__(self, "shares", tuple(float(s) for s in self.shares))
        object.__setattr__(self, "headers", tuple(self.headers))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("shares", "headers"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


@dataclass
class Encoded:
    """Token ids of each row (int32, no padding) in the input order, and the rows' features if asked for."""

    ids: list[np.ndarray]
    lengths: np.ndarray = field(init=False)
    fallbacks: int = 0
    """Rows whose pre-cut text was too short and were tokenized again in full."""
    features: np.ndarray | None = None
    """(rows, len(FEATURE_NAMES)) float32 when the encoder config has ``features=True``, else None."""

    def __post_init__(self) -> None:
        self.lengths = np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))
        if self.features is not None and len(self.features) != len(self.ids):
            raise ValueError(f"{len(self.features)} feature rows for {len(self.ids)} encoded rows")

    def feature_rows(self, index: Sequence[int] | np.ndarray) -> np.ndarray | None:
        """The features of rows ``index`` (a batch), or None when this encoding has none."""
        return None if self.features is None else self.features[np.asarray(index, dtype=np.int64)]

    def __len__(self) -> int:
        return len(self.ids)


# --------------------------------------------------------------------------------------------------- budgets


def segment_budget(lengths: Sequence[int], shares: Sequence[float], available: int) -> list[int]:
    """Split ``available`` tokens between segments of the given ``lengths`` by ``shares`` (water-filling).

    Guarantees: ``budget[i] <= lengths[i]``; ``sum(budget) == min(available, sum(lengths))``; a segment at least as
    long as its share ``floor(available * share / sum(shares))`` gets at least that; what a short segment leaves
    flows to the others in proportion to their shares.
    """
    n = len(lengths)
    budget = [0] * n
    active = [i for i in range(n) if lengths[i] > 0]
    remaining = available
    total = float(sum(shares))
    if total <= 0:
        raise ConfigError("segment shares must not all be zero")
    while active and remaining > 0:
        weight = sum(shares[i] for i in active)
        if weight <= 0:  # only zero-share segments left: they share equally
            give = {i: remaining // len(active) for i in active}
        else:
            give = {i: int(remaining * shares[i] / weight) for i in active}
        done = [i for i in active if lengths[i] - budget[i] <= give[i]]
        if done:
            for i in done:
                remaining -= lengths[i] - budget[i]
                budget[i] = lengths[i]
            active = [i for i in active if i not in done]
            continue
        for i in active:
            budget[i] += give[i]
            remaining -= give[i]
        # Hand out what flooring left, one token each, largest share first (ties: earlier segment).
        for i in sorted(active, key=lambda j: (-shares[j], j)):
            if remaining <= 0:
                break
            if budget[i] < lengths[i]:
                budget[i] += 1
                remaining -= 1
        break
    return budget


def head_tail(head: Sequence[int], tail: Sequence[int], budget: int, head_fraction: float) -> list[int] | None:
    """Keep ``budget`` tokens: the first ones of ``head`` and the last ones of ``tail``.

    ``head`` and ``tail`` are the token ids of the start and of the end of one text (the same list when the text was
    tokenized whole). Returns None when either piece is too short for its part of ``budget``.
    """
    if budget <= 0:
        return []
    n_head = int(round(budget * head_fraction))
    n_tail = budget - n_head
    if n_head > len(head) or n_tail > len(tail):
        return None
    return [*head[:n_head], *tail[len(tail) - n_tail:]] if n_tail else list(head[:n_head])


# --------------------------------------------------------------------------------------------------- encoder


class _Turn:
    """One turn after the character pre-cut: whole (``tail is None``) or its head and tail pieces."""

    __slots__ = ("head", "tail", "head_text", "tail_text")

    def __init__(self, head_text: str, tail_text: str | None) -> None:
        self.head_text, self.tail_text = head_text, tail_text
        self.head: list[int] = []
        self.tail: list[int] | None = None


_DROPPED = None  # a turn beyond the pre-cut's character budget: not tokenized at all


class ArenaEncoder:
    """Encode :class:`~arena.data.Record` rows with any Hugging Face tokenizer under an :class:`EncoderConfig`."""

    def __init__(self, tokenizer: Any, config: EncoderConfig | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config or EncoderConfig()
        cfg = self.config
        self._rust = _raw_encoder(tokenizer)
        self.pad_id = ensure_pad_token(tokenizer)
        pieces = self._tokenize([*cfg.headers, cfg.turn_marker, DECODER_SEPARATOR])
        self.header_ids = pieces[:3]
        self.marker_ids = pieces[3]
        self.frame = Frame.for_tokenizer(tokenizer, pieces[4], self.pad_id)
        fixed = self.frame.size + sum(len(h) for h in self.header_ids)
        self.available = cfg.max_length - fixed
        if self.available < 3 * 4:
            raise ConfigError(f"max_length {cfg.max_length} leaves only {self.available} tokens for text")
        total = sum(cfg.shares)
        self.share_floor = [int(self.available * s / total) for s in cfg.shares]

    # -- public -------------------------------------------------------------------------------------------------

    def encode(self, records: Sequence[Record], *, swap: bool = False) -> Encoded:
        """Token ids for each record (``swap=True``: with responses A and B exchanged), in input order."""
        if swap:
            records = [swap_ab(r) for r in records]
        if self.config.strategy == "notebook":
            encoded = self._encode_notebook(records)
        else:
            ids, retry = self._encode_segments(records, precut=True)
            if retry:
                full, still = self._encode_segments([records[i] for i in retry], precut=False)
                assert not still, "full-text encoding cannot run short"
                for i, row in zip(retry, full, strict=True):
                    ids[i] = row
            encoded = Encoded(ids=ids, fallbacks=len(retry))
        if self.config.features:
            from arena.features import feature_matrix

            encoded.features = feature_matrix(records)
        return encoded

    def decode_segments(self, ids: Sequence[int]) -> list[list[int]]:
        """Split one encoded row into its three segments' token ids (without headers); for tests and reports.

        A segment ends where the separator followed by the next segment's header first appears (a text that itself
        contains exactly those tokens would split early; real rows do not)."""
        frame = self.frame
        body = list(ids)[len(frame.begin): len(ids) - len(frame.end)]
        out: list[list[int]] = []
        for s, header in enumerate(self.header_ids):
            if s == 2:
                out.append(body[len(header):])
                break
            cut = [*frame.separator, *self.header_ids[s + 1]]
            end = next(i for i in range(len(header), len(body) - len(cut) + 1) if body[i:i + len(cut)] == cut)
            out.append(body[len(header):end])
            body = body[end + len(frame.separator):]
        return out

    # -- internals ----------------------------------------------------------------------------------------------

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self._rust is not None:  # the Rust tokenizer without offsets: ~15% faster than the Python wrapper
            return [e.ids for e in self._rust(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                              return_token_type_ids=False)["input_ids"]

    def _plan_chars(self, segments: Sequence[Sequence[str]]) -> list[int]:
        """Character caps per segment from estimated token lengths (see the module docstring)."""
        cfg = self.config
        est = [
            math.ceil(sum(len(t) for t in turns) / cfg.estimate_chars_per_token)
            + len(self.marker_ids) * (len(turns) - 1)
            for turns in segments
        ]
        budget = segment_budget(est, cfg.shares, self.available)
        return [max(16, int(b * cfg.chars_per_token)) for b in budget]

    def _precut(self, turns: Sequence[str], cap: float) -> list[_Turn | None]:
        """Keep the latest turns within ``cap`` characters; cut one turn into head and tail text where needed."""
        out: list[_Turn | None] = [_DROPPED] * len(turns)
        left = cap
        min_chars = self.config.min_turn_tokens * self.config.chars_per_token
        for k in range(len(turns) - 1, -1, -1):
            text = turns[k]
            if len(text) <= left:
                out[k] = _Turn(text, None)
                left -= len(text) + 2
                continue
            if left < cap and left < min_chars:
                break
            n_head = int(left * self.config.head_fraction)
            n_tail = int(left) - n_head
            out[k] = _Turn(_cut_head(text, n_head), _cut_tail(text, n_tail))
            break
        return out

    def _encode_segments(self, records: Sequence[Record], *, precut: bool) -> tuple[list[np.ndarray], list[int]]:
        cfg = self.config
        # 1. pre-cut every segment to a character budget and collect the pieces to tokenize in one batched call
        rows: list[list[list[_Turn | None]]] = []
        texts: list[str] = []
        for rec in records:
            segments = (rec.prompt, rec.response_a, rec.response_b)
            caps = self._plan_chars(segments) if precut else [math.inf] * 3
            row = [self._precut(turns, cap) for turns, cap in zip(segments, caps, strict=True)]
            for seg in row:
                for turn in seg:
                    if turn is not None:
                        texts.append(turn.head_text)
                        if turn.tail_text is not None:
                            texts.append(turn.tail_text)
            rows.append(row)
        tokens = iter(self._tokenize(texts))
        for row in rows:
            for seg in row:
                for turn in seg:
                    if turn is not None:
                        turn.head = next(tokens)
                        if turn.tail_text is not None:
                            turn.tail = next(tokens)
        # 2. exact budgets on the real token counts, then assemble
        out: list[np.ndarray] = []
        retry: list[int] = []
        big = 1 << 30
        marker = self.marker_ids
        for r, row in enumerate(rows):
            lengths = []
            for seg in row:
                cut = any(t is None or t.tail is not None for t in seg)
                whole = sum(len(t.head) for t in seg if t is not None) + len(marker) * (len(seg) - 1)
                lengths.append(big if cut else whole)
            budget = segment_budget(lengths, cfg.shares, self.available)
            ids: list[int] = list(self.frame.begin)
            ok = True
            for s, seg in enumerate(row):
                body = self._assemble(seg, budget[s])
                if body is None:
                    ok = False
                    break
                ids += self.header_ids[s]
                ids += body
                ids += self.frame.separator if s < 2 else self.frame.end
            if not ok:
                retry.append(r)
                out.append(np.empty(0, dtype=np.int32))
                continue
            out.append(np.asarray(ids, dtype=np.int32))
        return out, retry

    def _assemble(self, seg: Sequence[_Turn | None], budget: int) -> list[int] | None:
        """The segment's tokens within ``budget``, latest turns first; None if the pre-cut text ran short."""
        cfg = self.config
        marker = self.marker_ids
        kept: list[list[int]] = []
        left = budget
        for k in range(len(seg) - 1, -1, -1):
            turn = seg[k]
            room = left - (len(marker) if kept else 0)
            if room < 0:
                break
            if turn is None:
                return None  # the pre-cut dropped a turn that the exact budget may have room for
            if turn.tail is None and len(turn.head) <= room:
                kept.append(turn.head)
                left = room - len(turn.head)
                continue
            if room == 0 or (any(kept) and room < cfg.min_turn_tokens):
                break  # an older turn is only cut if a useful part of it fits (after a non-empty later turn)
            if turn.tail is None:
                pieces = head_tail(turn.head, turn.head, room, cfg.head_fraction)
            else:  # cut text: the token at each cut may be half a word, so neither is used
                pieces = head_tail(turn.head[:-1], turn.tail[1:], room, cfg.head_fraction)
            if pieces is None:
                return None
            kept.append(pieces)
            left = 0
            break
        body: list[int] = []
        for i, turn_ids in enumerate(reversed(kept)):
            if i:
                body += marker
            body += turn_ids
        return body

    def _encode_notebook(self, records: Sequence[Record]) -> Encoded:
        cfg = self.config
        cap = int(cfg.max_length * cfg.chars_per_token)

        def text(rec: Record, cut: bool) -> str:
            full = (f"prompt: {' '.join(rec.prompt)}\n\nresponse_a: {' '.join(rec.response_a)}"
                    f"\n\nresponse_b: {' '.join(rec.response_b)}")
            return full[:cap] if cut else full

        body = self._tokenize([text(r, True) for r in records])
        begin, end = self.frame.begin, self.frame.end
        limit = cfg.max_length - len(begin) - len(end)
        retry = [i for i, (r, b) in enumerate(zip(records, body, strict=True))
                 if len(b) < limit and len(text(r, False)) > cap]
        for i, b in zip(retry, self._tokenize([text(records[i], False) for i in retry]), strict=True):
            body[i] = b
        ids = [np.asarray([*begin, *b[:limit], *end], dtype=np.int32) for b in body]
        return Encoded(ids=ids, fallbacks=len(retry))


def _raw_encoder(tokenizer: Any) -> Any:
    """The Rust tokenizer's batch encoder on a private copy without padding or truncation, or None.

    Some tokenizer.json files (sentence-transformers models) switch on fixed-length padding, which the Python
    wrapper overrides per call but the Rust object applies, so the copy turns both off.
    """
    if isinstance(tokenizer, JsonTokenizer):  # already a private copy without padding or truncation
        return tokenizer.encode_batch
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    try:
        raw = without_padding(copy_backend(backend))
    except Exception:  # pragma: no cover - an exotic tokenizer: use the Python wrapper
        return None
    return getattr(raw, "encode_batch_fast", None) or raw.encode_batch


def without_padding(backend: Any) -> Any:
    """``backend`` (a ``tokenizers.Tokenizer``) with padding and truncation off, returned for chaining: the encoder
    cuts and pads rows itself, and some ``tokenizer.json`` files (sentence-transformers models) switch both on."""
    backend.no_padding()
    backend.no_truncation()
    return backend


_BACKEND_PARTS = ("normalizer", "pre_tokenizer", "post_processor", "decoder")


def copy_backend(backend: Any) -> Any:
    """An independent copy of ``backend`` (a ``tokenizers.Tokenizer``) that encodes as it does, in about a
    millisecond: serialising and parsing it again (``Tokenizer.from_str(backend.to_str())``) rebuilds the vocabulary
    model, 0.5 s for DeBERTa-v3's 128,000 pieces.

    The copy has its own normalizer, pre-tokenizer, post-processor, decoder, added tokens, padding and truncation:
    changing any of them on one leaves the other as it was. It shares the vocabulary model object itself
    (``backend.model``), which nothing changes once a tokenizer is loaded (neither arena nor transformers: only
    training a tokenizer or setting a BPE model's ``dropout`` would). Where the added tokens do not come back with
    the same ids, the copy is made the slow way, through ``to_str``."""
    from tokenizers import Tokenizer

    new = Tokenizer(backend.model)
    for part in _BACKEND_PARTS:
        value = getattr(backend, part)
        if value is not None:
            setattr(new, part, copy.deepcopy(value))
    added = backend.get_added_tokens_decoder()
    for token_id in sorted(added):  # in id order, so that tokens the model lacks get the ids they had
        token = added[token_id]
        (new.add_special_tokens if token.special else new.add_tokens)([token])
    if backend.truncation is not None:
        new.enable_truncation(**backend.truncation)
    if backend.padding is not None:
        new.enable_padding(**backend.padding)
    new.encode_special_tokens = backend.encode_special_tokens
    same = ({i: repr(t) for i, t in new.get_added_tokens_decoder().items()} == {i: repr(t) for i, t in added.items()}
            and (new.truncation, new.padding) == (backend.truncation, backend.padding))
    return new if same else Tokenizer.from_str(backend.to_str())


SPECIAL_TOKENS = ("cls", "sep", "bos", "eos", "pad", "unk")
"""The special tokens the encoder reads from a tokenizer (:class:`Frame`, :func:`ensure_pad_token`)."""


def _token_id(name: str) -> property:
    return property(lambda self: self.token_id(getattr(self, f"{name}_token")),
                    doc=f"The id of ``{name}_token`` (None when there is none; see :meth:`JsonTokenizer.token_id`).")


class JsonTokenizer:
    """A ``tokenizer.json`` read with the ``tokenizers`` library, offering what :class:`ArenaEncoder` (and the
    checks around it) use of a Hugging Face tokenizer and nothing more, so that serving an export imports neither
    transformers nor torch (:func:`arena.models.modeling.load_tokenizer` picks it for export folders).

    The ids are those of the transformers tokenizer the export was made with: the encoder tokenizes with that
    tokenizer's Rust backend in both cases (padding and truncation off, no special tokens added), and arena-export
    writes that backend as the folder's ``tokenizer.json`` (:func:`arena.models.modeling.write_serving_tokenizer`).
    The special tokens come from ``special_tokens_map.json``, else ``tokenizer_config.json``, else the
    ``tokenizer.json`` itself (:func:`json_special_tokens`); arena-export checks that they are transformers' own.
    """

    def __init__(self, backend: Any, tokens: dict[str, str | None]) -> None:
        self.backend = without_padding(backend)
        self.padding_side = "right"
        for name in SPECIAL_TOKENS:
            setattr(self, f"{name}_token", tokens.get(name))

    @classmethod
    def from_folder(cls, folder: str | Path) -> JsonTokenizer:
        """The folder's ``tokenizer.json`` and special tokens; :class:`ModelError` when the file is unreadable."""
        from tokenizers import Tokenizer

        path = Path(folder) / TOKENIZER_JSON
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exceptions for malformed files
            detail = " ".join(str(exc).split())[:200]
            raise ModelError(f"{path} is not a tokenizer the tokenizers library can read ({detail}); export "
                             "again") from None
        return cls(backend, json_special_tokens(Path(folder), backend))

    cls_token_id = _token_id("cls")
    sep_token_id = _token_id("sep")
    bos_token_id = _token_id("bos")
    eos_token_id = _token_id("eos")
    pad_token_id = _token_id("pad")
    unk_token_id = _token_id("unk")

    def token_id(self, token: str | None) -> int | None:
        """``token``'s id; UNK's for a token the vocabulary lacks (as transformers converts it)."""
        if token is None:
            return None
        found = self.backend.token_to_id(token)
        return found if found is not None or token == self.unk_token else self.token_id(self.unk_token)

    def __len__(self) -> int:
        """The vocabulary with added tokens, as ``len()`` of a transformers tokenizer counts it."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[Any]:
        """The ``tokenizers`` encodings of ``texts`` (``.ids`` holds the token ids)."""
        run = getattr(self.backend, "encode_batch_fast", None) or self.backend.encode_batch
        return run(texts, add_special_tokens=add_special_tokens)

    def __call__(self, text: str | list[str], add_special_tokens: bool = True, return_attention_mask: Any = None,
                 return_token_type_ids: Any = None, **options: Any) -> dict[str, Any]:
        """``{"input_ids": ...}`` for one text or a list, as a transformers tokenizer's call returns them, never
        truncated or padded. ``return_attention_mask`` and ``return_token_type_ids`` are accepted and change nothing
        (only ids are returned); any other option (``truncation``, ``max_length``, ``padding``, ...) is a
        ``TypeError``, since ignoring it would return other ids than transformers does."""
        if options:
            raise TypeError(f"JsonTokenizer takes no {', '.join(sorted(options))}: it returns whole, unpadded ids "
                            "(cut the text, or the ids, yourself)")
        encoded = [e.ids for e in self.encode_batch([text] if isinstance(text, str) else list(text),
                                                   add_special_tokens)]
        return {"input_ids": encoded[0] if isinstance(text, str) else encoded}


def json_special_tokens(folder: Path, backend: Any) -> dict[str, str | None]:
    """The :data:`SPECIAL_TOKENS` of a tokenizer folder. ``tokenizer.json`` gives what it records (a BERT/RoBERTa
    post-processor's CLS and SEP, or a template's tokens around the text, its padding token, its model's UNK);
    ``tokenizer_config.json`` overrides that and ``special_tokens_map.json`` overrides both (the order in which
    transformers reads them)."""
    found: dict[str, str | None] = _backend_tokens(backend)
    for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ModelError(f"{path} is not valid JSON: {exc}") from None
        for key in SPECIAL_TOKENS:
            value = data.get(f"{key}_token")
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                found[key] = value
    return found


def _backend_tokens(backend: Any) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    unk = getattr(backend.model, "unk_token", None)
    if isinstance(unk, str):
        found["unk"] = unk
    if backend.padding:
        found["pad"] = backend.padding.get("pad_token")
    processor = backend.post_processor
    if processor is None:
        return found
    state = json.loads(processor.__getstate__())
    if state.get("type") in ("BertProcessing", "RobertaProcessing"):
        found["cls"], found["sep"] = state["cls"][0], state["sep"][0]
    elif state.get("type") == "TemplateProcessing":
        items = [next(iter(i.values())).get("id") if "SpecialToken" in i else None for i in state.get("single", [])]
        if len(items) >= 3 and items[0] is not None and items[-1] is not None and None in items:
            found["cls"], found["sep"] = items[0], items[-1]
    return found


_ALIGN = 24  # how far a cut may move to land on white space, so that no word is split at the cut


def _cut_head(text: str, n: int) -> str:
    """The first ``n`` characters, ended at white space where one is near (a split word tokenizes differently)."""
    space = text.rfind(" ", max(0, n - _ALIGN), n)
    return text[: space if space > 0 else n]


def _cut_tail(text: str, n: int) -> str:
    """The last ``n`` characters, started after white space where one is near."""
    if n <= 0:
        return ""
    start = len(text) - n
    space = text.find(" ", start, start + _ALIGN)
    return text[space + 1 if space >= 0 else start:]


DECODER_SEPARATOR = "\n\n"
"""Between a decoder row's segments: plain text (a decoder has no [SEP]-like token it was pre-trained with)."""


@dataclass(frozen=True)
class Frame:
    """The special tokens around and between a row's three segments, from the tokenizer.

    * ``cls/sep``: the tokenizer has CLS and SEP (BERT, DeBERTa): ``[CLS] ... [SEP] ... [SEP] ... [SEP]``.
    * ``bos/eos``: anything else (decoders: Gemma, Llama, Mistral, Qwen): BOS where the tokenizer has one, the
      segments joined by :data:`DECODER_SEPARATOR`, EOS at the end unless EOS is also the pad token (the classifier
      finds the last real token as the rightmost non-pad token, so a row must not end with the pad id).
    """

    kind: str
    begin: tuple[int, ...]
    separator: tuple[int, ...]
    end: tuple[int, ...]

    @property
    def size(self) -> int:
        """Special and separator tokens of one ``segments`` row."""
        return len(self.begin) + 2 * len(self.separator) + len(self.end)

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, text_separator: Sequence[int], pad_id: int) -> Frame:
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        if cls_id is not None and sep_id is not None:
            return cls("cls/sep", (int(cls_id),), (int(sep_id),), (int(sep_id),))
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        return cls("bos/eos", () if bos is None else (int(bos),), tuple(int(i) for i in text_separator),
                   () if eos is None or eos == pad_id else (int(eos),))


def ensure_pad_token(tokenizer: Any) -> int:
    """The pad id, after setting a pad token where the tokenizer has none (decoders), and padding on the right.

    The pad token must not end a real row (see :class:`Frame`): UNK is preferred where the tokenizer has one that
    differs from BOS/EOS (Llama-2, Mistral: byte-fallback SentencePiece never emits it), else EOS (Llama-3,
    Qwen-2 base). Gemma and every encoder tokenizer already have a pad token and are left as they are.
    """
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        unk = getattr(tokenizer, "unk_token", None)
        specials = {tokenizer.bos_token_id, tokenizer.eos_token_id}
        if unk is not None and tokenizer.unk_token_id not in specials:
            tokenizer.pad_token = unk
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            raise ConfigError("the tokenizer has no pad, UNK or EOS token to pad rows with; set tokenizer.pad_token")
    return int(tokenizer.pad_token_id)


def pad_batch(rows: Sequence[np.ndarray], pad_id: int, *, multiple: int = 8,
              length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token rows to one length (their longest, rounded up to ``multiple``, or ``length``).

    Returns ``(input_ids, attention_mask)`` as int64 arrays of shape (batch, length).
    """
    longest = max((len(r) for r in rows), default=1)
    if length is None:
        length = -(-max(longest, 1) // multiple) * multiple if multiple > 1 else max(longest, 1)
    if longest > length:
        raise ValueError(f"a row of {longest} tokens does not fit a padded length of {length}")
    input_ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return input_ids, mask
