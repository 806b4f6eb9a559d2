"""Reduced precision, checked against fp32: the FP16 ONNX graph (what TensorRT builds from) keeps normalisation,
softmax, reductions and position arithmetic in FP32; torch fp16/bf16 (autocast, training's numerics) and
torch.compile agree with fp32 on real rows. bf16 runs on the CPU here; fp16, compile and ONNX Runtime CUDA are
``gpu`` tests (``benchmarks/gpu_check.sh`` runs them)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from arena.artifacts import MANIFEST
from arena.export.optimize import FP32_OPS, index_only_nodes
from tests.conftest import BF16_REL, FP16_REL, TRAIN_CSV, assert_logits_close

FLOATS = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16"}


@pytest.fixture(scope="module")
def fp16_export(tmp_path_factory, tiny_checkpoint):
    from arena.export.cli import run_export

    out = tmp_path_factory.mktemp("fp16-export") / "export"
    run_export(tiny_checkpoint, out, fp16=True, data=str(TRAIN_CSV), parity_shapes="1x17,7x64,16x128")
    return out


def float_types(model: onnx.ModelProto) -> dict[str, str]:
    """Every float tensor of the graph -> "fp32" / "fp16", from the declared types and ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            types[node.output[0]] = node.attribute[0].t.data_type
    return {name: FLOATS[t] for name, t in types.items() if t in FLOATS}


def test_fp16_onnx_keeps_the_normalisation_path_fp32(fp16_export):
    model = onnx.load(str(fp16_export / "model.fp16.onnx"))
    onnx.checker.check_model(model, full_check=True)
    types = float_types(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"LayerNormalization", "Softmax", "Log"} <= ops
    for node in model.graph.node:
        if node.op_type in FP32_OPS:  # LayerNorm (all three inputs), Softmax, the position Log, the scale Sqrt
            seen = {types[t] for t in [*node.input, *node.output] if t in types}
            assert seen == {"fp32"}, f"{node.name} ({node.op_type}) runs in {seen}"
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert matmuls and all(types[n.input[0]] == "fp16" == types[n.output[0]] for n in matmuls)  # really FP16
    ceil = [n for n in model.graph.node if n.op_type == "Ceil"]  # DeBERTa's log-bucket positions
    assert ceil and all(types[n.input[0]] == "fp32" for n in ceil)
    inputs = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert inputs == {"input_ids": TensorProto.INT64, "attention_mask": TensorProto.INT64}
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    assert {n.domain or "ai.onnx" for n in model.graph.node} == {"ai.onnx"}  # TensorRT parses standard ops only


def test_fp16_onnx_passed_parity_and_the_manifest_says_how_it_was_made(fp16_export):
    manifest = json.loads((fp16_export / MANIFEST).read_text())
    fp16 = manifest["artifacts"]["fp16"]
    assert fp16["parity"]["passed"] and fp16["conversion"]["domains"] == ["ai.onnx"]
    assert "LayerNormalization" in fp16["conversion"]["fp32_ops"] and fp16["conversion"]["fp32_index_nodes"] > 0


def test_position_arithmetic_is_found_by_walking_back_from_integer_casts():
    from onnx import helper

    nodes = [
        helper.make_node("Cast", ["pos"], ["pos_f"], to=TensorProto.FLOAT, name="to_float"),
        helper.make_node("Log", ["pos_f"], ["log"], name="log"),
        helper.make_node("Ceil", ["log"], ["bucket_f"], name="ceil"),
        helper.make_node("Cast", ["bucket_f"], ["bucket"], to=TensorProto.INT64, name="to_int"),
        helper.make_node("Gather", ["table", "bucket"], ["rel"], name="gather"),
        helper.make_node("MatMul", ["x", "rel"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    assert index_only_nodes(graph) == {"to_float", "log", "ceil"}  # the float work before the integer cast


def test_bf16_autocast_matches_fp32_on_the_cpu(tiny_checkpoint, train_records, tokenizer):
    """bf16 has 8 mantissa bits: the logits move, the decisions and probabilities barely."""
    from arena.serving.backends.torch import TorchBackend

    ids, mask = _real_batch(train_records, tokenizer)
    ref = TorchBackend(tiny_checkpoint, device="cpu", precision="fp32")(ids, mask)
    got = TorchBackend(tiny_checkpoint, device="cpu", precision="bf16")(ids, mask)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert_logits_close(ref, got, rel=BF16_REL)
    assert not np.array_equal(ref, got)  # bf16 really ran


def _real_batch(records, tokenizer, rows: int = 16, max_length: int = 128):
    from arena.encode import ArenaEncoder, EncoderConfig, pad_batch

    encoded = ArenaEncoder(tokenizer, EncoderConfig(max_length=max_length)).encode(records[:rows])
    return pad_batch(encoded.ids, tokenizer.pad_token_id or 0)


# ------------------------------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("precision,compile", [("fp16", False), ("bf16", False), ("fp16", True)])
def test_torch_on_cuda_matches_fp32(tiny_checkpoint, train_records, tokenizer, precision, compile):
    from arena.serving.backends.torch import TorchBackend

    ids, mask = _real_batch(train_records, tokenizer, rows=32)
    ref = TorchBackend(tiny_checkpoint, device="cpu", precision="fp32")(ids, mask)
    backend = TorchBackend(tiny_checkpoint, device="cuda", precision=precision, compile=compile)
    for seq in (ids.shape[1], 40, 17):  # dynamic shapes: compiled once, several lengths
        short = ref if seq == ids.shape[1] else TorchBackend(tiny_checkpoint, device="cpu")(ids[:, :seq],
                                                                                            mask[:, :seq])
        assert_logits_close(short, backend(ids[:, :seq], mask[:, :seq]), rel=BF16_REL if precision == "bf16"
                            else FP16_REL)


@pytest.mark.gpu
def test_onnx_runtime_cuda_fp16_matches_torch_fp32(request, tiny_checkpoint, train_records, tokenizer):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed here (carry its wheel: benchmarks/gpu_check.sh)")
    fp16_export = request.getfixturevalue("fp16_export")  # built only once the provider is known to exist
    import torch

    from arena.serving.backends.onnx import OnnxBackend
    from arena.serving.backends.torch import TorchBackend

    ids, mask = _real_batch(train_records, tokenizer, rows=32)
    ref = TorchBackend(tiny_checkpoint, device="cpu", precision="fp32")(ids, mask)
    for name in ("model.onnx", "model.fp16.onnx"):
        backend = OnnxBackend(fp16_export / name, device="cuda")
        assert backend.session.get_providers()[0] == "CUDAExecutionProvider" and backend.device == "cuda"
        assert_logits_close(ref, backend(ids, mask), rel=FP16_REL)
        on_device = backend(torch.from_numpy(ids).cuda(), torch.from_numpy(mask).cuda())  # bound in place
        np.testing.assert_allclose(on_device, backend(ids, mask), rtol=0, atol=1e-6)

