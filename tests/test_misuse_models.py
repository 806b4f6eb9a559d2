"""Issue 27, the model side: a LoRA adapter on the wrong base, partial fold ensembles, a bench export of another
model, and error messages that name the option the user actually gave.

Each misuse ends in exit code 2 with one ``error:`` line naming what to change, and touches no file
(:func:`run_cli`, the same contract as tests/test_cli_misuse.py).
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from arena.errors import ModelError
from tests.conftest import MISTRAL_TOKENIZER, TEST_CSV, TRAIN_CSV, lora_config
from tests.test_cli_misuse import _main
from tests.test_decoder import tiny_decoder_config
from tests.test_safety import copy_model, tree


def run_cli(monkeypatch, capsys, folder, cli: str, args: list[str]) -> tuple[int, str, str]:
    """Run ``arena-<cli> args`` in ``folder`` through its console entry point: (exit code, stdout, stderr)."""
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", [f"arena-{cli}", *map(str, args)])
    try:
        _main(cli)()
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def refused(monkeypatch, capsys, folder, cli: str, args: list[str], *says: str) -> str:
    """Assert that the command is one ``error:`` line (exit 2) containing every ``says`` and changes nothing."""
    before = tree(folder)
    code, out, err = run_cli(monkeypatch, capsys, folder, cli, args)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert code == 2, f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-1500:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in says:
        assert text in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert tree(folder) == before, "files were created, changed or removed"
    return lines[0]


# ------------------------------------------------------------------------------------------------ LoRA base
def _decoder_base(root, family: str, **overrides):
    """A tiny random ``family`` classifier saved as a base folder (weights, config, the Mistral tokenizer)."""
    from arena.encode import EncoderConfig
    from arena.train.loop import TrainConfig, run_training

    config_dir = root / f"{family}-config"
    tiny_decoder_config(family, **overrides).save_pretrained(config_dir)
    out = root / f"{family}-base"
    run_training(TrainConfig(data=str(TRAIN_CSV), model=str(config_dir / "config.json"),
                             tokenizer=str(MISTRAL_TOKENIZER), random_init=True, output=str(out), max_steps=0,
                             lora_r=0, encoder=EncoderConfig(max_length=64)))
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Llama and Qwen2 bases of the same width (their LoRA module names agree), and a 3-layer Llama."""
    root = tmp_path_factory.mktemp("bases")
    return {"llama": _decoder_base(root, "llama"), "qwen2": _decoder_base(root, "qwen2"),
            "llama3": _decoder_base(root / "deep", "llama", num_hidden_layers=3)}


@pytest.fixture(scope="module")
def llama_adapter(tmp_path_factory, bases):
    from arena.train.loop import run_training

    out = tmp_path_factory.mktemp("llama-adapter") / "adapter"
    run_training(lora_config(bases["llama"], out, max_rows=16, max_steps=1, lora_r=4))
    return out


def test_adapter_records_its_base_fingerprint(llama_adapter, bases):
    from arena.models.lora import base_fingerprint
    from arena.models.modeling import read_meta

    recorded = read_meta(llama_adapter).head["base_fingerprint"]
    assert recorded == base_fingerprint(str(bases["llama"]))
    assert recorded["model_type"] == "llama" and recorded["hidden_size"] == 64
    assert recorded["num_hidden_layers"] == 2 and recorded["vocab_size"] == 32000
    assert recorded["backbone_tensors"] > 10 and len(recorded["backbone_sha256"]) == 64


def test_llama_adapter_on_a_qwen2_base_is_refused(llama_adapter, bases, monkeypatch, capsys, tmp_path):
    from arena.models.modeling import load_classifier

    monkeypatch.setenv("ARENA_BASE_MODEL", str(bases["qwen2"]))
    with pytest.raises(ModelError, match="model_type llama vs qwen2") as info:
        load_classifier(llama_adapter)
    assert str(bases["llama"].resolve()) in str(info.value) and str(bases["qwen2"]) in str(info.value)
    shutil.copy2(TEST_CSV, tmp_path / "test.csv")
    refused(monkeypatch, capsys, tmp_path, "infer", ["test.csv", "--model", llama_adapter, "--out", "sub.csv"],
            "ARENA_BASE_MODEL", "model_type llama vs qwen2")
    assert not (tmp_path / "sub.csv").exists()


def test_adapter_on_a_deeper_base_of_its_own_family_is_refused(llama_adapter, bases, monkeypatch):
    from arena.models.modeling import load_classifier

    monkeypatch.setenv("ARENA_BASE_MODEL", str(bases["llama3"]))
    with pytest.raises(ModelError, match="num_hidden_layers 2 vs 3"):
        load_classifier(llama_adapter)


def test_recorded_base_replaced_by_another_model_is_refused(llama_adapter, bases, tmp_path, monkeypatch):
    """The check runs on every load, not only where ARENA_BASE_MODEL is set: a base folder that now holds another
    model (same path) is caught too."""
    from arena.models.modeling import load_classifier

    monkeypatch.delenv("ARENA_BASE_MODEL", raising=False)
    adapter = copy_model(llama_adapter, tmp_path / "adapter")
    meta = json.loads((adapter / "arena.json").read_text())
    meta["head"]["base"] = str(bases["qwen2"])
    (adapter / "arena.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="its recorded base"):
        load_classifier(adapter)


def test_same_base_resharded_or_as_a_causal_lm_still_loads(llama_adapter, bases, tmp_path, monkeypatch):
    """The fingerprint is the backbone's tensor names and shapes: a re-sharded copy of the base, or its causal-LM
    form (``lm_head`` instead of ``score``: the adapter carries its own head), is the same base."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from arena.models.modeling import load_classifier

    sharded = tmp_path / "sharded"
    AutoModelForSequenceClassification.from_pretrained(bases["llama"]).save_pretrained(sharded,
                                                                                        max_shard_size="1MB")
    assert (sharded / "model.safetensors.index.json").is_file()
    causal = tmp_path / "causal"
    AutoModelForCausalLM.from_pretrained(bases["llama"]).save_pretrained(causal)
    for copy in (sharded, causal):
        monkeypatch.setenv("ARENA_BASE_MODEL", str(copy))
        assert load_classifier(llama_adapter, require_three_labels=True).config.num_labels == 3


def test_adapter_written_before_fingerprints_loads_with_a_warning(llama_adapter, bases, tmp_path, monkeypatch,
                                                                  caplog):
    from arena.models.modeling import load_classifier

    old = copy_model(llama_adapter, tmp_path / "old")
    meta = json.loads((old / "arena.json").read_text())
    del meta["head"]["base_fingerprint"]
    (old / "arena.json").write_text(json.dumps(meta))
    monkeypatch.setenv("ARENA_BASE_MODEL", str(bases["qwen2"]))  # unknowable without a fingerprint: a warning
    with caplog.at_level("WARNING"):
        load_classifier(old)
    assert any("before arena recorded its base's fingerprint" in r.message for r in caplog.records)


def test_fingerprint_reads_headers_not_weights(bases, tmp_path):
    """Only the safetensors headers are read: a file whose tensor bytes are cut off still fingerprints the same;
    a corrupt header is a ModelError naming the file."""
    from arena.models.lora import base_fingerprint

    cut = copy_model(bases["llama"], tmp_path / "cut", skip=("model.safetensors",))
    data = (bases["llama"] / "model.safetensors").read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    (cut / "model.safetensors").write_bytes(data[:header + 16])
    assert base_fingerprint(str(cut)) == base_fingerprint(str(bases["llama"]))
    (cut / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError, match="model.safetensors"):
        base_fingerprint(str(cut))
