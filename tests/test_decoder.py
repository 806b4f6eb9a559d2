"""Decoder LLM classifiers (Gemma-2, Llama, Mistral, Qwen-2) with LoRA, on CPU: tiny random models of each family
built from their config classes, with Mistral-7B's real tokenizer (tests/fixtures/mistral-tokenizer)."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from arena.data import Record
from arena.encode import ArenaEncoder, EncoderConfig, pad_batch
from arena.errors import ArenaError, ConfigError, ModelError
from arena.models.modeling import load_classifier, load_tokenizer, read_meta
from tests.conftest import (
    DECODER_FAMILIES,
    MISTRAL_TOKENIZER,
    ROOT,
    TEST_CSV,
    TRAIN_CSV,
    lora_config,
    tiny_decoder_config,
)

COLUMNS = ["winner_model_a", "winner_model_b", "winner_tie"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are all overhead: on a shared 2-core machine a second thread only adds spin-waiting (measured
    here at 100x slower per forward pass under load), so this module runs on one and restores the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ encoding
def test_tokenizer_gets_a_pad_token_that_never_ends_a_row(mistral_tokenizer):
    tok = mistral_tokenizer
    assert type(tok).__name__ == "LlamaTokenizer" and len(tok) == 32000
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    assert tok.pad_token_id == 0 and tok.padding_side == "right"  # UNK, not EOS: rows can end with EOS

    enc = ArenaEncoder(tok, EncoderConfig(max_length=64))
    rec = Record("1", ("What is 2+2?",), ("It is 4.",), ("Four.", "Anything else?"))
    ids = enc.encode([rec]).ids[0].tolist()
    piece = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    sep = piece("\n\n")
    assert ids == ([1] + piece("Prompt:") + piece("What is 2+2?") + sep + piece("Response A:") + piece("It is 4.")
                   + sep + piece("Response B:") + piece("Four.") + piece("||") + piece("Anything else?") + [2])
    assert enc.decode_segments(ids) == [piece("What is 2+2?"), piece("It is 4."),
                                        piece("Four.") + piece("||") + piece("Anything else?")]

    eos_pad = load_tokenizer(MISTRAL_TOKENIZER)  # a tokenizer whose only pad candidate is EOS (Llama-3, Qwen-2)
    eos_pad.pad_token = eos_pad.eos_token
    row = ArenaEncoder(eos_pad, EncoderConfig(max_length=64)).encode([rec]).ids[0].tolist()
    assert row == ids[:-1] and row[-1] != eos_pad.pad_token_id  # no EOS: the head would read the token before it


def test_decoder_rows_keep_the_segment_rules_on_real_rows(mistral_tokenizer, train_records):
    """1,024 tokens with a decoder tokenizer: every row framed by BOS/EOS, all three segments present, the latest
    turn of every segment kept, and the character pre-cut gives the ids of tokenizing whole texts."""
    enc = ArenaEncoder(mistral_tokenizer, EncoderConfig(max_length=1024))
    rows = train_records[:300]
    fast = enc.encode(rows)
    full, retry = enc._encode_segments(rows, precut=False)
    assert not retry and all(np.array_equal(a, b) for a, b in zip(fast.ids, full, strict=True))
    assert fast.lengths.max() == 1024 and (fast.lengths > 512).sum() > 30  # real rows use the longer budget
    piece = lambda s: mistral_tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    for rec, ids in zip(rows, fast.ids, strict=True):
        ids = ids.tolist()
        assert ids[0] == 1 and ids[-1] == 2
        segments = enc.decode_segments(ids)
        for turns, kept in zip((rec.prompt, rec.response_a, rec.response_b), segments, strict=True):
            latest = piece(turns[-1])
            if latest and kept:
                assert kept[-1] == latest[-1]


# ------------------------------------------------------------------------------------------------ the head
@pytest.mark.parametrize("family", DECODER_FAMILIES)
def test_head_reads_the_last_real_token_of_every_row(family, mistral_tokenizer, train_records):
    """Mixed lengths in one right-padded batch: each row's logits are the score head at that row's last real
    token, and equal the row scored alone without padding."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = tiny_decoder_config(family, num_labels=3, pad_token_id=mistral_tokenizer.pad_token_id)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    enc = ArenaEncoder(mistral_tokenizer, EncoderConfig(max_length=128))
    rows = enc.encode([*train_records[:5], Record("s", ("hi",), ("a",), ("b",))]).ids
    lengths = [len(r) for r in rows]
    assert len(set(lengths)) >= 3 and min(lengths) < 40 < max(lengths)
    ids, mask = pad_batch(rows, enc.pad_id)
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        per_position = model.score(model.model(input_ids=ids, attention_mask=mask).last_hidden_state)
        alone = torch.cat([model(input_ids=torch.from_numpy(r[None].astype(np.int64))).logits for r in rows])
    last = torch.tensor(lengths) - 1
    assert torch.allclose(logits, per_position[torch.arange(len(rows)), last], atol=1e-6)
    assert torch.allclose(logits, alone, atol=1e-5)
    assert not torch.allclose(logits, per_position[torch.arange(len(rows)), last - 1], atol=1e-3)  # not one early


def test_defaults_for_decoders_and_encoders(decoder_base, tiny_config):
    from arena.models.modeling import default_max_length, is_decoder, load_model_config
    from arena.train.loop import TrainConfig
    from arena.train.model_options import model_config_of, resolve_model_options

    decoder = load_model_config(decoder_base)
    encoder = model_config_of(str(tiny_config), True)
    assert is_decoder(decoder) and not is_decoder(encoder)
    assert default_max_length(decoder) == 1024 and default_max_length(encoder) == 512
    dec = resolve_model_options(TrainConfig(model=str(decoder_base)), decoder)
    assert (dec.head, dec.lora_r, dec.lora_alpha) == ("hf", 16, 32.0)
    enc = resolve_model_options(TrainConfig(model=str(tiny_config), random_init=True), encoder)
    assert (enc.head, enc.lora_r) == ("hybrid", 0)
    with pytest.raises(ConfigError, match="--head hybrid .* mistral is a decoder.* use --head hf"):
        resolve_model_options(TrainConfig(model=str(decoder_base), head="hybrid"), decoder)
    with pytest.raises(ConfigError, match="random base could not be loaded again"):
        resolve_model_options(TrainConfig(model=str(decoder_base), random_init=True, lora_r=4), decoder)
    with pytest.raises(ConfigError, match="--merge"):
        resolve_model_options(TrainConfig(model=str(decoder_base), lora_r=0, merge=True), decoder)


# ------------------------------------------------------------------------------------------------ LoRA training
def test_lora_overfits_32_real_rows(lora_run, decoder_base):
    """LoRA on every projection plus the fully trained score head memorises 32 real rows; only the adapter is
    saved, and the base's weights stay untouched."""
    out, summary = lora_run
    history = summary["splits"][0]["history"]
    assert history[-1]["train_loss"] < 0.1 < history[0]["train_loss"]
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert (out / "adapter_model.safetensors").stat().st_size < (decoder_base / "model.safetensors").stat().st_size / 4
    head = read_meta(out).head
    assert head["kind"] == "lora" and head["base"] == str(decoder_base.resolve()) and head["r"] == 8
    assert head["modules_to_save"] == ["classifier", "score"] and "q_proj" in head["targets"]
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == 0
    assert json.loads((out / "train_config.json").read_text())["head"] == "hf"


def test_lora_save_load_merge_round_trip(lora_run, tmp_path):
    """The adapter reloaded onto its base gives the logits training recorded for the best checkpoint; merged into
    the weights (in memory, or as a plain checkpoint on disk) it gives the same logits."""
    from arena.data import labels_of, read_train
    from arena.models.lora import is_lora, load_lora
    from arena.models.modeling import _from_pretrained, merge_lora_checkpoint
    from arena.train.folds import holdout_split
    from arena.train.trainer import predict_logits

    out, _ = lora_run
    records = read_train(TRAIN_CSV)[:40]
    _, val_idx = holdout_split(labels_of(records), 0.2, 42)
    tokenizer = load_tokenizer(out)
    encoded = ArenaEncoder(tokenizer, read_meta(out).encoder).encode(records)

    def logits(model):
        return predict_logits(model, encoded, val_idx, tokenizer.pad_token_id, torch.device("cpu"), None, 4096)

    recorded = np.load(out / "val_logits.npy")
    applied = load_lora(out, read_meta(out).head, load_base=lambda b: _from_pretrained(b, pad_token_id=0), merge=False)
    assert type(applied).__name__.startswith("PeftModel")
    np.testing.assert_allclose(logits(applied), recorded, atol=1e-6)
    merged = load_classifier(out, require_three_labels=True)
    assert is_lora(applied) and not is_lora(merged)
    np.testing.assert_allclose(logits(merged), recorded, atol=1e-5)

    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    merge_lora_checkpoint(plain)
    assert (plain / "model.safetensors").is_file() and not (plain / "adapter_model.safetensors").exists()
    meta = read_meta(plain)
    assert meta.head is None and meta.extra["merged_from"]["kind"] == "lora"
    np.testing.assert_allclose(logits(load_classifier(plain, require_three_labels=True)), recorded, atol=1e-5)


def test_resume_with_lora_ends_with_the_same_adapter(tmp_path, decoder_base):
    """Interrupt a LoRA run after step 3, resume it: the same trainable weights as an uninterrupted run, and the
    resumable state holds only the adapter and head."""
    from safetensors.numpy import load_file

    from arena.train.loop import run_training

    kw = dict(epochs=2, max_rows=24, save_steps=1, keep_state=True, lora_dropout=0.1)
    run_training(lora_config(decoder_base, tmp_path / "full", **kw))

    class Crash(Exception):
        pass

    def crash(step):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        run_training(lora_config(decoder_base, tmp_path / "cut", **kw), on_step=crash)
    run_training(lora_config(decoder_base, tmp_path / "cut", resume=True, **kw))
    a = load_file(str(tmp_path / "full" / "state" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "state" / "model.safetensors"))
    assert a.keys() == b.keys() and all("lora_" in k or "modules_to_save" in k for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    done = [json.loads((tmp_path / d / "train_done.json").read_text()) for d in ("full", "cut")]
    assert done[0]["weights_sha256"] == done[1]["weights_sha256"]


def test_gradient_checkpointing_gives_the_same_gradients(decoder_base):
    from arena.models.lora import is_lora
    from arena.train.trainer import build_model

    ids, mask = pad_batch([np.arange(3, 40), np.arange(5, 20)], 0)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(lora_config(decoder_base, "unused", lora_r=4, lora_alpha=8.0,
                                        gradient_checkpointing=checkpointing), pad_token_id=0).train()
        assert is_lora(model) and model.get_base_model().is_gradient_checkpointing == checkpointing
        loss = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])


def test_merge_flag_writes_a_plain_checkpoint_from_the_cli(tmp_path, decoder_base):
    from arena.train.cli import app

    out = tmp_path / "merged"
    result = CliRunner().invoke(app, [
        "--data", str(TRAIN_CSV), "--model", str(decoder_base), "--output", str(out), "--max-rows", "24",
        "--max-length", "96", "--batch-size", "8", "--max-steps", "2", "--lora-r", "4", "--lora-alpha", "8",
        "--lora-targets", "q_proj,v_proj", "--no-calibrate", "--no-swap-augment", "--merge"])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    meta = read_meta(out)
    assert meta.head is None and meta.extra["merged_from"]["targets"] == ["q_proj", "v_proj"]
    assert meta.encoder.max_length == 96
    load_classifier(out, require_three_labels=True)


# ------------------------------------------------------------------------------------------------ DDP
def test_ddp_two_cpu_ranks_with_lora(tmp_path, decoder_base):
    """torchrun with 2 gloo ranks training a LoRA adapter: both ranks end with the same adapter and head."""
    out = tmp_path / "ddp"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
           "-m", "arena.train.cli", "--data", str(TRAIN_CSV), "--model", str(decoder_base), "--max-rows", "32",
           "--max-length", "96", "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--lora-r", "4",
           "--output", str(out), "--no-calibrate", "--no-swap-augment"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = json.loads((out / "train_done.json").read_text())
    assert done["world_size"] == 2 and done["ranks_agree"] is True
    assert read_meta(out).head["kind"] == "lora"


# ------------------------------------------------------------------------------------------------ serve
@pytest.fixture(scope="module")
def merged_lora(lora_run, tmp_path_factory):
    from arena.models.modeling import merge_lora_checkpoint

    plain = tmp_path_factory.mktemp("merged") / "model"
    shutil.copytree(lora_run[0], plain)
    merge_lora_checkpoint(plain)
    return plain


def test_export_parity_for_a_merged_decoder(merged_lora, tmp_path):
    from arena.export.cli import run_export

    out = tmp_path / "export"
    summary = run_export(merged_lora, out, data=str(TRAIN_CSV), parity_shapes="1x17,4x64,6x128")
    assert summary["parity"]["fp32"] is True  # OpenVINO's checks are recorded beside it (a failure is never used)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["model_type"] == "mistral"
    assert not (out / "model.ov.xml").exists()  # DeBERTa's relative-position rewrite only: OpenVINO reads model.onnx
    assert all(e["file"] == "model.onnx" for e in manifest["openvino"]["precisions"].values())
    shapes = {(s["batch"], s["sequence"]) for s in manifest["artifacts"]["fp32"]["parity"]["shapes"]}
    assert {(1, 17), (4, 64), (6, 128)} <= shapes
    from arena.infer.cli import run_infer

    run_infer(TEST_CSV, out, tmp_path / "onnx.csv", backend="onnx")  # the export folder serves on its own
    run_infer(TEST_CSV, merged_lora, tmp_path / "torch.csv", backend="torch")
    a, b = (pd.read_csv(tmp_path / f)[COLUMNS].to_numpy() for f in ("onnx.csv", "torch.csv"))
    assert np.abs(a - b).max() < 1e-5
    with pytest.raises(ArenaError, match="TensorRT-LLM"):
        run_export(merged_lora, tmp_path / "trt", data=str(TRAIN_CSV), trt=True)
    assert not (tmp_path / "trt").exists()


def test_submission_and_swap_tta_from_an_adapter_checkpoint(lora_run, tmp_path):
    """arena-infer on the adapter folder (base + adapter, merged on load): a valid submission, and with swap TTA,
    exchanging A and B in the input exchanges the a/b columns of the output."""
    from arena.infer.cli import run_infer

    out, _ = lora_run
    summary = run_infer(TEST_CSV, out, tmp_path / "submission.csv")
    sample = pd.read_csv(TEST_CSV.parent / "sample_submission.csv", dtype={"id": str})
    sub = pd.read_csv(tmp_path / "submission.csv", dtype={"id": str})
    assert sub["id"].tolist() == sample["id"].tolist() and np.allclose(sub[COLUMNS].sum(axis=1), 1.0)
    assert summary["backend"].startswith("torch (fp32, cpu, ") and "sdpa attention" in summary["backend"]

    frame = pd.read_csv(TRAIN_CSV).iloc[:24][["id", "prompt", "response_a", "response_b"]]
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.rename(columns={"response_a": "response_b", "response_b": "response_a"})[
        ["id", "prompt", "response_a", "response_b"]].to_csv(tmp_path / "s.csv", index=False)
    run_infer(tmp_path / "t.csv", out, tmp_path / "t_out.csv", tta=True, max_tokens=1024)
    run_infer(tmp_path / "s.csv", out, tmp_path / "s_out.csv", tta=True, max_tokens=1024)
    a = pd.read_csv(tmp_path / "t_out.csv")[COLUMNS].to_numpy()
    b = pd.read_csv(tmp_path / "s_out.csv")[COLUMNS].to_numpy()
    assert np.allclose(a[:, [1, 0, 2]], b, atol=1e-6)


def test_adapter_whose_base_moved_says_how_to_point_at_it(lora_run, decoder_base, tmp_path, monkeypatch):
    moved = tmp_path / "adapter"
    shutil.copytree(lora_run[0], moved)
    meta = json.loads((moved / "arena.json").read_text())
    meta["head"]["base"] = str(tmp_path / "gone")
    (moved / "arena.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="ARENA_BASE_MODEL"):
        load_classifier(moved)
    monkeypatch.setenv("ARENA_BASE_MODEL", str(decoder_base))
    assert load_classifier(moved, require_three_labels=True).config.num_labels == 3


def test_gpu_only_options_fail_with_one_clear_line(tmp_path, decoder_base, lora_run, tiny_checkpoint):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: 4-bit loading is possible here")
    from arena.serving.backends.torch import TorchBackend
    from arena.train.cli import app

    result = CliRunner().invoke(app, ["--data", str(TRAIN_CSV), "--model", str(decoder_base), "--output",
                                      str(tmp_path / "q"), "--load-in-4bit", "--max-rows", "10"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --load-in-4bit needs an NVIDIA GPU"), result.output
    with pytest.raises(ConfigError, match="--precision 4bit needs an NVIDIA GPU"):
        TorchBackend(lora_run[0], device="cpu", precision="4bit")
    with pytest.raises(ConfigError, match="for decoder LLMs"):
        TorchBackend(tiny_checkpoint, device="cpu", precision="8bit")
