"""SENSORIUM 2022 metrics on hand-made data: single-trial correlation, correlation to average, FEV and FEVE."""

import numpy as np
import pytest

from sensorium_jax.evaluation import metrics

# Two images (ids 5 and 9) × two repeats, three neurons (columns).
IMAGE_IDS = np.array([9, 5, 9, 5])
RESPONSES = np.array(
    [
        # image 9 and image 5, interleaved: neuron 0 is [1, 3] to image 5 and [5, 7] to image 9
        [5.0, 0.0, 4.0],
        [1.0, 1.0, 2.0],
        [7.0, 4.0, 4.0],
        [3.0, 3.0, 2.0],
    ]
)


def test_fev_and_feve_by_hand():
    # neuron 0: noise var = mean(var([1,3]), var([5,7])) = 2 (ddof 1); total var of [1,3,5,7] = 20/3;
    #   FEV = (20/3 − 2)/(20/3) = 0.7. Predicting each image's mean (2, 6): MSE = 1 (mean over trials),
    #   FEVE = 1 − (1 − 2)/(20/3 − 2) = 17/14 (above 1: the MSE is ddof 0, the variances ddof 1, as the reference).
    # neuron 1: images [1, 3] and [0, 4]: noise var = (2 + 8)/2 = 5 > total var 10/3 → FEV = −0.5, left out.
    # neuron 2: no variance across repeats (noise 0), total var 4/3 → FEV = 1; predicting 3 everywhere:
    #   MSE = 1, FEVE = 1 − 1/(4/3) = 0.25.
    predictions = np.array([[6.0, 0.0, 3.0], [2.0, 0.0, 3.0], [6.0, 0.0, 3.0], [2.0, 0.0, 3.0]])
    targets = metrics.split_by_image(RESPONSES, IMAGE_IDS)
    assert [t[:, 0].tolist() for t in targets] == [[1.0, 3.0], [5.0, 7.0]]  # ascending image id, like the reference
    fev, feve = metrics.fev_np(targets, metrics.split_by_image(predictions, IMAGE_IDS))
    np.testing.assert_allclose(fev, [0.7, -0.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(feve[[0, 2]], [17 / 14, 0.25], atol=1e-12)

    selected_feve, selected = metrics.static_feve_np(RESPONSES, predictions, IMAGE_IDS)
    assert selected.tolist() == [True, False, True]  # FEV ≥ 0.15
    np.testing.assert_allclose(selected_feve, [17 / 14, 0.25], atol=1e-12)
    _, strict = metrics.static_feve_np(RESPONSES, predictions, IMAGE_IDS, fev_threshold=0.8)
    assert strict.tolist() == [False, False, True]


def test_feve_uses_only_repeated_images():
    # an image shown once has no across-repeat variance; it must not turn the noise variance into NaN
    responses = np.vstack([RESPONSES, [[100.0, 100.0, 100.0]]])
    predictions = np.vstack([RESPONSES, [[0.0, 0.0, 0.0]]])
    feve, _ = metrics.static_feve_np(responses, predictions, np.append(IMAGE_IDS, 42))
    reference, _ = metrics.static_feve_np(RESPONSES, RESPONSES, IMAGE_IDS)
    np.testing.assert_allclose(feve, reference)
    with pytest.raises(ValueError, match="repeated"):
        metrics.static_feve_np(RESPONSES[:2], RESPONSES[:2], [1, 2])


def test_correlations_by_hand():
    rng = np.random.default_rng(0)
    predictions = RESPONSES + rng.normal(0, 0.5, RESPONSES.shape)
    single = metrics.static_single_trial_correlation_np(RESPONSES, predictions)
    expected = [np.corrcoef(RESPONSES[:, n], predictions[:, n])[0, 1] for n in range(3)]
    np.testing.assert_allclose(single, expected, atol=1e-6)

    # To average: per-image means of responses and predictions, correlated across the images.
    ids = np.array([0, 0, 1, 1, 2, 2])
    responses = np.array([[1.0], [3.0], [2.0], [2.0], [6.0], [4.0]])  # means 2, 2, 5
    guesses = np.array([[0.0], [2.0], [1.0], [3.0], [9.0], [11.0]])  # means 1, 2, 10
    expected = np.corrcoef([2.0, 2.0, 5.0], [1.0, 2.0, 10.0])[0, 1]
    average = metrics.static_correlation_to_average_np(responses, guesses, ids)
    np.testing.assert_allclose(average, [expected], atol=1e-6)
    # trial order does not matter
    order = rng.permutation(6)
    np.testing.assert_allclose(
        metrics.static_correlation_to_average_np(responses[order], guesses[order], ids[order]), average, atol=1e-12
    )
