"""DwiseNeuro: shapes through every stage, the hand-checkable pieces (positional encoding, channel shuffle, grouped
readout, depthwise convolutions), the reference's parameter count, the window layout of training and the
sliding-window inference, learning and recompiles.

Tiny shapes throughout (the reference-size model only abstractly, through ``nnx.eval_shape``). On a 2-core machine
compilation is what these tests pay for, so computations are jitted once and compiled without LLVM optimisation.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import dwiseneuro
from sensorium_jax import parallel
from sensorium_jax.data import pipeline
from sensorium_jax.data.reader import open_sessions
from sensorium_jax.models.dwiseneuro import DwiseNeuroModel
from sensorium_jax.models.dwiseneuro.layers import (
    channel_dropout,
    channel_shuffle,
    depthwise_spatial,
    depthwise_temporal,
    drop_path,
    grouped_pointwise,
    positional_encoding_3d,
    tile_channels,
)
from sensorium_jax.models.dwiseneuro.model import clip_window_frames
from sensorium_jax.models.dwiseneuro.readout import neuron_groups
from sensorium_jax.models.model import MiceInfo, count_parameters
from sensorium_jax.models.registry import MODELS
from sensorium_jax.training import losses
from sensorium_jax.training import step as steps
from tests.fake_data import write_session

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

NEURONS = (5, 7)  # an odd count, so the readout's ceil(n / 2) grouping and the padding are both exercised


def tiny_config(**inference):
    """``dwiseneuro:cpu`` shrunk: 4-frame windows at step 2 (span 7), 64 × 64 pooled to 16 × 16, three blocks
    (16 → 8 → 8 → 4 pixels, 4 → 4 → 8 → 8 channels), a 16/32 cortex."""
    config = dwiseneuro.get_config("cpu")
    config.model.core.update(
        stem_channels=4, block_channels=(4, 8, 8), block_strides=(2, 1, 2), expansion=2, se_reduction=4
    )
    config.model.cortex.channels = (16, 32)
    config.model.window.update(frames=4, step=2, pool=4)
    config.model.inference.update({"end_step": 1, "window_batch": 4, **inference})
    return config


def mice_info(counts=NEURONS) -> MiceInfo:
    return MiceInfo(
        names=tuple(f"m{i}" for i in range(len(counts))),
        coordinates=tuple(np.zeros((n, 3), np.float32) for n in counts),
        mean_responses=tuple(np.ones(n, np.float32) for n in counts),
    )


def initialised(make):
    """``make()`` initialised in one jitted program (eager initialisation compiles every op on its own)."""
    graphdef, _ = nnx.split(nnx.eval_shape(make))
    return nnx.merge(graphdef, jit(lambda: nnx.split(make())[1])())


def build(config=None, counts=NEURONS, seed=0) -> DwiseNeuroModel:
    config = config or tiny_config()
    return initialised(lambda: DwiseNeuroModel(config.model, mice_info(counts), rngs=nnx.Rngs(seed)))


def normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def trials(e=2, t=15, seed=0):
    return normal(e, t, 36, 64, seed=seed), normal(e, t, 2, seed=seed + 1), normal(e, t, 2, seed=seed + 2)


@pytest.fixture(scope="module")
def model():
    return build()


@pytest.fixture(scope="module")
def window_rates(model):
    """Rates of single windows of one mouse, jitted once: ``(state, mouse, video (n, W, h, w), constants)``."""
    graphdef = nnx.graphdef(model)

    @jit
    def rates(state, mouse, video, constants):
        m = nnx.merge(graphdef, state)
        features = m.window_features(video, constants, train=False, key=None)
        return m.output(m.readouts.one_mouse(mouse, features.reshape(-1, features.shape[-1]))).reshape(
            *features.shape[:2], -1
        )

    return functools.partial(rates, nnx.state(model))


# ---------------------------------------------------------------- shapes


def test_shapes_through_every_stage(model):
    n, w = 3, 4
    video = jax.ShapeDtypeStruct((n, w, 36, 64), jnp.float32)
    constants = jax.ShapeDtypeStruct((n, w, 4), jnp.float32)
    padded = jax.eval_shape(model.pad_video, video)
    assert padded.shape == (n, w, 16, 16)  # 36 × 64 → 64 × 64 (centred zeros) → 4 × 4 pooling
    x = jax.eval_shape(lambda v, c: model.core.stem_features(v, c, False), padded, constants)
    assert x.shape == (n, w, 16, 16, 4)
    for block, expected in zip(model.core.blocks, [(8, 8, 4), (8, 8, 8), (4, 4, 8)], strict=True):
        x = jax.eval_shape(lambda x, block=block: block(x, train=False, key=None), x)
        assert x.shape == (n, w, *expected)  # spatial strides 2, 1, 2; channels widen in the second block
    features = jax.eval_shape(lambda v, c: model.window_features(v, c, train=False, key=None), video, constants)
    assert features.shape == (n, w, 32)  # spatial average, then the cortex widens 8 → 16 → 32
    readout = jax.eval_shape(model.readouts, jax.ShapeDtypeStruct((2, 5, 32), jnp.float32))
    assert readout.shape == (2, 5, max(NEURONS))
    clips = (2, 3, 16)  # M mice × b clips × T frames
    out = jax.eval_shape(
        lambda v, b, p: model(v, b, p, train=False),
        jax.ShapeDtypeStruct((*clips, 36, 64), jnp.float32),
        jax.ShapeDtypeStruct((*clips, 2), jnp.float32),
        jax.ShapeDtypeStruct((*clips, 2), jnp.float32),
    )
    assert out.shape == (*clips, max(NEURONS)) and model.burn_in == 0
    assert model.readouts.neuron_mask.shape == (2, 7) and model.readouts.num_neurons == NEURONS
    np.testing.assert_array_equal(np.asarray(model.readouts.neuron_mask[...]).sum(1), NEURONS)
    np.testing.assert_array_equal(np.asarray(model.regularizer()), np.zeros(2))
    assert MODELS["dwiseneuro"] is DwiseNeuroModel


def test_video_is_padded_centred():
    config = tiny_config()
    config.model.window.pool = 1
    model = nnx.eval_shape(lambda: DwiseNeuroModel(config.model, mice_info(), rngs=nnx.Rngs(0)))
    padded = np.asarray(model.pad_video(jnp.ones((36, 64))))
    assert padded.shape == (64, 64)
    assert padded[:14].sum() == 0 and padded[50:].sum() == 0 and padded[14:50].all()  # 14 zero rows each side


def test_full_config_shapes_abstractly():
    """The reference network: 5 × 16 × 64 × 64 in, 256 × 16 × 8 × 8 out of the core, 4096 per frame after the
    cortex (no compute: ``eval_shape``)."""
    model = nnx.eval_shape(lambda: DwiseNeuroModel(dwiseneuro.get_config().model, mice_info(), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    run = lambda f, *args: jax.eval_shape(lambda s, *a: f(nnx.merge(graphdef, s), *a), state, *args)
    video = jax.ShapeDtypeStruct((2, 16, 36, 64), jnp.float32)
    constants = jax.ShapeDtypeStruct((2, 16, 4), jnp.float32)
    core = run(lambda m, v, c: m.core(m.pad_video(v), c, train=False), video, constants)
    assert core.shape == (2, 16, 8, 8, 256) and core.dtype == jnp.bfloat16  # the reference's fp16 autocast
    features = run(lambda m, v, c: m.window_features(v, c, train=False, key=None), video, constants)
    assert features.shape == (2, 16, 4096)


def test_bfloat16_train_step_traces_with_float32_parameters():
    """The full config computes in bf16: a train step of the tiny model in bf16 traces, parameters, gradients and
    batch statistics stay float32 (abstractly: no compile)."""
    config = tiny_config()
    config.model.core.compute_dtype = "bfloat16"
    model = nnx.eval_shape(lambda: DwiseNeuroModel(config.model, mice_info(), rngs=nnx.Rngs(0)))
    tx = steps.make_optimizer(config.optim, nnx.state(model, nnx.Param))
    graphdef = nnx.graphdef(model)
    state = jax.eval_shape(lambda s: steps.create_train_state(nnx.merge(graphdef, s), tx, seed=0)[1], nnx.state(model))
    clips = (2, 1, 8)
    batch = {
        "videos": jax.ShapeDtypeStruct((*clips, 36, 64), jnp.float32),
        "behavior": jax.ShapeDtypeStruct((*clips, 2), jnp.float32),
        "pupil_center": jax.ShapeDtypeStruct((*clips, 2), jnp.float32),
        "responses": jax.ShapeDtypeStruct((*clips, 7), jnp.float32),
    }
    new_state, metrics = jax.eval_shape(steps.make_train_step(graphdef, tx, (1.0, 1.0)), state, batch)
    assert metrics["loss"].dtype == jnp.float32
    for tree in (new_state.params, new_state.batch_stats):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}


# ---------------------------------------------------------------- hand-checked pieces


def test_positional_encoding_hand_values():
    """C = 10: 4 channels per axis (ceil(10/6)·2), ω = (1, 1/100); [T: sin sin cos cos | H: … | W: sin sin], the
    W axis's cosines truncated away."""
    t, h, w = 3, 2, 4
    pe = np.asarray(positional_encoding_3d(t, h, w, 10))
    assert pe.shape == (t, h, w, 10)
    for i in range(t):
        for j in range(h):
            for k in range(w):
                expected = [math.sin(i), math.sin(i / 100), math.cos(i), math.cos(i / 100)]
                expected += [math.sin(j), math.sin(j / 100), math.cos(j), math.cos(j / 100)]
                expected += [math.sin(k), math.sin(k / 100)]
                np.testing.assert_allclose(pe[i, j, k], expected, atol=1e-6)
    # the reference's widths: 64 channels = 22 per axis (66, truncated), frequencies 10000^(−2k/22)
    pe = np.asarray(positional_encoding_3d(16, 8, 8, 64))
    assert pe.shape == (16, 8, 8, 64)
    np.testing.assert_allclose(pe[5, 3, 2, 1], math.sin(5 * 10000 ** (-2 / 22)), atol=1e-6)
    np.testing.assert_allclose(pe[5, 3, 2, 11 + 2], math.cos(5 * 10000 ** (-4 / 22)), atol=1e-6)
    np.testing.assert_allclose(pe[5, 3, 2, 22 + 1], math.sin(3 * 10000 ** (-2 / 22)), atol=1e-6)
    np.testing.assert_allclose(pe[5, 3, 2, 63], math.cos(2 * 10000 ** (-16 / 22)), atol=1e-6)  # W: cos, k = 8


def test_channel_shuffle_tiling_and_grouped_conv_hand_cases():
    x = jnp.arange(6.0)[None, None, :]
    np.testing.assert_array_equal(np.asarray(channel_shuffle(x, 2))[0, 0], [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(np.asarray(channel_shuffle(x, 3))[0, 0], [0, 2, 4, 1, 3, 5])
    np.testing.assert_array_equal(np.asarray(tile_channels(jnp.arange(3.0), 8)), [0, 1, 2, 0, 1, 2, 0, 1])
    # grouped 1 × 1 conv = dense conv with a block-diagonal kernel
    kernel = normal(2, 3, 4, seed=1)
    dense = np.zeros((6, 8), np.float32)
    dense[:3, :4], dense[3:, 4:] = kernel[0], kernel[1]
    v = normal(5, 6, seed=2)
    np.testing.assert_allclose(np.asarray(grouped_pointwise(jnp.asarray(v), jnp.asarray(kernel))), v @ dense, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_convolutions_match_their_definitions(stride):
    x, k = normal(2, 3, 7, 6, 4, seed=3), normal(3, 3, 4, seed=4)
    shifted = depthwise_spatial(jnp.asarray(x), jnp.asarray(k), stride, "shifted")
    xla = depthwise_spatial(jnp.asarray(x), jnp.asarray(k), stride, "xla")
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    ho, wo = (7 - 1) // stride + 1, (6 - 1) // stride + 1
    expected = np.zeros((2, 3, ho, wo, 4), np.float32)
    for i in range(ho):
        for j in range(wo):
            patch = padded[:, :, stride * i : stride * i + 3, stride * j : stride * j + 3]
            expected[:, :, i, j] = np.einsum("nthwc,hwc->ntc", patch, k)
    np.testing.assert_allclose(np.asarray(shifted), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(xla), expected, atol=1e-5)
    kt = normal(5, 4, seed=5)
    padded_t = np.pad(x, ((0, 0), (2, 2), (0, 0), (0, 0), (0, 0)))
    expected_t = sum(padded_t[:, d : d + 3] * kt[d] for d in range(5))
    np.testing.assert_allclose(np.asarray(depthwise_temporal(jnp.asarray(x), jnp.asarray(kt))), expected_t, atol=1e-5)


def test_readout_equals_a_grouped_conv_per_mouse(model):
    """Mouse 0 (5 neurons) as torch's Conv1d(C, 6, groups=2) sliced to 5: neurons 0–2 read the first half of the
    channels, 3–4 the second half."""
    np.testing.assert_array_equal(neuron_groups(5, 7, 2), [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(neuron_groups(8, 9, 2), [0, 0, 0, 0, 1, 1, 1, 1, 1])
    readouts = model.readouts
    # bias_init "mean_response" (the CPU variants): every neuron starts at its mean rate (1 here) through Softplus
    real = np.asarray(readouts.neuron_mask[...])
    np.testing.assert_allclose(np.asarray(model.output(readouts.bias[...]))[real], 1.0, rtol=1e-4)
    rng = np.random.default_rng(6)
    bias = rng.normal(size=readouts.bias.shape).astype(np.float32)
    readouts = nnx.clone(readouts)
    readouts.bias.value = jnp.asarray(bias)
    x = normal(2, 3, 32, seed=7)
    out = np.asarray(jit(lambda x: nnx.clone(readouts)(x))(x))
    weights = np.asarray(readouts.features[...])  # (M, 16, N_max)
    for mouse, n in enumerate(NEURONS):
        half = math.ceil(n / 2)
        dense = np.zeros((32, n), np.float32)
        dense[:16, :half] = weights[mouse, :, :half]
        dense[16:, half:] = weights[mouse, :, half:n]
        np.testing.assert_allclose(out[mouse, :, :n], x[mouse] @ dense + bias[mouse, :n], rtol=1e-5, atol=1e-5)
    one = np.asarray(jit(lambda x: readouts.one_mouse(jnp.int32(1), x))(x[1]))
    np.testing.assert_allclose(one[:, :7], out[1, :, :7], rtol=1e-6)


# ---------------------------------------------------------------- parameter count


COMPETITION_MICE = (7863, 7908, 8202, 7939, 8122, 7440, 7928, 8285, 7671, 7495)  # 78,853 neurons


def reference_parameter_count(num_neurons, expansion=7) -> dict[str, int]:
    """DwiseNeuro as published, counted from its definition (winning_models.md §1)."""
    bn = lambda c: 2 * c  # weight and bias
    block_in = (64, 64, 64, 64, 128, 128, 128, 256, 256)
    block_out = (*block_in[1:], 256)
    core = 5 * 64 + bn(64)  # stem: 1 × 1 × 1 conv 5 → 64 without bias, BN
    for c_in, c_out in zip(block_in, block_out, strict=True):
        mid = c_in * expansion
        se = mid // 32
        core += c_in * mid + bn(mid)  # pointwise expansion
        core += 9 * mid + bn(mid) + 5 * mid + bn(mid)  # depthwise (1, 3, 3) and (5, 1, 1)
        core += (mid * se + se) + (se * mid + mid)  # squeeze-excitation, the only biased convs
        core += mid * c_out + bn(c_out) + bn(c_out)  # projection and the shortcut's BN
    cortex = sum(c_in * c_out // 2 + bn(c_out) + bn(c_out) for c_in, c_out in ((256, 1024), (1024, 2048), (2048, 4096)))
    readouts = sum((4096 // 2 + 1) * (math.ceil(n / 2) * 2) for n in num_neurons)  # groups 2, bias, n' = even
    return {"core": core, "cortex": cortex, "readouts": readouts, "total": core + cortex + readouts}


def test_parameter_count_matches_the_reference():
    reference = reference_parameter_count(COMPETITION_MICE)
    # the figures of winning_models.md: 3.67 M core, 5.40 M cortex, 161.58 M readouts, 170.66 M in all
    assert round(reference["core"] / 1e4) == 367 and round(reference["cortex"] / 1e4) == 540
    assert round(reference["readouts"] / 1e4) == 16158 and round(reference["total"] / 1e4) == 17066
    assert round(reference_parameter_count(COMPETITION_MICE, expansion=6)["core"] / 1e4) == 308
    config = dwiseneuro.get_config()
    model = nnx.eval_shape(lambda: DwiseNeuroModel(config.model, mice_info(COMPETITION_MICE), rngs=nnx.Rngs(0)))
    size = lambda module: sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    assert size(model.core) == reference["core"] and size(model.cortex) == reference["cortex"]
    ours = count_parameters(model)  # readout padding slots left out
    assert ours == reference["core"] + reference["cortex"] + 2049 * sum(COMPETITION_MICE)  # n, not rounded to even
    assert abs(ours - reference["total"]) / reference["total"] < 0.02, (ours, reference["total"])


# ---------------------------------------------------------------- windows


def test_training_clip_is_cut_into_one_window_per_phase():
    np.testing.assert_array_equal(clip_window_frames(8, 4, 2), [[0, 2, 4, 6], [1, 3, 5, 7]])
    np.testing.assert_array_equal(
        clip_window_frames(16, 4, 2), [[0, 2, 4, 6], [1, 3, 5, 7], [8, 10, 12, 14], [9, 11, 13, 15]]
    )
    with pytest.raises(ValueError, match="multiple of 8 frames"):
        clip_window_frames(10, 4, 2)
    reference = clip_window_frames(32, 16, 2)  # the reference's windows: 16 frames at step 2, spanning 31
    np.testing.assert_array_equal(reference[1], np.arange(1, 32, 2))


def test_call_predicts_each_frame_from_its_window(model, window_rates):
    videos, behavior, pupil = trials(e=2, t=16, seed=8)  # 2 mice × 1 clip × 16 frames
    stack = lambda x: x[:, None]
    out = np.asarray(jit(lambda *a: model(*a, train=False))(stack(videos), stack(behavior), stack(pupil)))
    constants = np.concatenate([behavior, pupil], -1)
    for mouse in range(2):
        windows = clip_window_frames(16, 4, 2)
        rates = np.asarray(window_rates(jnp.int32(mouse), videos[mouse][windows], constants[mouse][windows]))
        expected = np.zeros((16, 7), np.float32)
        for window, frames in enumerate(windows):
            expected[frames] = rates[window]
        np.testing.assert_allclose(out[mouse, 0], expected, rtol=1e-5, atol=1e-5)


def hand_sliding_average(window_rates, mouse, video, constants, ends):
    """The reference's inference for one trial: every window ending at one of ``ends`` (4 frames at step 2) adds its
    outputs into its frames; each frame is divided by its count."""
    sums, counts = np.zeros((video.shape[0], 7)), np.zeros(video.shape[0])
    for end in ends:
        frames = [end - 6, end - 4, end - 2, end]
        sums[frames] += np.asarray(window_rates(jnp.int32(mouse), video[None, frames], constants[None, frames]))[0]
        counts[frames] += 1
    assert counts.min() > 0  # every frame covered
    return sums / counts[:, None]


def test_sliding_window_inference_equals_the_hand_average(model, window_rates):
    videos, behavior, pupil = trials(e=2, t=15, seed=9)
    constants = np.concatenate([behavior, pupil], -1)
    graphdef, state = nnx.split(model)
    predict = jit(lambda s, *a, **kw: nnx.merge(graphdef, s).predict_mouse(*a, **kw))
    out = np.asarray(predict(state, jnp.int32(1), videos, behavior, pupil))  # 22 windows in chunks of 4
    assert out.shape == (2, 15, 7)
    for e in range(2):
        expected = hand_sliding_average(window_rates, 1, videos[e], constants[e], range(6, 15))
        np.testing.assert_allclose(out[e], expected, rtol=1e-5, atol=1e-5)

    # zero-padded trials told their lengths: trial 1 has 12 valid frames, garbage after them
    garbage = [x.copy() for x in (videos, behavior, pupil)]
    for x in garbage:
        x[1, 12:] = 5.0
    padded = np.asarray(predict(state, jnp.int32(1), *garbage, lengths=jnp.array([15, 12])))
    np.testing.assert_allclose(padded[0], out[0], rtol=1e-5, atol=1e-5)
    expected = hand_sliding_average(window_rates, 1, videos[1, :12], constants[1, :12], range(6, 12))
    np.testing.assert_allclose(padded[1, :12], expected, rtol=1e-5, atol=1e-5)
    assert not padded[1, 12:].any()

    # every second pair of window ends (CPU variants): ends 6, 7, 10, 11, 14 and the tail 13 — still every frame
    sparse = nnx.clone(model)  # same parameters, another (static) inference setting
    sparse.end_step = 2
    graphdef2, state2 = nnx.split(sparse)
    out2 = np.asarray(
        jit(lambda s, *a: nnx.merge(graphdef2, s).predict_mouse(*a))(state2, jnp.int32(1), videos, behavior, pupil)
    )
    for e in range(2):
        expected = hand_sliding_average(window_rates, 1, videos[e], constants[e], [6, 7, 10, 11, 13, 14])
        np.testing.assert_allclose(out2[e], expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("dwiseneuro")
    return open_sessions(
        [write_session(root / "a", num_neurons=5, seed=1), write_session(root / "b", num_neurons=7, seed=2)]
    )


def test_tiny_model_overfits_a_tiny_batch_without_recompiles(sessions):
    config = tiny_config()
    config.model.core.drop_path = 0.0
    config.model.cortex.drop_path = 0.0
    config.model.readout.dropout = 0.0
    config.optim.lr = 0.03
    model = build(config)
    tx = steps.make_optimizer(config.optim, nnx.state(model, nnx.Param))
    graphdef, state = steps.create_train_state(model, tx, seed=0)
    mesh = parallel.make_mesh(1)
    replicated, batch_sharding = parallel.replicated(mesh), parallel.mouse_batch_sharding(mesh)
    state = jax.device_put(state, replicated)
    step = jax.jit(
        steps.assert_max_traces(steps.make_train_step(graphdef, tx, (1.0, 1.0)), n=1),
        in_shardings=(replicated, batch_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
        compiler_options={"xla_backend_optimization_level": 0},  # compiling is the cost here, not the steps
    )
    rounds = pipeline.TrainRound(sessions, pipeline.ClipSpec(batch_size=2, clip_frames=8, max_neurons=7))
    batches = [parallel.to_global(rounds(i), batch_sharding) for i in range(2)]
    state, _ = step(state, batches[1])  # another batch (same shapes): no recompile
    metrics = []
    for _ in range(40):
        state, m = step(state, batches[0])
        metrics.append(m)
    poisson = [float(m["poisson"]) for m in jax.device_get(metrics)]
    chex.assert_tree_all_finite(poisson)
    assert poisson[-1] < 0.7 * poisson[0], poisson
    trained = nnx.merge(graphdef, state.params, state.batch_stats, state.constants)
    batch = batches[0]
    prediction = jit(lambda v, b, p: trained(v, b, p, train=False))(
        batch["videos"], batch["behavior"], batch["pupil_center"]
    )
    mask = trained.readouts.neuron_mask[...]
    corr = 1.0 - losses.correlation_loss(prediction, jnp.asarray(batch["responses"]), mask) / mask.sum(-1)
    assert float(corr.min()) > 0.6, corr  # the responses are noise: fitting them is memorising the batch


def test_dropouts_only_in_training_and_need_a_key(model):
    clips = (2, 1, 8)
    inputs = (normal(*clips, 36, 64, seed=10), normal(*clips, 2, seed=11), normal(*clips, 2, seed=12))
    with pytest.raises(ValueError, match="PRNG key"):
        jax.eval_shape(lambda: model(*inputs, train=True))
    x = jnp.ones((2000, 3, 5))
    assert drop_path(x, 0.3, None) is x and channel_dropout(x, 0.4, None) is x  # evaluation: identity
    dropped = np.asarray(drop_path(x, 0.3, jax.random.key(0)))
    per_sample = dropped.reshape(2000, -1)
    assert set(np.unique(per_sample)) <= {0.0, np.float32(1 / 0.7)}
    assert (per_sample == per_sample[:, :1]).all()  # a whole sample's branch at once
    assert abs((per_sample[:, 0] == 0).mean() - 0.3) < 0.04
    channels = np.asarray(channel_dropout(x, 0.4, jax.random.key(1)))
    assert (channels == channels[:, :1]).all()  # Dropout1d: a channel is dropped in every frame of a sample
    assert abs((channels == 0).mean() - 0.4) < 0.03 and np.allclose(channels[channels > 0], 1 / 0.6)
