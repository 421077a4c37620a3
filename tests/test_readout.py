"""The Gaussian readout: bilinear sampling exactly like torch's grid_sample(align_corners=True, zeros)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sensorium_jax.models.readouts import gaussian
from sensorium_jax.models.readouts.gaussian import (
    GaussianReadouts,
    bilinear_sample,
    normalise_positions,
    sample_and_project,
)


def grid_sample_reference(features, grid):
    """A direct, loop-based transcription of grid_sample's definition (bilinear, zeros, align_corners=True)."""
    h, w, c = features.shape
    out = np.zeros((len(grid), c))
    for n, (gx, gy) in enumerate(grid):
        x, y = (gx + 1) / 2 * (w - 1), (gy + 1) / 2 * (h - 1)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        for xi in (x0, x0 + 1):
            for yi in (y0, y0 + 1):
                if 0 <= xi < w and 0 <= yi < h:
                    out[n] += (1 - abs(x - xi)) * (1 - abs(y - yi)) * features[yi, xi]
    return out


def test_bilinear_at_hand_computed_points():
    features = np.arange(3 * 4, dtype=np.float32).reshape(3, 4, 1)  # value = 4·row + col
    grid = np.array(
        [
            [-1.0, -1.0],  # top-left pixel centre → 0
            [1.0, 1.0],  # bottom-right → 11
            [0.0, 0.0],  # x = 1.5, y = 1 → 5.5
            [-1.0 + 2 / 3 * 0.5, -1.0],  # x = 0.5, y = 0 → 0.5
            [1.0 + 2 / 3 * 0.5, 0.0],  # x = 3.5, half outside on the right: 0.5·7 + 0.5·0 = 3.5
            [0.0, 1.0 + 1.0],  # y = 3: one row below the map → 0
        ],
        np.float32,
    )
    got = np.asarray(bilinear_sample(jnp.asarray(features), jnp.asarray(grid)))[:, 0]
    np.testing.assert_allclose(got, [0.0, 11.0, 5.5, 0.5, 3.5, 0.0], atol=1e-5)


def test_bilinear_matches_reference_everywhere_including_borders():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(7, 11, 3)).astype(np.float32)
    grid = rng.uniform(-1.3, 1.3, size=(200, 2)).astype(np.float32)
    got = np.asarray(bilinear_sample(jnp.asarray(features), jnp.asarray(grid)))
    np.testing.assert_allclose(got, grid_sample_reference(features, grid), atol=1e-5)


def test_positions_normalised_like_prepare_grid():
    coords = np.array([[0.0, 10.0, 5.0], [20.0, -30.0, 1.0], [40.0, 20.0, 2.0]])
    xy = coords[:, :2] - coords[:, :2].mean(0)
    np.testing.assert_allclose(normalise_positions(coords), xy / np.abs(xy).max(), atol=1e-6)


def test_stacked_readouts_match_per_mouse_reference():
    rng = np.random.default_rng(1)
    coords = [rng.uniform(-300, 300, (5, 3)), rng.uniform(-300, 300, (8, 3))]
    readouts = GaussianReadouts(coords, in_channels=4, mean_responses=[np.ones(5), 2 * np.ones(8)], rngs=nnx.Rngs(0))
    assert readouts.features.shape == (2, 4, 8) and np.allclose(readouts.features[...], 0.25)
    np.testing.assert_array_equal(readouts.neuron_mask[...], [[1] * 5 + [0] * 3, [1] * 8])
    np.testing.assert_allclose(readouts.bias[...][1], 2.0)
    features = rng.normal(size=(2, 6, 9, 13, 4)).astype(np.float32)
    shift = rng.uniform(-0.2, 0.2, (2, 6, 2)).astype(np.float32)
    out = np.asarray(readouts(jnp.asarray(features), jnp.asarray(shift), None))
    assert out.shape == (2, 6, 8)
    for m, n in enumerate((5, 8)):
        p = {k: np.asarray(getattr(readouts, k)[...][m]) for k in ("grid_w1", "grid_b1", "grid_w2", "grid_b2")}
        pos = normalise_positions(coords[m])
        hidden = pos @ p["grid_w1"] + p["grid_b1"]
        mu = np.tanh(np.where(hidden > 0, hidden, np.expm1(hidden)) @ p["grid_w2"] + p["grid_b2"])
        for s in range(6):
            sampled = grid_sample_reference(features[m, s], mu + shift[m, s])
            expected = sampled @ np.asarray(readouts.features[...][m])[:, :n] + np.asarray(readouts.bias[...][m][:n])
            np.testing.assert_allclose(out[m, s, :n], np.diagonal(expected), rtol=1e-4, atol=1e-5)
    # one mouse by a traced index equals its slice of the stacked call (without a shift)
    one = jax.jit(lambda f: readouts.one_mouse(jnp.int32(1), f, None))(jnp.asarray(features[1]))
    both = readouts(jnp.asarray(features), None, None)
    np.testing.assert_allclose(np.asarray(one), np.asarray(both[1]), atol=1e-6)


def test_training_samples_positions_and_clips_to_the_image():
    coords = [np.random.default_rng(2).uniform(-300, 300, (50, 3))]
    readouts = GaussianReadouts(coords, in_channels=2, init_sigma=1.0, rngs=nnx.Rngs(0))
    features = jnp.ones((1, 4, 5, 5, 2))
    mean = readouts(features, None, None)
    sampled = readouts(features, None, jax.random.key(0))
    # constant features: any position inside the map reads the same value, so sampling changes nothing …
    np.testing.assert_allclose(np.asarray(sampled), np.asarray(mean), atol=1e-5)
    # … because sampled positions are clipped to [−1, 1] (never into the zero padding)
    readouts.sigma[...] = jnp.full_like(readouts.sigma[...], 50.0)
    far = readouts(features, None, jax.random.key(1))
    np.testing.assert_allclose(np.asarray(far), np.asarray(mean), atol=1e-5)


def test_free_positions_without_grid_predictor():
    coords = [np.zeros((4, 3)), np.zeros((3, 3))]
    readouts = GaussianReadouts(coords, in_channels=1, grid_mean_predictor=False, init_mu_range=0.3, rngs=nnx.Rngs(0))
    mu = np.asarray(readouts.mu[...])
    assert mu.shape == (2, 4, 2) and np.abs(mu).max() <= 0.3
    readouts.mu[...] = jnp.asarray(np.array([[[0.0, 0.0], [1.0, 1.0], [-1.0, 1.0], [2.0, 0.0]]] * 2, np.float32))
    features = jnp.asarray(np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3, 1).repeat(2, axis=0))
    readouts.features[...] = jnp.ones_like(readouts.features[...])
    readouts.bias[...] = jnp.zeros_like(readouts.bias[...])
    out = np.asarray(readouts(features, None, None))[0, 0]
    np.testing.assert_allclose(out, [4.0, 8.0, 6.0, 5.0], atol=1e-5)  # centre, corners; x = 2 is clipped to 1


def test_gain_modulator_starts_at_one_and_matches_a_hand_computed_mlp():
    from sensorium_jax.models.readouts.modulator import GainModulators

    modulators = GainModulators(2, 3, in_features=2, hidden=4, rngs=nnx.Rngs(0))
    states = jax.random.normal(jax.random.key(1), (2, 5, 2))
    np.testing.assert_allclose(np.asarray(modulators(states)), 1.0)  # zero last layer: the plain readout at init

    w2 = np.asarray(jax.random.normal(jax.random.key(2), (2, 4, 3)))
    b2 = np.asarray(jax.random.normal(jax.random.key(3), (2, 3)))
    modulators.w2[...] = jnp.asarray(w2)
    modulators.b2[...] = jnp.asarray(b2)
    w1, b1, x = np.asarray(modulators.w1[...]), np.asarray(modulators.b1[...]), np.asarray(states)
    for mouse in range(2):
        pre = x[mouse] @ w1[mouse] + b1[mouse]
        hidden = np.where(pre > 0, pre, np.expm1(pre))
        expected = np.exp(hidden @ w2[mouse] + b2[mouse])
        np.testing.assert_allclose(np.asarray(modulators(states))[mouse], expected, rtol=1e-5)
        np.testing.assert_allclose(
            np.asarray(modulators.one_mouse(jnp.asarray(mouse), states[mouse])), expected, rtol=1e-5
        )


@pytest.mark.parametrize("gather_bytes", [2**26, 300])  # all 3 samples in one chunk / chunks of 2, one padded
def test_fused_sample_and_project_matches_autodiff_of_the_plain_form(gather_bytes, monkeypatch):
    # The hand-written VJP against automatic differentiation of "sample every channel, then dot": values and all
    # three gradients, with positions inside, on the border and off the map (corners outside contribute zero).
    monkeypatch.setattr(gaussian, "_GATHER_CHUNK_BYTES", gather_bytes)
    rng = np.random.default_rng(3)
    features = jnp.asarray(rng.normal(size=(3, 5, 7, 4)), jnp.float32)
    grid = jnp.asarray(rng.uniform(-1.2, 1.2, size=(3, 9, 2)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
    probe = jnp.asarray(rng.normal(size=(3, 9)), jnp.float32)

    def plain(f, g, w):
        return jnp.einsum("snc,cn->sn", jax.vmap(bilinear_sample)(f, g), w)

    def loss(fn):
        return lambda f, g, w: jnp.sum(jnp.sin(fn(f, g, w)) * probe)

    np.testing.assert_allclose(sample_and_project(features, grid, weights), plain(features, grid, weights), atol=1e-5)
    want = jax.grad(loss(plain), argnums=(0, 1, 2))(features, grid, weights)
    got = jax.jit(jax.grad(loss(sample_and_project), argnums=(0, 1, 2)))(features, grid, weights)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=1e-4)
