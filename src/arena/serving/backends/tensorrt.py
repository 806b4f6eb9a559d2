"""TensorRT runtime: is a usable TensorRT here, which GPU is this, run an engine; the backend that picks the folder's
engine built for this GPU and TensorRT version (:func:`arena.artifacts.select_engine`), checks the file's sha256
(:func:`arena.artifacts.read_engine`) and only then deserialises it.

Runtime discipline (as in NVIDIA's demo/BERT ``inference.py``): the optimisation profiles are read back from the
engine (:func:`engine_profiles`) and become the backend's :class:`~arena.serving.backends.contract.Limits`, so the
executor
never plans a batch no profile holds; input copies, the profile switch, the engine and the output copy are all
enqueued on one CUDA stream; the output buffer is sized from the context after the input shapes are set
(``infer_shapes`` / ``get_tensor_shape``), not assumed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from arena.artifacts import (
    ATTENTION_MASK,
    FEATURES,
    INPUT_IDS,
    LOGITS,
    Profile,
    pick_profile,
    read_engine,
    select_engine,
)
from arena.errors import BackendUnavailable, ConfigError, ModelError
from arena.machine.gpu import check_tensorrt_version, gpu_identity, tensorrt_available
from arena.serving.backends.contract import BackendSpec, Limits, OpenOptions, ShapeRange, Variant

if TYPE_CHECKING:  # the real 11.4 API, as stubs generated from NVIDIA's bindings describe it (tests/tensorrt_api.py)
    import tensorrt as trt

log = logging.getLogger(__name__)

TORCH_DTYPES = {"INT64": "int64", "INT32": "int32", "INT8": "int8", "UINT8": "uint8", "BOOL": "bool",
                "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16"}
"""TensorRT ``DataType`` member name -> the torch dtype of the buffer bound to a tensor of that type (an engine
built from a bf16 graph, or one taking a boolean mask). FP8/FP4/INT4 I/O has no torch buffer type here."""


def torch_dtype(name: str, trt_type: trt.DataType) -> Any:
    """The torch dtype for I/O tensor ``name`` of TensorRT type ``trt_type``; :class:`ModelError` naming both when
    arena has no buffer type for it."""
    import torch

    kind = getattr(trt_type, "name", str(trt_type))
    if kind not in TORCH_DTYPES:
        raise ModelError(f"the engine's tensor {name} has TensorRT type {kind}, which arena cannot bind (it binds "
                         f"{', '.join(TORCH_DTYPES)}); rebuild the engine from arena-export's ONNX file")
    return getattr(torch, TORCH_DTYPES[kind])

def engine_profiles(engine: trt.ICudaEngine) -> list[Profile]:
    """The optimisation profiles as the engine holds them (min / opt / max of ``input_ids``, per profile)."""
    profiles = []
    for k in range(engine.num_optimization_profiles):
        lo, opt, hi = engine.get_tensor_profile_shape(INPUT_IDS, k)
        profiles.append(Profile(seq_min=lo[1], seq_opt=opt[1], seq_max=hi[1],
                                batch_min=lo[0], batch_opt=opt[0], batch_max=hi[0]))
    return profiles


def limits_for_profiles(profiles: Sequence[Profile], max_tokens: int | None = None) -> Limits:
    """What an engine with these profiles runs: every batch inside one profile's box, and (when the engine was
    planned for a token budget) at most ``max_tokens`` rows x padded length."""
    return Limits(max_length=max(p.seq_max for p in profiles), max_batch=max(p.batch_max for p in profiles),
                  max_tokens=max_tokens,
                  ranges=tuple(ShapeRange(p.seq_min, p.seq_max, p.batch_max) for p in profiles))


class TensorRTRunner:  # pragma: no cover - needs TensorRT and a GPU
    """Run a deserialised engine on one CUDA stream: pick the profile that fits each batch, bind torch buffers."""

    def __init__(self, engine_bytes: bytes, *, device: str = "cuda") -> None:
        import tensorrt as trt
        import torch

        check_tensorrt_version(trt.__version__)
        self._torch = torch
        self.device = torch.device(device)
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            engine = self.runtime.deserialize_cuda_engine(engine_bytes)
            if engine is None:
                raise ModelError("TensorRT could not deserialise the engine (built by another TensorRT version?)")
            self.engine: trt.ICudaEngine = engine
            self.context: trt.IExecutionContext = engine.create_execution_context()
            self.stream = torch.cuda.Stream(device=self.device)
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.dtypes = {name: torch_dtype(name, engine.get_tensor_dtype(name)) for name in self.names}
        self.profiles = engine_profiles(engine)
        self.n_features = engine.get_tensor_shape(FEATURES)[1] if FEATURES in self.names else 0
        self.needs_features = self.n_features > 0
        self.profile = -1

    def _bind_inputs(self, arrays: dict[str, np.ndarray]) -> list[Any]:
        """Copy each input to the GPU on the runner's stream and bind it; the tensors must outlive the run."""
        torch = self._torch
        kept = []
        for name, array in arrays.items():
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device, dtype=self.dtypes[name],
                                                                       non_blocking=True)
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ModelError(f"TensorRT refused the shape {tuple(tensor.shape)} for {name}")
            self.context.set_tensor_address(name, tensor.data_ptr())
            kept.append(tensor)
        return kept

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 features: np.ndarray | None = None) -> np.ndarray:
        torch = self._torch
        batch, seq = input_ids.shape
        k = pick_profile(self.profiles, batch, seq)
        arrays = {INPUT_IDS: input_ids, ATTENTION_MASK: attention_mask}
        if self.n_features:
            if features is None or features.shape != (batch, self.n_features):
                raise ConfigError(f"this engine takes a ({batch}, {self.n_features}) features input")
            arrays[FEATURES] = features
        handle = self.stream.cuda_stream
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):  # one stream for everything below
            if k != self.profile:
                if not self.context.set_optimization_profile_async(k, handle):
                    raise ModelError(f"TensorRT could not switch to optimisation profile {k}")
                self.profile = k
            inputs = self._bind_inputs(arrays)
            unresolved = self.context.infer_shapes()
            if unresolved:
                raise ModelError(f"TensorRT could not infer the shapes of {', '.join(unresolved)}")
            dims = self.context.get_tensor_shape(LOGITS)
            out = torch.empty([dims[i] for i in range(len(dims))], dtype=self.dtypes[LOGITS], device=self.device)
            self.context.set_tensor_address(LOGITS, out.data_ptr())
            if not self.context.execute_async_v3(handle):
                raise ModelError("TensorRT execution failed")
            host = out.float().to("cpu", non_blocking=True)
            self.stream.synchronize()
        del inputs
        return host.numpy()


class TensorRTBackend:  # pragma: no cover - needs TensorRT and a GPU
    """The folder's engine for this machine, behind the backend contract; limits from the engine's own profiles."""

    name = "tensorrt"

    def __init__(self, folder: Path, manifest: dict[str, Any], *, device: str = "cuda") -> None:
        if device == "auto":
            device = "cuda"
        if not device.startswith("cuda"):
            raise ConfigError(f"--backend tensorrt runs on an NVIDIA GPU, not on --device {device}")
        ok, why = tensorrt_available()
        if not ok:
            raise BackendUnavailable(f"--backend tensorrt: {why}")
        import tensorrt as trt

        gpu, cc = gpu_identity(device)
        entry = select_engine(manifest, gpu_name=gpu, compute_capability=cc, trt_version=trt.__version__,
                              folder=folder)
        self.runner = TensorRTRunner(read_engine(folder, manifest, entry), device=device)
        recorded = [Profile(**p) for p in entry.get("profiles", [])]
        if recorded != self.runner.profiles:
            log.warning("%s: the manifest's profiles differ from the engine's; using the engine's", entry["file"])
        budget = entry.get("max_tokens", (manifest.get("tensorrt") or {}).get("max_tokens"))
        self.limits = limits_for_profiles(self.runner.profiles, int(budget) if budget else None)
        self.needs_features = self.runner.needs_features
        self.device = device
        self.file = str(entry["file"])

    @property
    def description(self) -> str:
        return f"tensorrt ({self.file}, fp16 strongly typed, {self.device})"

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 features: np.ndarray | None = None) -> np.ndarray:
        return self.runner(input_ids, attention_mask, features)


# ----------------------------------------------------------------------------------------------- declaration


def _variants(folder: Any, devices: Sequence[str] = ("auto",)) -> list[Variant]:
    """One fp16 variant when the export holds engines; runnable only where one was built for every GPU of
    ``devices`` and this TensorRT."""
    if not ((folder.manifest or {}).get("tensorrt") or {}).get("engines"):
        return []
    from arena.machine.gpu import engine_usable

    gpus = [d for d in devices if d != "auto"] or ["cuda"]
    ok, why = engine_usable(folder.path, folder.manifest, gpus)
    engines = folder.manifest["tensorrt"]["engines"]
    return [Variant("tensorrt", "fp16", "cuda", engines[0].get("file"), speed=3.0, why_not=None if ok else why)]


def _open(folder: Any, variant: Variant, options: OpenOptions) -> Any:  # pragma: no cover - needs TensorRT
    return TensorRTBackend(folder.path, folder.manifest or {}, device=options.device)


def _check_request(precision: str, device: str) -> None:
    if device == "cpu":
        raise ConfigError("--backend tensorrt runs on an NVIDIA GPU, not on --device cpu")
    if device.startswith("cuda"):
        from arena.machine.gpu import torch_gpus

        if not torch_gpus():
            raise ConfigError(f"--device {device}: no CUDA GPU is available to PyTorch (which TensorRT's runner "
                              "uses for its buffers) on this machine")


def _absent(folder: Any) -> str:
    from arena.artifacts import rebuild_command

    return f"{folder.path} has no TensorRT engine; build one with `{rebuild_command(folder.manifest, folder.path)}`"


SPEC = BackendSpec(
    name="tensorrt", precisions=("fp16",), devices=("cuda",), reads="export", variants=_variants, open=_open,
    check_request=_check_request, absent=_absent,
    summary="TensorRT: strongly typed FP16 engines built at export for one GPU and TensorRT version",
    runtime="tensorrt",
)
