"""``Stacked2dCore``: the SENSORIUM 2022 state-of-the-art core (neuralpredictors ``Stacked2dCore``).

The 2022 baseline configuration (sensorium ``stacked_core_full_gauss_readout``, notebooks 1a/1b): 4 layers × 64
channels; layer 0 an unpadded 9 × 9 convolution; layers 1–3 depth-separable (1 × 1 conv → 7 × 7 depthwise conv
with "same" padding → 1 × 1 conv); every layer followed by batch norm (affine, torch momentum 0.9) and ELU
(``final_nonlinearity``), convolutions without bias (``core_bias=False``: batch norm supplies it), xavier-normal
initialisation; only the last layer is read out (``stack=-1``). Regulariser: ``gamma_input`` × the normalised
Laplace L2 (``LaplaceL2norm``, padding 1) of the first layer's filters; the group sparsity on hidden layers is
ignored for depth-separable convolutions, as in the reference.

Input: ``images (B, H, W)`` and ``constants (B, K)`` — the Sensorium+ behaviour channels, which the reference
broadcasts over the image. Through the unpadded first convolution a constant channel adds its value times the sum
of its kernel at every output pixel, so it is added after a 1-channel convolution instead of being convolved
(identical result; the full kernel is still regularised).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sensorium_jax.models.convolution import conv2d
from sensorium_jax.models.layers import laplace_l2_norm, xavier_normal


def _shifted_depthwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Depthwise "same" cross-correlation as ``k²`` shifted multiply-adds: ``x (B, H, W, C)``, ``kernel (k, k, C)``.

    XLA fuses the sum into one elementwise loop; on CPU this is ~7× faster than ``conv_general_dilated`` with
    ``feature_group_count = C``, whose gradient is slower still (measured in BUILD_NOTES).
    """
    kh, kw = kernel.shape[:2]
    ph, pw = kh // 2, kw // 2
    h, w = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    out = padded[:, :h, :w, :] * kernel[0, 0]
    for dy in range(kh):
        for dx in range(kw):
            if dy or dx:
                out = out + padded[:, dy : dy + h, dx : dx + w, :] * kernel[dy, dx]
    return out


@jax.custom_vjp
def depthwise_conv2d_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Depthwise (one filter per channel) "same"-padded convolution: ``x (B, H, W, C)``, ``kernel (k, k, 1, C)``.

    torch's ``Conv2d(groups=C, padding=k // 2)`` for odd ``k``. Forward and input gradient are shifted
    multiply-adds (the input gradient is the same operation with the flipped kernel); the kernel gradient
    ``dk[dy, dx, c] = Σ_{b,h,w} x_pad[b, h + dy, w + dx, c] · g[b, h, w, c]`` is one FFT cross-correlation summed
    over the batch in the frequency domain, instead of ``k²`` full passes over the activations.
    """
    return _shifted_depthwise(x, kernel[:, :, 0, :].astype(x.dtype))


def _depthwise_forward(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return depthwise_conv2d_same(x, kernel), (x, kernel)


def _depthwise_backward(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    k2d = kernel[:, :, 0, :]
    dx = _shifted_depthwise(g, k2d[::-1, ::-1].astype(g.dtype))
    kh, kw = k2d.shape[:2]
    ph, pw = kh // 2, kw // 2
    h, w = x.shape[1], x.shape[2]
    size = (h + 2 * ph, w + 2 * pw)  # no circular wrap-around for lags up to 2p
    padded = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))).astype(jnp.float32)
    spectrum = jnp.fft.rfft2(padded, axes=(1, 2)) * jnp.conj(jnp.fft.rfft2(g.astype(jnp.float32), s=size, axes=(1, 2)))
    correlation = jnp.fft.irfft2(spectrum.sum(0), s=size, axes=(0, 1))  # (H_pad, W_pad, C), lag (dy, dx) at [dy, dx]
    dkernel = correlation[:kh, :kw, None, :].astype(kernel.dtype)
    return dx.astype(x.dtype), dkernel


depthwise_conv2d_same.defvjp(_depthwise_forward, _depthwise_backward)


class DepthSeparableConv(nnx.Module):
    """neuralpredictors ``DepthSeparableConv2d``: 1 × 1 (C_in → C) → k × k depthwise (C) → 1 × 1 (C → C)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool, *, rngs: nnx.Rngs):
        c = out_channels
        # xavier fans of torch conv weights (out, in/groups, k, k): fan_in = in/groups·k², fan_out = out·k²
        self.pointwise_in = nnx.Param(xavier_normal(rngs.params(), (in_channels, c), in_channels, c))
        self.depthwise = nnx.Param(xavier_normal(rngs.params(), (kernel, kernel, 1, c), kernel * kernel, c * kernel**2))
        self.pointwise_out = nnx.Param(xavier_normal(rngs.params(), (c, c), c, c))
        self.biases = nnx.List([nnx.Param(jnp.zeros((c,))) for _ in range(3)]) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = (lambda i: self.biases[i][...].astype(x.dtype)) if self.biases is not None else (lambda i: 0.0)
        x = jnp.einsum("bhwc,cd->bhwd", x, self.pointwise_in[...].astype(x.dtype)) + bias(0)
        x = depthwise_conv2d_same(x, self.depthwise[...]) + bias(1)
        return jnp.einsum("bhwc,cd->bhwd", x, self.pointwise_out[...].astype(x.dtype)) + bias(2)


class Stacked2dCore(nnx.Module):
    """The 2022 baseline core; ``out_channels`` = channels of the read-out layers stacked."""

    def __init__(
        self,
        image_channels: int = 1,
        constant_channels: int = 0,
        hidden_channels: int = 64,
        layers: int = 4,
        input_kernel: int = 9,
        hidden_kernel: int = 7,
        input_stride: int = 1,
        bn_momentum: float = 0.9,
        gamma_input: float = 6.3831,
        bias: bool = False,
        final_nonlinearity: bool = True,
        stack: int | Sequence[int] = -1,
        compute_dtype: str = "float32",
        *,
        rngs: nnx.Rngs,
    ):
        if layers < 1:
            raise ValueError(f"layers={layers} must be at least 1")
        self.image_channels = image_channels
        self.constant_channels = constant_channels
        self.gamma_input = gamma_input
        self.input_stride = input_stride
        self.final_nonlinearity = final_nonlinearity
        self.compute_dtype = jnp.dtype(compute_dtype)
        c, k = hidden_channels, input_kernel
        inputs = image_channels + constant_channels
        self.input_kernel = nnx.Param(xavier_normal(rngs.params(), (k, k, inputs, c), inputs * k * k, c * k * k))
        self.input_bias = nnx.Param(jnp.zeros((c,))) if bias else None
        self.hidden = nnx.List([DepthSeparableConv(c, c, hidden_kernel, bias, rngs=rngs) for _ in range(layers - 1)])
        # torch BatchNorm momentum m updates running = (1 − m)·running + m·batch, i.e. Flax momentum 1 − m.
        self.norms = nnx.List(
            [nnx.BatchNorm(c, momentum=1.0 - bn_momentum, epsilon=1e-5, rngs=rngs) for _ in range(layers)]
        )
        self.stack = tuple(range(layers)[stack:]) if isinstance(stack, int) else tuple(stack)
        self.out_channels = c * len(self.stack)

    def _activation(self, index: int, x: jax.Array) -> jax.Array:
        last = index == len(self.norms) - 1
        return jax.nn.elu(x) if self.final_nonlinearity or not last else x

    def __call__(self, images: jax.Array, constants: jax.Array | None, *, train: bool) -> jax.Array:
        """``images (B, H, W[, C])``, ``constants (B, K)`` → features ``(B, H', W', out_channels)``.

        ``H' = (H − input_kernel) // input_stride + 1`` (28 × 56 for 36 × 64 inputs and the 9 × 9 kernel).
        """
        x = images[..., None] if images.ndim == 3 else images
        x = x.astype(self.compute_dtype)
        c = x.shape[-1]
        kernel = self.input_kernel[...]
        y = conv2d(x, kernel[:, :, :c], self.input_stride)
        if self.constant_channels:
            if constants is None:
                raise ValueError(f"the core was built for {self.constant_channels} constant channels; none given")
            per_channel = kernel[:, :, c:].sum((0, 1))  # (K, C_out): a constant channel's whole contribution
            y = y + (constants.astype(y.dtype) @ per_channel.astype(y.dtype))[:, None, None, :]
        if self.input_bias is not None:
            y = y + self.input_bias[...].astype(y.dtype)
        outputs = []
        for index, norm in enumerate(self.norms):
            if index > 0:
                y = self.hidden[index - 1](y)
            y = norm(y.astype(jnp.float32), use_running_average=not train).astype(self.compute_dtype)
            y = self._activation(index, y)
            outputs.append(y)
        return (
            jnp.concatenate([outputs[i] for i in self.stack], axis=-1)
            if len(self.stack) > 1
            else outputs[self.stack[0]]
        )

    def regularizer(self) -> jax.Array:
        """``gamma_input`` × LaplaceL2norm of the first layer's filters (all input channels)."""
        return self.gamma_input * laplace_l2_norm(self.input_kernel[...])
