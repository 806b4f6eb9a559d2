"""The ensemble combiner and the blend-weight fit, with exact numbers (``make mutation`` runs these)."""

from __future__ import annotations

import numpy as np
import pytest

from arena.errors import ConfigError
from arena.metrics import log_loss, softmax
from arena.serving.ensemble import combine, fit_weights

A = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
B = np.array([[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]])


def test_probs_is_the_weighted_mean_with_weights_normalised():
    np.testing.assert_allclose(combine([A, B]), (A + B) / 2, atol=1e-15)
    np.testing.assert_allclose(combine([A, B], [3.0, 1.0]), 0.75 * A + 0.25 * B, atol=1e-15)
    np.testing.assert_allclose(combine([A, B], [6.0, 2.0]), combine([A, B], [0.75, 0.25]), atol=1e-15)
    np.testing.assert_allclose(combine([A, B], [1.0, 0.0]), A, atol=1e-15)
    assert combine([A.astype(np.float32)]).dtype == np.float64


def test_the_result_is_renormalised_per_row():
    np.testing.assert_allclose(combine([2 * A]), A, atol=1e-15)
    np.testing.assert_allclose(combine([0.5 * A], method="geometric"), A, atol=1e-12)


def test_geometric_is_the_renormalised_weighted_mean_of_log_probabilities():
    expected = np.exp(0.75 * np.log(A) + 0.25 * np.log(B))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(combine([A, B], [3, 1], method="geometric"), expected, atol=1e-12)
    zero = np.array([[1.0, 0.0, 0.0]])  # a member sure of a class: clipped at 1e-12, not log(0)
    out = combine([zero, np.array([[0.0, 1.0, 0.0]])], method="geometric")
    np.testing.assert_allclose(out, np.array([[1e-6, 1e-6, 1e-12]]) / (2e-6 + 1e-12), rtol=1e-9)
    tiny = np.array([[1e-300, 1.0, 1.0]])  # below the clip: the same as 1e-12
    np.testing.assert_allclose(combine([tiny], method="geometric"), [[1e-12 / (2 + 1e-12), 0.5, 0.5]], rtol=1e-9)


@pytest.mark.parametrize("weights, shown", [([1.0], "[1.0]"), ([1.0, -0.5], "[1.0, -0.5]"),
                                            ([0.0, 0.0], "[0.0, 0.0]"), ([1.0, 1.0, 1.0], "[1.0, 1.0, 1.0]")])
def test_bad_weights_are_refused_with_what_was_given(weights, shown):
    with pytest.raises(ConfigError, match=r"--weights needs 2 non-negative numbers with a positive sum; got "
                                          + shown.replace("[", r"\[").replace("]", r"\]")):
        combine([A, B], weights)


def test_bad_methods_and_no_members_are_refused():
    with pytest.raises(ConfigError, match="--combine must be one of probs, geometric; got 'median'"):
        combine([A], method="median")
    with pytest.raises(ValueError, match="^no member probabilities to combine$"):
        combine([])


def _labelled(rng, n=400):
    labels = rng.integers(0, 3, n)
    good = np.full((n, 3), 0.1)
    good[np.arange(n), labels] = 0.8
    noise = rng.dirichlet(np.ones(3), n)
    return good, noise, labels


def _best_on_grid(members, labels, method):
    grid = np.linspace(0, 1, 1001)
    losses = [log_loss(combine(members, [w, 1 - w], method), labels) for w in grid]
    return grid[int(np.argmin(losses))], min(losses)


@pytest.mark.parametrize("method", ["probs", "geometric"])
def test_fit_weights_reach_the_best_blend(method):
    rng = np.random.default_rng(0)
    good, noise, labels = _labelled(rng)
    z = rng.normal(0, 2, (len(labels), 3))  # the truth; each member sees it through its own noise
    truth = np.array([rng.choice(3, p=row) for row in softmax(z)])
    first = softmax(z + rng.normal(0, 1.0, z.shape))
    second = softmax(z + rng.normal(0, 1.5, z.shape))  # noisier: the best blend is in between, nearer the first
    w = fit_weights([first, second], truth, method)
    assert w.shape == (2,) and w.sum() == pytest.approx(1.0) and (w >= 0).all()
    w_best, loss_best = _best_on_grid([first, second], truth, method)
    assert 0.55 < w_best < 0.95
    assert log_loss(combine([first, second], w, method), truth) == pytest.approx(loss_best, abs=1e-5)
    assert w[0] == pytest.approx(w_best, abs=0.01)
    w = fit_weights([noise, good], labels, method)
    assert w[1] > 0.9 and log_loss(combine([noise, good], w, method), labels) < log_loss(
        combine([noise, good], method=method), labels) - 0.1


def test_fit_weights_of_one_member_or_equal_members():
    rng = np.random.default_rng(1)
    good, _, labels = _labelled(rng, 60)
    np.testing.assert_array_equal(fit_weights([good], labels), [1.0])
    np.testing.assert_allclose(fit_weights([good, good, good], labels), [1 / 3] * 3, atol=1e-9)


def test_fit_weights_never_end_worse_than_equal_weights():
    """Steps that overshoot (a huge learning rate) are not kept: the best point seen, equal weights at worst."""
    rng = np.random.default_rng(2)
    good, noise, labels = _labelled(rng, 200)
    w = fit_weights([good, noise], labels, steps=3, lr=1e6)
    equal = log_loss(combine([good, noise]), labels)
    assert log_loss(combine([good, noise], w), labels) <= equal
    w = fit_weights([good, noise], labels, steps=0)
    np.testing.assert_allclose(w, [0.5, 0.5])
    w = fit_weights([good, noise], labels, steps=1, lr=0.5)
    assert 0.5 < w[0] < 1.0  # one small step towards the better member
