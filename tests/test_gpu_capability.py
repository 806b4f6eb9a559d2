"""Issue 26, precision by the card: the default half precision comes from the GPU's compute capability (fp16 on a
T4, sm75; bf16 from sm80 on), for serving's autocast and 4/8-bit compute dtype, training's autocast and LoRA base,
and bitsandbytes' ``bnb_4bit_compute_dtype``; an explicit bf16 on a T4 is one ``error:`` line before any work.

No GPU here: the probe (``torch.cuda.is_available`` / ``get_device_capability`` / ``get_device_name`` /
``device_count``, as :mod:`arena.machine.gpu` calls them) is monkeypatched to a T4, an A100 or an H100. What only a
GPU shows (the kernels running in that dtype) is left to ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import pytest
import torch

from arena.errors import ConfigError
from tests.conftest import TEST_CSV, TRAIN_CSV

CARDS = {"sm75": ("Tesla T4", (7, 5)), "sm80": ("NVIDIA A100-SXM4-80GB", (8, 0)),
         "sm90": ("NVIDIA H100 80GB HBM3", (9, 0))}


def fake_gpus(monkeypatch, *cards: str) -> None:
    """PyTorch sees one GPU per entry of ``cards`` (``sm75`` ...), ``cuda:N`` being the N-th; ``cuda`` the first."""
    table = [CARDS[c] for c in cards]

    def pick(device=None):
        text = "cuda" if device is None else str(device)
        return table[int(text.partition(":")[2] or 0) if not isinstance(device, int) else device]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(table))
    # the driver's device files too: gpu_present asks torch only where /dev/nvidia* exist
    monkeypatch.setattr("arena.machine.gpu._gpu_device_files", lambda: bool(table))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(table))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: pick(device)[1])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: pick(device)[0])


@pytest.mark.parametrize(("card", "half"), [("sm75", "fp16"), ("sm80", "bf16"), ("sm90", "bf16")])
def test_the_half_precision_is_the_cards(monkeypatch, card, half):
    from arena.machine.gpu import check_bf16, gpu_capability, half_precision, no_bf16

    fake_gpus(monkeypatch, card)
    assert gpu_capability("cuda:0") == CARDS[card][1] and gpu_capability("cpu") is None
    assert half_precision("cuda") == half_precision("auto") == half_precision(["cuda:0"]) == half
    assert (no_bf16("cuda") is None) == (half == "bf16")
    check_bf16("bf16", "cpu")  # the CPU runs bf16 whatever the GPU
    check_bf16("fp16", "cuda")
    if half == "fp16":
        with pytest.raises(ConfigError, match=r"^--precision bf16: this Tesla T4 \(sm75\) has no bf16.*fp16"):
            check_bf16("bf16", "cuda")
    else:
        check_bf16("bf16", "cuda:0")


def test_no_gpu_means_fp32_defaults_and_no_refusal(monkeypatch):
    from arena.machine.gpu import check_bf16, half_precision, no_bf16
    from arena.train.runtime import resolve_precision

    fake_gpus(monkeypatch)
    assert half_precision("auto") == "fp16" and no_bf16("auto") is None
    check_bf16("bf16", "auto")
    assert resolve_precision("auto", torch.device("cpu")) is None
    assert resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16


def test_mixed_gpus_take_the_weakest(monkeypatch):
    """--devices across an H100 and a T4: both must run the same numerics, so fp16, and bf16 names the T4."""
    from arena.machine.gpu import half_precision, no_bf16

    fake_gpus(monkeypatch, "sm90", "sm75")
    assert half_precision(["cuda:0"]) == "bf16"
    assert half_precision(["cuda:0", "cuda:1"]) == "fp16"
    assert "Tesla T4 (sm75) (cuda:1)" in no_bf16(["cuda:0", "cuda:1"])


@pytest.mark.parametrize(("card", "dtype"), [("sm75", torch.float16), ("sm80", torch.bfloat16),
                                             ("sm90", torch.bfloat16)])
def test_training_autocast_and_4bit_compute_follow_the_card(monkeypatch, card, dtype):
    pytest.importorskip("transformers")
    from arena.serving.backends.torch import _compute_dtype
    from arena.train.config import TrainConfig
    from arena.train.model_options import quantization_for
    from arena.train.runtime import resolve_precision

    fake_gpus(monkeypatch, card)
    gpu = torch.device("cuda", 0)
    assert resolve_precision("auto", gpu) is dtype
    assert resolve_precision("fp16", gpu) is torch.float16
    assert resolve_precision("fp32", gpu) is None
    assert _compute_dtype("4bit", "cuda:0") is dtype and _compute_dtype("8bit", "cuda") is dtype
    assert _compute_dtype("fp16", "cuda") is torch.float16  # asked for: as asked
    try:
        quant = quantization_for(TrainConfig(load_in_4bit=True, lora_r=8), None, gpu)  # --precision fp32 + 4-bit
    except (ImportError, ValueError) as exc:  # a transformers that wants bitsandbytes installed to build it
        pytest.skip(f"BitsAndBytesConfig cannot be built here: {exc}")
    assert quant.bnb_4bit_compute_dtype is dtype
    assert quantization_for(TrainConfig(load_in_4bit=True, lora_r=8), torch.float16, gpu).bnb_4bit_compute_dtype \
        is torch.float16
    if card == "sm75":
        with pytest.raises(ConfigError, match="sm75"):
            resolve_precision("bf16", gpu)
    else:
        assert resolve_precision("bf16", gpu) is torch.bfloat16


@pytest.mark.parametrize("card", ["sm75", "sm90"])
def test_serving_defaults_to_the_cards_half_precision(monkeypatch, tiny_checkpoint, card):
    """--backend auto on a GPU picks torch in the card's half precision; on a T4 bf16 is listed as not runnable,
    with the reason, and asking for it is refused."""
    from arena.serving.choice import choose_variant
    from arena.serving.folder import read_folder

    fake_gpus(monkeypatch, card)
    folder = read_folder(tiny_checkpoint)
    cuda = {v.precision: v for v in folder.variants(("auto",)) if v.backend == "torch" and v.device == "cuda"}
    half = "fp16" if card == "sm75" else "bf16"
    assert [p for p, v in cuda.items() if v.default] == [half]
    assert cuda["fp16"].usable and cuda["fp16"].checked
    assert cuda["bf16"].usable == (card != "sm75")
    choice = choose_variant(folder, "auto", "auto", "auto")
    assert (choice.backend, choice.options["precision"], choice.variant.device) == ("torch", half, "cuda")
    assert choose_variant(folder, "torch", "auto", "cuda:0").options["precision"] == half
    if card == "sm75":
        assert "Tesla T4 (sm75) has no bf16" in cuda["bf16"].why_not
        with pytest.raises(Exception, match="sm75"):
            choose_variant(folder, "torch", "bf16", "cuda")


@pytest.mark.parametrize(("backend", "device"), [("torch", "cuda"), ("torch", "auto"), ("auto", "auto"),
                                                 ("auto", "cuda:0")])
def test_bf16_on_a_t4_is_refused_up_front(monkeypatch, backend, device):
    from arena.cli.options import check_precision

    fake_gpus(monkeypatch, "sm75")
    with pytest.raises(ConfigError, match=r"bf16: this Tesla T4 \(sm75\)"):
        check_precision("--precision", backend, "bf16", device)
    check_precision("--precision", backend, "fp16", device)
    check_precision("--precision", "openvino", "bf16", "auto")  # a CPU backend: bf16 on the CPU is fine
    check_precision("--precision", backend, "bf16", "cpu")
    fake_gpus(monkeypatch, "sm80")
    check_precision("--precision", backend, "bf16", device)


def test_bf16_on_a_t4_is_one_error_line_in_every_cli(monkeypatch, capsys, tmp_path, tiny_checkpoint, tiny_config):
    """arena-infer and arena-train: exit 2, one ``error:`` line naming the card, nothing written."""
    from tests.test_misuse_models import refused
    from tests.test_safety import copy_model

    fake_gpus(monkeypatch, "sm75")
    copy_model(tiny_checkpoint, tmp_path / "ckpt")
    refused(monkeypatch, capsys, tmp_path, "infer", [str(TEST_CSV), "--model", "ckpt", "--precision", "bf16"],
            "--precision bf16", "Tesla T4 (sm75)")
    refused(monkeypatch, capsys, tmp_path, "infer", [str(TEST_CSV), "--model", "ckpt", "--backend", "torch",
                                                     "--precision", "bf16", "--devices", "cuda:0"], "sm75")
    refused(monkeypatch, capsys, tmp_path, "train", ["--data", str(TRAIN_CSV), "--model", str(tiny_config),
                                                     "--random-init", "--tokenizer", str(tiny_checkpoint),
                                                     "--precision", "bf16", "--output", "run"], "sm75", "fp16")
