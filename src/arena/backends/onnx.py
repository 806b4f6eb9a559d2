"""ONNX Runtime backend: CPU and CUDA providers; IO binding on GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arena.artifacts import ATTENTION_MASK, FEATURES, INPUT_IDS, LOGITS
from arena.backends.base import Limits
from arena.errors import BackendUnavailable, ConfigError, ModelError


def make_session(path: str | Path, *, device: str = "cpu", threads: int | None = None):
    """An InferenceSession with full graph optimisation; refuses corrupt files and escaping external data."""
    import onnxruntime as ort

    from arena.artifacts import check_onnx_file
    from arena.cpu import allowed_cores

    check_onnx_file(path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or allowed_cores()
    opts.log_severity_level = 3
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("ONNX Runtime has no CUDA provider here; pip install 'arena-toolkit[gpu]'")
        providers = [("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)}),
                     "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise ModelError(f"ONNX Runtime cannot load {path}: {exc}") from None


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: str | Path, *, device: str = "auto", threads: int | None = None,
                 precision: str = "fp32", limits: Limits = Limits()) -> None:
        import onnxruntime as ort

        if device == "auto":
            device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
        self.device = device
        self.path = Path(path)
        self.session = make_session(path, device=device, threads=threads)
        self.threads = self.session.get_session_options().intra_op_num_threads
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.needs_features = FEATURES in self.input_names
        self.precision = precision
        self.limits = limits
        self._binding = device.startswith("cuda")

    @property
    def description(self) -> str:
        threads = f", {self.threads} threads" if self.device == "cpu" else ""
        return f"onnx ({self.path.name}, {self.precision}, {self.device}{threads})"

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 features: np.ndarray | None = None) -> np.ndarray:
        feeds = {INPUT_IDS: np.ascontiguousarray(input_ids, dtype=np.int64),
                 ATTENTION_MASK: np.ascontiguousarray(attention_mask, dtype=np.int64)}
        if self.needs_features:
            if features is None:
                raise ConfigError(f"{self.path.name} is a hybrid model: it needs the rows' features as a third input")
            feeds[FEATURES] = np.ascontiguousarray(features, dtype=np.float32)
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        if self._binding:  # pragma: no cover - needs onnxruntime-gpu
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            binding.bind_output(LOGITS, "cuda")
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0].astype(np.float32)
        return self.session.run([LOGITS], feeds)[0].astype(np.float32)
