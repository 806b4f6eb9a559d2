"""Shared fixtures: the real data and tokenizer in ../shared, and tiny DeBERTa-v3 models built from the real config."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ARENA_SHARED", ROOT.parent / "shared")).resolve()  # a copy on the GPU machine
DATA = SHARED / "data" / "arena" / "lmsys_kaggle"
TRAIN_CSV = DATA / "train_sample.csv"
TEST_CSV = DATA / "test.csv"
TOKENIZER = SHARED / "models" / "deberta-v3" / "tokenizer"
CONFIGS = SHARED / "models" / "deberta-v3" / "configs"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Idle OpenMP threads sleep instead of spinning (read when torch loads, after this file; inherited by every process
# a test starts). The tiny models are all thread hand-offs: on a 2-core machine shared with other jobs, spinning
# threads wait on descheduled partners, which made the suite several times slower (measured: 20 forward passes of
# the tiny model at 2 threads, 12-24 s spinning, 3-5 s passive; test_ensemble's row-order test, 246 s -> 69 s
# under load 5, 73 s -> 58 s under load 2). How threads wait changes no number a test compares.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# compiled OpenVINO models go to a throwaway folder, not the user's ~/.cache
os.environ.setdefault("ARENA_OPENVINO_CACHE", os.path.join(tempfile.gettempdir(), f"arena-tests-ov-{os.getpid()}"))

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            pooler_hidden_size=32)


def pytest_collection_modifyitems(config, items):
    import torch

    has_gpu = torch.cuda.is_available()
    from arena.machine.gpu import tensorrt_available

    has_trt = tensorrt_available()[0]  # a real TensorRT >= 10.12 (the stubs wheel also imports as `tensorrt`)
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA; none on this machine"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(
                reason="needs TensorRT >= 10.12 and an NVIDIA GPU; no machine here has both (see README)"))


def logit_spread(logits: np.ndarray) -> float:
    """How much a model's logits differ from row to row: each class's standard deviation over the rows, averaged.
    Tolerances are stated as a fraction of it, so a check means the same for any model's scale."""
    return float(np.asarray(logits, dtype=np.float64).std(axis=0).mean())


FP16_REL = 0.05
"""FP16 (11 mantissa bits, fp32 accumulation): every logit within 5% of the reference's row-to-row spread."""
BF16_REL = 0.15
"""bf16 keeps 8 mantissa bits, three fewer than FP16: the tiny checkpoint's bf16 logits on the CPU differ from fp32
by up to 6% of the spread (measured), so 15% leaves room for other kernels and still rejects a wrong number."""


def assert_logits_close(ref: np.ndarray, got: np.ndarray, *, rel: float, min_spread: float = 0.5) -> None:
    """``got`` is ``ref`` up to numerical noise: every logit within ``rel`` x the reference's row-to-row spread.

    The reference must be informative (spread above ``min_spread``): against near-constant logits, zeros or rows
    in another order would pass. Within ``rel`` x spread of every logit, no row whose top two classes are more
    than 2 x ``rel`` x spread apart can change its argmax, so this also checks the decisions. Raises
    AssertionError with the largest difference and where it is."""
    ref, got = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    assert np.isfinite(got).all(), "non-finite logits"
    spread = logit_spread(ref)
    assert spread > min_spread, f"the reference is uninformative (logit spread {spread:.3g}): it proves nothing"
    diff = np.abs(got - ref)
    row, col = np.unravel_index(int(diff.argmax()), diff.shape)
    assert diff.max() <= rel * spread, (f"max |logit diff| {diff.max():.3g} (row {row}, class {col}) > "
                                        f"{rel} x spread {spread:.3g}")


@pytest.fixture(autouse=True, scope="session")
def arena_cache_dir(tmp_path_factory):
    """What arena caches about the machine (``--backend auto``'s calibration) goes to this session's own folder,
    never the user's ~/.cache; a test that needs an empty cache points ARENA_CACHE_DIR elsewhere itself."""
    folder = tmp_path_factory.mktemp("arena-cache")
    previous = os.environ.get("ARENA_CACHE_DIR")
    os.environ["ARENA_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("ARENA_CACHE_DIR", None)
    else:
        os.environ["ARENA_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def shared_available() -> None:
    if not TRAIN_CSV.is_file():
        pytest.fail(f"the real sample is missing at {TRAIN_CSV}; tests need ../shared beside the checkout")


@pytest.fixture(scope="session")
def tokenizer():
    from arena.models.modeling import load_tokenizer

    return load_tokenizer(TOKENIZER)


@pytest.fixture(scope="session")
def train_records():
    from arena.data import read_train

    return read_train(TRAIN_CSV)


def write_tiny_config(folder: Path, **overrides) -> Path:
    cfg = json.loads((CONFIGS / "deberta-v3-xsmall.json").read_text())
    cfg.update(TINY)
    cfg.update(overrides)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    return write_tiny_config(tmp_path_factory.mktemp("tiny-config"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny DeBERTa-v3 checkpoint (random weights, real tokenizer, max length 128) whose head is rescaled by
    :func:`make_informative`, so its logits on real rows spread over several units and their argmaxes vary."""
    from arena.encode import EncoderConfig
    from arena.train.loop import TrainConfig, run_training

    out = tmp_path_factory.mktemp("tiny-ckpt") / "model"
    config = write_tiny_config(out.parent / "config", initializer_range=0.2)  # why 0.2: see TINY_DECODER
    run_training(TrainConfig(data=str(TRAIN_CSV), model=str(config), tokenizer=str(TOKENIZER),
                             random_init=True, output=str(out), max_steps=0, head="hf",
                             encoder=EncoderConfig(max_length=128)))
    make_informative(out)
    return out


INFORMATIVE_ROWS = 64
"""Real rows (the first of ``train_sample.csv``) the fixtures' heads are fitted on and checked against."""
INFORMATIVE_STD = 1.0
"""Each class's logit standard deviation over those rows after :func:`make_informative`."""


def informative_batch(folder: Path, rows: int = INFORMATIVE_ROWS):
    """The first ``rows`` real rows encoded as the checkpoint in ``folder`` encodes them:
    (input_ids, attention_mask, features or None)."""
    from arena.data import read_train
    from arena.encode import ArenaEncoder, pad_batch
    from arena.models.modeling import load_tokenizer, read_meta

    meta, tokenizer = read_meta(folder), load_tokenizer(folder)
    encoded = ArenaEncoder(tokenizer, meta.encoder).encode(read_train(TRAIN_CSV)[:rows])
    ids, mask = pad_batch(encoded.ids, tokenizer.pad_token_id or 0)
    return ids, mask, encoded.features


def make_informative(folder: Path, std: float = INFORMATIVE_STD) -> None:
    """Replace the classification head of the checkpoint in ``folder`` so its logits say something.

    A random tiny model's logits on real rows sit within 0.01 of each other (every argmax the same class): a
    comparison that accepts all-zero logits or rows in reverse order passes against it. The backbone should be
    built with ``initializer_range`` 0.2: at 0.02 the rows' head inputs differ by little more than bf16 rounding,
    which the rescaled head would then amplify into disagreements no trained model shows. The head's input on
    :data:`INFORMATIVE_ROWS` real rows is centred; its three principal directions, made orthogonal to the mean
    (so the head needs no bias, as a decoder's ``score`` has none), scaled to give each class a logit standard
    deviation of ``std`` over those rows, become the head's weights. The principal directions are those along
    which the rows differ most, so reduced-precision noise moves them least."""
    from arena.models.modeling import load_classifier

    model = load_classifier(folder).eval()
    ids, mask, features = informative_batch(folder)
    informative_head(model, ids, mask, features, std)
    model.save_pretrained(folder, safe_serialization=True)


def informative_head(model, ids: np.ndarray, mask: np.ndarray, features: np.ndarray | None = None,
                     std: float = INFORMATIVE_STD) -> None:
    """:func:`make_informative` on a model in memory, fitted on the rows ``ids`` / ``mask`` (/ ``features``)."""
    import torch

    head = next(m for name, m in model.named_modules() if name in ("classifier", "score", "head"))
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().double()))
    extra = {} if features is None else {"features": torch.from_numpy(features)}
    with torch.no_grad():
        model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), **extra)
    hook.remove()
    h = seen[0]
    if h.dim() == 3:  # a decoder scores every position and keeps each row's last real token
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
        h = h[torch.arange(len(ids)), torch.from_numpy(last)]
    mean = h.mean(0)
    directions = torch.linalg.svd(h - mean, full_matrices=False).Vh[:3]
    unit = mean / mean.norm()
    directions = directions - (directions @ unit)[:, None] * unit[None, :]
    weight = directions * (std / (h @ directions.T).std(0))[:, None]
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.zero_()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_checkpoint) -> Path:
    from arena.export.cli import run_export

    out = tmp_path_factory.mktemp("tiny-export") / "export"
    run_export(tiny_checkpoint, out, int8=True, data=str(TRAIN_CSV), parity_shapes="1x17,7x64,16x128",
               int8_log_loss_tol=TINY_INT8_LOG_LOSS_TOL)
    return out


TINY_INT8_LOG_LOSS_TOL = 0.1
"""The INT8 gate's log-loss limit for the tiny exports (the product's: 0.02). Dynamic INT8 moves the tiny random
model's logits by up to ~20% of their spread; on the parity shapes' 1 to 16 labelled rows that changes the log loss
by 0.04-0.06 (measured), which says more about a random 2-layer model than about the quantiser. Probability and
argmax limits stay the product's."""


@pytest.fixture(scope="session")
def hybrid_checkpoint(tmp_path_factory, tiny_config):
    """A tiny DeBERTa-v3 hybrid model trained for a few steps on real rows: (checkpoint folder, run summary). Its
    feature path starts as a logistic regression on the rows' features, so its logits already vary by row."""
    from arena.encode import EncoderConfig
    from arena.train.loop import TrainConfig, run_training

    out = tmp_path_factory.mktemp("hybrid") / "model"
    summary = run_training(TrainConfig(
        data=str(TRAIN_CSV), model=str(tiny_config), tokenizer=str(TOKENIZER), random_init=True, output=str(out),
        max_rows=240, epochs=1, batch_size=8, max_steps=6, head="hybrid", swap_augment=True,
        encoder=EncoderConfig(max_length=96)))
    return out, summary


# ------------------------------------------------------------------------------------------------ decoders


@pytest.fixture(scope="session")
def tiny_export_int8_static(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny export with OpenVINO's checks and an NNCF static INT8 model (needs openvino and nncf)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from arena.errors import ParityError
    from arena.export.cli import run_export

    out = tmp_path_factory.mktemp("tiny-export-int8s") / "export"
    try:
        run_export(tiny_checkpoint, out, int8=True, int8_static=True, calibration_rows=16, data=str(TRAIN_CSV),
                   parity_shapes="1x17,7x64,16x128", int8_log_loss_tol=TINY_INT8_LOG_LOSS_TOL)
    except ParityError as exc:  # a known failure, kept visible: the gate is right to refuse it
        pytest.xfail("issue 23: NNCF static INT8 of the informative tiny checkpoint fails the INT8 gate (max prob "
                     f"diff up to 0.43, argmax agreement 0.82 on 16 calibration rows); it passed only while the "
                     f"fixture's logits were all alike. {str(exc).splitlines()[0][:300]}")
    return out
MISTRAL_TOKENIZER = ROOT / "tests" / "fixtures" / "mistral-tokenizer"
"""Mistral-7B's real SentencePiece model (from the PyPI package mistral-common), loaded as a LlamaTokenizer."""
DECODER_FAMILIES = ("gemma2", "llama", "mistral", "qwen2")
TINY_DECODER = dict(vocab_size=32000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=1,
                    eos_token_id=2, initializer_range=0.2)
"""``initializer_range`` 0.2 (HF default 0.02): at 0.02 a random 2-layer decoder's last-token state is almost the
same for every row (its own embedding dominates), so LoRA has nothing row-specific to learn from; at 0.2 the
state depends on the row, as a pretrained model's does."""


def tiny_decoder_config(family: str, **overrides):
    """A 2-layer, hidden-64 config of a decoder family, sized for the Mistral tokenizer's 32,000 ids."""
    from transformers import Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    classes = {"gemma2": Gemma2Config, "llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
    extra = {"head_dim": 16} if family == "gemma2" else {}
    return classes[family](**{**TINY_DECODER, **extra, **overrides})


@pytest.fixture(scope="session")
def mistral_tokenizer():
    from arena.models.modeling import load_tokenizer

    return load_tokenizer(MISTRAL_TOKENIZER)


@pytest.fixture(scope="session")
def decoder_base(tmp_path_factory) -> Path:
    """A tiny random Mistral classifier saved as a pretrained base folder (weights, config, the real Mistral
    tokenizer), max length 128: what a LoRA run starts from."""
    from arena.encode import EncoderConfig
    from arena.train.loop import TrainConfig, run_training

    config_dir = tmp_path_factory.mktemp("mistral-config")
    tiny_decoder_config("mistral").save_pretrained(config_dir)
    out = tmp_path_factory.mktemp("decoder-base") / "model"
    run_training(TrainConfig(data=str(TRAIN_CSV), model=str(config_dir / "config.json"),
                             tokenizer=str(MISTRAL_TOKENIZER), random_init=True, output=str(out), max_steps=0,
                             lora_r=0, encoder=EncoderConfig(max_length=128)))
    return out


def lora_config(base: Path, out: Path, **kw):
    """A LoRA run on the tiny decoder base: 40 real rows (32 train, 8 validation), 128 tokens."""
    from arena.encode import EncoderConfig
    from arena.train.loop import TrainConfig

    settings = dict(data=str(TRAIN_CSV), model=str(base), output=str(out), encoder=EncoderConfig(max_length=128),
                    max_rows=40, batch_size=8, lr=1e-2, warmup_ratio=0.0, calibrate=False, swap_augment=False,
                    lora_r=8, lora_dropout=0.0)
    settings.update(kw)
    return TrainConfig(**settings)


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory, decoder_base):
    """A LoRA adapter trained until it memorises 32 real rows: (checkpoint folder, run summary)."""
    from arena.train.loop import run_training

    out = tmp_path_factory.mktemp("lora") / "model"
    summary = run_training(lora_config(decoder_base, out, epochs=12))
    return out, summary
