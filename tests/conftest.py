"""Shared fixtures: the real data and tokenizer in ../shared, and tiny DeBERTa-v3 models built from the real config."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
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
    try:
        import tensorrt  # noqa: F401

        has_trt = has_gpu
    except ImportError:
        has_trt = False
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA; none on this machine"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(
                reason="needs TensorRT 10 and an NVIDIA GPU; no machine here has both (see README)"))


@pytest.fixture(scope="session")
def shared_available() -> None:
    if not TRAIN_CSV.is_file():
        pytest.fail(f"the real sample is missing at {TRAIN_CSV}; tests need ../shared beside the checkout")


@pytest.fixture(scope="session")
def tokenizer():
    from arena.modeling import load_tokenizer

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
