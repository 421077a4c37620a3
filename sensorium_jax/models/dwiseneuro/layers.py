"""DwiseNeuro's building blocks as pure functions on channels-last arrays (``winning_models.md`` §1).

Everything here is stateless: initialisers, the fixed 3-D sin/cos positional encoding, grouped 1 × 1
convolutions and the channel shuffle of the "cortex", the parameter-free shortcut, depthwise convolutions and
DropPath. The modules in ``core.py``, ``cortex.py`` and ``readout.py`` hold the parameters and call these.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def fan_out_normal(key: jax.Array, shape: tuple[int, ...], fan_out: int) -> jax.Array:
    """The reference's conv initialisation: N(0, σ²) with σ = √(2 / fan_out), fan_out = kernel size · out / groups."""
    return math.sqrt(2.0 / fan_out) * jax.random.normal(key, shape, jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# Positional encoding


def sincos_axis(length: int, channels: int) -> np.ndarray:
    """The 1-D code of one axis, ``(length, channels)``: all sines first, then all cosines, of ``pos · ω_k`` with
    ``ω_k = 10000^(−2k / channels)``, ``k = 0 … channels/2 − 1`` (``positional_encodings``' frequencies)."""
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, channels, 2, dtype=np.float64) / channels))
    angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1).astype(np.float32)


def positional_encoding_3d(frames: int, height: int, width: int, channels: int) -> jax.Array:
    """``PositionalEncoding3d``: a fixed ``(T, H, W, C)`` code added to every block's input.

    Each axis gets ``ceil(C / 6) · 2`` channels (:func:`sincos_axis`); the three codes are concatenated in the order
    T, H, W and truncated to ``C``. The per-axis codes are small numpy constants and the broadcast happens inside
    the program, so no ``T·H·W·C`` constant is baked into it.
    """
    per_axis = math.ceil(channels / 6) * 2
    codes = [sincos_axis(n, per_axis) for n in (frames, height, width)]
    shape = (frames, height, width, per_axis)
    parts = [
        jnp.broadcast_to(jnp.asarray(codes[0])[:, None, None, :], shape),
        jnp.broadcast_to(jnp.asarray(codes[1])[None, :, None, :], shape),
        jnp.broadcast_to(jnp.asarray(codes[2])[None, None, :, :], shape),
    ]
    return jnp.concatenate(parts, axis=-1)[..., :channels]


# ----------------------------------------------------------------------------------------------------------------
# Channels


def grouped_pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Grouped 1 × 1 convolution over the last axis: ``kernel (g, C_in/g, C_out/g)``; output group ``i`` (channels
    ``[i·C_out/g, (i+1)·C_out/g)``) reads input group ``i``, as torch's ``Conv1d(groups=g)``."""
    g, cin, cout = kernel.shape
    grouped = x.reshape(*x.shape[:-1], g, cin)
    out = jnp.einsum("...gc,gcd->...gd", grouped, kernel.astype(x.dtype))
    return out.reshape(*x.shape[:-1], g * cout)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """ShuffleNet's channel shuffle on the last axis: view as (g, C/g), transpose, flatten.

    Output channel ``i·g + j`` is input channel ``j·C/g + i``: the next grouped layer sees every group.
    """
    c = x.shape[-1]
    shuffled = jnp.swapaxes(x.reshape(*x.shape[:-1], groups, c // groups), -1, -2)
    return shuffled.reshape(x.shape)


def tile_channels(x: jax.Array, channels: int) -> jax.Array:
    """The parameter-free channel shortcut: repeat the channels (``[x, x, …]``) and keep the first ``channels``."""
    c = x.shape[-1]
    if c == channels:
        return x
    return jnp.concatenate([x] * math.ceil(channels / c), axis=-1)[..., :channels]


# ----------------------------------------------------------------------------------------------------------------
# Depthwise convolutions on (N, T, H, W, C)


def _depthwise_spatial_shifted(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    kh, kw = kernel.shape[:2]
    h, w = x.shape[2:4]
    ph, pw = kh // 2, kw // 2
    ho, wo = (h + 2 * ph - kh) // stride + 1, (w + 2 * pw - kw) // stride + 1
    padded = jnp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw), (0, 0)))
    kernel = kernel.astype(x.dtype)
    out = None
    for dy in range(kh):
        for dx in range(kw):
            window = padded[:, :, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride]
            term = window * kernel[dy, dx]
            out = term if out is None else out + term
    return out


def _depthwise_spatial_xla(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    kh, kw, c = kernel.shape
    n, t, h, w, _ = x.shape
    out = jax.lax.conv_general_dilated(
        x.reshape(n * t, h, w, c),
        kernel.astype(x.dtype)[:, :, None, :],
        (stride, stride),
        ((kh // 2, kh // 2), (kw // 2, kw // 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
    )
    return out.reshape(n, t, *out.shape[1:])


def depthwise_spatial(x: jax.Array, kernel: jax.Array, stride: int = 1, implementation: str = "shifted") -> jax.Array:
    """Depthwise ``(1, k, k)`` convolution, zero padding ``k // 2``, spatial stride: ``x (N, T, H, W, C)``,
    ``kernel (k, k, C)`` (torch ``Conv3d(C, C, (1, k, k), stride=(1, s, s), padding=(0, p, p), groups=C)``).

    ``"shifted"``: ``k²`` strided multiply-adds, one fused elementwise loop (far faster than XLA's grouped
    convolution on CPU); ``"xla"``: ``conv_general_dilated`` with ``feature_group_count = C`` (cuDNN on GPU).
    """
    if implementation == "xla":
        return _depthwise_spatial_xla(x, kernel, stride)
    return _depthwise_spatial_shifted(x, kernel, stride)


def depthwise_temporal(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Depthwise ``(k, 1, 1)`` convolution along time, zero padding ``k // 2`` (non-causal within the window):
    ``x (N, T, H, W, C)``, ``kernel (k, C)``, written as ``k`` shifted multiply-adds."""
    kt = kernel.shape[0]
    t = x.shape[1]
    p = kt // 2
    padded = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0)))
    kernel = kernel.astype(x.dtype)
    out = padded[:, 0:t] * kernel[0]
    for d in range(1, kt):
        out = out + padded[:, d : d + t] * kernel[d]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Regularisation


def drop_path(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Stochastic depth (timm ``drop_path``): each sample's branch is zeroed with probability ``rate`` and the rest
    scaled by ``1 / (1 − rate)``. Identity when ``key`` is None (evaluation) or ``rate`` is 0."""
    if key is None or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


def channel_dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """torch ``Dropout1d`` on ``(N, T, C)``: whole channels of a sample (all its frames) are zeroed together."""
    if key is None or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, (x.shape[0], 1, x.shape[-1]))
    return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))
