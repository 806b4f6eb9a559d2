"""Shared fixtures: the real data and tokenizer in ../shared, and tiny DeBERTa-v3 models built from the real config."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

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
def tiny_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """An untrained tiny DeBERTa-v3 checkpoint (random weights, real tokenizer), max length 128."""
    from arena.encode import EncoderConfig
    from arena.train.loop import TrainConfig, run_training

    out = tmp_path_factory.mktemp("tiny-ckpt") / "model"
    run_training(TrainConfig(data=str(TRAIN_CSV), model=str(tiny_config), tokenizer=str(TOKENIZER),
                             random_init=True, output=str(out), max_steps=0, head="hf",
                             encoder=EncoderConfig(max_length=128)))
    return out


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_checkpoint) -> Path:
    from arena.export.cli import run_export

    out = tmp_path_factory.mktemp("tiny-export") / "export"
    run_export(tiny_checkpoint, out, int8=True, data=str(TRAIN_CSV), parity_shapes="1x17,7x64,16x128")
    return out


# ------------------------------------------------------------------------------------------------ decoders


@pytest.fixture(scope="session")
def tiny_export_int8_static(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny export with OpenVINO's checks and an NNCF static INT8 model (needs openvino and nncf)."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from arena.export.cli import run_export

    out = tmp_path_factory.mktemp("tiny-export-int8s") / "export"
    run_export(tiny_checkpoint, out, int8=True, int8_static=True, calibration_rows=16, data=str(TRAIN_CSV),
               parity_shapes="1x17,7x64,16x128")
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
