"""The tiny models every parity test compares against say something: on the real rows their heads were fitted
on, each class's logit varies from row to row by more than 0.5 (more than 0.3 on rows they never saw) and the
argmax takes at least two classes, each on a tenth of the rows or more. A random tiny model fails this (every
logit within 0.01 of the others, every argmax class 0), and against it all-zero logits or rows in reverse order
pass any parity check."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import INFORMATIVE_ROWS, informative_batch, logit_spread


def logits_of(folder, *, rows=slice(0, INFORMATIVE_ROWS)):
    from arena.serving.backends.torch import TorchBackend

    ids, mask, features = informative_batch(folder, rows=rows.stop)
    backend = TorchBackend(folder, device="cpu", precision="fp32")
    return backend(ids[rows], mask[rows], None if features is None else features[rows])


def assert_informative(logits: np.ndarray, above: float = 0.5) -> None:
    assert logits.shape[1] == 3 and np.isfinite(logits).all()
    assert logits.std() > above and logit_spread(logits) > above, logits.std(axis=0)
    counts = np.bincount(logits.argmax(1), minlength=3)
    assert (counts > 0).sum() >= 2 and np.sort(counts)[-2] >= len(logits) // 10, counts


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "hybrid_checkpoint", "decoder_base", "lora_run"])
def test_each_tiny_model_has_informative_logits_on_real_rows(request, fixture):
    value = request.getfixturevalue(fixture)
    folder = value[0] if isinstance(value, tuple) else value
    assert_informative(logits_of(folder))
    # rows the heads were not fitted on: still spread, less (the hybrid's feature regression: 0.49 there)
    assert_informative(logits_of(folder, rows=slice(INFORMATIVE_ROWS, 2 * INFORMATIVE_ROWS)), above=0.3)


def test_the_tiny_export_keeps_them(tiny_export, tiny_checkpoint):
    """The ONNX graph the CPU backends and the GPU checks compare: same informative logits as its checkpoint."""
    from arena.serving.backends.onnx import OnnxBackend

    ids, mask, _ = informative_batch(tiny_checkpoint)
    assert_informative(OnnxBackend(tiny_export / "model.onnx", device="cpu")(ids, mask))
