"""ONNX Runtime backend: CPU, or CUDA with IO binding on one stream shared with PyTorch.

On CUDA the session is created on a PyTorch stream (the provider's ``user_compute_stream``): inputs are copied to
the GPU on that stream and bound by address, the output is bound to a GPU buffer and copied back on the same stream,
so nothing races and nothing is copied twice; inputs that are already CUDA tensors are bound as they are, with no
copy at all. A session asked for CUDA that ONNX Runtime quietly put on the CPU (``session.get_providers()``
without the CUDA provider: missing CUDA/cuDNN libraries, no GPU) is an error when CUDA was asked for, and a warning
plus an honest ``cpu`` label under ``--device auto``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arena.artifacts import FEATURES, LOGITS, feed_arrays
from arena.errors import BackendUnavailable, ConfigError, ModelError
from arena.machine.gpu import gpu_present
from arena.serving.backends.contract import BackendSpec, Limits, OpenOptions, Variant

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
"""ONNX Runtime's type names -> numpy types, for binding each graph input and output in its declared type."""


def onnx_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is present and ONNX Runtime has the CUDA provider, else ``cpu``."""
    if device != "auto":
        return device
    import onnxruntime as ort

    return "cuda" if CUDA_PROVIDER in ort.get_available_providers() and gpu_present() else "cpu"


def _device_id(device: str) -> int:
    return int(device.partition(":")[2] or 0)


ORT_CACHE_ENV = "ARENA_ORT_CACHE"
ORT_CACHE_KEEP = 8
"""Optimised graphs kept (one per model file, ONNX Runtime version and CPU kind); older ones are removed."""
ORT_CACHE_MAX_BYTES = 1 << 30
"""Larger models are not cached (ONNX Runtime would write their optimised weights as external data)."""


def make_session(path: str | Path, *, device: str = "cpu", threads: int | None = None,
                 stream: int | None = None, cache_key: str | None = None) -> Any:
    """An InferenceSession with full graph optimisation; refuses corrupt files and escaping external data.

    ``device`` cuda[:N]: raises :class:`BackendUnavailable` when the CUDA provider is not installed or when the
    session came up without it. ``stream``: a CUDA stream handle the provider computes on (not 0: ONNX Runtime
    ignores the default stream). ``cache_key`` (the file's sha256, from its manifest): on the CPU, the graph ONNX
    Runtime optimised is kept in the user's cache (:func:`optimised_graph`) and later sessions load it instead of
    optimising again (0.13 -> 0.05 s per session for the demo's INT8 model, benchmarks/RESULTS.md).
    """
    import onnxruntime as ort

    from arena.artifacts import check_onnx_file
    from arena.machine.cpu import allowed_cores

    check_onnx_file(path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or allowed_cores()
    opts.log_severity_level = 3
    cuda, cached = device.startswith("cuda"), None
    if cuda:
        if CUDA_PROVIDER not in ort.get_available_providers():
            raise BackendUnavailable("ONNX Runtime has no CUDA provider here; pip install 'arena-toolkit[gpu]' "
                                     "(onnxruntime-gpu instead of onnxruntime)")
        options: dict[str, Any] = {"device_id": _device_id(device)}
        if stream:
            options["user_compute_stream"] = str(stream)
        providers: list[Any] = [(CUDA_PROVIDER, options), "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
        cached = optimised_graph(Path(path), cache_key)
        if cached is not None and cached.is_file():
            session = _cached_session(cached, opts, providers)
            if session is not None:
                return session
        if cached is not None:
            opts.optimized_model_filepath = str(cached.with_name(f"{cached.name}.{os.getpid()}.tmp"))
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise ModelError(f"ONNX Runtime cannot load {path}: {exc}") from None
    if opts.optimized_model_filepath:
        _keep(Path(opts.optimized_model_filepath), cached)
    if cuda and CUDA_PROVIDER not in session.get_providers():
        raise BackendUnavailable(f"ONNX Runtime could not start its CUDA provider for {Path(path).name} and would "
                                 f"run it on the CPU (providers: {', '.join(session.get_providers())}): check that "
                                 "a GPU is visible and the CUDA/cuDNN libraries onnxruntime-gpu needs are installed")
    return session


def optimised_graph(path: Path, cache_key: str | None) -> Path | None:
    """Where the CPU-optimised graph of the model at ``path`` (sha256 ``cache_key``) is cached: keyed by the file,
    ONNX Runtime's version and the CPU kind (the optimised graph may hold kernels for this CPU's instructions);
    None without a key, for files over :data:`ORT_CACHE_MAX_BYTES`, or with ``$ARENA_ORT_CACHE=off``."""
    if not cache_key or path.stat().st_size > ORT_CACHE_MAX_BYTES:
        return None
    import hashlib

    import onnxruntime as ort

    from arena.machine.cpu import cpu_kind
    from arena.serving.cache import cache_entry, cache_root

    machine = hashlib.sha256(f"{ort.__version__} {cpu_kind()}".encode()).hexdigest()[:12]
    entry = cache_entry(cache_root("onnxruntime", ORT_CACHE_ENV), f"{cache_key[:24]}-{machine}",
                        keep=ORT_CACHE_KEEP, what="ONNX Runtime")
    return None if entry is None else entry / "model.optimized.onnx"


def _cached_session(cached: Path, opts: Any, providers: list[Any]) -> Any:
    """A session on the cached optimised graph (no optimisation again), or None if it cannot load (then it is
    rebuilt)."""
    import onnxruntime as ort

    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(cached), sess_options=opts, providers=providers)
    except Exception as exc:  # a damaged cache entry: optimise the model again and replace it
        log.warning("ONNX Runtime cache entry %s does not load (%s); optimising %s again", cached, exc, cached.name)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return None
    log.info("ONNX Runtime: loaded the optimised graph from the cache (%s)", cached.parent)
    return session


def _keep(written: Path, cached: Path | None) -> None:
    """Move the optimised graph ONNX Runtime just wrote into its cache entry (atomically), or drop it."""
    try:
        if cached is not None and written.is_file():
            os.replace(written, cached)
    except OSError as exc:
        log.warning("could not keep the optimised graph in the cache (%s)", exc)
    finally:
        written.unlink(missing_ok=True)


def _torch_stream(device: str) -> Any:
    """A dedicated PyTorch CUDA stream on ``device``, or None when PyTorch cannot use CUDA here."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.Stream(device=torch.device("cuda", _device_id(device)))  # pragma: no cover - needs a GPU


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: str | Path, *, device: str = "auto", threads: int | None = None,
                 precision: str = "fp32", limits: Limits = Limits(), cache_key: str | None = None) -> None:
        requested = device
        device = onnx_device(device)
        self.path = Path(path)
        self._stream = _torch_stream(device) if device.startswith("cuda") else None
        handle = self._stream.cuda_stream if self._stream is not None else None
        try:
            self.session = make_session(path, device=device, threads=threads, stream=handle, cache_key=cache_key)
        except BackendUnavailable as exc:
            if requested != "auto":
                raise
            log.warning("ONNX Runtime CUDA is not usable (%s); running %s on the CPU", exc, self.path.name)
            device, self._stream = "cpu", None
            self.session = make_session(path, device="cpu", threads=threads, cache_key=cache_key)
        self.device = device
        self.threads = self.session.get_session_options().intra_op_num_threads
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._input_types = {i.name: _ORT_TYPES.get(i.type, np.float32 if i.name == FEATURES else np.int64)
                             for i in self.session.get_inputs()}
        self.needs_features = FEATURES in self.input_names
        self.precision = precision
        self.limits = limits
        output = self.session.get_outputs()[0]
        self._output_shape, self._output_type = list(output.shape), _ORT_TYPES.get(output.type, np.float32)

    @property
    def description(self) -> str:
        threads = f", {self.threads} threads" if self.device == "cpu" else ""
        return f"onnx ({self.path.name}, {self.precision}, {self.device}{threads})"

    def __call__(self, input_ids: Any, attention_mask: Any, features: Any = None) -> np.ndarray:
        """Logits (batch, 3) as float32 in host memory. Inputs are numpy arrays, or CUDA tensors on this backend's
        GPU (bound in place, no copy)."""
        feeds = feed_arrays(self.input_names, input_ids, attention_mask, features)  # the one tensor spec
        if self._stream is not None:  # pragma: no cover - needs onnxruntime-gpu and a GPU
            return self._run_bound(feeds)
        arrays = {k: np.ascontiguousarray(_host(v), dtype=self._input_types[k])  # as the graph declares
                  for k, v in feeds.items()}
        return np.asarray(self.session.run([LOGITS], arrays)[0], dtype=np.float32)

    def _bound_device(self) -> Any:
        """The torch device buffers live on for IO binding (this backend's GPU)."""
        import torch

        return torch.device("cuda", _device_id(self.device))

    def _run_bound(self, feeds: dict[str, Any]) -> np.ndarray:
        """IO binding on the session's own stream: copy in, run, copy out, one synchronisation.

        Every input is bound in the type the graph declares (an optimum BERT export's ``token_type_ids`` too),
        the output in the graph's output type; inputs that are already tensors on this device are not copied."""
        import torch

        device = self._bound_device()
        out_dtype = getattr(torch, np.dtype(self._output_type).name)  # numpy and torch share these type names
        self._stream.wait_stream(torch.cuda.current_stream(device))  # CUDA tensors handed in are ready first
        with torch.cuda.device(device), torch.cuda.stream(self._stream):
            binding = self.session.io_binding()
            kept = []
            for name, value in feeds.items():
                np_type = self._input_types[name]
                tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
                tensor = tensor.to(device, dtype=getattr(torch, np.dtype(np_type).name),
                                   non_blocking=True).contiguous()
                binding.bind_input(name, device.type, device.index or 0, np_type, tuple(tensor.shape),
                                   tensor.data_ptr())
                kept.append(tensor)
            batch = int(kept[0].shape[0])
            shape = [d if isinstance(d, int) else batch for d in self._output_shape]
            out = torch.empty(shape, dtype=out_dtype, device=device)
            binding.bind_output(LOGITS, device.type, device.index or 0, self._output_type, tuple(shape),
                                out.data_ptr())
            self.session.run_with_iobinding(binding)
            host = out.float().to("cpu", non_blocking=True)
            self._stream.synchronize()
        del kept
        return host.numpy()



def _host(value: Any) -> Any:
    """A CPU array for a numpy array or a torch tensor (the CPU session takes host memory)."""
    return value.cpu().numpy() if hasattr(value, "cpu") else value


# ----------------------------------------------------------------------------------------------- declaration

PRECISIONS = ("fp32", "fp32_fused", "fp16", "int8")
"""What arena-export writes for ONNX Runtime (``--optimize``, ``--fp16``, ``--int8``), each parity-checked."""
EXPORT_FLAG = {"fp32_fused": "--optimize", "fp16": "--fp16", "int8": "--int8"}
CPU_SPEED = {"fp32": 1.0, "int8": 1.28, "fp32_fused": 0.99}
"""Model-only rows/s vs plain fp32, DeBERTa-v3-xsmall at 512 tokens, 2-core AMD EPYC Zen 4 (``benchmarks/RESULTS.md``):
dynamic INT8 1.28x; the fused graph measured 1.01x (within noise), so it ranks after the plain one. FP16 on the CPU
provider is not a speed option (several FP16 kernels run in FP32 there): it runs only when asked for."""
GPU_SPEED = {"fp16": 2.0, "fp32": 1.5, "fp32_fused": 1.5}
"""On a GPU: ranked above torch (1.0) and below a TensorRT engine, as the GPU design orders them; not measured yet."""


def _variants(folder: Any, devices: Sequence[str] = ("auto",)) -> list[Variant]:
    artifacts = folder.onnx_artifacts
    if not artifacts:
        return []
    from arena.machine.gpu import ort_cuda

    cuda_why = None if ort_cuda() else ("ONNX Runtime has no CUDA provider or no GPU is present (pip install "
                                         "'arena-toolkit[gpu]' for onnxruntime-gpu)")
    out = []
    for precision in PRECISIONS:
        entry = artifacts.get(precision)
        why = None if entry is not None else _missing(folder, precision)
        file = entry["file"] if entry else None
        out.append(Variant("onnx", precision, "cpu", file, speed=CPU_SPEED.get(precision, 0.0),
                           checked=precision in CPU_SPEED, default=precision == "fp32", why_not=why,
                           detail=dict(entry or {})))
        if precision in GPU_SPEED:
            out.append(Variant("onnx", precision, "cuda", file, speed=GPU_SPEED[precision],
                               default=precision == ("fp16" if "fp16" in artifacts else "fp32"),
                               why_not=why or cuda_why, detail=dict(entry or {})))
    return out


def _missing(folder: Any, precision: str) -> str:
    if folder.foreign is not None:
        return (f"a foreign ONNX export has one model ({folder.foreign.onnx.name}); derive a {precision} model with "
                f"`arena-export {folder.path} --out DIR {EXPORT_FLAG[precision]}` and score DIR")
    return f"not exported (arena-export {EXPORT_FLAG[precision]})"


def _open(folder: Any, variant: Variant, options: OpenOptions) -> OnnxBackend:
    folder.verify([variant.file])
    label = "as exported" if variant.detail.get("foreign") else variant.precision
    device = options.device if options.device != "auto" else variant.device
    return OnnxBackend(folder.path / variant.file, device=device, threads=options.threads, precision=label,
                       limits=Limits(max_length=folder.max_positions), cache_key=folder.recorded_hash(variant.file))


def _check_request(precision: str, device: str) -> None:
    if device.startswith("cuda"):
        from arena.machine.gpu import ort_cuda

        if not ort_cuda():
            raise ConfigError(f"--device {device}: no CUDA GPU is available to ONNX Runtime on this machine (it "
                              "needs onnxruntime-gpu: pip install 'arena-toolkit[gpu]'); use --device cpu (or auto)")


SPEC = BackendSpec(
    name="onnx", precisions=PRECISIONS, devices=("cpu", "cuda"), reads="export", variants=_variants, open=_open,
    check_request=_check_request,
    absent=lambda folder: f"{folder.path} has no ONNX model; run arena-export first",
    summary="ONNX Runtime: the export's fp32 / fused / INT8 models on CPU, fp32 / FP16 with IO binding on CUDA",
    runtime="onnxruntime",
)
