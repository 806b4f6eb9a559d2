"""Machine-local backend caches (``arena.serving.cache``): ONNX Runtime's optimised graph is reused, a damaged entry
is rebuilt, the cache can be switched off, and pruning removes only entries arena made."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from arena.serving.backends.onnx import ORT_CACHE_ENV, OnnxBackend
from arena.serving.cache import MARKER, cache_entry, prune
from arena.serving.folder import read_folder


def _rows(backend):
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, size=(3, 40))
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    features = rng.normal(size=(3, backend.session.get_inputs()[-1].shape[1])).astype(np.float32) \
        if backend.needs_features else None
    return backend(ids, mask, features)


def _entries(root):
    return sorted(root.glob("*/model.optimized.onnx")) if root.exists() else []


@pytest.mark.parametrize("name", ["model.onnx", "model.int8.onnx"])
def test_onnx_runtime_reuses_its_optimised_graph_with_the_same_logits(name, tiny_export, tmp_path, monkeypatch,
                                                                      caplog):
    root = tmp_path / "ort"
    monkeypatch.setenv(ORT_CACHE_ENV, str(root))
    key = read_folder(tiny_export).recorded_hash(name)
    plain = _rows(OnnxBackend(tiny_export / name, device="cpu"))  # no key: never cached
    assert _entries(root) == []
    first = _rows(OnnxBackend(tiny_export / name, device="cpu", cache_key=key))
    (entry,) = _entries(root)
    assert (entry.parent / MARKER).is_file() and not list(entry.parent.glob("*.tmp"))
    with caplog.at_level(logging.INFO, logger="arena.serving.backends.onnx"):
        second = _rows(OnnxBackend(tiny_export / name, device="cpu", cache_key=key))
    assert "from the cache" in caplog.text
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_allclose(second, plain, rtol=0, atol=1e-6)

    entry.write_bytes(b"not a graph")  # damaged: optimised again, the entry replaced, the same numbers
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="arena.serving.backends.onnx"):
        again = _rows(OnnxBackend(tiny_export / name, device="cpu", cache_key=key))
    assert "does not load" in caplog.text and entry.stat().st_size > 1000
    np.testing.assert_allclose(again, plain, rtol=0, atol=1e-6)


def test_onnx_runtime_cache_can_be_switched_off(tiny_export, tmp_path, monkeypatch):
    monkeypatch.setenv(ORT_CACHE_ENV, "off")
    monkeypatch.setenv("ARENA_CACHE_DIR", str(tmp_path / "cache"))
    key = read_folder(tiny_export).recorded_hash("model.onnx")
    OnnxBackend(tiny_export / "model.onnx", device="cpu", cache_key=key)
    assert not (tmp_path / "cache").exists()


def test_pruning_removes_only_entries_arena_made(tmp_path):
    import os
    import time

    root = tmp_path / "cache"
    mine = [cache_entry(root, f"entry{i}", keep=10, what="test") for i in range(4)]
    for i, folder in enumerate(mine):  # oldest first
        os.utime(folder, (time.time() - 100 + i, time.time() - 100 + i))
    theirs = root / "users-own-folder"
    theirs.mkdir()
    (theirs / "precious.txt").write_text("keep me")
    os.utime(theirs, (0, 0))  # older than every entry
    removed = prune(root, keep=2)
    assert sorted(removed) == sorted(mine[:2]) and not mine[0].exists() and mine[3].exists()
    assert (theirs / "precious.txt").read_text() == "keep me"
