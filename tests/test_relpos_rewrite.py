"""DeBERTa's relative-position gather rewritten (arena.models.relpos, issue 25): the same bias as transformers' eager
code; in the export (arena.export.relpos) no GatherElements in OpenVINO's IR while ``model.onnx`` (ONNX Runtime's)
stays the plain trace, parity-gated with a fallback to OpenVINO reading ``model.onnx``; in the torch backend, bf16 on
the CPU only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from arena.models.relpos import (
    DEFAULT_FORM,
    FORMS,
    gather_rows,
    relative_shift,
    relpos_rewrite,
    rewritable_modules,
    rewritten_attention_bias,
)
from tests.conftest import CONFIGS, TINY, TRAIN_CSV

LENGTHS = (1, 17, 133, 512, 600)
"""600: above the v3 configs' position_buckets (256) and max_relative_positions (512, from max_position_embeddings),
where eager clamps the bucket index."""


def deberta_config(size: str, **overrides):
    from transformers import DebertaV2Config

    cfg = json.loads((CONFIGS / "deberta-v3-xsmall.json").read_text())
    if size == "tiny":
        cfg.update(TINY)
    cfg.update(overrides, num_labels=3)
    return DebertaV2Config(**cfg)


def attention_module(size: str, **overrides):
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

    torch.manual_seed(0)
    return DisentangledSelfAttention(deberta_config(size, **overrides)).eval()


def eager_and_rewritten(module, length: int, form: str, batch: int = 2, relative_pos_given: bool = True):
    """Both biases for random queries, keys and relative embeddings of one (batch, length)."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import (
        DisentangledSelfAttention,
        build_relative_position,
    )

    gen = torch.Generator().manual_seed(length)
    heads, size = module.num_attention_heads, module.attention_head_size
    query = torch.randn(batch * heads, length, size, generator=gen)
    key = torch.randn(batch * heads, length, size, generator=gen)
    table = torch.randn(module.pos_ebd_size * 2, heads * size, generator=gen)
    rel = build_relative_position(query, key, bucket_size=module.position_buckets,
                                  max_position=module.max_relative_positions) if relative_pos_given else None
    scale_factor = 1 + len(module.pos_att_type)
    with torch.no_grad():
        eager = DisentangledSelfAttention.disentangled_attention_bias(module, query, key, rel, table, scale_factor)
        rewritten = rewritten_attention_bias(module, query, key, rel, table, scale_factor, form=form)
    return eager, rewritten


def assert_same_bias(eager: torch.Tensor, rewritten: torch.Tensor) -> None:
    """Equal to fp32 rounding (a different matmul blocking of the same dot products), relative to the bias's size."""
    assert rewritten.shape == eager.shape
    scale = float(eager.abs().max())
    assert scale > 0.1, "a near-zero bias proves nothing"
    diff = float((rewritten - eager).abs().max())
    assert diff <= 1e-5 * scale, f"max |diff| {diff:.3g} vs bias scale {scale:.3g}"
    if eager.shape[-1] > 1:  # the comparison rejects a bias whose rows and columns are swapped
        assert float((rewritten.transpose(-1, -2) - eager).abs().max()) > 1e-2 * scale


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("size", ["tiny", "xsmall"])
def test_rewritten_bias_equals_eager_c2p_and_p2c(size, length, form):
    module = attention_module(size)
    assert set(module.pos_att_type) == {"c2p", "p2c"} and module.share_att_key  # the v3 configs' setting
    assert_same_bias(*eager_and_rewritten(module, length, form, batch=1 if length >= 512 else 2))


@pytest.mark.parametrize("overrides", [
    {"pos_att_type": ["c2p"]},
    {"pos_att_type": ["p2c"]},
    {"share_att_key": False},  # separate pos_key_proj / pos_query_proj (DeBERTa-v2)
    {"position_buckets": -1, "max_relative_positions": 24},  # no log buckets: the span is max_relative_positions
], ids=["c2p-only", "p2c-only", "own-position-projections", "no-buckets"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("length", [1, 17, 60])
def test_rewritten_bias_equals_eager_for_other_attention_settings(overrides, length, form):
    assert_same_bias(*eager_and_rewritten(attention_module("tiny", **overrides), length, form))


@pytest.mark.parametrize("form", FORMS)
def test_rewritten_bias_builds_relative_positions_when_not_given(form):
    assert_same_bias(*eager_and_rewritten(attention_module("tiny"), 40, form, relative_pos_given=False))


def test_relative_shift_moves_each_distance_to_its_key():
    length = 5
    # column u of row r holds the distance L-1-u, written as 100 r + distance so every value says where it belongs
    scores = torch.tensor([[[100.0 * r + (length - 1 - u) for u in range(2 * length - 1)] for r in range(length)]])
    expected = torch.tensor([[[100.0 * r + (r - c) for c in range(length)] for r in range(length)]])
    assert torch.equal(relative_shift(scores), expected)


def test_gather_rows_picks_each_rows_own_column_for_every_batch_row():
    scores = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # (N, L, W): every value unique
    index = torch.tensor([[3, 0, 1], [2, 2, 0], [0, 3, 3]])
    expected = torch.gather(scores, -1, index.expand(2, 3, 3))  # what eager does
    assert torch.equal(gather_rows(scores, index), expected)


@pytest.mark.parametrize(("size", "lengths"), [("tiny", (17, 133, 600)), ("xsmall", (512,))])
def test_whole_encoder_matches_eager_with_and_without_padding(size, lengths):
    """The swap inside a whole DeBERTa encoder: every layer's output, padded rows included; and it is undone on
    leaving the block. xsmall's attention with 3 of its 12 identical layers and a 1,000-id vocabulary (neither
    changes the attention; its ONNX graph: ``test_xsmall_graph_has_no_gather_elements_and_matches_eager``)."""
    from transformers import DebertaV2Model

    torch.manual_seed(0)
    small = {} if size == "tiny" else {"num_hidden_layers": 3, "vocab_size": 1000}
    model = DebertaV2Model(deberta_config(size, initializer_range=0.2, **small)).eval()
    for length in lengths:
        batch = 2 if length >= 512 else 3  # row 0 unpadded, the others padded on the right
        ids = torch.randint(5, 1000, (batch, length))
        mask = torch.ones_like(ids)
        mask[1, length // 2:] = 0
        mask[2:, 3:] = 0
        with torch.no_grad():
            eager = model(input_ids=ids, attention_mask=mask).last_hidden_state
            for form in FORMS:
                with relpos_rewrite(model, form) as swapped:
                    assert swapped == model.config.num_hidden_layers
                    rewritten = model(input_ids=ids, attention_mask=mask).last_hidden_state
                diff = float((rewritten - eager)[mask.bool()].abs().max())
                assert diff <= 1e-4, f"{size} {form} at {length}: max |hidden diff| {diff:.3g}"
    assert all("disentangled_attention_bias" not in vars(m) for m in rewritable_modules(model))


def test_swap_is_undone_after_an_exception_and_skips_other_architectures():
    from transformers import BertConfig, BertModel, DebertaV2Model

    torch.manual_seed(0)
    model = DebertaV2Model(deberta_config("tiny")).eval()
    with pytest.raises(RuntimeError, match="boom"), relpos_rewrite(model, "table"):
        bound = [m.disentangled_attention_bias.__func__ for m in rewritable_modules(model)]
        assert len(bound) == 2 and all(b.func is rewritten_attention_bias and b.keywords == {"form": "table"}
                                       for b in bound)
        raise RuntimeError("boom")
    assert all("disentangled_attention_bias" not in vars(m) for m in rewritable_modules(model))
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    assert rewritable_modules(bert) == []
    assert rewritable_modules(DebertaV2Model(deberta_config("tiny", relative_attention=False))) == []
    with pytest.raises(ValueError, match="rows, table"), relpos_rewrite(model, "gather"):
        pass
    with relpos_rewrite(model, "table"):  # a nested block gives back the enclosing block's swap, not eager's
        with relpos_rewrite(model, "rows"):
            assert all(m.disentangled_attention_bias.__func__.keywords == {"form": "rows"}
                       for m in rewritable_modules(model))
        assert all(m.disentangled_attention_bias.__func__.keywords == {"form": "table"}
                   for m in rewritable_modules(model))
    assert all("disentangled_attention_bias" not in vars(m) for m in rewritable_modules(model))


def op_types(path) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_xsmall_graph_has_no_gather_elements_and_matches_eager(tmp_path):
    """xsmall's attention (4 of its 12 identical layers, a 1,000-id vocabulary: the trace takes a quarter of the
    time) traced plain and in each form of the rewrite: no GatherElements in a rewritten graph, whose ONNX Runtime
    logits equal the plain graph's to fp32 rounding, at 512 tokens and on padded rows. Weights at initializer_range 0.2
    spread the logits over units, and make random layers amplify any kernel's rounding (12 of them put both graphs
    1e-2 from eager PyTorch at 512 tokens): eager is a bar the rewritten graph must clear as well as the plain one
    does, not the reference."""
    from transformers import DebertaV2ForSequenceClassification

    from arena.export.onnx import export_onnx
    from arena.serving.backends.onnx import OnnxBackend

    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(deberta_config("xsmall", vocab_size=1000, num_hidden_layers=4,
                                                              initializer_range=0.2)).eval()
    export_onnx(model, tmp_path / "plain.onnx")
    for form in FORMS:
        with relpos_rewrite(model, form) as swapped:
            assert swapped == 4
            export_onnx(model, tmp_path / f"{form}.onnx")
    assert "GatherElements" in op_types(tmp_path / "plain.onnx")
    assert all("GatherElements" not in op_types(tmp_path / f"{form}.onnx") for form in FORMS)
    assert {"Pad", "Slice"} <= set(op_types(tmp_path / "table.onnx"))  # the relative shift
    plain = OnnxBackend(tmp_path / "plain.onnx", device="cpu")
    rewritten = {form: OnnxBackend(tmp_path / f"{form}.onnx", device="cpu") for form in FORMS}
    rng = np.random.default_rng(1)
    for batch, length in ((1, 512), (3, 40)):
        ids = rng.integers(5, 1000, size=(batch, length))
        mask = np.ones_like(ids)
        mask[1:, length // 2:] = 0
        with torch.no_grad():
            eager = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
        want = plain(ids, mask)
        scale = float(np.abs(want).max())
        assert scale > 1.0, "near-zero logits prove nothing"
        for form, backend in rewritten.items():
            got = backend(ids, mask)
            assert np.abs(got - want).max() <= 1e-5 * scale, form
            assert np.abs(got - eager).max() <= np.abs(want - eager).max() + 1e-5 * scale, form


def ov_op_types(path) -> list[str]:
    import openvino as ov

    return [op.get_type_name() for op in ov.Core().read_model(str(path)).get_ops()]


def test_export_keeps_model_onnx_plain_and_gives_openvino_the_rewritten_ir(tiny_export):
    """ONNX Runtime's ``model.onnx`` (and the dynamic INT8 graph derived from it) is the plain trace; OpenVINO's
    fp32 and bf16 read ``model.ov.xml``/``.bin``, the rewritten graph, which passed its own fp32 gate and whose
    sha256 the manifest records."""
    pytest.importorskip("openvino")
    from arena.artifacts import verify_files

    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert "relpos_rewrite" not in manifest["onnx"]
    assert "GatherElements" in op_types(tiny_export / "model.onnx")
    assert "GatherElements" in op_types(tiny_export / "model.int8.onnx")  # derived from the plain graph
    assert manifest["artifacts"]["fp32"]["parity"]["passed"]
    section = manifest["openvino"]
    record = section["relpos_rewrite"]
    assert record["applied"] and record["form"] == DEFAULT_FORM
    assert record["attention_modules"] == 2 and record["gather_elements"] == 0
    assert (record["file"], record["weights"]) == ("model.ov.xml", "model.ov.bin")
    assert "GatherElements" in ov_op_types(tiny_export / "model.onnx")  # the check below can see one
    ops = ov_op_types(tiny_export / "model.ov.xml")
    assert "GatherElements" not in ops and "Gather" in ops
    for precision in ("fp32", "bf16"):
        entry = section["precisions"][precision]
        assert (entry["file"], entry["weights"]) == ("model.ov.xml", "model.ov.bin")
    fp32 = section["precisions"]["fp32"]["parity"]
    assert fp32["passed"] and all(s["max_logit_diff"] <= 1e-4 for s in fp32["shapes"])
    assert {"model.ov.xml", "model.ov.bin"} <= set(manifest["files"])
    assert not [name for name in manifest["files"] if name.startswith(".relpos-trace")]  # the scratch trace is gone
    verify_files(tiny_export, manifest, ["model.ov.xml", "model.ov.bin"])


def test_serving_opens_the_openvino_ir_and_an_older_export_still_loads(tmp_path, tiny_export):
    """``--backend openvino`` opens the file the manifest names (the IR, its hashes checked first); an export made
    before the split, whose manifest names ``model.onnx`` for OpenVINO, opens that."""
    pytest.importorskip("openvino")
    from arena.errors import ModelError
    from arena.serving.loading import open_model

    runner = open_model(tiny_export, backend="openvino", precision="fp32").runner
    assert runner.path.name == "model.ov.xml" and "model.ov.xml" in runner.description
    old = tmp_path / "old"
    shutil.copytree(tiny_export, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for name in ("model.ov.xml", "model.ov.bin"):
        (old / name).unlink()
        del manifest["files"][name]
    for entry in manifest["openvino"]["precisions"].values():
        entry["file"] = "model.onnx"
        entry.pop("weights", None)
    del manifest["openvino"]["relpos_rewrite"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert open_model(old, backend="openvino", precision="fp32").runner.path.name == "model.onnx"
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_export, swapped)
    (swapped / "model.ov.bin").write_bytes((swapped / "model.ov.bin").read_bytes() + b"x")
    with pytest.raises(ModelError, match="model.ov.bin does not match the sha256"):
        open_model(swapped, backend="openvino", precision="fp32")


def test_other_architectures_get_no_openvino_graph(tmp_path):
    """A model without DeBERTa's relative-position attention (the BERT/MiniLM hybrid of ``make demo``, a decoder):
    nothing is traced or written, the record says why, and OpenVINO reads ``model.onnx``."""
    pytest.importorskip("openvino")
    from transformers import BertConfig, BertForSequenceClassification

    from arena.export.config import ExportConfig
    from arena.export.relpos import openvino_graph

    bert = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=64, num_labels=3))
    graph = openvino_graph(bert, tmp_path, None, ExportConfig())
    assert graph.fp32 is None and not graph.record["applied"] and "no DeBERTa" in graph.record["reason"]
    assert list(tmp_path.iterdir()) == []
    assert openvino_graph(bert, tmp_path, None, ExportConfig(openvino=False)) is None  # no openvino section


def test_rewritten_graph_matches_torch_and_openvino_beyond_the_buckets(tiny_export, tiny_checkpoint):
    """ONNX Runtime (the plain model.onnx) against PyTorch, and OpenVINO fp32 on the rewritten IR against ONNX
    Runtime, at lengths the parity shapes do not reach (600 > max_relative_positions), padded rows included."""
    from arena.serving.backends.onnx import OnnxBackend
    from arena.serving.backends.openvino import OpenVinoBackend, openvino_available
    from arena.serving.backends.torch import TorchBackend

    ort = OnnxBackend(tiny_export / "model.onnx", device="cpu")
    eager = TorchBackend(tiny_checkpoint, device="cpu")
    ok, why = openvino_available()
    ov = OpenVinoBackend(tiny_export / "model.ov.xml", precision="fp32", cache_dir=None) if ok else None
    rng = np.random.default_rng(0)
    for batch, length in ((3, 17), (2, 133), (1, 600)):
        ids = rng.integers(5, 120000, size=(batch, length))
        mask = np.ones_like(ids)
        mask[-1, length - length // 3:] = 0
        got = ort(ids, mask)
        assert np.abs(got - eager(ids, mask)).max() <= 1e-4
        if ov is not None:
            assert np.abs(ov(ids, mask) - got).max() <= 1e-4
    if ov is None:
        pytest.skip(f"OpenVINO half not run: {why}")


def test_failed_rewrite_falls_back_to_openvino_reading_model_onnx(tmp_path, tiny_checkpoint, monkeypatch, caplog):
    """A wrong rewrite (its gather reads every row backwards) must not ship: the export logs it, drops the IR,
    OpenVINO's precisions read the plain ``model.onnx`` (checked in its turn), and the manifest records why."""
    pytest.importorskip("openvino")
    import arena.models.relpos as relpos
    from arena.export.cli import run_export

    right = relpos.gather_rows
    monkeypatch.setattr(relpos, "gather_rows", lambda scores, index: right(scores, index).flip(-1))
    out = tmp_path / "export"
    with caplog.at_level("WARNING", logger="arena.export"):
        summary = run_export(tiny_checkpoint, out, data=str(TRAIN_CSV), parity_shapes="2x40")
    assert summary["parity"]["fp32"] and summary["parity"]["openvino_fp32"]
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["openvino"]["relpos_rewrite"]
    assert not record["applied"] and "OpenVINO fp32 parity check" in record["reason"]
    assert not record["parity"]["passed"] and record["parity"]["failures"]
    assert all(entry["file"] == "model.onnx" and "weights" not in entry
               for entry in manifest["openvino"]["precisions"].values())
    assert manifest["openvino"]["precisions"]["fp32"]["parity"]["passed"]
    assert manifest["artifacts"]["fp32"]["parity"]["passed"]
    assert "GatherElements" in op_types(out / "model.onnx")
    assert not any((out / name).exists() for name in ("model.ov.xml", "model.ov.bin", ".relpos-trace"))
    assert not [name for name in manifest["files"] if "model.ov" in name or name.startswith(".")]
    assert any("rewrite not used" in r.getMessage() and "model.onnx" in r.getMessage() for r in caplog.records)


def test_torch_backend_runs_bf16_on_an_amx_cpu_in_the_rows_form_with_eagers_numbers(tiny_checkpoint, hybrid_checkpoint,
                                                                                   monkeypatch):
    """torch bf16 on a CPU with AMX (where it was measured) swaps the rewrite in for each batch: the logits are
    exactly those of transformers' own bias under the same autocast, padded rows included, for a plain and a hybrid
    model; the swap is used (counted), undone after each call and named in the description. fp32, a CPU without
    AMX and a compiled model keep transformers' code."""
    import arena.machine.cpu as cpu
    import arena.models.relpos as relpos
    from arena.models.hybrid import forward_logits
    from arena.serving.backends.torch import TorchBackend

    monkeypatch.setattr(cpu, "has_amx", lambda flags=None: False)
    assert not TorchBackend(tiny_checkpoint, device="cpu", precision="bf16").rewrites_relpos
    monkeypatch.setattr(cpu, "has_amx", lambda flags=None: True)
    fp32 = TorchBackend(tiny_checkpoint, device="cpu", precision="fp32")
    assert not fp32.rewrites_relpos and "rewritten" not in fp32.description
    assert not TorchBackend(tiny_checkpoint, device="cpu", precision="bf16", compile=True).rewrites_relpos
    calls = []
    right = relpos.rewritten_attention_bias
    monkeypatch.setattr(relpos, "rewritten_attention_bias", lambda *a, **k: calls.append(1) or right(*a, **k))
    rng = np.random.default_rng(1)
    for folder in (tiny_checkpoint, hybrid_checkpoint[0]):
        bf16 = TorchBackend(folder, device="cpu", precision="bf16")
        assert bf16.rewrites_relpos and "relative-position gather rewritten" in bf16.description
        layers = len(rewritable_modules(bf16.model))
        for batch, length in ((3, 40), (2, 300)):
            ids = rng.integers(5, 120000, size=(batch, length))
            mask = np.ones_like(ids)
            mask[-1, length // 2:] = 0
            feats = rng.normal(size=(batch, 39)).astype(np.float32) if bf16.needs_features else None
            before = len(calls)
            got = bf16(ids, mask, feats)
            assert len(calls) - before == layers  # every attention layer, every call
            assert all("disentangled_attention_bias" not in vars(m) for m in rewritable_modules(bf16.model))
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                plain = forward_logits(bf16.model, torch.from_numpy(ids), torch.from_numpy(mask),
                                       None if feats is None else torch.from_numpy(feats))
            assert len(calls) - before == layers  # the plain call did not swap
            assert np.array_equal(got, plain.float().numpy())  # the same matmuls: the same numbers
            assert not np.array_equal(got, TorchBackend(model=bf16.model, device="cpu")(ids, mask, feats))  # bf16 ran
