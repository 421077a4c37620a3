"""Benchmark metrics against numpy and hand-made cases."""

import jax.numpy as jnp
import numpy as np
import pytest

from sensorium_jax.evaluation import metrics


def test_correlation_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 7)), rng.normal(size=(200, 7))
    b[:, 0] = a[:, 0] * 3 + 1
    expected = [np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(7)]
    np.testing.assert_allclose(metrics.correlation_np(a, b, axis=0), expected, atol=1e-6)


def test_hand_made_cases():
    t = np.arange(10.0)
    y = np.stack([t, t, np.ones(10), -t], axis=1)
    p = np.stack([2 * t + 5, np.ones(10), t, t], axis=1)
    corr = metrics.correlation_np(y, p, axis=0)
    # perfect (up to an affine map) → 1; constant prediction or constant neuron → 0 (eps keeps it finite);
    # anti-correlated → −1
    np.testing.assert_allclose(corr, [1.0, 0.0, 0.0, -1.0], atol=1e-6)
    p[3, 0] = np.nan  # a NaN prediction yields NaN, which the benchmark turns into 0 with a warning
    with pytest.warns(RuntimeWarning, match="NaN"):
        corr = metrics.correlation_np(y, p, axis=0)
    assert corr[0] == 0.0


def test_single_trial_alignment_and_burn_in():
    rng = np.random.default_rng(1)
    responses = [rng.normal(size=(3, 80)), rng.normal(size=(3, 70))]
    # predictions cover only the last frames (a model with a 20-frame burn-in)
    predictions = [r[:, 20:] * 2.0 for r in responses]
    np.testing.assert_allclose(metrics.single_trial_correlation_np(responses, predictions), 1.0, atol=1e-6)
    # the first 50 frames do not count: corrupting them changes nothing
    predictions[0][:, :30] = 1e6
    np.testing.assert_allclose(metrics.single_trial_correlation_np(responses, predictions), 1.0, atol=1e-6)
    # by hand: concatenation of frames 50: of every trial
    target = np.concatenate([r[:, 50:] for r in responses], axis=1)
    noisy = [r[:, 20:] + rng.normal(size=r[:, 20:].shape) for r in responses]
    output = np.concatenate([n[:, 30:] for n in noisy], axis=1)
    expected = [np.corrcoef(target[i], output[i])[0, 1] for i in range(3)]
    np.testing.assert_allclose(metrics.single_trial_correlation_np(responses, noisy), expected, atol=1e-6)


def test_prediction_too_short_is_an_error():
    with pytest.raises(ValueError, match="scored"):
        metrics.single_trial_correlation_np([np.zeros((2, 80))], [np.zeros((2, 20))])


def test_repeat_grouping_and_correlation_to_average():
    videos = [np.full((5, 2, 2), v, np.float32) for v in (1, 2, 1, 3, 2, 1)]
    ids = [metrics.video_hash(v) for v in videos]
    assert sorted(map(sorted, metrics.group_repeats(ids))) == [
        [0, 2, 5],
        [1, 4],
    ]  # video 3 shown once: dropped
    rng = np.random.default_rng(2)
    signal = {1: rng.normal(size=(2, 60)), 2: rng.normal(size=(2, 60)), 3: rng.normal(size=(2, 60))}
    order = [1, 2, 1, 3, 2, 1]
    responses = [signal[v] + rng.normal(size=(2, 60)) for v in order]
    predictions = [signal[v] for v in order]
    got = metrics.correlation_to_average_np(responses, predictions, ids)
    avg1 = np.mean([responses[i][:, 50:] for i in (0, 2, 5)], axis=0)
    avg2 = np.mean([responses[i][:, 50:] for i in (1, 4)], axis=0)
    target = np.concatenate([avg1, avg2], axis=1)
    output = np.concatenate([signal[1][:, 50:], signal[2][:, 50:]], axis=1)
    np.testing.assert_allclose(got, [np.corrcoef(target[i], output[i])[0, 1] for i in range(2)], atol=1e-6)


def test_jitted_kernel_matches_numpy_with_masks():
    rng = np.random.default_rng(3)
    target = rng.normal(size=(4, 30, 6)).astype(np.float32)
    prediction = (target + rng.normal(size=target.shape)).astype(np.float32)
    lengths = np.array([30, 25, 18, 0])
    mask = np.arange(30)[None, :] < lengths[:, None]
    mask[:, :5] = False
    target[:, :, 5] = 0.0  # a padded neuron
    got = np.asarray(metrics.masked_correlation(jnp.asarray(target), jnp.asarray(prediction), jnp.asarray(mask)))
    keep = mask.reshape(-1)
    expected = metrics.correlation_np(target.reshape(-1, 6)[keep], prediction.reshape(-1, 6)[keep], axis=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got[5] == 0.0
