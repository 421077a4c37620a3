"""The static model: Stacked2dCore pieces, readout parity with the video model on one frame, and overfitting."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments.configs import factorized, static_baseline
from sensorium_jax.data import pipeline
from sensorium_jax.data.static_reader import open_static_sessions
from sensorium_jax.models.cores.stacked2d import Stacked2dCore, depthwise_conv2d_same
from sensorium_jax.models.layers import laplace_l2_norm
from sensorium_jax.models.model import MiceInfo, VideoModel
from sensorium_jax.models.static_model import StaticModel
from sensorium_jax.training import step as steps
from tests.static_fake_data import write_static_session


def test_depthwise_conv_matches_grouped_convolution_and_its_gradients():
    x = jax.random.normal(jax.random.key(0), (3, 9, 11, 4))
    kernel = jax.random.normal(jax.random.key(1), (7, 7, 1, 4))
    weights = jax.random.normal(jax.random.key(2), (3, 9, 11, 4))

    def grouped(x, k):
        return jax.lax.conv_general_dilated(
            x, k, (1, 1), ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=4
        )

    np.testing.assert_allclose(depthwise_conv2d_same(x, kernel), grouped(x, kernel), atol=1e-4)
    ours = jax.grad(lambda x, k: (depthwise_conv2d_same(x, k) * weights).sum(), (0, 1))(x, kernel)
    reference = jax.grad(lambda x, k: (grouped(x, k) * weights).sum(), (0, 1))(x, kernel)
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)


@nnx.jit(static_argnames="train")
def _core_forward(core, images, constants, train):
    return core(images, constants, train=train)


def test_core_shapes_constant_channels_and_regulariser():
    sizes = dict(hidden_channels=6, layers=3, input_kernel=5, hidden_kernel=3)
    core = Stacked2dCore(constant_channels=3, **sizes, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(0), (2, 12, 16))
    constants = jnp.array([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]])
    out = _core_forward(core, images, constants, False)
    assert out.shape == (2, 8, 12, 6)
    # The same core fed the behaviour as broadcast image channels (what the reference convolves) agrees.
    broadcast = Stacked2dCore(image_channels=4, **sizes, rngs=nnx.Rngs(1))
    nnx.update(broadcast, nnx.state(core))
    stacked = jnp.concatenate([images[..., None], jnp.broadcast_to(constants[:, None, None], (2, 12, 16, 3))], -1)
    np.testing.assert_allclose(_core_forward(broadcast, stacked, None, False), out, atol=1e-5)
    np.testing.assert_allclose(core.regularizer(), core.gamma_input * laplace_l2_norm(core.input_kernel[...]))
    strided = Stacked2dCore(hidden_channels=4, layers=2, input_kernel=5, input_stride=2, rngs=nnx.Rngs(0))
    assert _core_forward(strided, images, None, True).shape == (2, 4, 6, 4)


class _FrameCore(nnx.Module):
    """A video core applied to single images: the bridge for comparing the two models' readout paths."""

    def __init__(self, video_core):
        self.inner = video_core

    def __call__(self, images, constants, *, train):
        return self.inner(images[:, None], None, train=train)[:, 0]

    def regularizer(self):
        return self.inner.regularizer()


@pytest.fixture
def mice():
    rng = np.random.default_rng(0)
    coordinates = (rng.uniform(-300, 300, (7, 3)), rng.uniform(-300, 300, (4, 3)))
    return MiceInfo(("a", "b"), coordinates, (np.full(7, 0.5, np.float32), np.full(4, 1.5, np.float32)))


@nnx.jit(static_argnames="train")
def _forward(model, images, behavior, pupil, key, train):
    return model(images, behavior, pupil, train=train, key=key)


@nnx.jit
def _predict(model, mouse, images, behavior, pupil):
    return model.predict_mouse(mouse, images, behavior, pupil)


def test_readout_parity_with_the_video_model_on_one_frame(mice):
    video_config = factorized.get_config()
    video_config.model.core.update(
        hidden_channels=(5,), spatial_kernels=(5,), temporal_kernels=(1,), spatial_strides=(1,)
    )  # temporal kernel 1: no burn-in, one frame in, one frame out
    video_config.model.behavior_channels = False
    video = VideoModel(video_config.model, mice, rngs=nnx.Rngs(0))
    static_config = static_baseline.get_config()
    static_config.model.core.update(hidden_channels=5, layers=1, input_kernel=5)
    static_config.model.behavior_channels = False
    static_config.model.readout = video_config.model.readout
    static = StaticModel(static_config.model, mice, rngs=nnx.Rngs(1))
    nnx.update(static.readouts, nnx.state(video.readouts))
    nnx.update(static.shifters, nnx.state(video.shifters))
    static.core = _FrameCore(video.core)

    key = jax.random.key(3)
    images = jax.random.normal(key, (2, 3, 1, 14, 18))  # (M, b, 1 frame, H, W)
    behavior = jax.random.normal(jax.random.key(4), (2, 3, 1, 3))
    pupil = jax.random.normal(jax.random.key(5), (2, 3, 1, 2))
    for train, sample_key in ((False, None), (True, jax.random.key(6))):  # mean positions; sampled positions
        want = _forward(video, images, behavior[..., :2], pupil, sample_key, train)
        got = _forward(static, images, behavior, pupil, sample_key, train)
        assert got.shape == want.shape == (2, 3, 1, 7)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for mouse in (0, 1):
        want = _predict(video, jnp.int32(mouse), images[mouse], behavior[mouse, :, :, :2], pupil[mouse])
        got = _predict(static, jnp.int32(mouse), images[mouse], behavior[mouse], pupil[mouse])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(static.regularizer(), video.regularizer(), rtol=1e-6)


def tiny_static_config(paths: str = "") -> ml_collections.ConfigDict:
    config = static_baseline.get_config("cpu")
    config.model.core.update(hidden_channels=8, layers=2, input_kernel=5, hidden_kernel=3, input_stride=1)
    config.data.paths = paths
    config.data.image_scale = 0.5  # 48 × 64 fake images → 24 × 32
    config.data.batch_size = 8
    config.train.steps_per_epoch = 2
    config.train.max_epochs = 2
    config.train.log_every = 1
    config.eval.batch_size = 8
    return config


def test_baseline_overfits_a_tiny_static_dataset(tmp_path):
    paths = [write_static_session(tmp_path / f"m{i}", num_neurons=n, seed=i, noise=0.02) for i, n in enumerate((6, 9))]
    sessions = open_static_sessions(paths, scale=0.25)  # 12 × 16 model inputs
    config = tiny_static_config()
    # The Sensorium-track baseline (images only): the fake behaviour is unrelated noise, which as extra image
    # channels only slows the fit (the channels and the shifter are covered by the parity tests above).
    config.model.behavior_channels = False
    config.model.use_shifter = False
    config.data.batch_size = 16  # every train image of both mice in one batch
    config.optim.lr = 0.02
    model = StaticModel(config.model, MiceInfo.from_sessions(sessions), rngs=nnx.Rngs(0))
    tx = steps.make_optimizer(config.optim, nnx.state(model, nnx.Param))
    graphdef, state = steps.create_train_state(model, tx, seed=0)
    train_step = jax.jit(steps.make_train_step(graphdef, tx, [1.0, 1.0]))
    predict = steps.make_predict(graphdef)
    batch = pipeline.StaticTrainRound(sessions, pipeline.ClipSpec(16, 1, 9))(0)

    def train_correlation(state) -> float:
        corrs = []
        for mouse, session in enumerate(sessions):
            out = predict(
                state, jnp.int32(mouse), batch["videos"][mouse], batch["behavior"][mouse], batch["pupil_center"][mouse]
            )
            n = session.num_neurons
            target, output = batch["responses"][mouse, :, 0, :n], np.asarray(out)[:, 0, :n]
            corrs.extend(np.corrcoef(target[:, i], output[:, i])[0, 1] for i in range(n))
        return float(np.nanmean(corrs))

    before = train_correlation(state)
    losses = []
    for _ in range(100):
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses[::10]
    after = train_correlation(state)
    assert after > 0.9 and after > before + 0.3, (before, after)
