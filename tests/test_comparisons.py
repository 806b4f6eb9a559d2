"""Every check that compares logits rejects wrong ones: the export's parity gate (at the fp32, fp16 = TensorRT
engine, bf16 and INT8 limits the CLI applies by default) and the tests' :func:`assert_logits_close`, against the
tiny checkpoint's logits on real rows. Wrong: all zeros, rows in reverse order, rows shifted by one, A and B
swapped, a constant offset on one class. Right: the reference plus noise of the size the precision makes.

Against the old random fixture (every logit within 0.01 of the others, every argmax class 0), all-zero logits and
reversed rows passed the FP16 and INT8 gates and the tests' old ``_assert_close``."""

from __future__ import annotations

import inspect
from dataclasses import replace

import numpy as np
import pytest

from arena.data import read_train
from arena.errors import ParityError
from arena.export.parity import ParityBatch, ParityGate, Tolerance
from tests.conftest import INFORMATIVE_ROWS, TRAIN_CSV, assert_logits_close, informative_batch, logit_spread

WRONG = {
    "all zeros": np.zeros_like,
    "rows reversed": lambda z: z[::-1],
    "rows shifted by one": lambda z: np.roll(z, 1, axis=0),
    "A and B swapped": lambda z: z[:, [1, 0, 2]],
    "offset on the tie class": lambda z: z + np.array([0.0, 0.0, 0.5 * logit_spread(z)]),
}


def fp16_noise(z: np.ndarray, seed: int = 0) -> np.ndarray:
    """What an FP16 graph does to fp32 logits: every value rounded to FP16, plus accumulated error of 0.2% of the
    logits' spread (a tenth of what the tests allow)."""
    rng = np.random.default_rng(seed)
    return z.astype(np.float16).astype(np.float64) + rng.normal(0, 2e-3 * logit_spread(z), z.shape)


def fp32_noise(z: np.ndarray, seed: int = 0) -> np.ndarray:
    """An fp32 ONNX graph against PyTorch fp32: kernels summing in another order, about 1e-6."""
    return z + np.random.default_rng(seed).normal(0, 1e-6, z.shape)


def export_tolerances() -> dict[str, tuple[Tolerance, object]]:
    """The gate's limits as ``arena-export`` applies them with its default options, each with the noise its
    precision is allowed. ``fp16`` is also the TensorRT engine's check (``--trt`` builds from the FP16 graph)."""
    from arena.export.cli import run_export

    defaults = {k: p.default for k, p in inspect.signature(run_export).parameters.items()}
    agreement = defaults["min_agreement"]
    return {
        "fp32": (replace(Tolerance.fp32(), max_logit_diff=defaults["fp32_tol"]), fp32_noise),
        "fp16 / tensorrt": (replace(Tolerance.fp16(), max_prob_diff=defaults["fp16_prob_tol"],
                                    min_argmax_agreement=agreement), fp16_noise),
        "bf16": (Tolerance.bf16(), fp16_noise),
        "int8": (replace(Tolerance.int8(), max_prob_diff=defaults["int8_prob_tol"], min_argmax_agreement=agreement),
                 fp16_noise),
    }


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """The tiny checkpoint on real labelled rows: (gate over one batch of them, the reference logits)."""
    from arena.serving.backends.torch import TorchBackend

    ids, mask, _ = informative_batch(tiny_checkpoint)
    labels = np.array([r.label for r in read_train(TRAIN_CSV)[:INFORMATIVE_ROWS]])
    backend = TorchBackend(tiny_checkpoint, device="cpu", precision="fp32")
    gate = ParityGate(lambda i, m, f: backend(i, m), [ParityBatch(ids, mask, labels)])
    return gate, np.asarray(backend(ids, mask), dtype=np.float64)


def corrupted(logits: np.ndarray, change):
    """A candidate runner that returns ``change(logits)`` whatever it is given (the batch is the gate's one)."""
    return lambda ids, mask, features: change(logits)


def test_the_reference_is_informative(reference):
    _, logits = reference
    assert logit_spread(logits) > 0.5 and len(set(logits.argmax(1).tolist())) >= 2


@pytest.mark.parametrize("wrong", list(WRONG))
@pytest.mark.parametrize("precision", ["fp32", "fp16 / tensorrt", "bf16", "int8"])
def test_the_export_parity_gate_rejects_wrong_logits(reference, precision, wrong):
    gate, logits = reference
    tolerance, _ = export_tolerances()[precision]
    report = gate.compare(precision, corrupted(logits, WRONG[wrong]), tolerance)
    assert not report.passed and report.failures
    with pytest.raises(ParityError, match="parity check failed, nothing was kept"):
        gate.check(precision, corrupted(logits, WRONG[wrong]), tolerance)


@pytest.mark.parametrize("precision", ["fp32", "fp16 / tensorrt", "bf16", "int8"])
def test_the_export_parity_gate_accepts_its_precisions_noise(reference, precision):
    gate, logits = reference
    tolerance, noise = export_tolerances()[precision]
    for seed in range(3):
        report = gate.compare(precision, corrupted(logits, lambda z, s=seed: noise(z, s)), tolerance)
        assert report.passed, report.failures
    assert gate.check(precision, corrupted(logits, noise), tolerance)["passed"]


@pytest.mark.parametrize("wrong", list(WRONG))
@pytest.mark.parametrize("rel", [0.05, 0.1, 0.2])
def test_assert_logits_close_rejects_wrong_logits(reference, rel, wrong):
    _, logits = reference
    with pytest.raises(AssertionError, match="max |logit diff|"):
        assert_logits_close(logits, WRONG[wrong](logits), rel=rel)


@pytest.mark.parametrize("rel", [0.05, 0.1, 0.2])
def test_assert_logits_close_accepts_fp16_noise(reference, rel):
    _, logits = reference
    for seed in range(3):
        assert_logits_close(logits, fp16_noise(logits, seed), rel=rel)


def test_assert_logits_close_refuses_an_uninformative_reference(reference):
    """The check a near-constant random model made possible: against it, zeros pass any absolute tolerance."""
    _, logits = reference
    flat = np.full_like(logits, 1 / 3) + 1e-3 * logits
    with pytest.raises(AssertionError, match="uninformative"):
        assert_logits_close(flat, np.zeros_like(flat), rel=0.05)
    with pytest.raises(AssertionError, match="shape"):
        assert_logits_close(logits, logits[:-1], rel=0.05)
    with pytest.raises(AssertionError, match="non-finite"):
        assert_logits_close(logits, np.where(np.eye(*logits.shape) > 0, np.nan, logits), rel=0.05)
