"""Small building blocks shared by the cores and readouts: PyTorch-compatible initialisers and the Laplace
smoothness regularisers of neuralpredictors (the convolutions are in ``convolution.py``)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Constant(nnx.Variable):
    """Non-trainable model data (neuron positions, masks): checkpointed with the model, never optimised."""


def xavier_normal(key: jax.Array, shape: tuple[int, ...], fan_in: int, fan_out: int) -> jax.Array:
    """``torch.nn.init.xavier_normal_`` for a conv kernel given its receptive-field-scaled fans."""
    std = math.sqrt(2.0 / (fan_in + fan_out))
    return std * jax.random.normal(key, shape, jnp.float32)


def torch_linear_init(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    """``torch.nn.Linear``'s default init, U(−1/√fan_in, 1/√fan_in), for weights and biases alike."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def zero_padded_chunks(x: jax.Array, chunk: int) -> jax.Array:
    """``(S, ...)`` → ``(⌈S / chunk⌉, chunk, ...)``, zero-padded at the end: for ``lax.scan``/``lax.map`` over chunks
    whose padded rows add nothing (zero images, zero-weight samples). Callers cut outputs back to ``S``."""
    count = -(-x.shape[0] // chunk)
    x = jnp.pad(x, [(0, count * chunk - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
    return x.reshape(count, chunk, *x.shape[1:])


def window_centres(positions: np.ndarray, kernel: int, stride: int = 1) -> np.ndarray:
    """Centres of the windows an unpadded (VALID) convolution or patching of ``kernel`` taps at ``stride`` takes
    along an axis whose samples lie at ``positions``: where each output cell sits on the input."""
    positions = np.asarray(positions, np.float64)
    count = (len(positions) - kernel) // stride + 1
    if count < 1:
        raise ValueError(f"an axis of {len(positions)} samples is shorter than the kernel {kernel}")
    starts = np.arange(count) * stride
    return 0.5 * (positions[starts] + positions[starts + kernel - 1])


_LAPLACE_2D = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32)
_LAPLACE_1D = np.array([-1, 4, -1], np.float32)


def laplace_l2_norm(kernel_hwio: jax.Array) -> jax.Array:
    """neuralpredictors ``LaplaceL2norm`` (padding 1): Σ(Laplace ∗ w)² / Σ w² over every 2-D filter."""
    kh, kw, cin, cout = kernel_hwio.shape
    filters = jnp.transpose(kernel_hwio, (2, 3, 0, 1)).reshape(cin * cout, kh, kw, 1)
    lap = jnp.asarray(_LAPLACE_2D)[:, :, None, None]
    smooth = jax.lax.conv_general_dilated(
        filters, lap, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jnp.sum(smooth**2) / jnp.sum(filters**2)


def laplace_l2_norm_1d(kernel_tio: jax.Array) -> jax.Array:
    """neuralpredictors ``DepthLaplaceL21d`` (padding 1) over every 1-D temporal filter of a (kt, Cin, Cout) kernel."""
    kt, cin, cout = kernel_tio.shape
    filters = jnp.transpose(kernel_tio, (1, 2, 0)).reshape(cin * cout, kt, 1)
    lap = jnp.asarray(_LAPLACE_1D)[:, None, None]
    smooth = jax.lax.conv_general_dilated(filters, lap, (1,), ((1, 1),), dimension_numbers=("NWC", "WIO", "NWC"))
    return jnp.sum(smooth**2) / jnp.sum(filters**2)


def elu_plus_one(x: jax.Array) -> jax.Array:
    """The baselines' output nonlinearity: positive firing rates."""
    return jax.nn.elu(x) + 1.0
