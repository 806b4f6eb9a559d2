"""Issue 26, larger than one GPU: a decoder split by layers across ``--devices cuda:0,cuda:1`` (accelerate's
``infer_auto_device_map`` on a meta-device model), chosen automatically when one GPU cannot hold it.

No GPU here: two GPUs are mocked (``torch.cuda`` device count, capability, name, total and free memory), and the
plan is made for a tiny 8-layer Llama whose sizes are scaled to them. Loading the weights onto the GPUs and running
a batch through both is verified only on a GPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from arena.errors import ConfigError
from tests.conftest import TEST_CSV, tiny_decoder_config
from tests.test_gpu_capability import fake_gpus

LAYERS = 8


@pytest.fixture(scope="module")
def llama_config():
    """8 layers, a 1,000-token vocabulary: the layers, not the embeddings, hold most of the weights (as in a 9B
    model), so there is something to spread."""
    return tiny_decoder_config("llama", vocab_size=1000, num_hidden_layers=LAYERS)


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory, llama_config):
    """A decoder checkpoint folder as arena-train writes it (config.json and model.safetensors)."""
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path_factory.mktemp("llama8") / "model"
    torch.manual_seed(0)
    config = tiny_decoder_config("llama", vocab_size=1000, num_labels=3, pad_token_id=0, num_hidden_layers=LAYERS)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    return folder


def memory(monkeypatch, *, total: list[int], free: list[int]) -> None:
    """The mocked GPUs' total memory (their properties) and free memory (``mem_get_info``)."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=total[i]))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], total[i]))


def layer_names(config) -> list[str]:
    from arena.models.modeling import transformer_layers
    from arena.serving.layer_split import meta_model

    return [name for name, _ in transformer_layers(meta_model(config, torch.float16))]


def test_the_plan_spreads_whole_layers_over_both_gpus(monkeypatch, llama_config):
    from arena.serving.layer_split import estimate_bytes, plan_layers

    fake_gpus(monkeypatch, "sm75", "sm75")
    gpus = ["cuda:0", "cuda:1"]
    size = estimate_bytes(llama_config, "fp16", gpus)
    share = int(size * 0.75)  # each GPU holds 3/4 of it (accelerate keeps the largest part's size free on cuda:0)
    plan = plan_layers(llama_config, gpus, "fp16", budget={"cuda:0": share, "cuda:1": share})
    names = layer_names(llama_config)
    assert names == [f"model.layers.{i}" for i in range(LAYERS)]
    assert set(plan.device_map.values()) == {0, 1}
    # no decoder layer is cut in two: every entry is a whole layer or lies outside the layers
    assert not [k for k in plan.device_map for layer in names if k.startswith(layer + ".")]
    on = {d: plan.layers[d] for d in gpus}
    assert on["cuda:0"] and on["cuda:1"]
    assert sorted(on["cuda:0"] + on["cuda:1"]) == list(range(LAYERS))
    assert max(on["cuda:0"]) < min(on["cuda:1"])  # in order: a batch goes through cuda:0, then cuda:1
    assert "model.embed_tokens" in plan.others["cuda:0"] and "score" in plan.others["cuda:1"]
    assert plan.model_bytes == size and sum(plan.used.values()) == size
    assert all(plan.used[d] <= plan.budget[d] for d in gpus)
    line = plan.line()
    assert line.startswith("layer split of ") and "cuda:0 layers 0-" in line and "cuda:1 layers " in line
    # the same plan with fp32 weights needs twice the room: it no longer fits
    with pytest.raises(ConfigError, match="fp32"):
        plan_layers(llama_config, gpus, "fp32", budget=plan.budget)


def test_an_impossible_fit_is_one_error_naming_the_sizes(monkeypatch, llama_config):
    from arena.serving.layer_split import estimate_bytes, plan_layers

    fake_gpus(monkeypatch, "sm75", "sm75")
    gpus = ["cuda:0", "cuda:1"]
    size = estimate_bytes(llama_config, "fp16", gpus)
    with pytest.raises(ConfigError) as info:
        plan_layers(llama_config, gpus, "fp16", budget={"cuda:0": int(size * 0.3), "cuda:1": int(size * 0.3)})
    text = str(info.value)
    assert "\n" not in text and "cuda:0" in text and "cuda:1" in text and "--precision 4bit" in text


def test_4bit_and_8bit_sizes_count_the_layers_linear_weights_only(monkeypatch, llama_config):
    from arena.serving.layer_split import estimate_bytes, meta_model

    fake_gpus(monkeypatch, "sm90", "sm90")
    gpus = ["cuda:0", "cuda:1"]
    half = estimate_bytes(llama_config, "auto", gpus)
    assert half == estimate_bytes(llama_config, "bf16", gpus) == estimate_bytes(llama_config, "fp32", gpus) // 2
    model = meta_model(llama_config, torch.bfloat16)
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and name.startswith("model.layers."))
    assert estimate_bytes(llama_config, "8bit", gpus) == half - linear  # 2 bytes -> 1
    assert estimate_bytes(llama_config, "4bit", gpus) == half - linear * 3 // 2  # 2 bytes -> 0.5


def test_auto_splits_only_what_one_gpu_cannot_hold(monkeypatch, llama_config, llama_checkpoint):
    from arena.serving.layer_split import HEADROOM, choose_split, estimate_bytes

    fake_gpus(monkeypatch, "sm75", "sm75")
    gpus = ["cuda:0", "cuda:1"]
    size = estimate_bytes(llama_config, "fp16", gpus)
    roomy = int(size / (1 - HEADROOM) * 1.5)
    memory(monkeypatch, total=[roomy, roomy], free=[roomy, roomy])
    assert choose_split([llama_checkpoint], gpus, precision="fp16") is None  # one copy per GPU
    tight = int(size / (1 - HEADROOM) * 0.75)  # one GPU holds 75% of it, two hold 150%
    memory(monkeypatch, total=[tight, tight], free=[tight, tight])
    plan = choose_split([llama_checkpoint], gpus, precision="fp16")
    assert plan is not None and set(plan.device_map.values()) == {0, 1}
    assert choose_split([llama_checkpoint], gpus, precision="fp16", split="copies") is None
    # auto on a T4 pair means fp16 weights: the same plan as asking for fp16
    assert choose_split([llama_checkpoint], gpus).device_map == plan.device_map
    with pytest.raises(ConfigError, match="--compile"):
        choose_split([llama_checkpoint], gpus, precision="fp16", compile=True)
    memory(monkeypatch, total=[tight, tight], free=[tight // 3, tight // 3])  # someone else holds the GPUs
    with pytest.raises(ConfigError, match="free memory"):
        choose_split([llama_checkpoint], gpus, precision="fp16")


def test_split_layers_refuses_what_it_cannot_split(monkeypatch, llama_checkpoint, tiny_checkpoint, tiny_export):
    from arena.serving.layer_split import choose_split

    fake_gpus(monkeypatch, "sm75", "sm75")
    gpus = ["cuda:0", "cuda:1"]
    cases = {
        "--devices": ([llama_checkpoint], None, {}),
        "lists a CPU": ([llama_checkpoint], ["cpu", "cpu"], {}),
        "twice": ([llama_checkpoint], ["cuda:0", "cuda:0"], {}),
        "only the torch backend": ([llama_checkpoint], gpus, {"backend": "onnx"}),
        "a blend": ([llama_checkpoint, llama_checkpoint], gpus, {}),
        "encoder": ([tiny_checkpoint], gpus, {}),
        "not a training checkpoint": ([tiny_export], gpus, {}),
    }
    for says, (folders, devices, options) in cases.items():
        with pytest.raises(ConfigError, match=says):
            choose_split(folders, devices, split="layers", **options)
        assert choose_split(folders, devices, split="auto", **options) is None  # auto keeps one copy per device
    with pytest.raises(ConfigError, match="--split must be one of auto, copies, layers"):
        choose_split([llama_checkpoint], gpus, split="pipeline")


def test_the_cli_refuses_a_split_it_cannot_make(monkeypatch, capsys, tmp_path, llama_checkpoint):
    from tests.test_misuse_models import refused
    from tests.test_safety import copy_model

    fake_gpus(monkeypatch, "sm75", "sm75")
    copy_model(llama_checkpoint, tmp_path / "llama")
    refused(monkeypatch, capsys, tmp_path, "infer", [str(TEST_CSV), "--model", "llama", "--split", "layers"],
            "--split layers", "--devices")
    refused(monkeypatch, capsys, tmp_path, "infer", [str(TEST_CSV), "--model", "llama", "--split", "halves"],
            "--split")


def test_the_torch_backend_loads_by_the_plan_it_is_given(monkeypatch, llama_checkpoint):
    """The plan reaches ``from_pretrained`` as its ``device_map`` (all on the CPU here: no GPU), and the model so
    loaded scores what the model loaded whole scores. Two GPUs: verified only on a GPU."""
    import numpy as np
    from transformers import AutoModelForSequenceClassification

    from arena.serving.backends.torch import TorchBackend, placed

    asked = []
    load = AutoModelForSequenceClassification.from_pretrained

    def spy(*args, **kwargs):
        asked.append(kwargs.get("device_map"))
        return load(*args, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", spy)
    plan = {"model.embed_tokens": "cpu", "model.layers": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
            "score": "cpu"}
    split = TorchBackend(llama_checkpoint, device="cpu", precision="fp32", device_map=plan)
    whole = TorchBackend(llama_checkpoint, device="cpu", precision="fp32")
    assert asked == [plan, None] and not placed(split.model)  # one device: moved as one, as before
    split.model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "score": 1}
    assert placed(split.model) and "layers split across cuda:0, cuda:1" in split.description
    ids = np.random.default_rng(0).integers(3, 1000, size=(3, 12))
    ids[1, 7:] = 0  # a shorter row, padded
    mask = (ids != 0).astype(np.int64)
    assert np.array_equal(split(ids, mask), whole(ids, mask))
