"""Dynamic-V1FM: the video Swin core, the hierarchical Gaussian readout, windowed inference and the model.

Tiny shapes throughout (the reference-size model only abstractly, through ``eval_shape``). XLA compilation is
what these tests spend their time on, so everything runs jitted, once, without LLVM optimisation.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import dynamic_v1fm
from sensorium_jax import parallel
from sensorium_jax.data import pipeline
from sensorium_jax.data.reader import open_sessions
from sensorium_jax.models.cores import swin3d
from sensorium_jax.models.dynamic_v1fm import DynamicV1FMModel, window_plan
from sensorium_jax.models.model import MiceInfo, count_parameters
from sensorium_jax.models.readouts.gaussian import bilinear_sample
from sensorium_jax.models.readouts.hierarchical_gaussian import HierarchicalGaussianReadouts, level_indices
from sensorium_jax.models.registry import MODELS, build_model
from sensorium_jax.training import losses
from sensorium_jax.training import step as steps
from tests.fake_data import write_session

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def initialised(make):
    """``make()`` initialised in one jitted program (eager initialisation compiles op by op)."""
    graphdef, _ = nnx.split(nnx.eval_shape(make))
    return nnx.merge(graphdef, jit(lambda: nnx.split(make())[1])())


# ---------------------------------------------------------------- shifted-window geometry


def test_shift_mask_hand_built_one_axis():
    """Tokens 0…5 on one axis, windows of 3, shift 1. After the cyclic shift the windows hold the original tokens
    (1, 2, 3) and (4, 5, 0): token 0 wrapped around and may attend only itself in the second window."""
    mask = swin3d.shift_mask((1, 1, 6), (1, 1, 3), (0, 0, 1))
    m = swin3d.MASK_VALUE
    np.testing.assert_array_equal(mask[0], np.zeros((3, 3)))
    np.testing.assert_array_equal(mask[1], [[0, 0, m], [0, 0, m], [m, m, 0]])


def test_shift_mask_hand_built_two_axes():
    """A 4×4 grid, 2×2 windows shifted by (1, 1). Shifted-grid windows, tokens in (row, col) order:

    * window 0 holds original rows 1–2, cols 1–2: one region, no mask;
    * window 1 holds original rows 1–2, cols 3 and 0: col 0 wrapped, so tokens attend only within their column;
    * window 2 holds original rows 3 and 0, cols 1–2: only within their row;
    * window 3 holds original (3, 3), (3, 0), (0, 3), (0, 0): four regions, each token only itself.
    """
    mask = swin3d.shift_mask((1, 4, 4), (1, 2, 2), (0, 1, 1)) != 0
    same_column = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], bool)
    same_row = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(~mask[0], np.ones((4, 4), bool))
    np.testing.assert_array_equal(~mask[1], same_column)
    np.testing.assert_array_equal(~mask[2], same_row)
    np.testing.assert_array_equal(~mask[3], np.eye(4, dtype=bool))


def test_shift_mask_equals_no_wraparound_rule():
    """General 3-D case with padding: two tokens of one shifted window may attend iff the cyclic shift did not
    separate them, i.e. their distance in the shifted grid equals their distance in the original grid."""
    grid, window, shift = (8, 6, 8), (4, 3, 4), (2, 1, 2)
    mask = swin3d.shift_mask(grid, window, shift)
    rolled = np.stack(np.meshgrid(*map(np.arange, grid), indexing="ij"), -1)  # shifted-grid coordinates
    original = (rolled + np.asarray(shift)) % np.asarray(grid)
    pairs_rolled = swin3d.partition_windows(rolled, window)  # (nW, L, 3)
    pairs_original = swin3d.partition_windows(original, window)
    same = np.all(
        (pairs_rolled[:, :, None] - pairs_rolled[:, None, :]) == (pairs_original[:, :, None] - pairs_original[:, None]),
        axis=-1,
    )
    np.testing.assert_array_equal(mask == 0, same)
    assert (~same).any() and same.any()


def test_relative_position_index_hand_checked():
    """Window (1, 2, 2): tokens (h, w) = (0,0), (0,1), (1,0), (1,1); the 1·3·3 table is indexed by
    (Δh + 1)·3 + (Δw + 1) with Δ = query − key."""
    expected = [[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]]
    np.testing.assert_array_equal(swin3d.relative_position_index((1, 2, 2), (1, 2, 2)), expected)
    # the same window inside a table built for (2, 2, 2): Δt = 0 is the middle third of the 27 entries
    np.testing.assert_array_equal(swin3d.relative_position_index((1, 2, 2), (2, 2, 2)), np.asarray(expected) + 9)
    index = swin3d.relative_position_index((2, 2, 2), (2, 2, 2))
    assert index[0, 7] == 0 and index[7, 0] == 26 and index[5, 5] == 13  # (−1,−1,−1), (1,1,1), (0,0,0)


def test_effective_window_shrinks_short_axes():
    assert swin3d.effective_window((15, 18, 32), (8, 7, 7), (4, 3, 3)) == ((8, 7, 7), (4, 3, 3))
    assert swin3d.effective_window((2, 18, 5), (8, 7, 7), (4, 3, 3)) == ((2, 7, 5), (0, 3, 0))


# ---------------------------------------------------------------- the core's pieces against their definitions


def brute_force_window_attention(x, p, heads, window, shift, table_window):
    """Every token against every token of the zero-padded, shifted grid (float64): keys restricted to the query's
    window, bias from the tokens' offset, −100 where the shift separated them."""
    x = np.asarray(x, np.float64)
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    b, t, h, w, c = x.shape
    grid = np.asarray([math.ceil(s / ws) * ws for s, ws in zip((t, h, w), window)])
    padded = np.zeros((b, *grid, c))
    padded[:, :t, :h, :w] = x
    rolled = np.roll(padded, [-s for s in shift], axis=(1, 2, 3)).reshape(b, -1, c)
    pos = np.stack(np.meshgrid(*map(np.arange, grid), indexing="ij"), -1).reshape(-1, 3)
    orig = (pos + np.asarray(shift)) % grid
    delta = pos[:, None] - pos[None]
    same_window = np.all(pos[:, None] // window == pos[None] // window, -1)
    separated = np.any(delta != orig[:, None] - orig[None], -1)
    tw = np.asarray(table_window)
    index = (delta[..., 0] + tw[0] - 1) * (2 * tw[1] - 1) * (2 * tw[2] - 1)
    index = index + (delta[..., 1] + tw[1] - 1) * (2 * tw[2] - 1) + delta[..., 2] + tw[2] - 1
    d = c // heads
    qkv = (rolled @ p["qkv_w"] + p["qkv_b"]).reshape(b, -1, 3, heads, d)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    logits = logits + np.where(same_window, p["relative_bias"][np.where(same_window, index, 0)].transpose(2, 0, 1), 0)
    logits = logits + np.where(separated & any(shift), -100.0, 0.0)
    logits = np.where(same_window, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, -1, c) @ p["proj_w"] + p["proj_b"]
    out = np.roll(out.reshape(b, *grid, c), shift, axis=(1, 2, 3))
    return out[:, :t, :h, :w]


@pytest.mark.parametrize("shift", [(0, 0, 0), (1, 1, 2)])
def test_window_attention_matches_brute_force(shift):
    """Grid (3, 5, 6) padded to windows (2, 3, 4) — padding, a cyclic shift on every axis and several windows."""
    params = swin3d._initial_block(jax.random.key(0), 8, 2, (2, 3, 4), 16, 4, 4, 3)
    params = dict(params, relative_bias=normal(*params["relative_bias"].shape, seed=1))  # visible bias
    x = normal(2, 3, 5, 6, 8, seed=2)
    kw = dict(num_heads=2, window=(2, 3, 4), shift=shift, table_window=(2, 3, 4))
    got = jit(lambda p, x: swin3d.window_attention(x, p, **kw))(params, x)
    expected = brute_force_window_attention(x, params, 2, (2, 3, 4), shift, (2, 3, 4))
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5)


def test_tubelet_embedding_and_depthwise_conv_match_xla_convolutions():
    """The tubelet matmul is torch's Conv3d(kernel = stride) with far-edge zero padding; the shifted-sum
    depthwise conv is Conv3d(groups = C, padding 1)."""
    video, kernel, bias = normal(2, 6, 9, 10), normal(2 * 4 * 4, 5, seed=1), normal(5, seed=2)
    x, dw = normal(2, 4, 5, 6, 7, seed=3), normal(3, 3, 3, 7, seed=4)

    @jit
    def both(video, kernel, bias, x, dw):
        ours = swin3d.tubelet_embed(video, kernel, bias, (2, 4, 4))
        padded = jnp.pad(video, ((0, 0), (0, 0), (0, 3), (0, 2)))[..., None]  # 9 → 12, 10 → 12
        conv = jax.lax.conv_general_dilated(
            padded, kernel.reshape(2, 4, 4, 1, 5), (2, 4, 4), "VALID", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
        )
        grouped = jax.lax.conv_general_dilated(
            x, dw[:, :, :, None, :], (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
            feature_group_count=7,
        )  # fmt: skip
        return ours, conv + bias, swin3d.depthwise_conv3d_same(x, dw), grouped

    ours, conv, shifted, grouped = both(video, kernel, bias, x, dw)
    chex.assert_shape(ours, (2, 3, 3, 3, 5))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(conv), atol=1e-5)
    np.testing.assert_allclose(np.asarray(shifted), np.asarray(grouped), atol=1e-5)


def test_block_order_behaviour_then_attention_then_feed_forward():
    """One block = x + B-MLP(behaviour) (frame pairs concatenated, broadcast over space), then + attention, then +
    Linear → SwiGLU → depthwise conv → GELU → Linear; no LayerNorm anywhere."""
    params = swin3d._initial_block(jax.random.key(3), 8, 2, (2, 3, 4), 16, 4, 4, 3)
    x, behavior = normal(2, 3, 5, 6, 8), normal(2, 6, 4, seed=1)
    kw = dict(num_heads=2, window=(2, 3, 4), shift=(1, 1, 2), table_window=(2, 3, 4))

    @jit
    def both(p, x, behavior):
        hidden = jnp.tanh(
            jnp.tanh(behavior @ p["behavior_w1"] + p["behavior_b1"]) @ p["behavior_w2"] + p["behavior_b2"]
        )
        y = x + hidden.reshape(2, 3, 8)[:, :, None, None, :]  # frames (2t, 2t+1) → token t
        y = y + swin3d.window_attention(y, p, **kw)
        h = y @ p["fc1_w"] + p["fc1_b"]
        h = jax.nn.silu(h[..., :8]) * h[..., 8:]
        h = swin3d.depthwise_conv3d_same(h, p["dw_kernel"]) + p["dw_bias"]
        expected = y + jax.nn.gelu(h, approximate=False) @ p["fc2_w"] + p["fc2_b"]
        return swin3d.swin_block(x, behavior, p, frames_per_token=2, **kw), expected

    got, expected = both(params, x, behavior)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


# ---------------------------------------------------------------- hierarchical readout


def test_level_indices_are_nearest_interpolation():
    down, up = level_indices(8, 4)  # exact: every 4th position, each value repeated 4 times
    np.testing.assert_array_equal(down, [0, 4])
    np.testing.assert_array_equal(up, [0, 0, 0, 0, 1, 1, 1, 1])
    down, up = level_indices(10, 4)  # torch interpolate(nearest) 10 → 2 → 10: scale 5, then 0.2
    np.testing.assert_array_equal(down, [0, 5])
    np.testing.assert_array_equal(up, [0] * 5 + [1] * 5)
    down, up = level_indices(3, 16)  # fewer neurons than k: one slot
    np.testing.assert_array_equal(down, [0])
    np.testing.assert_array_equal(up, [0, 0, 0])


def _tiny_readouts(fusion: str) -> HierarchicalGaussianReadouts:
    coords = [normal(6, 3, seed=1), normal(9, 3, seed=2)]
    readouts = initialised(
        lambda: HierarchicalGaussianReadouts(coords, 5, levels=(2, 4), fusion=fusion, time_tokens=3, rngs=nnx.Rngs(0))
    )
    # distinct, non-trivial weights so that every branch and gate matters
    for i, level in enumerate(readouts.levels):
        level.features.value = jnp.asarray(normal(*level.features.shape, seed=10 + i))
    readouts.features.value = jnp.asarray(normal(*readouts.features.shape, seed=20))
    return readouts


@pytest.mark.parametrize("fusion", ["mean", "adaptive"])
def test_hierarchical_readout_matches_hand_computation(fusion):
    """Mouse 1 (9 neurons) at the mean positions: base + levels k = 2 (4 slots) and 4 (2 slots) by hand."""
    readouts = _tiny_readouts(fusion)
    features = normal(6, 4, 7, 5, seed=3)  # S = 2 clips × 3 time tokens
    shift = 0.1 * normal(6, 2, seed=4)
    graphdef, state = nnx.split(readouts)
    got = jit(lambda s, f, sh: nnx.merge(graphdef, s).one_mouse(jnp.int32(1), f, sh))(state, features, shift)
    mu = np.asarray(jit(lambda s: nnx.merge(graphdef, s).mean_positions())(state))[1, :9]
    sampled = np.asarray(jit(jax.vmap(bilinear_sample))(features, mu[None] + shift[:, None]))  # (S, 9, C)
    base = np.einsum("snc,cn->sn", sampled, np.asarray(readouts.features[...])[1, :, :9])
    base = base + np.asarray(readouts.bias[...])[1, :9]
    branches = [base]
    for level, slots, k in zip(readouts.levels, (4, 2), (2, 4)):
        down = np.floor(np.arange(slots) * 9 / slots).astype(int)  # nearest 9 → slots
        values = np.einsum("snc,cn->sn", sampled[:, down], np.asarray(level.features[...])[1, :, :slots])
        w1, b1, w2, b2 = (
            np.asarray(getattr(level, n)[...])[1] for n in ("refine_w1", "refine_b1", "refine_w2", "refine_b2")
        )
        assert w1.shape == (16 * k,)  # Conv1d(1 → 16k)
        pre = values[..., None] * w1 + b1
        refined = np.where(pre > 0, pre, np.expm1(pre)) @ w2 + b2
        branches.append(refined[:, np.floor(np.arange(9) * slots / 9).astype(int)])
    if fusion == "mean":
        expected = np.mean(branches, axis=0)
    else:
        g = {n: np.asarray(getattr(readouts, f"gate_{n}")[...])[1] for n in ("w1", "b1", "w2", "b2")}
        expected = 0.0
        for i, branch in enumerate(branches):
            clips = branch.reshape(2, 3, 9)
            squeeze = clips.mean(-1)  # (clips, T): the mean over the mouse's 9 neurons
            gate = 1 / (1 + np.exp(-(np.maximum(squeeze @ g["w1"][i] + g["b1"][i], 0) @ g["w2"][i] + g["b2"][i])))
            expected = expected + (gate[..., None] * clips).reshape(6, 9)
    np.testing.assert_allclose(np.asarray(got)[:, :9], expected, rtol=1e-4, atol=1e-5)


def test_padded_neuron_slots_never_reach_real_neurons():
    """Mouse 0 has 6 of 9 slots: garbage in its padded weights (base and levels) changes no real neuron."""
    readouts = _tiny_readouts("adaptive")
    features = normal(2, 6, 4, 7, 5, seed=3)
    graphdef, state = nnx.split(readouts)
    call = jit(lambda s, f: nnx.merge(graphdef, s)(f, None, None))
    clean = call(state, features)
    dirty = jax.tree.map(lambda x: x, state)
    dirty["features"].value = dirty["features"].value.at[0, :, 6:].set(1e3)
    dirty["bias"].value = dirty["bias"].value.at[0, 6:].set(1e3)
    dirty["levels"][0]["features"].value = dirty["levels"][0]["features"].value.at[0, :, 3:].set(1e3)  # 6 // 2
    changed = call(dirty, features)
    np.testing.assert_allclose(np.asarray(changed[0, :, :6]), np.asarray(clean[0, :, :6]), rtol=1e-6)
    assert not np.allclose(np.asarray(changed[0, :, 6:]), np.asarray(clean[0, :, 6:]))


# ---------------------------------------------------------------- windowed inference plan


def test_window_plan_reproduces_the_reference_windows():
    """300 frames, 30-frame windows, burn-in 15: fixed windows at 35, 50, …, 260 produce frames 50…289 (the
    reference's), windows at 5 and 20 (and 0 for frames 15–19) the unscored frames before, and the last window
    (at 270, the reference's ``videos[-30:]``) frames 290…299."""
    plan = window_plan(300, 30, 15, 50)
    assert plan.starts == (0, *range(5, 261, 15)) and plan.needs_tail
    start_of = lambda frame: (
        plan.starts[plan.source_window[frame - 15]] if plan.source_window[frame - 15] >= 0 else None
    )
    assert [start_of(f) for f in (15, 19, 20, 49, 50, 64, 65, 289)] == [0, 0, 5, 20, 35, 35, 50, 260]
    assert all(start_of(f) is None for f in range(290, 300))
    np.testing.assert_array_equal(plan.source_token[50 - 15 : 65 - 15], np.arange(15))  # frame 50 = token 0
    assert window_plan(30, 30, 15, 50).starts == (0,) and not window_plan(30, 30, 15, 50).needs_tail


# ---------------------------------------------------------------- the model


TINY_CORE = dict(
    patch_size=(2, 6, 8),  # 36 × 64 → 6 × 8 tokens
    dim=8,
    depth=1,
    num_heads=2,
    window_size=(2, 3, 4),
    shift_size=(1, 1, 2),
    mlp_hidden=16,
)


def tiny_config(fusion: str = "mean"):
    """8-frame windows → 4 time tokens, burn-in 4."""
    config = dynamic_v1fm.get_config(f"cpu,fusion={fusion}")
    config.model.core.update(TINY_CORE)
    config.model.window_frames = 8
    config.model.window_anchor = 10
    config.data.clip_frames = 8
    config.train.loss_last_frames = 4
    return config


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("v1fm")
    return open_sessions(
        [write_session(root / "a", num_neurons=6, seed=1), write_session(root / "b", num_neurons=9, seed=2)]
    )


def build(sessions, config) -> DynamicV1FMModel:
    mice = MiceInfo.from_sessions(sessions)
    return initialised(lambda: build_model(config.model, mice))


class Jitted:
    def __init__(self, model: DynamicV1FMModel):
        self.model = model
        self.graphdef, self.state = nnx.split(model)
        merge = lambda s: nnx.merge(self.graphdef, s)
        self.predict = jit(lambda s, *a, **kw: merge(s).predict_mouse(*a, **kw))
        self.call = jit(lambda s, *a: merge(s)(*a, train=False))


@pytest.fixture(scope="module")
def tiny(sessions):
    return Jitted(build(sessions, tiny_config("adaptive")))


def trial(sessions, frames, mouse=0, index=0):
    data = sessions[mouse].load(index, 0, frames)
    return tuple(jnp.asarray(data[k])[None] for k in ("videos", "behavior", "pupil_center"))


def test_registry_builds_the_model_and_shapes_through_every_stage(sessions, tiny):
    assert MODELS["dynamic_v1fm"] is DynamicV1FMModel
    model, state = tiny.model, tiny.state
    assert model.burn_in == 4 and model.time_tokens == 4
    videos, behavior, pupil = trial(sessions, 8)
    constants = jnp.concatenate([behavior, pupil], -1)
    core = model.core
    tokens = jax.eval_shape(
        lambda v: swin3d.tubelet_embed(v, core.embed_kernel[...], core.embed_bias[...], (2, 6, 8)), videos
    )
    assert tokens.shape == (1, 4, 6, 8, 8)  # (B, T/2, H/6, W/8, D)
    assert jax.eval_shape(lambda v, c: core(v, c), videos, constants).shape == (1, 4, 6, 8, 8)
    stack = lambda x: jnp.stack([x, x])  # (M, b = 1, T, ...)
    rates = tiny.call(state, stack(videos), stack(behavior), stack(pupil))
    chex.assert_shape(rates, (2, 1, 4, 9))  # the clip's last 4 frames, N_max = 9
    assert float(rates.min()) > 0  # elu + 1
    full = tiny.predict(state, jnp.int32(1), *trial(sessions, 41, mouse=1))
    chex.assert_shape(full, (1, 37, 9))
    chex.assert_tree_all_finite((rates, full))


def test_reference_size_model_shapes_abstractly():
    """The reference's core on 30 frames: (15, 18, 32) tokens of 224 channels; 15 predicted frames."""
    mice = MiceInfo(("a",), (normal(40, 3),), (np.ones(40, np.float32),))
    model = nnx.eval_shape(lambda: build_model(dynamic_v1fm.get_config().model, mice))
    graphdef, state = nnx.split(model)
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    tokens = jax.eval_shape(
        lambda s, v, b: nnx.merge(graphdef, s).core(v, b), state, spec(2, 30, 36, 64), spec(2, 30, 4)
    )
    assert tokens.shape == (2, 15, 18, 32, 224) and model.burn_in == 15
    rates = jax.eval_shape(
        lambda s, v, b, p: nnx.merge(graphdef, s)(v, b, p, train=False),
        state,
        spec(1, 2, 30, 36, 64),
        spec(1, 2, 30, 2),
        spec(1, 2, 30, 2),
    )
    assert rates.shape == (1, 2, 15, 40)


def reference_parameter_count(num_neurons, levels=(2, 4, 8, 16)) -> int:
    """Dynamic-V1FM counted from its definition (winning_models.md §2: core 2.27 M, ≈ 36.9 M in all)."""
    d, hidden, glu, heads = 224, 976, 488, 4
    embed = 8 * d + d + 2 * d  # Conv3d 1 → 224 (2×2×2) + LayerNorm
    behaviour_mlp = (4 * 112 + 112) + (112 * 112 + 112)
    attention = (d * 3 * d + 3 * d) + (d * d + d) + 15 * 13 * 13 * heads
    feed_forward = (d * hidden + hidden) + (27 * glu + glu) + (glu * d + d)
    core = embed + 4 * (behaviour_mlp + attention + feed_forward)
    grid_mlp = (2 * 32 + 32) + (32 * 2 + 2)
    shifter = (2 * 16 + 16) + (16 * 16 + 16) + (16 * 2 + 2)
    base_per_neuron = d + 1 + 4  # features, bias, full 2×2 covariance
    level = lambda n, k: d * (n // k) + (16 * k + 16 * k) + (16 * k + 1)  # weights + Conv1d(1→16k) + Conv1d(16k→1)
    per_mouse = lambda n: grid_mlp + shifter + base_per_neuron * n + sum(level(n, k) for k in levels)
    return core + sum(per_mouse(n) for n in num_neurons)


COMPETITION_MICE = (7863, 7908, 8202, 7939, 8122, 7440, 7928, 8285, 7671, 7495)


def test_parameter_count_matches_the_reference():
    reference = reference_parameter_count(COMPETITION_MICE)
    assert abs(reference - 36.9e6) < 0.05e6
    rng = np.random.default_rng(0)
    mice = MiceInfo(
        names=tuple(f"m{i}" for i in range(10)),
        coordinates=tuple(rng.normal(size=(n, 3)).astype(np.float32) for n in COMPETITION_MICE),
        mean_responses=tuple(np.ones(n, np.float32) for n in COMPETITION_MICE),
    )
    model = nnx.eval_shape(lambda: build_model(dynamic_v1fm.get_config().model, mice))
    ours = count_parameters(model)
    assert abs(ours - reference) / reference < 0.02, (ours, reference)
    assert ours == reference  # mean fusion: nothing beyond the definition
    core = sum(x.size for x in jax.tree.leaves(nnx.state(model.core, nnx.Param)))
    assert core == 2_273_488  # the reference core's 2.27 M
    assert count_parameters(model, include_padding=True) > ours  # every mouse holds N_max slots on every level
    adaptive = nnx.eval_shape(lambda: build_model(dynamic_v1fm.get_config("fusion=adaptive").model, mice))
    assert count_parameters(adaptive) - ours == 10 * 5 * (2 * 15 * 15 + 2 * 15)  # gates: mice × branches × SE


def test_windowed_inference_equals_the_clips_it_stitches(sessions, tiny):
    """A 31-frame trial (anchor 10, stride 4): fixed windows at 0, 2, 6, …, 22 and a last one at 23. Every
    predicted frame equals the training-path output of the window the plan assigns it."""
    videos, behavior, pupil = trial(sessions, 31)
    full = np.asarray(tiny.predict(tiny.state, jnp.int32(0), videos, behavior, pupil))[0, :, :6]  # frames 4…30
    plan = window_plan(31, 8, 4, 10)
    assert plan.starts == (0, 2, 6, 10, 14, 18, 22)
    for frame in range(4, 31):
        source = plan.source_window[frame - 4]
        start = plan.starts[source] if source >= 0 else 23
        clips = [jnp.stack([x[:, start : start + 8]] * 2) for x in (videos, behavior, pupil)]  # (M = 2, 1, 8, …)
        out = tiny.call(tiny.state, *clips)
        np.testing.assert_allclose(full[frame - 4], np.asarray(out)[0, 0, frame - start - 4, :6], rtol=1e-5, atol=1e-6)


def test_windowed_inference_lengths_and_windows_per_pass(sessions, tiny):
    """A zero-padded trial told its length predicts exactly what it predicts alone; running the windows a few at a
    time (lax.map) changes nothing."""
    videos, behavior, pupil = trial(sessions, 31)
    short = [x[:, :27] for x in (videos, behavior, pupil)]
    alone = tiny.predict(tiny.state, jnp.int32(1), *short)
    garbage = lambda x: jnp.concatenate([x, 2.0 * x]).at[0, 27:].set(5.0)
    batch = [garbage(x) for x in (videos, behavior, pupil)]
    padded = tiny.predict(tiny.state, jnp.int32(1), *batch, lengths=jnp.array([27, 31]))
    np.testing.assert_allclose(np.asarray(padded[0, :23]), np.asarray(alone[0]), rtol=1e-5, atol=1e-6)
    blind = tiny.predict(tiny.state, jnp.int32(1), *batch)
    assert not np.allclose(np.asarray(blind[0, :23]), np.asarray(alone[0]))  # why lengths are needed
    config = tiny_config("adaptive")
    config.model.predict_windows_per_pass = 3  # 7 fixed windows + the tail: passes of 3, 3, 2
    mice = MiceInfo.from_sessions(sessions)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(config.model, mice)))
    per_pass = jit(lambda s, *a, **kw: nnx.merge(graphdef, s).predict_mouse(*a, **kw))
    got = per_pass(tiny.state, jnp.int32(1), *batch, lengths=jnp.array([27, 31]))  # the same parameters
    np.testing.assert_allclose(np.asarray(got), np.asarray(padded), rtol=1e-5, atol=1e-6)


def test_tiny_model_overfits_a_tiny_batch_without_recompiles(sessions):
    """The shared train step with the last-4-frames loss (the reference's last 15 of 30), 40 steps on one batch."""
    config = tiny_config("mean")
    config.optim.lr = 0.02
    model = build(sessions, config)
    batch = pipeline.TrainRound(sessions, pipeline.ClipSpec(4, 8, 9))(0)
    other = pipeline.TrainRound(sessions, pipeline.ClipSpec(4, 8, 9))(1)
    tx = steps.make_optimizer(config.optim, nnx.state(model, nnx.Param))
    graphdef, state = steps.create_train_state(model, tx, seed=0)
    mesh = parallel.make_mesh(1)
    replicated, batch_sharding = parallel.replicated(mesh), parallel.mouse_batch_sharding(mesh)
    state = jax.device_put(state, replicated)
    train_step = steps.make_train_step(graphdef, tx, (1.0, 1.0), last_frames=4)
    step = jax.jit(
        steps.assert_max_traces(train_step, n=1),
        in_shardings=(replicated, batch_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
        compiler_options={"xla_backend_optimization_level": 0},
    )
    global_batch = parallel.to_global(batch, batch_sharding)
    metrics = []
    for _ in range(40):
        state, m = step(state, global_batch)
        metrics.append(m)
    state, _ = step(state, parallel.to_global(other, batch_sharding))  # another batch: still one trace
    poisson = [float(m["poisson"]) for m in jax.device_get(metrics)]
    assert poisson[-1] < 0.7 * poisson[0], poisson
    trained = nnx.merge(graphdef, state.params, state.batch_stats, state.constants)
    prediction = jit(lambda v, b, p: trained(v, b, p, train=False))(
        batch["videos"], batch["behavior"], batch["pupil_center"]
    )
    target = jnp.asarray(batch["responses"])[:, :, -4:]
    mask = trained.readouts.neuron_mask[...]
    corr = 1.0 - losses.correlation_loss(prediction, target, mask) / mask.sum(-1)
    assert float(corr.min()) > 0.4, corr  # the responses are noise: fitting them is memorising the batch
