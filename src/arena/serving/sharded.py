"""Several devices: one worker process per device, each with its own backend; batches go to whichever worker is
free, and results come back in batch order.

Kaggle scores on 2x T4: ``arena-infer --devices cuda:0,cuda:1``. On a CPU machine ``--devices cpu,cpu`` runs two
processes (each with its share of the cores), which is how the tests exercise this path.

Only the workers load the model: the parent reads the encoder and settings from the folder
(:func:`open_sharded`) and learns the backend's description, limits and inputs from a worker, so ``cuda:0`` holds
one copy of the weights, not two.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from arena.errors import BackendUnavailable

_RUNNER: Any = None


def _init(folder: str, backend: str, precision: str, devices: Any, threads: int | None, attention: str) -> None:
    global _RUNNER
    from arena.serving.loading import open_model

    device = devices.get()
    _RUNNER = open_model(folder, backend=backend, precision=precision, device=device, threads=threads,
                         attention=attention).runner


def _describe() -> dict[str, Any]:
    return {"name": _RUNNER.name, "description": _RUNNER.description,
            "needs_features": bool(getattr(_RUNNER, "needs_features", False)),
            "limits": getattr(_RUNNER, "limits", None), "attention": getattr(_RUNNER, "attention_label", None)}


def _run(ids: np.ndarray, mask: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
    return _RUNNER(ids, mask, features)


class ShardedRunner:
    """A backend made of one process per device, behind the same contract
    (:class:`~arena.serving.backends.contract.ParallelBackend`): :meth:`map` runs many batches in parallel."""

    def __init__(self, folder: str | Path, devices: Sequence[str], *, backend: str = "auto",
                 precision: str = "auto", threads: int | None = None, attention: str = "auto") -> None:
        ctx = mp.get_context("spawn")  # CUDA cannot be forked
        queue = ctx.Manager().Queue()
        for d in devices:
            queue.put(d)
        self.devices = list(devices)
        self.device = devices[0]
        self.pool = ProcessPoolExecutor(len(devices), mp_context=ctx, initializer=_init,
                                        initargs=(str(folder), backend, precision, queue, threads, attention))
        try:
            info = self.pool.submit(_describe).result()
        except BrokenProcessPool:
            self.pool.shutdown(cancel_futures=True)
            raise BackendUnavailable(f"a worker process could not open {folder} on {', '.join(devices)} (its error is "
                                     "printed above)") from None
        self.name: str = info["name"]
        self.needs_features: bool = info["needs_features"]
        self.limits = info["limits"]
        self.attention_label: str | None = info["attention"]
        """The first worker's attention when it opened (``auto`` decides on each worker's first batch)."""
        self.description = f"{info['description']} x {len(devices)} processes on {', '.join(devices)}"

    def map(self, batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> list[np.ndarray]:
        """Run (input_ids, attention_mask, features or None) batches on all devices; results in batch order."""
        return list(self.pool.map(_run, *zip(*batches, strict=True)))

    def __call__(self, ids: np.ndarray, mask: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        return self.pool.submit(_run, ids, mask, features).result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def open_sharded(folder: str | Path, devices: Sequence[str], *, backend: str = "auto", precision: str = "auto",
                 threads: int | None = None, attention: str = "auto") -> Any:
    """A :class:`arena.serving.loading.LoadedModel` whose runner is a :class:`ShardedRunner`: the parent process
    loads the encoder and settings, never the model."""
    import os

    from arena.serving.loading import attach_runner, open_model

    loaded = open_model(folder, backend=backend, precision=precision, load_runner=False, devices=devices,
                        attention=attention)
    if devices[0] == "cpu" and not threads:
        threads = max(1, (os.cpu_count() or 2) // len(devices))
    # the workers open the variant the parent chose, not their own "auto" (a named backend's default differs)
    runner = ShardedRunner(folder, devices, backend=loaded.choice.backend,
                           precision=loaded.choice.options.get("precision", precision), threads=threads,
                           attention=attention)
    return attach_runner(loaded, runner)

