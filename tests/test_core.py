"""Factorized3dCore: shapes, causality, the constant-channel shortcut, and the Laplace regularisers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sensorium_jax.models.cores.factorized import Factorized3dCore
from sensorium_jax.models.layers import laplace_l2_norm, laplace_l2_norm_1d


def test_reference_shapes_and_parameter_count():
    core = Factorized3dCore(rngs=nnx.Rngs(0))  # 32/64/128, spatial 11/5/5, temporal 11/5/5
    out = core(jnp.zeros((1, 30, 36, 64)), jnp.zeros((1, 30, 2)), train=False)
    chex.assert_shape(out, (1, 30 - 18, 36 - 18, 64 - 18, 128))  # 36×64 → 18×46; T → T − 18
    assert core.burn_in == 18
    params = sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(core, nnx.Param)))
    # convs: 3·32·121+32 + 32·32·11+32 | 32·64·25+64 + 64·64·5+64 | 64·128·25+128 + 128·128·5+128; BN 2·(32+64+128)
    expected = (11616 + 32 + 11264 + 32) + (51200 + 64 + 20480 + 64) + (204800 + 128 + 81920 + 128) + 2 * 224
    assert params == expected


def test_causal_in_time():
    core = Factorized3dCore(hidden_channels=(4, 4), spatial_kernels=(5, 3), temporal_kernels=(4, 3), rngs=nnx.Rngs(0))
    video = jax.random.normal(jax.random.key(0), (1, 20, 36, 64))
    behavior = jnp.ones((1, 20, 2))
    a = core(video, behavior, train=False)
    b = core(video.at[:, 15:].set(0.0), behavior, train=False)
    # output frame j sees input frames j … j + burn_in: changing frames ≥ 15 leaves outputs j < 15 − burn_in alone
    np.testing.assert_allclose(np.asarray(a[:, : 15 - core.burn_in]), np.asarray(b[:, : 15 - core.burn_in]), atol=1e-6)
    assert not np.allclose(np.asarray(a[:, -1]), np.asarray(b[:, -1]))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_constant_channels_equal_a_full_convolution(padding):
    """Adding constant channels after a 1-channel conv (or, zero-padded, convolving them) equals convolving the
    broadcast 3-channel input."""
    core = Factorized3dCore(
        hidden_channels=(3,), spatial_kernels=(5,), temporal_kernels=(2,), spatial_padding=(padding,), rngs=nnx.Rngs(1)
    )
    key1, key2 = jax.random.split(jax.random.key(0))
    video = jax.random.normal(key1, (2, 6, 36, 64))
    behavior = jax.random.normal(key2, (2, 6, 2))
    layer = core.layers[0]
    full_input = jnp.concatenate(
        [video[..., None], jnp.broadcast_to(behavior[:, :, None, None, :], (2, 6, 36, 64, 2))], -1
    )
    h, w = (32, 60) if padding == "valid" else (36, 64)
    spatial = (
        jax.lax.conv_general_dilated(
            full_input.reshape(12, 36, 64, 3),
            layer.spatial[...],
            (1, 1),
            "VALID" if padding == "valid" else ((2, 2), (2, 2)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ).reshape(2, 6, h, w, 3)
        + layer.spatial_bias[...]
    )
    temporal = jnp.einsum("bthwc,cd->bthwd", spatial[:, :-1], layer.temporal[...][0]) + jnp.einsum(
        "bthwc,cd->bthwd", spatial[:, 1:], layer.temporal[...][1]
    )
    temporal = temporal + layer.temporal_bias[...]
    expected = jax.nn.elu(
        (temporal - layer.norm.mean[...]) / jnp.sqrt(layer.norm.var[...] + 1e-5) * layer.norm.scale[...]
        + layer.norm.bias[...]
    )
    np.testing.assert_allclose(np.asarray(core(video, behavior, train=False)), np.asarray(expected), atol=1e-4)


def test_same_padding_keeps_the_map_after_a_strided_first_layer():
    """The in-silico variant: an unpadded stride-2 first layer, then "same" layers keep its 14 × 28 map."""
    core = Factorized3dCore(
        image_channels=1,
        constant_channels=0,
        hidden_channels=(2, 2, 2),
        spatial_kernels=(9, 5, 5),
        temporal_kernels=(3, 3, 3),
        spatial_strides=(2, 1, 1),
        spatial_padding=("valid", "same", "same"),
        rngs=nnx.Rngs(0),
    )
    chex.assert_shape(core(jnp.zeros((1, 10, 36, 64)), None, train=False), (1, 4, 14, 28, 2))
    with pytest.raises(ValueError, match="layer 0: spatial_padding 'SAME' with stride 2"):
        Factorized3dCore(spatial_strides=(2, 1, 1), spatial_padding=("same", "same", "same"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="one entry per layer"):
        Factorized3dCore(spatial_padding=("valid",), rngs=nnx.Rngs(0))


def test_input_padding_is_a_grey_border_around_the_stimulus():
    """``input_padding`` = the unpadded core on frames with that many zero (mean-grey) pixels around them; the map
    grows by the padding over the stride, and bad values fail at construction."""
    kw = dict(
        image_channels=1,
        constant_channels=2,
        hidden_channels=(2, 2),
        spatial_kernels=(5, 3),
        temporal_kernels=(2, 2),
        spatial_strides=(2, 1),
    )
    padded, plain = Factorized3dCore(**kw, input_padding=4, rngs=nnx.Rngs(0)), Factorized3dCore(**kw, rngs=nnx.Rngs(0))
    video = jax.random.normal(jax.random.key(0), (2, 6, 16, 20))
    behavior = jax.random.normal(jax.random.key(1), (2, 6, 2))
    got = padded(video, behavior, train=False)
    expected = plain(jnp.pad(video, ((0, 0), (0, 0), (4, 4), (4, 4))), behavior, train=False)
    chex.assert_shape(got, (2, 4, 8, 10, 2))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-6)
    with pytest.raises(ValueError, match="input_padding -1"):
        Factorized3dCore(**kw, input_padding=-1, rngs=nnx.Rngs(0))


def test_batch_norm_momentum_follows_torch_convention():
    core = Factorized3dCore(hidden_channels=(2,), spatial_kernels=(3,), temporal_kernels=(1,), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 3, 36, 64)) * 5 + 3
    core(x, jnp.zeros((2, 3, 2)), train=True)
    # torch momentum 0.7: running = 0.3·0 + 0.7·batch_mean
    layer = core.layers[0]
    pre = core.layers[0]
    assert layer.norm.momentum == 0.30000000000000004 or np.isclose(layer.norm.momentum, 0.3)
    assert not np.allclose(np.asarray(pre.norm.mean[...]), 0.0)


def _laplace_numpy(filters_2d):
    lap = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], float)
    total = 0.0
    for f in filters_2d:
        padded = np.pad(f, 1)
        out = np.array(
            [[(padded[i : i + 3, j : j + 3] * lap).sum() for j in range(f.shape[1])] for i in range(f.shape[0])]
        )
        total += (out**2).sum()
    return total / sum((f**2).sum() for f in filters_2d)


def test_laplace_regularisers_match_numpy():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(5, 5, 2, 3)).astype(np.float32)  # HWIO
    filters = [kernel[:, :, i, o] for i in range(2) for o in range(3)]
    np.testing.assert_allclose(float(laplace_l2_norm(jnp.asarray(kernel))), _laplace_numpy(filters), rtol=1e-5)
    temporal = rng.normal(size=(6, 2, 3)).astype(np.float32)
    lap1d = []
    for i in range(2):
        for o in range(3):
            f = np.pad(temporal[:, i, o], 1)
            lap1d.append(np.array([-f[t] + 4 * f[t + 1] - f[t + 2] for t in range(6)]))
    expected = sum((x**2).sum() for x in lap1d) / (temporal**2).sum()
    np.testing.assert_allclose(float(laplace_l2_norm_1d(jnp.asarray(temporal))), expected, rtol=1e-5)


def test_no_recompiles_and_bf16_runs():
    core = Factorized3dCore(
        hidden_channels=(4, 4),
        spatial_kernels=(5, 3),
        temporal_kernels=(3, 3),
        compute_dtype="bfloat16",
        rngs=nnx.Rngs(0),
    )
    graphdef, state = nnx.split(core)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(state, video, behavior):
        return nnx.merge(graphdef, state)(video, behavior, train=False)

    for seed in range(3):
        out = forward(state, jax.random.normal(jax.random.key(seed), (2, 10, 36, 64)), jnp.ones((2, 10, 2)))
    assert out.dtype == jnp.bfloat16
    chex.assert_tree_all_finite(out.astype(jnp.float32))
