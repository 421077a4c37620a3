"""Readout positions started at receptive fields estimated from the data (data/rf_estimate.py)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from scipy import ndimage

from experiments.configs import factorized, viv1t
from sensorium_jax.data import rf_estimate
from sensorium_jax.models.cores.factorized import Factorized3dCore
from sensorium_jax.models.cores.viv1t import ViV1TCore
from sensorium_jax.models.layers import window_centres
from sensorium_jax.models.model import MiceInfo, VideoModel
from sensorium_jax.models.readouts.gaussian import pixels_to_grid
from sensorium_jax.training import step as steps


def _gabor(size, centre, period, theta, phase=0.0):
    yy, xx = np.mgrid[: size[0], : size[1]].astype(np.float64)
    dx, dy = xx - centre[0], yy - centre[1]
    sigma = 0.4 * period
    envelope = np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    return envelope * np.cos(2 * np.pi * (dx * np.cos(theta) + dy * np.sin(theta)) / period + phase)


class GaborNeuronSession:
    """A Session stand-in: spatially correlated noise frames and V1-like neurons with known centres, two frames
    late, plus noise. Even neurons are simple cells (a rectified Gabor filter), odd ones complex cells (the energy
    of a quadrature pair); their periods and orientations lie between the estimator's channels."""

    def __init__(self, centres: np.ndarray, trials: int = 4, frames: int = 300, size=(24, 40), seed: int = 0):
        rng = np.random.default_rng(seed)
        self.path, self.name, self.centres = "fake-session", "fake", centres
        noise = rng.normal(size=(trials, frames, *size))
        self.videos = ndimage.gaussian_filter(noise, (0, 0, 1.0, 1.0)).astype(np.float32)
        self.responses = []
        neuron = np.arange(len(centres))
        self.periods, self.orientations, self.simple = 8.0 + 2 * (neuron % 3), 0.35 + 0.9 * neuron, neuron % 2 == 0
        filters = [
            (_gabor(size, c, period, theta), _gabor(size, c, period, theta, np.pi / 2))
            for c, period, theta in zip(centres, self.periods, self.orientations, strict=True)
        ]
        for video in self.videos:
            even = np.stack([np.einsum("thw,hw->t", video, f[0]) for f in filters], axis=1)
            odd = np.stack([np.einsum("thw,hw->t", video, f[1]) for f in filters], axis=1)
            drive = np.where(self.simple, np.maximum(even, 0.0), np.sqrt(even**2 + odd**2))
            drive = np.concatenate([drive[:1], drive[:1], drive[:-2]])  # two frames late
            self.responses.append((drive + 0.5 * drive.std(0) * rng.normal(size=drive.shape)).astype(np.float32))

    def trials(self, tier: str) -> np.ndarray:
        return np.arange(len(self.videos)) if tier == "train" else np.arange(0)

    def load(self, trial: int) -> dict:
        return {"videos": self.videos[trial], "responses": self.responses[trial]}


def test_gabor_channels_find_the_receptive_field_centres():
    centres = np.array([[8.0, 6.0], [30.0, 16.0], [20.5, 12.5], [12.0, 17.0], [29.0, 7.5], [17.3, 9.1]])
    session = GaborNeuronSession(centres)
    estimate = rf_estimate.estimate_receptive_fields(session)
    assert estimate.image_size == (24, 40)
    assert estimate.frames == 4 * (300 - max(rf_estimate.LAGS))
    errors = np.hypot(*(estimate.centres - centres).T)
    assert errors.max() < 1.5 and np.median(errors) < 0.8
    assert np.all(np.abs((estimate.centres - centres).mean(axis=0)) < 0.3)  # no shift from the coarse grid
    assert np.all(estimate.peak_correlation > 0.2)
    # Simple cells (even neurons) are found by a linear quadrature-amplitude map (odd channel numbers), complex
    # cells by an energy map, and each neuron's map is the bank's channel nearest its orientation and period.
    np.testing.assert_array_equal(estimate.channel % 2, session.simple)
    gabor = estimate.channel // 2
    orientation = 180 * (gabor % rf_estimate.ORIENTATIONS) / rf_estimate.ORIENTATIONS
    true_orientation = np.degrees(session.orientations) % 180
    assert np.all(np.abs((orientation - true_orientation + 90) % 180 - 90) <= 90 / rf_estimate.ORIENTATIONS + 1)
    periods = np.asarray(rf_estimate.PERIODS_PX)
    nearest = periods[np.abs(periods[None] - session.periods[:, None]).argmin(1)]
    np.testing.assert_array_equal(periods[gabor // rf_estimate.ORIENTATIONS], nearest)


def test_estimate_stops_at_max_frames():
    estimate = rf_estimate.estimate_receptive_fields(GaborNeuronSession(np.array([[20.0, 12.0]])), max_frames=1000)
    assert estimate.frames == 1000  # the fourth trial is cut to fill up exactly 1,000 lag-aligned frames


def test_gabor_responses_are_the_even_and_odd_filter_outputs():
    """The FFT route equals direct convolution with edge-replicated borders, channel by channel."""
    video = np.random.default_rng(1).normal(size=(3, 12, 20)).astype(np.float32)
    kernels = rf_estimate.gabor_bank((4.0, 6.0), 3, 0.4)
    assert len(kernels) == 6
    responses = rf_estimate.gabor_responses(video, kernels)
    for c, kernel in enumerate(kernels):
        even = ndimage.convolve(video, kernel.real[None], mode="nearest")
        odd = ndimage.convolve(video, kernel.imag[None], mode="nearest")
        np.testing.assert_allclose(responses[c].real, even, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(responses[c].imag, odd, rtol=1e-4, atol=1e-4)


def test_gabor_bank_by_hand():
    kernels = rf_estimate.gabor_bank((8.0,), 2, 0.5)  # σ 4 px → radius 12; orientations 0° and 90°
    assert [k.shape for k in kernels] == [(25, 25), (25, 25)]
    for kernel in kernels:
        assert abs(kernel.real.sum()) < 1e-5  # the even part ignores mean luminance
        np.testing.assert_allclose([np.linalg.norm(kernel.real), np.linalg.norm(kernel.imag)], 1.0, rtol=1e-5)
    # 0°: the wave vector points along x, so the even part is even and the odd part odd in x; 90° is the transpose.
    np.testing.assert_allclose(kernels[0].real, kernels[0].real[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(kernels[0].imag, -kernels[0].imag[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(kernels[0].real, kernels[0].real[::-1], atol=1e-6)  # and both even in y
    np.testing.assert_allclose(kernels[1], kernels[0].T, atol=1e-6)


def test_estimate_needs_training_frames():
    session = GaborNeuronSession(np.array([[5.0, 5.0]]))
    with pytest.raises(ValueError, match="fake-session: no 'oracle' trials"):
        rf_estimate.estimate_receptive_fields(session, tier="oracle")


def test_window_centres_by_hand():
    np.testing.assert_allclose(window_centres(np.arange(10.0), 3), np.arange(1.0, 9.0))
    np.testing.assert_allclose(window_centres(np.arange(36.0), 9, 2), 4.0 + 2.0 * np.arange(14))
    with pytest.raises(ValueError, match="shorter than the kernel"):
        window_centres(np.arange(4.0), 5)


@pytest.mark.parametrize(
    "padding, input_padding",
    [(("valid", "valid", "valid"), 0), (("valid", "same", "same"), 0), (("valid", "valid", "valid"), 3)],
)
def test_factorized_feature_pixels_are_where_each_output_cell_looks(padding, input_padding):
    """The centre of the input region that reaches an output cell (the nonzero gradient's bounding box) is the
    pixel ``feature_pixels`` names, for strided, unpadded and padded layers and a padded stimulus."""
    core = Factorized3dCore(
        image_channels=1,
        constant_channels=0,
        hidden_channels=(2, 2, 2),
        spatial_kernels=(5, 3, 3),
        temporal_kernels=(1, 1, 1),
        spatial_strides=(2, 1, 1),
        spatial_padding=padding,
        input_padding=input_padding,
        rngs=nnx.Rngs(0),
    )
    rows, cols = core.feature_pixels((20, 27))
    video = jnp.ones((1, 1, 20, 27))
    out_shape = core(video, None, train=False).shape
    assert (len(rows), len(cols)) == out_shape[2:4]
    cells = [(len(rows) // 2, len(cols) // 2)]
    if padding[1] == "valid" and not input_padding:  # with padding, regions near the edges leave the image
        cells += [(0, 0), (len(rows) - 1, len(cols) - 1)]
    for i, j in cells:
        grad = jax.grad(lambda v, i=i, j=j: core(v, None, train=False)[0, 0, i, j].sum())(video)[0, 0]
        ys, xs = np.nonzero(np.abs(np.asarray(grad)) > 0)
        assert (ys.min() + ys.max()) / 2 == rows[i] and (xs.min() + xs.max()) / 2 == cols[j]


def test_viv1t_feature_pixels_are_patch_centres():
    core = ViV1TCore(
        constant_channels=0,
        image_size=(36, 64),
        max_frames=4,
        embed_dim=8,
        spatial_patch=7,
        spatial_stride=4,
        temporal_patch=1,
        spatial_depth=0,
        temporal_depth=0,
        num_heads=1,
        head_dim=4,
        ff_dim=4,
        rngs=nnx.Rngs(0),
    )
    rows, cols = core.feature_pixels((36, 64))
    np.testing.assert_allclose(rows, 3.0 + 4.0 * np.arange(8))  # patches [0, 7), [4, 11), …: centres 3, 7, …
    np.testing.assert_allclose(cols, 3.0 + 4.0 * np.arange(15))


def test_pixels_to_grid_by_hand():
    rows, cols = np.array([2.0, 4.0, 6.0]), np.array([10.0, 20.0, 30.0])
    grid = pixels_to_grid(np.array([[10.0, 2.0], [20.0, 4.0], [25.0, 6.0], [40.0, 0.0]]), rows, cols)
    np.testing.assert_allclose(grid, [[-1.0, -1.0], [0.0, 0.0], [0.5, 1.0], [1.0, -1.0]])  # the last one clipped


def cpu_model_config(kind: str, **readout) -> ml_collections.ConfigDict:
    config = factorized.get_config("cpu").model
    config.readout.init_positions = kind
    config.readout.update(readout)
    return config


def mice_with_estimates(estimates: bool) -> MiceInfo:
    rng = np.random.default_rng(0)
    counts = (5, 3)
    return MiceInfo(
        names=("a", "b"),
        coordinates=tuple(rng.normal(size=(n, 3)).astype(np.float32) for n in counts),
        mean_responses=tuple(np.ones(n, np.float32) for n in counts),
        rf_centres=tuple(rng.uniform(10, 30, (n, 2)).astype(np.float32) for n in counts) if estimates else None,
        image_size=(36, 64) if estimates else None,
    )


def test_model_starts_its_positions_at_the_estimates():
    mice = mice_with_estimates(True)
    model = VideoModel(cpu_model_config("receptive_fields"), mice, rngs=nnx.Rngs(0))
    rows, cols = model.core.feature_pixels((36, 64))
    positions = np.asarray(model.readouts.mean_positions())
    for m, centres in enumerate(mice.rf_centres):
        np.testing.assert_allclose(positions[m, : len(centres)], pixels_to_grid(centres, rows, cols), atol=1e-6)
    random = np.asarray(VideoModel(cpu_model_config("random"), mice, rngs=nnx.Rngs(0)).readouts.mean_positions())
    assert not np.allclose(random[0, :5], positions[0, :5])
    # rebuilt to restore a checkpoint (no estimates): the random init, no error
    VideoModel(cpu_model_config("receptive_fields"), mice_with_estimates(False), rngs=nnx.Rngs(0))


def test_bad_position_settings_are_named():
    mice = mice_with_estimates(True)
    with pytest.raises(ValueError, match="one of 'random', 'receptive_fields'"):
        VideoModel(cpu_model_config("centre"), mice, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"needs readout\.grid_mean_predictor=False"):
        VideoModel(cpu_model_config("receptive_fields", grid_mean_predictor=True), mice, rngs=nnx.Rngs(0))
    gru = viv1t.get_config("cpu").model
    gru.core = ml_collections.ConfigDict(dict(name="gru", hidden_channels=2, layers=1, gru_channels=2))
    gru.readout.init_positions = "receptive_fields"
    with pytest.raises(ValueError, match="GRUCore core does not say where its feature map lies"):
        VideoModel(gru, mice, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("decay_positions", [True, False])
def test_weight_decay_can_spare_the_readout_positions(decay_positions):
    """One AdamW step with zero gradients is pure decoupled weight decay: ``p ← p − lr · wd · p``. With
    ``decay_positions=False`` the positions keep their values and everything else still decays."""
    model = VideoModel(cpu_model_config("random"), mice_with_estimates(False), rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    optim = factorized.get_config("cpu").optim
    optim.decay_positions = decay_positions
    tx = steps.make_optimizer(optim, params)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    shrink = 1.0 - optim.lr * optim.weight_decay
    mu, features = params["readouts"]["mu"][...], params["readouts"]["features"][...]
    expected_mu = mu * (shrink if decay_positions else 1.0)
    np.testing.assert_allclose(np.asarray(new["readouts"]["mu"][...]), np.asarray(expected_mu), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new["readouts"]["features"][...]), np.asarray(features * shrink), rtol=1e-6)


def test_positions_can_have_their_own_learning_rate():
    """Adam's first step moves every parameter with a nonzero gradient by its lr (times the gradient's sign): the
    positions by ``position_lr``, the other readout parameters by ``lr``."""
    model = VideoModel(cpu_model_config("random"), mice_with_estimates(False), rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    optim = factorized.get_config("cpu").optim
    optim.update(weight_decay=0.0, position_lr=0.005)
    tx = steps.make_optimizer(optim, params)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["readouts"]["mu"][...]), -0.005, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(updates["readouts"]["features"][...]), -optim.lr, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(updates["readouts"]["sigma"][...]), -optim.lr, rtol=1e-4)


def test_training_starts_the_positions_at_the_estimates(tiny_sessions, tmp_path):
    """Through the loop: every position ends within ``position_lr × steps`` of its estimate (Adam moves a
    parameter by at most about its lr per step), in the trained model's own feature-map geometry."""
    from sensorium_jax.data.reader import Session
    from sensorium_jax.evaluation import loading
    from sensorium_jax.training.loop import train_and_evaluate
    from tests.test_train import tiny_config

    config = tiny_config(",".join(str(p) for p in tiny_sessions))
    config.train.max_epochs = 1
    config.model.readout.init_positions = "receptive_fields"
    config.optim.update(position_lr=0.001, decay_positions=False)
    loading.write_run_info(config, tmp_path / "run")
    train_and_evaluate(config, tmp_path / "run")
    model = loading.load_model(tmp_path / "run", "latest")
    steps_taken = config.train.steps_per_epoch
    for path in tiny_sessions:
        session = Session(path)
        estimate = rf_estimate.estimate_receptive_fields(session)
        core = Factorized3dCore(**{k: v for k, v in config.model.core.items() if k != "name"}, rngs=nnx.Rngs(0))
        start = pixels_to_grid(estimate.centres, *core.feature_pixels(estimate.image_size))
        moved = np.abs(model.readout_positions(session.name) - start)
        assert moved.max() <= 1.1 * config.optim.position_lr * steps_taken


def test_a_silent_neuron_starts_in_the_middle():
    maps = np.zeros((2, 9, 13))
    maps[1, 2, 3] = 1.0
    centres, peaks = rf_estimate.peak_centres(maps)
    np.testing.assert_allclose(centres[0], [6.0, 4.0])
    np.testing.assert_allclose(centres[1], [3.0, 2.0], atol=0.3)  # a lone peak: the centroid stays on it
    assert peaks[0] == 0.0 and peaks[1] > 0.0


def test_a_resumed_run_reads_the_estimates_it_made(tmp_path, monkeypatch):
    sessions = [GaborNeuronSession(np.array([[20.0, 12.0], [9.0, 8.0]]), trials=2)]
    cache = tmp_path / "rf_estimates.npz"
    first = rf_estimate.estimate_all(sessions, cache=cache)
    assert cache.exists() and not list(tmp_path.glob(".*tmp*"))

    def no_estimating(*args, **kwargs):
        raise AssertionError("estimated again although the cache holds these mice")

    monkeypatch.setattr(rf_estimate, "estimate_receptive_fields", no_estimating)
    again = rf_estimate.estimate_all(sessions, cache=cache)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.centres, b.centres)
        np.testing.assert_array_equal(a.channel, b.channel)
        assert (a.image_size, a.frames) == (b.image_size, b.frames)
    # Other settings, other mice or a damaged file are not taken from the cache.
    with pytest.raises(AssertionError, match="estimated again"):
        rf_estimate.estimate_all(sessions, max_frames=100, cache=cache)
    other = GaborNeuronSession(np.array([[20.0, 12.0]]), trials=2)
    other.path = "another-session"
    with pytest.raises(AssertionError, match="estimated again"):
        rf_estimate.estimate_all([other], cache=cache)
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.raises(AssertionError, match="estimated again"):
        rf_estimate.estimate_all(sessions, cache=cache)


def test_only_the_writing_process_writes_the_cache(tmp_path):
    cache = tmp_path / "rf_estimates.npz"
    rf_estimate.estimate_all([GaborNeuronSession(np.array([[20.0, 12.0]]), trials=2)], cache=cache, write_cache=False)
    assert not cache.exists()
