"""Several devices: one worker process per device, each with its own backend; batches go to whichever worker is
free, and results come back in batch order.

Kaggle scores on 2x T4: ``arena-infer --devices cuda:0,cuda:1``. On a CPU machine ``--devices cpu,cpu`` runs two
processes (each with its share of the cores), which is how the tests exercise this path.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

_RUNNER: Any = None


def _init(folder: str, backend: str, precision: str, devices: Any, threads: int | None) -> None:
    global _RUNNER
    from arena.infer.loading import open_model

    device = devices.get()
    _RUNNER = open_model(folder, backend=backend, precision=precision, device=device, threads=threads).runner


def _run(ids: np.ndarray, mask: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
    return _RUNNER(ids, mask, features)


class ShardedRunner:
    """A backend made of one process per device; :meth:`map` runs many batches in parallel."""

    def __init__(self, folder: str | Path, devices: Sequence[str], *, backend: str = "auto",
                 precision: str = "auto", threads: int | None = None) -> None:
        ctx = mp.get_context("spawn")  # CUDA cannot be forked
        queue = ctx.Manager().Queue()
        for d in devices:
            queue.put(d)
        self.devices = list(devices)
        self.device = devices[0]
        self.pool = ProcessPoolExecutor(len(devices), mp_context=ctx, initializer=_init,
                                        initargs=(str(folder), backend, precision, queue, threads))

    def map(self, batches: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> list[np.ndarray]:
        """Run (input_ids, attention_mask, features or None) batches on all devices; results in batch order."""
        return list(self.pool.map(_run, *zip(*batches, strict=True)))

    def __call__(self, ids: np.ndarray, mask: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        return self.pool.submit(_run, ids, mask, features).result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)

