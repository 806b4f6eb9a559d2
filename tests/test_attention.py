"""``--attention`` and packed batches (issue 26), on the CPU: disentangled-flash's PyTorch path against transformers'
eager attention, padded and packed plans through the one executor, ``auto``'s first-batch check and its fallback,
the misuse lines, and the summaries that say which attention ran. The Triton kernels are verified only on a GPU
(the ``gpu`` test at the end, run by ``benchmarks/gpu_check.sh``)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arena.data import read_train
from arena.encode import ArenaEncoder, EncoderConfig, pad_batch
from arena.errors import ConfigError
from arena.serving.batching import packed_batches
from arena.serving.executor import BatchExecutor, PackedBatch, PaddedBatch, Timings
from tests.conftest import (
    CONFIGS,
    FP16_REL,
    TEST_CSV,
    TOKENIZER,
    TRAIN_CSV,
    assert_logits_close,
    informative_batch,
    informative_head,
    write_tiny_config,
)
from tests.test_cli_misuse import run_cli
from tests.test_safety import copy_model, tree

FLASH_REL = 1e-4
"""disentangled-flash's PyTorch path against eager, fp32: every logit within 1e-4 x the reference's row-to-row spread
(the same sums in another order: measured 4e-6 x spread on the xsmall architecture, 16 rows at up to 96 tokens, and
2e-6 at 512 tokens). Rows in another order differ by about the spread."""
PACKED_REL = 1e-5
"""Packed against padded through the same attention: only the reduction order of the matrix products differs."""


@pytest.fixture(scope="module")
def flash():
    return pytest.importorskip("disentangled_flash",
                               reason="needs the optional extra: pip install 'arena-toolkit[flash]'")


def _backend(folder, attention, **kw):
    from arena.serving.backends.torch import TorchBackend

    return TorchBackend(folder, device="cpu", attention=attention, **kw)


def _encoded(folder, rows: int, max_length: int | None = None):
    from arena.models.modeling import load_tokenizer, read_meta

    config = read_meta(folder).encoder
    if max_length is not None:
        from dataclasses import replace

        config = replace(config, max_length=max_length)
    return ArenaEncoder(load_tokenizer(folder), config).encode(read_train(TRAIN_CSV)[:rows])


# ------------------------------------------------------------------------------------------ flash against eager


def test_flash_matches_eager_on_every_row_of_a_padded_batch(tiny_checkpoint, flash):
    ids, mask, _ = informative_batch(tiny_checkpoint)  # 64 real rows padded to the longest (128 tokens)
    assert (mask.sum(1) < mask.shape[1]).sum() >= 10  # rows with padding, from 39 real tokens up
    eager, fast = _backend(tiny_checkpoint, "eager"), _backend(tiny_checkpoint, "flash")
    reference, got = eager(ids, mask), fast(ids, mask)
    assert_logits_close(reference, got, rel=FLASH_REL)
    with pytest.raises(AssertionError):  # the tolerance is far below what rows in another order differ by
        assert_logits_close(reference, got[::-1], rel=FLASH_REL)
    assert fast.attention_label == "flash (PyTorch path)" and fast.packs
    assert eager.attention_label == "eager" and not eager.packs
    assert "flash (PyTorch path) attention" in fast.description


def test_auto_on_a_cpu_is_eager_and_says_why(tiny_checkpoint):
    backend = _backend(tiny_checkpoint, "auto")
    assert backend.attention_label == "eager; auto: no CUDA GPU" and not backend.packs


@pytest.mark.parametrize("kind", ["hf", "hybrid"])
def test_packed_and_padded_plans_give_the_same_logits_through_the_executor(request, kind, flash):
    """Every row comes back once, in input order; the packed plan computes no padding; eager agrees with both."""
    folder = request.getfixturevalue("tiny_checkpoint") if kind == "hf" else request.getfixturevalue(
        "hybrid_checkpoint")[0]
    encoded = _encoded(folder, 48)
    fast = _backend(folder, "flash")
    pad_id = fast.model.config.pad_token_id or 0

    def executor(backend, **kw):
        return BatchExecutor(backend, pad_id=pad_id, max_length=int(encoded.lengths.max()), max_tokens=512,
                             batch_size=16, **kw)

    packed = executor(fast)
    prepared = packed.prepare(encoded)
    assert packed.packs and len(prepared.batches) > 2
    assert all(isinstance(b, PackedBatch) for b in prepared.batches)
    assert sorted(np.concatenate([b.rows for b in prepared.batches]).tolist()) == list(range(len(encoded)))
    assert all(len(b.input_ids) <= 512 and len(b.rows) <= 16 for b in prepared.batches)
    timings = Timings()
    got = packed.run(prepared, timings)
    assert timings.padding_efficiency == 1.0 and timings.real_tokens == int(encoded.lengths.sum())

    padded = executor(fast, packing=False)
    assert not padded.packs and all(isinstance(b, PaddedBatch) for b in padded.prepare(encoded).batches)
    padded_timings = Timings()
    reference = padded(encoded, padded_timings)
    assert padded_timings.padding_efficiency < 1.0
    assert_logits_close(reference, got, rel=PACKED_REL)
    assert_logits_close(executor(_backend(folder, "eager"))(encoded), got, rel=FLASH_REL)
    # the notebook and padded policies keep their rectangles with flash too
    assert not BatchExecutor(fast, pad_id=pad_id, max_length=128, policy="padded").packs


def _xsmall(rows: int = 16):
    """The DeBERTa-v3-xsmall architecture (12 layers, hidden 384, 6 heads) with random weights at the config's
    initializer range (0.02) and a head fitted so its logits on real rows spread (per-class std 1). Not 0.2 as the
    tiny fixtures: through 12 random layers that sharp, any rounding difference grows about 2.5x per layer (eager
    against flash: 5e-6 after the first layer, 3e-3 after the twelfth, measured), while at 0.02 it stays at fp32
    rounding (2e-6) through all twelve."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from arena.models.modeling import load_tokenizer

    config = AutoConfig.from_pretrained(CONFIGS / "deberta-v3-xsmall.json", num_labels=3)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    tokenizer = load_tokenizer(TOKENIZER)
    short = ArenaEncoder(tokenizer, EncoderConfig(max_length=96)).encode(read_train(TRAIN_CSV)[:rows])
    ids, mask = pad_batch(short.ids, tokenizer.pad_token_id)
    informative_head(model, ids, mask)
    records = read_train(TRAIN_CSV)[:200]
    long = ArenaEncoder(tokenizer, EncoderConfig(max_length=512)).encode(records)
    pick = np.argsort(-long.lengths, kind="stable")[:2]
    return model, (ids, mask), pad_batch([long.ids[i] for i in pick], tokenizer.pad_token_id), tokenizer.pad_token_id


def test_flash_matches_eager_on_the_xsmall_architecture_at_512_tokens(flash):
    from arena.serving.backends.torch import TorchBackend

    model, short, long, pad_id = _xsmall()
    assert long[1].sum(1).tolist() == [512, 512]
    eager = TorchBackend(model=model, device="cpu")
    assert eager.attention_label == "eager"
    reference_short, reference_long = eager(*short), eager(*long)
    fast = TorchBackend(model=model, device="cpu", attention="flash")  # swaps the attention of the same model
    got_short, got_long = fast(*short), fast(*long)
    assert_logits_close(reference_short, got_short, rel=FLASH_REL)
    spread = float(reference_short.std(0).mean())
    assert np.abs(reference_long - got_long).max() <= FLASH_REL * spread, (reference_long, got_long)
    assert not np.allclose(reference_long[0], reference_long[1], atol=FLASH_REL * spread * 100)  # rows differ
    rows = [r[m.astype(bool)] for r, m in zip(*short, strict=True)]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    assert_logits_close(got_short, fast.run_packed(np.concatenate(rows), offsets), rel=PACKED_REL)


# ------------------------------------------------------------------------------ auto's first-batch check


def test_on_a_gpu_without_triton_auto_keeps_eager_and_flash_takes_the_pytorch_path(tiny_checkpoint, flash):
    """The decisions a CUDA device leads to where the Triton kernels cannot run (no Triton here: as on a GPU whose
    Triton does not import, or a head size the kernels lack); the model stays where it is."""
    from arena.models.attention import set_attention
    from arena.models.modeling import load_classifier

    if importlib.util.find_spec("triton") is not None or torch.cuda.is_available():
        pytest.skip("Triton is importable here: the kernels would be installed")
    model = load_classifier(tiny_checkpoint, require_three_labels=True).eval()
    auto = set_attention(model, "auto", device="cuda")
    assert auto.name == "eager" and "Triton kernels do not apply" in auto.note and not auto.check_first
    assert type(model.deberta.encoder).__name__ == "DebertaV2Encoder"  # untouched
    assert set_attention(model, "flash", device="cuda").label == "flash (PyTorch path)"




def _auto_on_cpu(folder, *, break_flash: bool):
    """A backend whose ``auto`` attention is pending its first-batch check, as on a GPU, with disentangled-flash's
    PyTorch path standing in for the Triton kernels; ``break_flash`` gives flash's value projections the wrong
    scale (the check must catch it)."""
    from arena.models.attention import FlashSwap, ModelAttention
    from arena.models.modeling import load_classifier
    from arena.serving.backends.torch import TorchBackend

    model = load_classifier(folder, require_three_labels=True).eval()
    swap = FlashSwap(model.deberta, kernels="torch", inference=True)
    if break_flash:
        with torch.no_grad():
            for layer in model.deberta.encoder.layer:
                layer.attention.self.value_proj.weight.mul_(3.0)
    backend = TorchBackend(model=model, device="cpu")
    backend.attention = ModelAttention("flash", "auto: first-batch check pending", swap, check_first=True)
    return backend


def test_auto_keeps_flash_when_its_first_batch_matches_eager(tiny_checkpoint, flash):
    ids, mask, _ = informative_batch(tiny_checkpoint, rows=16)
    backend = _auto_on_cpu(tiny_checkpoint, break_flash=False)
    assert backend.packs  # planned as packs before the check has run
    got = backend(ids, mask)
    assert backend.attention_label.startswith("flash (PyTorch path); auto: passed its first-batch check")
    assert backend.packs and not backend.attention.check_first
    assert_logits_close(_backend(tiny_checkpoint, "eager")(ids, mask), got, rel=FLASH_REL)


def test_auto_falls_back_to_eager_when_flash_fails_its_check_on_a_packed_first_batch(tiny_checkpoint, flash):
    encoded = _encoded(tiny_checkpoint, 24)
    backend = _auto_on_cpu(tiny_checkpoint, break_flash=True)
    executor = BatchExecutor(backend, pad_id=0, max_length=int(encoded.lengths.max()), max_tokens=512, batch_size=8)
    prepared = executor.prepare(encoded)  # planned while flash was still on: packs
    assert all(isinstance(b, PackedBatch) for b in prepared.batches)
    got = executor.run(prepared)
    assert backend.attention.name == "eager" and not backend.packs and not executor.packs
    assert "failed its parity check on the first batch" in backend.attention_label
    reference = BatchExecutor(_backend(tiny_checkpoint, "eager"), pad_id=0, max_length=int(encoded.lengths.max()),
                              max_tokens=512)(encoded)
    assert_logits_close(reference, got, rel=PACKED_REL)  # the packs planned before the fallback ran padded, eager
    assert all(isinstance(b, PaddedBatch) for b in executor.prepare(encoded).batches)  # later chunks: padded


# ------------------------------------------------------------------------------------------------ training


def test_flash_training_gradients_match_eager(tiny_checkpoint, flash):
    """The differentiable path (arena-train --attention flash) gives eager's loss and gradients, dropout off."""
    from arena.models.attention import set_attention
    from arena.models.hybrid import forward_logits
    from arena.models.modeling import load_classifier

    ids, mask, _ = informative_batch(tiny_checkpoint, rows=8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    grads = {}
    for attention in ("eager", "flash"):
        model = load_classifier(tiny_checkpoint, require_three_labels=True).train()
        ran = set_attention(model, attention, device="cpu", inference=False)
        assert ran.name == attention
        for module in model.modules():  # after the swap: flash's modules bring their own dropout
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        loss = torch.nn.functional.cross_entropy(
            forward_logits(model, torch.from_numpy(ids), torch.from_numpy(mask)), labels)
        loss.backward()
        grads[attention] = {n: p.grad.clone() for n, p in model.named_parameters() if "attention.self" in n}
    assert grads["eager"].keys() == grads["flash"].keys() and len(grads["eager"]) >= 6  # the names are kept
    for name, g in grads["eager"].items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads["flash"][name], g, rtol=1e-3, atol=1e-6 * float(g.abs().max()))


def test_the_train_record_and_summary_say_which_attention_ran(tmp_path, tiny_config, flash):
    from arena.train.loop import TrainConfig, run_training

    out = tmp_path / "run"
    summary = run_training(TrainConfig(data=str(TRAIN_CSV), model=str(tiny_config), tokenizer=str(TOKENIZER),
                                       random_init=True, output=str(out), max_rows=40, batch_size=8, max_steps=2,
                                       head="hf", calibrate=False, attention="flash",
                                       encoder=EncoderConfig(max_length=64)))
    assert summary["attention"] == "flash (PyTorch path)"
    assert summary["splits"][0]["attention"] == "flash (PyTorch path)"
    assert json.loads((out / "train_done.json").read_text())["attention"] == "flash (PyTorch path)"
    assert json.loads((out / "train_config.json").read_text())["attention"] == "flash"
    assert np.isfinite(summary["oof_log_loss"])


def test_the_infer_summary_says_which_attention_ran(tmp_path, tiny_checkpoint, flash):
    from arena.infer.cli import run_infer

    runs = {}
    for attention in ("eager", "flash"):
        out = tmp_path / f"{attention}.csv"
        runs[attention] = (run_infer(TEST_CSV, tiny_checkpoint, out, backend="torch", attention=attention),
                           np.loadtxt(out, delimiter=",", skiprows=1, usecols=(1, 2, 3)))
    assert runs["flash"][0]["attention"] == "flash (PyTorch path)" and runs["flash"][0]["padding_efficiency"] == 1.0
    assert runs["eager"][0]["attention"] == "eager"
    np.testing.assert_allclose(runs["flash"][1], runs["eager"][1], atol=1e-5)


# --------------------------------------------------------------------------------------------------- misuse


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_checkpoint, tiny_export):
    ws = tmp_path_factory.mktemp("attention-ws")
    shutil.copy2(TRAIN_CSV, ws / "train.csv")
    shutil.copy2(TEST_CSV, ws / "test.csv")
    copy_model(tiny_checkpoint, ws / "ckpt")
    copy_model(tiny_export, ws / "export")
    bert = ws / "minilm"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
                                                  "num_attention_heads": 2, "intermediate_size": 64}))
    (bert / "model.safetensors").write_bytes(b"")
    write_tiny_config(ws / "deberta-config")
    return ws


INFER = ["test.csv", "--model", "ckpt", "--out", "sub.csv"]
TRAIN = ["--data", "train.csv", "--model", "ckpt", "--head", "hf", "--max-length", "64", "--max-rows", "20",
         "--output", "run"]
MISUSE = {
    "infer-flash-minilm": ("infer", ["test.csv", "--model", "minilm", "--out", "sub.csv", "--attention", "flash"],
                           "DeBERTa-v2/v3 attention and this is a bert model"),
    "infer-flash-onnx-backend": ("infer", [*INFER, "--attention", "flash", "--backend", "onnx"],
                                 "is the torch backend's and --backend onnx"),
    "infer-flash-export": ("infer", ["test.csv", "--model", "export", "--out", "sub.csv", "--attention", "flash"],
                           "(ONNX: its attention was fixed at export)"),
    "infer-sdpa-deberta": ("infer", [*INFER, "--attention", "sdpa"], "no SDPA attention for deberta-v2"),
    "infer-unknown": ("infer", [*INFER, "--attention", "fast"], "--attention must be one of auto, eager, sdpa, flash"),
    "infer-flash-compile": ("infer", [*INFER, "--attention", "flash", "--compile"], "--compile are not combined"),
    "train-flash-minilm": ("train", ["--data", "train.csv", "--model", "minilm/config.json", "--random-init",
                                     "--tokenizer", str(TOKENIZER), "--output", "run", "--attention", "flash"],
                           "this is a bert model"),
    "train-flash-lora": ("train", [*TRAIN, "--attention", "flash", "--lora-r", "8"], "LoRA adapters wrap"),
    "train-sdpa-deberta": ("train", [*TRAIN, "--attention", "sdpa"], "no SDPA attention for deberta-v2"),
    "train-unknown": ("train", [*TRAIN, "--attention", "fast"], "--attention must be one of"),
}


def _one_error_line(ws, monkeypatch, capsys, cli, args) -> str:
    before = tree(ws)
    code, out, err = run_cli(monkeypatch, capsys, ws, cli, args)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"
    assert len(errors) == 1 and [line for line in err.splitlines() if line.strip()] == errors, err
    assert "Traceback" not in out + err
    assert tree(ws) == before  # nothing written, changed or removed
    return errors[0]


@pytest.mark.parametrize(("cli", "args", "says"), list(MISUSE.values()), ids=list(MISUSE))
def test_misuse_is_one_error_line_before_any_work(ws, monkeypatch, capsys, cli, args, says, flash):
    assert says in _one_error_line(ws, monkeypatch, capsys, cli, args)


@pytest.mark.parametrize("cli", ["infer", "train"])
def test_flash_without_the_package_is_one_error_line(ws, monkeypatch, capsys, cli):
    monkeypatch.setitem(sys.modules, "disentangled_flash", None)  # what an environment without the extra sees
    args = [*INFER, "--attention", "flash"] if cli == "infer" else [*TRAIN, "--attention", "flash"]
    line = _one_error_line(ws, monkeypatch, capsys, cli, args)
    assert "needs the disentangled-flash package" in line and "pip install 'arena-toolkit[flash]'" in line


def test_set_attention_refuses_flash_for_a_decoder_before_changing_it(flash):
    from transformers import AutoModelForSequenceClassification, LlamaConfig

    from arena.models.attention import set_attention

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=3)
    model = AutoModelForSequenceClassification.from_config(config)
    before = type(model.model.layers[0].self_attn)
    with pytest.raises(ConfigError, match="this is a llama model"):
        set_attention(model, "flash", device="cpu")
    assert type(model.model.layers[0].self_attn) is before
    assert set_attention(model, "eager", device="cpu").name == "eager"
    assert model.config._attn_implementation == "eager"


# ---------------------------------------------------------------------------------------- the packing plan


@given(st.lists(st.integers(1, 1024), max_size=300), st.integers(1024, 20000), st.integers(1, 128))
@settings(max_examples=200, deadline=None)
def test_packs_cover_every_row_once_within_the_budget_longest_first(lengths, max_tokens, max_batch):
    lengths = np.array(lengths, dtype=np.int64)
    packs = packed_batches(lengths, max_tokens, max_batch)
    seen = np.concatenate(packs) if packs else np.array([], dtype=np.int64)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(p) <= max_batch and lengths[p].sum() <= max_tokens for p in packs)
    flat = lengths[seen]
    assert (np.diff(flat) <= 0).all()  # longest first, in one sweep
    for p, q in zip(packs, packs[1:], strict=False):  # a pack closes when the next row would not fit, or it is full
        assert len(p) == max_batch or lengths[p].sum() + lengths[q[0]] > max_tokens


def test_a_row_longer_than_the_budget_is_one_error():
    with pytest.raises(ConfigError, match="--max-tokens 100 is smaller than one row"):
        packed_batches(np.array([50, 101]), 100)


# ----------------------------------------------------------------------------- verified only on a GPU


@pytest.mark.gpu
def test_triton_kernels_match_eager_on_cuda_padded_and_packed(tmp_path, flash):
    """The fused Triton kernels (head size 64) in fp16 against eager fp32 and fp16, padded and packed, and auto's
    check passing on the first batch."""
    import copy

    from transformers import AutoConfig, AutoModelForSequenceClassification

    from arena.serving.backends.torch import TorchBackend

    config = AutoConfig.from_pretrained(write_tiny_config(tmp_path, hidden_size=128, num_attention_heads=2,
                                                          intermediate_size=256, pooler_hidden_size=128,
                                                          initializer_range=0.2), num_labels=3)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    ids, mask, _ = informative_batch_for(model)
    reference = TorchBackend(model=copy.deepcopy(model), device="cuda", precision="fp32")(ids, mask)
    eager16 = TorchBackend(model=copy.deepcopy(model), device="cuda", precision="fp16")(ids, mask)
    flash16 = TorchBackend(model=copy.deepcopy(model), device="cuda", precision="fp16", attention="flash")
    assert flash16.attention_label == "flash (Triton)"
    got = flash16(ids, mask)
    assert_logits_close(reference, got, rel=FP16_REL)
    assert_logits_close(eager16, got, rel=FP16_REL)
    rows = [r[m.astype(bool)] for r, m in zip(ids, mask, strict=True)]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    assert_logits_close(got, flash16.run_packed(np.concatenate(rows), offsets), rel=FP16_REL)
    auto = TorchBackend(model=copy.deepcopy(model), device="cuda", precision="fp16", attention="auto")
    auto(ids, mask)
    assert auto.attention_label.startswith("flash (Triton); auto: passed its first-batch check"), auto.attention_label


def informative_batch_for(model):
    """32 real rows at up to 128 tokens, the model's head fitted so its logits spread (in place)."""
    from arena.models.modeling import load_tokenizer

    tokenizer = load_tokenizer(TOKENIZER)
    encoded = ArenaEncoder(tokenizer, EncoderConfig(max_length=128)).encode(read_train(TRAIN_CSV)[:32])
    ids, mask = pad_batch(encoded.ids, tokenizer.pad_token_id)
    informative_head(model, ids, mask)
    return ids, mask, None
