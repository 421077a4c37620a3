"""``Factorized3dCore``: the SENSORIUM 2023 factorised baseline core (neuralpredictors ``Factorized3dCore``).

Per layer: spatial conv (1, k, k) → temporal conv (t, 1, 1) (C → C) → BatchNorm → ELU; no padding in time, so
the core is causal and its output starts ``burn_in = Σ (t_l − 1)`` frames after the input; no padding in space
either, as the reference, unless a layer's ``spatial_padding`` is "same" (zero padding ``k // 2``). Smoothness
of the first layer's filters is encouraged by the normalised Laplace regularisers.

Input: ``video (B, T, H, W)`` and ``constant_channels (B, T, K)`` — the behaviour channels, which the reference
broadcasts over the image. A constant channel through an *unpadded* spatial conv contributes the same value at
every output pixel (its value times the sum of its kernel), so it is added after a 1-channel conv instead of being
convolved: identical result, a fraction of the work.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sensorium_jax.models.convolution import conv2d, temporal_conv_valid
from sensorium_jax.models.layers import laplace_l2_norm, laplace_l2_norm_1d, window_centres, xavier_normal


class FactorizedLayer(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_kernel: int,
        temporal_kernel: int,
        bn_momentum: float,
        stride: int = 1,
        padding: str = "VALID",
        *,
        rngs: nnx.Rngs,
    ):
        k, kt = spatial_kernel, temporal_kernel
        self.kernel_size = k
        self.stride = stride
        self.padding = padding
        self.spatial = nnx.Param(
            xavier_normal(rngs.params(), (k, k, in_channels, out_channels), in_channels * k * k, out_channels * k * k)
        )
        self.spatial_bias = nnx.Param(jnp.zeros((out_channels,)))
        self.temporal = nnx.Param(
            xavier_normal(rngs.params(), (kt, out_channels, out_channels), out_channels * kt, out_channels * kt)
        )
        self.temporal_bias = nnx.Param(jnp.zeros((out_channels,)))
        # torch BatchNorm momentum m updates running = (1 − m)·running + m·batch, i.e. Flax momentum 1 − m.
        self.norm = nnx.BatchNorm(out_channels, momentum=1.0 - bn_momentum, epsilon=1e-5, rngs=rngs)

    def __call__(self, x: jax.Array, constant: jax.Array | None, train: bool) -> jax.Array:
        b, t, h, w, c = x.shape
        kernel = self.spatial[...]
        dtype = x.dtype
        if constant is not None and self.padding == "SAME":  # zero padding makes constants vary near the edges
            x = jnp.concatenate(
                [x, jnp.broadcast_to(constant[:, :, None, None].astype(dtype), (b, t, h, w, constant.shape[-1]))], -1
            )
            c, constant = x.shape[-1], None
        if constant is not None:  # x holds the image channels only; the rest of the kernel sees constants
            image_kernel, constant_kernel = kernel[:, :, :c], kernel[:, :, c:]
        else:
            image_kernel, constant_kernel = kernel, None
        y = conv2d(x.reshape(b * t, h, w, c), image_kernel, self.stride, self.padding)
        y = y.reshape(b, t, *y.shape[1:])
        bias = self.spatial_bias[...].astype(dtype)
        if constant_kernel is not None:
            y = (
                y
                + jnp.einsum("btk,ko->bto", constant.astype(dtype), constant_kernel.sum((0, 1)).astype(dtype))[
                    :, :, None, None, :
                ]
            )
        y = y + bias
        y = temporal_conv_valid(y, self.temporal[...]) + self.temporal_bias[...].astype(dtype)
        y = self.norm(y.astype(jnp.float32), use_running_average=not train).astype(dtype)
        return jax.nn.elu(y)


class Factorized3dCore(nnx.Module):
    """The reference: 3 layers, channels 32/64/128, spatial kernels 11/5/5, temporal kernels 11/5/5."""

    def __init__(
        self,
        image_channels: int = 1,
        constant_channels: int = 2,
        hidden_channels: Sequence[int] = (32, 64, 128),
        spatial_kernels: Sequence[int] = (11, 5, 5),
        temporal_kernels: Sequence[int] = (11, 5, 5),
        spatial_strides: Sequence[int] | None = None,
        spatial_padding: Sequence[str] | None = None,
        input_padding: int = 0,
        bn_momentum: float = 0.7,
        gamma_input_spatial: float = 10.0,
        gamma_input_temporal: float = 0.01,
        compute_dtype: str = "float32",
        *,
        rngs: nnx.Rngs,
    ):
        strides = spatial_strides or [1] * len(hidden_channels)
        paddings = [p.upper() for p in spatial_padding or ["VALID"] * len(hidden_channels)]
        if not len(hidden_channels) == len(spatial_kernels) == len(temporal_kernels) == len(strides) == len(paddings):
            raise ValueError(
                "hidden_channels, spatial_kernels, temporal_kernels, spatial_strides and spatial_padding need one "
                "entry per layer"
            )
        for index, (padding, stride) in enumerate(zip(paddings, strides, strict=True)):
            if padding not in ("VALID", "SAME") or (padding == "SAME" and stride != 1):
                raise ValueError(
                    f"layer {index}: spatial_padding {padding!r} with stride {stride}; 'valid', or 'same' at stride 1"
                )
        if input_padding < 0:
            raise ValueError(f"input_padding {input_padding}: a number of pixels >= 0")
        self.image_channels = image_channels
        self.constant_channels = constant_channels
        # Pixels of mean grey (0 in normalised units) around every frame: unpadded layers shrink the map by their
        # kernels, so without it no output cell is centred within (Σ receptive radii) of the screen's edge and
        # neurons looking there are read out from displaced features. Unlike "same" padding of hidden layers this
        # pads only the stimulus, whose zero means "no contrast", not the features.
        self.input_padding = int(input_padding)
        self.gamma_input_spatial = gamma_input_spatial
        self.gamma_input_temporal = gamma_input_temporal
        self.compute_dtype = jnp.dtype(compute_dtype)
        inputs = [image_channels + constant_channels, *hidden_channels[:-1]]
        self.layers = nnx.List(
            [
                FactorizedLayer(i, o, k, t, bn_momentum, s, p, rngs=rngs)
                for i, o, k, t, s, p in zip(
                    inputs, hidden_channels, spatial_kernels, temporal_kernels, strides, paddings, strict=True
                )
            ]
        )
        self.out_channels = int(hidden_channels[-1])
        self.burn_in = int(sum(t - 1 for t in temporal_kernels))

    def __call__(self, video: jax.Array, constants: jax.Array | None, *, train: bool) -> jax.Array:
        """``video (B, T, H, W[, C])``, ``constants (B, T, K)`` → features ``(B, T − burn_in, H', W', C_out)``."""
        x = video[..., None] if video.ndim == 4 else video
        x = x.astype(self.compute_dtype)
        if self.input_padding:
            p = self.input_padding
            x = jnp.pad(x, ((0, 0), (0, 0), (p, p), (p, p), (0, 0)))
        if self.constant_channels == 0:
            constants = None
        for index, layer in enumerate(self.layers):
            x = layer(x, constants if index == 0 else None, train)
        return x

    def feature_pixels(self, image_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Pixel rows ``(H',)`` and columns ``(W',)`` on which the output cells of ``image_size`` frames are
        centred ("same" layers keep their input's grid)."""
        rows, cols = (np.arange(n + 2 * self.input_padding, dtype=np.float64) - self.input_padding for n in image_size)
        for layer in self.layers:
            if layer.padding == "VALID":
                rows = window_centres(rows, layer.kernel_size, layer.stride)
                cols = window_centres(cols, layer.kernel_size, layer.stride)
        return rows, cols

    def regularizer(self) -> jax.Array:
        first = self.layers[0]
        return self.gamma_input_spatial * laplace_l2_norm(first.spatial[...]) + (
            self.gamma_input_temporal * laplace_l2_norm_1d(first.temporal[...])
        )
