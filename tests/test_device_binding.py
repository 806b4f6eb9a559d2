"""GPU-path defects caught on a CPU: the CUDA objects are replaced by CPU stand-ins, everything else is real.

* ONNX Runtime IO binding (the CUDA path) binds every graph input in the type the graph declares, including an
  optimum BERT export's ``token_type_ids``, whose zeros are made where the input ids live (a torch tensor stays a
  tensor: ``np.zeros_like`` of a CUDA tensor fails). The session is a real ONNX Runtime CPU session bound by address.
* ``engine_usable`` checks the GPU of ``--device`` / every GPU of ``--devices``, not device 0.
* The TensorRT runner maps BF16 and BOOL tensors to torch types and names what it cannot bind.
* A timing cache TensorRT refuses (another GPU or version) is replaced by an empty one, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from arena.errors import ModelError

torch = pytest.importorskip("torch")


# ------------------------------------------------------------------------------- ONNX Runtime IO binding


def bert_like_graph(path: Path, mask_type: int) -> Path:
    """input_ids, attention_mask (``mask_type``), token_type_ids -> logits = (sum(ids * mask), sum(mask),
    sum(token_type_ids)) per row, float32 (batch, 3)."""
    import onnx
    from onnx import TensorProto, helper

    def inp(name, kind):
        return helper.make_tensor_value_info(name, kind, ["batch", "sequence"])

    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("Cast", ["attention_mask"], ["mask64"], to=TensorProto.INT64),
        helper.make_node("Mul", ["input_ids", "mask64"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axes"], ["s_ids"], keepdims=1),
        helper.make_node("ReduceSum", ["mask64", "axes"], ["s_mask"], keepdims=1),
        helper.make_node("ReduceSum", ["token_type_ids", "axes"], ["s_tt"], keepdims=1),
        helper.make_node("Concat", ["s_ids", "s_mask", "s_tt"], ["sums"], axis=1),
        helper.make_node("Cast", ["sums"], ["logits"], to=TensorProto.FLOAT),
    ]
    inputs = [inp("input_ids", TensorProto.INT64), inp("attention_mask", mask_type),
              inp("token_type_ids", TensorProto.INT64)]
    graph = helper.make_graph(nodes, "bert_like", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], [axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


class FakeStream:
    """Stands in for a torch CUDA stream: records the calls the IO-binding path must make."""

    def __init__(self) -> None:
        self.waits = self.syncs = 0
        self.cuda_stream = 1

    def wait_stream(self, other) -> None:
        self.waits += 1

    def synchronize(self) -> None:
        self.syncs += 1


@pytest.fixture
def bound_backend(tmp_path, monkeypatch, request):
    """An OnnxBackend on a real CPU session, switched onto the IO-binding path with CPU buffers."""
    from onnx import TensorProto

    from arena.serving.backends.onnx import OnnxBackend

    mask_type = getattr(request, "param", TensorProto.INT64)
    backend = OnnxBackend(bert_like_graph(tmp_path / "bert.onnx", mask_type), device="cpu")
    stream = FakeStream()
    backend._stream = stream
    monkeypatch.setattr(backend, "_bound_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: "current")
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    return backend, stream


IDS = np.array([[5, 6, 7, 0], [9, 1, 0, 0]])
MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
EXPECTED = np.array([[18, 3, 0], [10, 2, 0]], dtype=np.float32)


def test_a_bert_export_with_token_type_ids_runs_on_the_bound_path(bound_backend):
    backend, stream = bound_backend
    assert backend.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    np.testing.assert_array_equal(backend(IDS, MASK), EXPECTED)
    assert stream.waits == 1 and stream.syncs == 1


def test_tensors_handed_in_get_zeros_for_token_type_ids(bound_backend):
    """The executor may hand device tensors over; their segment ids are made from the shape alone
    (:func:`arena.artifacts.feed_arrays`), never by numpy reading the tensor, and bound like the other inputs."""
    from arena.artifacts import TOKEN_TYPE_IDS, feed_arrays

    backend, _ = bound_backend
    ids = torch.from_numpy(IDS)
    zeros = feed_arrays([*backend.input_names], ids, torch.from_numpy(MASK))[TOKEN_TYPE_IDS]
    assert zeros.shape == tuple(ids.shape) and not zeros.any()
    np.testing.assert_array_equal(backend(ids, torch.from_numpy(MASK)), EXPECTED)


@pytest.mark.parametrize("bound_backend", [6], indirect=True)  # TensorProto.INT32
def test_inputs_are_bound_in_the_type_the_graph_declares(bound_backend):
    """An int32 attention mask bound as int64 is refused by ONNX Runtime; bound as declared it runs, on the bound
    path and on the plain CPU path alike."""
    backend, _ = bound_backend
    assert backend._input_types["attention_mask"] == np.int32
    np.testing.assert_array_equal(backend(IDS, MASK), EXPECTED)
    backend._stream = None
    np.testing.assert_array_equal(backend(IDS, MASK), EXPECTED)


# ------------------------------------------------------------------------- engine_usable per device


@pytest.fixture
def two_gpus(tmp_path, monkeypatch):
    """An engine built on an H100 with TensorRT 11.4; cuda:0 is an H100, cuda:1 a T4."""
    import arena.machine.gpu as gpu

    manifest = {"tensorrt": {"status": "built", "engines": [{
        "file": "model.fp16.h100.engine", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
        "tensorrt_version": "11.4.0.106", "profiles": [], "precision": "fp16"}]}}
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0.106"))
    monkeypatch.setattr(gpu, "tensorrt_available", lambda: (True, "ok"))
    names = {"cuda": ("NVIDIA H100 80GB HBM3", "9.0"), "cuda:0": ("NVIDIA H100 80GB HBM3", "9.0"),
             "cuda:1": ("Tesla T4", "7.5")}
    asked = []

    def identity(device="cuda"):
        asked.append(device)
        return names[device]

    monkeypatch.setattr(gpu, "gpu_identity", identity)
    return tmp_path, manifest, asked


def test_engine_usable_checks_the_device_asked_for(two_gpus):
    from arena.machine.gpu import engine_usable

    folder, manifest, asked = two_gpus
    ok, why = engine_usable(folder, manifest, "cuda:1")
    assert not ok and "Tesla T4" in why and asked == ["cuda:1"]
    ok, why = engine_usable(folder, manifest, "cuda:0")
    assert ok and "H100" in why
    assert engine_usable(folder, manifest, "auto")[0] and asked[-1] == "cuda"
    ok, why = engine_usable(folder, manifest, "cpu")
    assert not ok and "--device cpu" in why


def test_engine_usable_checks_every_device_of_devices(two_gpus):
    from arena.machine.gpu import engine_usable

    folder, manifest, asked = two_gpus
    ok, why = engine_usable(folder, manifest, ["cuda:0", "cuda:1"])
    assert not ok and why.startswith("cuda:1: ") and "Tesla T4" in why and asked == ["cuda:0", "cuda:1"]
    ok, why = engine_usable(folder, manifest, ["cuda:0", "cuda:0"])
    assert ok and asked[-1] == "cuda:0" and len(asked) == 3  # one look per distinct device


def test_auto_choice_follows_the_devices(two_gpus, tmp_path, monkeypatch):
    """``--device cuda:1`` (a T4) must not get the H100 engine; ``--device cpu`` on a GPU machine gets no GPU
    backend at all."""
    import arena.serving.choice as choice
    from arena.artifacts import MANIFEST

    folder, manifest, _ = two_gpus
    (folder / MANIFEST).write_text(json.dumps({**manifest, "artifacts": {"fp32": {"file": "model.onnx"}}}))
    import arena.machine.gpu

    monkeypatch.setattr(choice, "gpu_present", lambda: True)
    monkeypatch.setattr(arena.machine.gpu, "ort_cuda", lambda: True)
    assert choice.choose_backend("auto", folder, device="cuda:0").backend == "tensorrt"
    picked = choice.choose_backend("auto", folder, device="cuda:1")
    assert picked.backend == "onnx" and "Tesla T4" in picked.reason
    assert choice.choose_backend("auto", folder, device=["cuda:0", "cuda:1"]).backend == "onnx"
    on_cpus = choice.choose_backend("auto", folder, device=["cpu", "cpu"])
    assert (on_cpus.backend, on_cpus.variant.device) == ("onnx", "cpu")
    with pytest.raises(Exception, match="Tesla T4"):
        choice.choose_backend("tensorrt", folder, device="cuda:1")


# --------------------------------------------------------------------------------- TensorRT runtime, build


def test_every_tensorrt_io_type_arena_binds_has_a_torch_type():
    from arena.serving.backends.tensorrt import TORCH_DTYPES, torch_dtype

    def kind(name):
        return types.SimpleNamespace(name=name)

    assert torch_dtype("logits", kind("BF16")) is torch.bfloat16
    assert torch_dtype("attention_mask", kind("BOOL")) is torch.bool
    assert torch_dtype("logits", kind("HALF")) is torch.float16 and torch_dtype("x", kind("INT64")) is torch.int64
    assert all(isinstance(torch_dtype("x", kind(k)), torch.dtype) for k in TORCH_DTYPES)
    with pytest.raises(ModelError, match="tensor logits has TensorRT type FP8, which arena cannot bind"):
        torch_dtype("logits", kind("FP8"))


class FakeBuilderConfig:
    """The two IBuilderConfig calls the timing cache uses; refuses a cache recorded elsewhere, as TensorRT does."""

    def __init__(self, accepts: bytes = b"") -> None:
        self.accepts, self.set = accepts, []

    def create_timing_cache(self, data: bytes) -> bytes:
        return bytes(data)

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        self.set.append(cache)
        return cache in (b"", self.accepts)


def test_a_timing_cache_from_elsewhere_is_replaced_with_a_warning(tmp_path, caplog):
    from arena.export.tensorrt import use_timing_cache

    path = tmp_path / "timing.cache"
    config = FakeBuilderConfig()
    assert use_timing_cache(config, path) is False and config.set == [b""]
    path.write_bytes(b"this GPU")
    config = FakeBuilderConfig(accepts=b"this GPU")
    assert use_timing_cache(config, path) is True and config.set == [b"this GPU"]
    assert "recorded on another GPU" not in caplog.text
    config = FakeBuilderConfig(accepts=b"other")
    assert use_timing_cache(config, path) is False and config.set == [b"this GPU", b""]
    assert "recorded on another GPU or TensorRT version" in caplog.text
    assert use_timing_cache(FakeBuilderConfig(), None) is False


def test_an_empty_timing_cache_refused_is_an_error(tmp_path):
    from arena.export.tensorrt import use_timing_cache

    config = FakeBuilderConfig()
    config.set_timing_cache = lambda cache, ignore_mismatch: False
    with pytest.raises(ModelError, match="refused an empty timing cache"):
        use_timing_cache(config, tmp_path / "none.cache")
