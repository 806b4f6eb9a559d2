"""Exact values for the metrics every score is reported with, and for the A/B swap TTA combiner.

Fast (numpy only): part of the mutation-testing selection (``make mutation``), so each assertion pins a number a
plausible slip (a sign, an axis, a clip bound, a search bound) would change."""

from __future__ import annotations

import math

import numpy as np
import pytest

from arena.metrics import (
    UNIFORM_LOG_LOSS,
    accuracy,
    baselines,
    class_prior,
    fit_temperature,
    log_loss,
    softmax,
)
from arena.serving.tta import combine_swap


def test_softmax_is_stable_tempered_and_taken_over_the_last_axis():
    np.testing.assert_allclose(softmax(np.array([[0.0, math.log(2), math.log(5)]])), [[1 / 8, 2 / 8, 5 / 8]])
    big = softmax(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.isfinite(big).all() and big[0, 0] == pytest.approx(1.0)
    np.testing.assert_allclose(softmax(np.array([[0.0, 2 * math.log(3)]]), temperature=2.0), [[0.25, 0.75]])
    cube = softmax(np.arange(12.0).reshape(2, 2, 3))
    np.testing.assert_allclose(cube.sum(axis=-1), np.ones((2, 2)))
    np.testing.assert_allclose(cube[1, 1], softmax(np.array([[0.0, 1.0, 2.0]]))[0])
    assert softmax(np.array([[1, 2, 3]], dtype=np.float32)).dtype == np.float64


def test_log_loss_is_kaggles_clipped_renormalised_mean():
    labels = np.array([0, 2])
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    assert log_loss(probs, labels) == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2, rel=1e-12)
    assert log_loss(np.array([[0.4, 0.2, 0.2]]), np.array([0])) == pytest.approx(math.log(2), rel=1e-12)
    assert log_loss(np.array([[0.0, 1.0, 0.0]]), np.array([0])) == pytest.approx(-math.log(1e-15), rel=1e-6)
    assert log_loss(np.eye(3), np.arange(3)) == pytest.approx(-math.log(1 - 1e-15), abs=1e-14)
    assert log_loss(np.full((4, 3), 1 / 3), np.array([0, 1, 2, 1])) == pytest.approx(UNIFORM_LOG_LOSS)
    assert math.isnan(log_loss(np.zeros((0, 3)), np.array([], dtype=np.int64)))
    assert log_loss(probs, np.array([0.0, 2.0])) == log_loss(probs, labels)  # float labels are indices


def test_accuracy_counts_argmax_hits_and_is_nan_without_rows():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.4, 0.5, 0.1]])
    assert accuracy(probs, np.array([0, 2, 0, 1])) == 0.75
    assert math.isnan(accuracy(np.zeros((0, 3)), np.array([])))


def test_class_prior_is_laplace_smoothed_over_every_class():
    np.testing.assert_allclose(class_prior(np.array([0, 0, 1])), [3 / 6, 2 / 6, 1 / 6])
    np.testing.assert_allclose(class_prior(np.array([0, 0])), [3 / 5, 1 / 5, 1 / 5])
    np.testing.assert_allclose(class_prior(np.array([3]), n_classes=4), [1 / 5, 1 / 5, 1 / 5, 2 / 5])
    np.testing.assert_allclose(class_prior(np.array([0.0, 0.0, 1.0])), [3 / 6, 2 / 6, 1 / 6])  # labels read as floats


def test_baselines_are_uniform_and_the_training_prior_scored_on_validation():
    b = baselines(np.array([0, 0, 1]), np.array([0, 1]))
    assert b["uniform_log_loss"] == pytest.approx(math.log(3))
    assert b["prior_log_loss"] == pytest.approx(-(math.log(3 / 6) + math.log(2 / 6)) / 2)


def _grid_best(logits: np.ndarray, labels: np.ndarray) -> float:
    grid = np.exp(np.linspace(math.log(0.05), math.log(20), 801))
    return float(grid[np.argmin([log_loss(softmax(logits, t), labels) for t in grid])])


@pytest.mark.parametrize("scale", [0.4, 1.0, 6.0])
def test_fit_temperature_finds_the_log_loss_minimum(scale):
    """Rows drawn from softmax(z); logits handed over as ``z * scale`` are best at T == scale (up to noise): the
    search must land on the grid minimum, whether it lies below 1, at 1 or far above."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (1500, 3))
    p = softmax(z)
    labels = np.array([rng.choice(3, p=row) for row in p])
    t = fit_temperature(z * scale, labels)
    assert t == pytest.approx(_grid_best(z * scale, labels), rel=6e-3)
    assert t == pytest.approx(scale, rel=0.1)


def test_fit_temperature_stays_within_its_bounds():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 200)
    noise = rng.normal(0, 1, (200, 3))
    assert fit_temperature(noise, labels) == pytest.approx(20.0, rel=1e-3)  # no signal: as flat as allowed
    perfect = np.eye(3)[labels] * 0.5  # every row right: the loss falls all the way down to T = lo
    assert fit_temperature(perfect, labels) == pytest.approx(0.05, rel=1e-3)
    assert fit_temperature(perfect, labels, lo=0.5) == pytest.approx(0.5, rel=1e-3)
    assert fit_temperature(noise, labels, hi=4.0) == pytest.approx(4.0, rel=1e-3)


def test_swap_tta_averages_with_a_and_b_exchanged_back():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4]])
    swapped = np.array([[0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])  # the same rows scored with a and b exchanged
    np.testing.assert_allclose(combine_swap(probs, swapped), [[0.65, 0.15, 0.2], [0.2, 0.4, 0.4]])
