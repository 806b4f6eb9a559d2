"""Which device a backend really runs on: ONNX Runtime's silent CPU fallback is caught, "auto" means a GPU is
present (not merely a provider installed), an engine built for another GPU is skipped with the rebuild command,
and the parent of ``--devices`` never loads a model. The GPU cases are ``gpu`` tests."""

from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import pandas as pd
import pytest

from arena.artifacts import MANIFEST
from arena.errors import BackendUnavailable
from tests.conftest import TRAIN_CSV

CUDA_LISTED = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture
def cuda_provider_listed(monkeypatch):
    """onnxruntime claims a CUDA provider (as onnxruntime-gpu does) on a machine that cannot start it."""
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(CUDA_LISTED))


def test_cuda_session_that_falls_back_to_cpu_is_an_error(tiny_export, cuda_provider_listed):
    from arena.serving.backends.onnx import make_session

    with pytest.raises(BackendUnavailable, match="would run it on the CPU"):
        make_session(tiny_export / "model.onnx", device="cuda")


def test_auto_falls_back_to_cpu_with_a_warning_and_an_honest_label(tiny_export, cuda_provider_listed, monkeypatch,
                                                                   caplog):
    import arena.serving.backends.onnx as onnx_backend

    monkeypatch.setattr(onnx_backend, "gpu_present", lambda: True)
    backend = onnx_backend.OnnxBackend(tiny_export / "model.onnx", device="auto")
    assert backend.device == "cpu" and ", cpu, " in backend.description and "cuda" not in backend.description
    assert "ONNX Runtime CUDA is not usable" in caplog.text
    ids = np.full((2, 9), 7)
    assert backend(ids, np.ones_like(ids)).shape == (2, 3)
    with pytest.raises(BackendUnavailable):
        onnx_backend.OnnxBackend(tiny_export / "model.onnx", device="cuda")


def test_auto_means_a_gpu_is_present_not_a_provider_installed(cuda_provider_listed, monkeypatch, tiny_export):
    import arena.serving.backends.onnx as onnx_backend
    import arena.serving.choice as base

    monkeypatch.setattr(onnx_backend, "gpu_present", lambda: False)
    assert onnx_backend.onnx_device("auto") == "cpu" and onnx_backend.onnx_device("cuda:1") == "cuda:1"
    monkeypatch.setattr("arena.machine.gpu.gpu_present", lambda: False)
    from arena.machine.gpu import ort_cuda

    assert not ort_cuda()
    monkeypatch.setattr(base, "gpu_present", lambda: False)
    assert base.choose_backend("auto", tiny_export).variant.device == "cpu"


# ------------------------------------------------------------------------------ engines built for another GPU


@pytest.fixture
def folder_with_h100_engine(tmp_path, tiny_export, monkeypatch):
    """A copy of the tiny export whose manifest lists an engine built on an H100 with TensorRT 11.0.0, on a
    machine that reports a Tesla T4, TensorRT 11.0.0, a GPU and ONNX Runtime CUDA."""
    import arena.machine.gpu as gpu
    import arena.serving.choice as base

    folder = tmp_path / "export"
    shutil.copytree(tiny_export, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["tensorrt"] = {"status": "built", "max_tokens": 8192, "engines": [{
        "file": "model.fp16.h100.engine", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
        "tensorrt_version": "11.0.0", "profiles": [], "precision": "fp16"}]}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.0.0"))
    monkeypatch.setattr(gpu, "tensorrt_available", lambda: (True, "ok"))
    monkeypatch.setattr(gpu, "gpu_identity", lambda device="cuda": ("Tesla T4", "7.5"))
    monkeypatch.setattr(base, "gpu_present", lambda: True)
    monkeypatch.setattr(gpu, "ort_cuda", lambda: True)
    return folder


def test_auto_skips_an_engine_built_on_another_gpu_and_says_why(folder_with_h100_engine, caplog):
    from arena.serving.choice import choose_backend

    choice = choose_backend("auto", folder_with_h100_engine)
    assert choice.backend == "onnx"
    assert "passed over: tensorrt fp16 cuda (" in choice.reason and "Tesla T4" in choice.reason
    assert f"arena-export {json.loads((folder_with_h100_engine / MANIFEST).read_text())['source_checkpoint']}" \
           in choice.reason
    assert "not using tensorrt fp16 cuda" in caplog.text


def test_backend_tensorrt_stops_with_the_rebuild_command(folder_with_h100_engine):
    from arena.serving.choice import choose_backend

    with pytest.raises(BackendUnavailable, match=r"H100.*Tesla T4.*arena-export .* --fp16 --trt --overwrite"):
        choose_backend("tensorrt", folder_with_h100_engine)


def test_auto_takes_the_engine_built_for_this_gpu(folder_with_h100_engine, monkeypatch):
    from arena.serving.choice import choose_backend

    monkeypatch.setattr("arena.machine.gpu.gpu_identity", lambda device="cuda": ("NVIDIA H100 80GB HBM3", "9.0"))
    assert choose_backend("auto", folder_with_h100_engine).backend == "tensorrt"
    assert choose_backend("tensorrt", folder_with_h100_engine).backend == "tensorrt"


# ---------------------------------------------------------------------------------------------- --devices


def _test_rows(tmp_path, n=40):
    """``n`` real rows in the test layout: the first of ``train_sample.csv`` without their labels (the shared
    ``test.csv`` has 3 rows)."""
    from arena.data import TEST_COLUMNS

    rows = pd.read_csv(TRAIN_CSV, nrows=n)[list(TEST_COLUMNS)]
    assert len(rows) == n
    path = tmp_path / "t.csv"
    rows.to_csv(path, index=False)
    return path


def test_devices_parent_never_loads_a_model(tmp_path, tiny_export, monkeypatch):
    """The workers load the backend; the parent only encodes (on cuda:0 it would hold a second copy)."""
    from arena.infer.cli import run_infer

    csv = _test_rows(tmp_path)
    # fp32: dynamic INT8 (what auto may pick) scales each batch's activations by that batch's range, so a row's
    # probabilities move (by up to 0.05 here) with the rows that share its batch, which two workers split differently
    one = run_infer(csv, tiny_export, tmp_path / "one.csv", backend="onnx", precision="fp32")

    def refuse(*args, **kwargs):
        raise AssertionError("the parent process built a backend")

    monkeypatch.setattr("arena.serving.backends.onnx.OnnxBackend.__init__", refuse)
    monkeypatch.setattr("arena.serving.backends.torch.TorchBackend.__init__", refuse)
    two = run_infer(csv, tiny_export, tmp_path / "two.csv", backend="onnx", precision="fp32", devices="cpu,cpu")
    assert "x 2 processes on cpu, cpu" in two["backend"] and two["rows"] == one["rows"]
    a, b = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    np.testing.assert_allclose(a.drop(columns="id").to_numpy(), b.drop(columns="id").to_numpy(), atol=1e-5)


@pytest.mark.gpu
def test_devices_on_cuda_match_one_device(tmp_path, tiny_checkpoint):
    import torch

    from arena.infer.cli import run_infer

    csv = _test_rows(tmp_path, 200)
    one = run_infer(csv, tiny_checkpoint, tmp_path / "one.csv", backend="torch", precision="fp32", device="cuda")
    before = torch.cuda.memory_allocated(0)
    two = run_infer(csv, tiny_checkpoint, tmp_path / "two.csv", backend="torch", precision="fp32",
                    devices="cuda:0,cuda:0")
    assert torch.cuda.memory_allocated(0) <= before  # this process put nothing more on cuda:0
    assert "x 2 processes on cuda:0, cuda:0" in two["backend"] and two["rows"] == one["rows"] == 200
    a, b = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    np.testing.assert_allclose(a.drop(columns="id").to_numpy(), b.drop(columns="id").to_numpy(), atol=1e-4)
