"""OpenVINO backend (CPU): the export's graph compiled at fp32 or bf16, or its NNCF static INT8 model.

Each precision reads the file the manifest's ``openvino`` section names for it (``file``, and ``weights`` for an IR;
both checked against the manifest's sha256 first): for fp32/bf16 the same ``model.onnx`` ONNX Runtime runs, except a
DeBERTa-v2/v3 export's ``model.ov.xml``/``.bin``, the IR of its graph with the relative-position gather rewritten,
which OpenVINO runs 1.18x as fast and ONNX Runtime 0.86x as fast (:mod:`arena.export.relpos`); exports made before
that carry it in ``model.onnx`` and load as before. The precision is a compile-time hint
(``INFERENCE_PRECISION_HINT``). On CPUs with AVX-512 BF16 or AMX, bf16 runs the matrix products
natively; elsewhere OpenVINO would emulate it, so this backend refuses bf16 there instead of silently running f32.

Compiling takes seconds; the compiled model is cached on disk (OpenVINO's ``CACHE_DIR``) *outside* the export
folder, under a key derived from the model file's sha256, so the second run loads it in a fraction of the time and
the export's manifest hashes never see a stray file. ``ARENA_OPENVINO_CACHE`` moves the cache; ``off`` disables it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from arena.artifacts import FEATURES, INPUT_SPECS, LOGITS, feed_arrays, numpy_dtype
from arena.errors import BackendUnavailable, ConfigError, ModelError
from arena.serving.backends.contract import BackendSpec, Limits, OpenOptions, Variant

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
CACHE_ENV = "ARENA_OPENVINO_CACHE"
CACHE_KEEP = 4
"""Compiled models kept in the cache (one folder per model file); older ones are removed."""


def openvino_available() -> tuple[bool, str]:
    """Whether OpenVINO can run here, and if not, what to install."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False, "OpenVINO is not installed; pip install 'arena-toolkit[openvino]'"
    return True, ""


def supports_bf16() -> bool:
    """True where OpenVINO's CPU plugin runs bf16 natively (it reports the BF16 capability)."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def default_cache_dir() -> Path | None:
    """``$ARENA_OPENVINO_CACHE`` (``off``/``none``/empty: no cache), else ``openvino`` in arena's cache folder
    (:func:`arena.serving.cache.cache_root`)."""
    from arena.serving.cache import cache_root

    return cache_root("openvino", CACHE_ENV)


def _cache_folder(root: Path | None, key: str) -> Path | None:
    """The cache folder for one model file and precision (``root/<key>``), made and marked as used; None if it
    cannot be. One folder per precision: OpenVINO's own cache key does not include the precision hint. Only the
    :data:`CACHE_KEEP` most recently used are kept (each holds a compiled copy of the weights)."""
    from arena.serving.cache import cache_entry

    return cache_entry(root, key, keep=CACHE_KEEP, what="OpenVINO")


def _blobs(folder: Path | None) -> set[str]:
    """What OpenVINO keeps in a cache folder (not arena's entry marker)."""
    from arena.serving.cache import MARKER

    return {n for n in os.listdir(folder) if n != MARKER} if folder is not None else set()


class OpenVinoBackend:
    """``precision``: ``fp32`` or ``bf16`` for an ONNX file or a float IR (``.xml``), ``int8`` for an NNCF-quantised
    IR, whose unquantised operations run in bf16 where the CPU has it. ``cache_key`` names the compiled-model cache
    entry (the model file's sha256 from the manifest; computed when not given)."""

    name = "openvino"
    device = "cpu"

    def __init__(self, path: str | Path, *, precision: str = "bf16", threads: int | None = None,
                 limits: Limits = Limits(), cache_dir: Path | None | str = "default",
                 cache_key: str | None = None) -> None:
        ok, why = openvino_available()
        if not ok:
            raise BackendUnavailable(why)
        import openvino as ov

        from arena.artifacts import check_onnx_file
        from arena.machine.cpu import allowed_cores

        if precision not in PRECISIONS:
            raise ConfigError(f"--precision for OpenVINO must be one of {', '.join(PRECISIONS)}")
        self.path = Path(path)
        if self.path.suffix == ".onnx":  # external data outside the folder: refused as ONNX Runtime refuses it
            check_onnx_file(self.path)
        elif not self.path.is_file():
            raise ModelError(f"{self.path} does not exist")
        bf16 = supports_bf16()
        if precision == "bf16" and not bf16:
            raise BackendUnavailable("this CPU has no native bf16 (AVX-512 BF16 or AMX); use --precision fp32")
        hint = "bf16" if precision == "bf16" or (precision == "int8" and bf16) else "f32"
        self.precision, self.threads, self.limits = precision, threads or allowed_cores(), limits
        root = default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
        self.cache = _cache_folder(root, f"{(cache_key or _file_key(self.path))[:24]}-{precision}")
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_NUM_THREADS": self.threads}
        if self.cache is not None:
            config["CACHE_DIR"] = str(self.cache)
        before = _blobs(self.cache)
        t0 = time.perf_counter()
        try:
            self.compiled = ov.Core().compile_model(str(self.path), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for unreadable or unsupported graphs
            raise ModelError(f"OpenVINO cannot compile {self.path}: {exc}") from None
        self.compile_s = time.perf_counter() - t0
        self.cache_hit = bool(before) and _blobs(self.cache) == before
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what runs: "bf16" or "f32"
        self.inference_precision = {"f32": "fp32"}.get(ran, ran)
        self.request = self.compiled.create_infer_request()
        # every name of every input: OpenVINO may report a tensor's other name first (a hybrid graph's features
        # input comes back as its Cast's output), and a feed under a name not matched would be silently empty
        self.input_names = set().union(*(i.get_names() for i in self.compiled.inputs))
        self.needs_features = FEATURES in self.input_names
        unfed = [sorted(i.get_names()) for i in self.compiled.inputs
                 if not i.get_names() & {spec.name for spec in INPUT_SPECS}]
        if unfed:
            raise ModelError(f"{self.path} has inputs arena does not feed: {unfed}; export it with arena-export")
        log.info("OpenVINO %s: compiled %s in %.2f s (%s)", precision, self.path.name, self.compile_s,
                 "from the cache" if self.cache_hit else f"cache {self.cache}" if self.cache else "no cache")

    @property
    def description(self) -> str:
        prec = f"int8 + {self.inference_precision}" if self.precision == "int8" else self.precision
        return f"openvino ({self.path.name}, {prec}, cpu, {self.threads} threads)"

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 features: np.ndarray | None = None) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(value, dtype=numpy_dtype(name))  # the one tensor spec
                 for name, value in feed_arrays(self.input_names, input_ids, attention_mask, features).items()}
        result = self.request.infer(feeds, share_inputs=True)
        return np.array(result[LOGITS], dtype=np.float32, copy=True)


def cache_key(file_hashes: list[str]) -> str:
    """The compiled-model cache key of a model from the sha256 of its files (an IR: .xml and .bin)."""
    import hashlib

    return hashlib.sha256("".join(file_hashes).encode()).hexdigest()


def _file_key(path: Path) -> str:
    """:func:`cache_key` of the model file and, for an IR, its weights, hashed here (no manifest to read it from)."""
    from arena.io import sha256_file

    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" and path.with_suffix(".bin").is_file()
                      else [])
    return cache_key([sha256_file(f) for f in files])


# ----------------------------------------------------------------------------------------------- declaration

CPU_SPEED = {"int8": 2.00, "bf16": 1.56, "fp32": 1.01}
"""Model-only rows/s vs ONNX Runtime fp32, DeBERTa-v3-xsmall at 512 tokens, 2-core AMD EPYC Zen 4 with AVX-512
BF16/VNNI (``benchmarks/RESULTS.md``, "The fastest CPU path")."""


def _variants(folder: Any, devices: Sequence[str] = ("auto",)) -> list[Variant]:
    """Every OpenVINO precision of an arena export; only those whose parity check passed at export may run."""
    if folder.manifest is None:
        return []
    import importlib.util

    section = (folder.manifest.get("openvino") or {}).get("precisions") or {}
    installed = importlib.util.find_spec("openvino") is not None
    out = []
    for precision in ("int8", "bf16", "fp32"):
        entry = section.get(precision)
        out.append(Variant("openvino", precision, "cpu", (entry or {}).get("file"), speed=CPU_SPEED[precision],
                           why_not=_why_not(precision, entry, installed), detail=dict(entry or {})))
    return out


def _why_not(precision: str, entry: dict[str, Any] | None, installed: bool) -> str | None:
    reexport = "re-export with arena-export (with OpenVINO installed" + (", --int8-static)" if precision == "int8"
                                                                          else ")")
    if entry is None:
        return "not exported (arena-export --int8-static)" if precision == "int8" else \
            f"no parity record for OpenVINO; {reexport}"
    parity = entry.get("parity") or {}
    if not parity.get("passed"):
        why = "; ".join(parity.get("failures") or []) or entry.get("status", "not checked")
        return f"did not pass its parity check at export ({why}); {reexport}"
    if not installed:
        return "OpenVINO is not installed; pip install 'arena-toolkit[openvino]'"
    if precision == "bf16":
        from arena.machine.cpu import has_native_bf16

        if not has_native_bf16():
            return "this CPU has no native bf16 (AVX-512 BF16 or AMX)"
    return None


def _open(folder: Any, variant: Variant, options: OpenOptions) -> OpenVinoBackend:
    """The files are checked against the manifest's sha256 first, and that hash keys the compiled-model cache."""
    files = [variant.file] + ([variant.detail["weights"]] if "weights" in variant.detail else [])
    folder.verify(files)
    hashes = [folder.recorded_hash(f) for f in files]
    return OpenVinoBackend(folder.path / files[0], precision=variant.precision, threads=options.threads,
                           limits=Limits(max_length=folder.max_positions),
                           cache_key=cache_key(hashes) if all(hashes) else None)


def _check_request(precision: str, device: str) -> None:
    if device not in ("auto", "cpu"):
        raise ConfigError(f"--backend openvino runs on the CPU; --device {device} is for torch, onnx or tensorrt")


SPEC = BackendSpec(
    name="openvino", precisions=PRECISIONS, devices=("cpu",), reads="export", variants=_variants, open=_open,
    check_request=_check_request,
    absent=lambda folder: f"{folder.path} has no arena export for OpenVINO; run arena-export first",
    summary="OpenVINO on the CPU: the export's model.onnx at fp32 / bf16, NNCF static INT8 (--int8-static)",
    runtime="openvino",
)
