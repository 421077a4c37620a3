"""DwiseNeuro's core: a 1 × 1 × 1 stem and factorised inverted-residual 3-D blocks (``winning_models.md`` §1).

Input: one window, ``video (N, W, H, W)`` already padded to the square input and ``constants (N, W, K)`` (behaviour
and pupil centre, constant maps in the reference); output ``(N, W, H', W', C)``. Time is never strided.

Block (``InvertedResidual3d``), on ``x`` + the fixed positional encoding:

1. pointwise expansion ``C_in → e·C_in``, BN, SiLU;
2. depthwise spatial ``(1, 3, 3)`` (the block's stride is here), BN, SiLU;
3. depthwise temporal ``(5, 1, 1)``, BN, SiLU;
4. squeeze-excitation: mean over T·H·W → 1 × 1 conv to ``e·C_in // 32`` (bias) → SiLU → 1 × 1 conv back (bias) →
   sigmoid, multiplying the features;
5. pointwise projection ``→ C_out``, BN;

then ``drop_path(body) + BN(shortcut)``, the shortcut parameter-free (nearest downsampling when strided, channels
tiled and truncated). Convolutions other than the SE's have no bias. BN is torch's (momentum 0.1, ε 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sensorium_jax.models.dwiseneuro.layers import (
    depthwise_spatial,
    depthwise_temporal,
    drop_path,
    fan_out_normal,
    positional_encoding_3d,
    tile_channels,
)


def batch_norm(channels: int, dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """torch ``BatchNorm`` defaults (running average momentum 0.1 = Flax 0.9, ε 1e-5), two-pass variance;
    statistics are float32 whatever the compute dtype."""
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, use_fast_variance=False, dtype=dtype, rngs=rngs)


def resolve_depthwise(implementation: str) -> str:
    """``"auto"``: shifted multiply-adds on CPU (XLA's grouped convolution is slow there), XLA's elsewhere."""
    if implementation == "auto":
        return "shifted" if jax.default_backend() == "cpu" else "xla"
    if implementation not in ("shifted", "xla"):
        raise ValueError(f"depthwise implementation must be 'auto', 'shifted' or 'xla', got {implementation!r}")
    return implementation


class InvertedResidual3d(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expansion: int,
        se_reduction: int,
        spatial_kernel: int,
        temporal_kernel: int,
        drop_path_rate: float,
        dtype,
        depthwise: str,
        *,
        rngs: nnx.Rngs,
    ):
        mid = in_channels * expansion
        squeeze = max(mid // se_reduction, 1)
        k, kt = spatial_kernel, temporal_kernel
        self.stride = stride
        self.out_channels = out_channels
        self.drop_path_rate = drop_path_rate
        self.dtype = dtype
        self.depthwise = depthwise
        self.expand = nnx.Param(fan_out_normal(rngs.params(), (in_channels, mid), mid))
        self.expand_norm = batch_norm(mid, dtype, rngs)
        self.spatial = nnx.Param(fan_out_normal(rngs.params(), (k, k, mid), k * k))
        self.spatial_norm = batch_norm(mid, dtype, rngs)
        self.temporal = nnx.Param(fan_out_normal(rngs.params(), (kt, mid), kt))
        self.temporal_norm = batch_norm(mid, dtype, rngs)
        self.se_reduce = nnx.Param(fan_out_normal(rngs.params(), (mid, squeeze), squeeze))
        self.se_reduce_bias = nnx.Param(jnp.zeros((squeeze,)))
        self.se_expand = nnx.Param(fan_out_normal(rngs.params(), (squeeze, mid), mid))
        self.se_expand_bias = nnx.Param(jnp.zeros((mid,)))
        self.project = nnx.Param(fan_out_normal(rngs.params(), (mid, out_channels), out_channels))
        self.project_norm = batch_norm(out_channels, dtype, rngs)
        self.shortcut_norm = batch_norm(out_channels, dtype, rngs)

    def squeeze_excitation(self, x: jax.Array) -> jax.Array:
        pooled = x.astype(jnp.float32).mean(axis=(1, 2, 3))  # (N, mid)
        hidden = jax.nn.silu(pooled @ self.se_reduce[...] + self.se_reduce_bias[...])
        gate = jax.nn.sigmoid(hidden @ self.se_expand[...] + self.se_expand_bias[...])
        return x * gate[:, None, None, None, :].astype(x.dtype)

    def shortcut(self, x: jax.Array) -> jax.Array:
        if self.stride > 1:  # torch nearest interpolation by 1/s keeps every s-th pixel, starting at 0
            x = x[:, :, :: self.stride, :: self.stride]
        return tile_channels(x, self.out_channels)

    def __call__(self, x: jax.Array, *, train: bool, key: jax.Array | None) -> jax.Array:
        """``x (N, T, H, W, C_in)`` (positional encoding already added) → ``(N, T, H/s, W/s, C_out)``."""
        ra = not train
        dt = self.dtype
        h = jnp.einsum("nthwc,cd->nthwd", x, self.expand[...].astype(dt))
        h = jax.nn.silu(self.expand_norm(h, use_running_average=ra))
        h = depthwise_spatial(h, self.spatial[...], self.stride, self.depthwise)
        h = jax.nn.silu(self.spatial_norm(h, use_running_average=ra))
        h = depthwise_temporal(h, self.temporal[...])
        h = jax.nn.silu(self.temporal_norm(h, use_running_average=ra))
        h = self.squeeze_excitation(h)
        h = jnp.einsum("nthwc,cd->nthwd", h, self.project[...].astype(dt))
        h = self.project_norm(h, use_running_average=ra)
        return drop_path(h, self.drop_path_rate, key) + self.shortcut_norm(self.shortcut(x), use_running_average=ra)


class DwiseCore(nnx.Module):
    """Stem + blocks. ``block_channels[i]``/``block_strides[i]``: output channels / spatial stride of block ``i``;
    DropPath rate ``drop_path · i / num_blocks`` for block ``i``."""

    def __init__(
        self,
        constant_channels: int = 4,
        stem_channels: int = 64,
        block_channels: Sequence[int] = (64, 64, 64, 128, 128, 128, 256, 256, 256),
        block_strides: Sequence[int] = (2, 1, 1, 1, 2, 1, 1, 2, 1),
        expansion: int = 7,
        se_reduction: int = 32,
        spatial_kernel: int = 3,
        temporal_kernel: int = 5,
        drop_path: float = 0.1,
        compute_dtype: str = "float32",
        depthwise: str = "auto",
        *,
        rngs: nnx.Rngs,
    ):
        if len(block_channels) != len(block_strides):
            raise ValueError(f"{len(block_channels)} block channel counts but {len(block_strides)} strides")
        dtype = jnp.dtype(compute_dtype)
        self.dtype = dtype
        self.constant_channels = constant_channels
        # stem: 1 × 1 × 1 conv (1 + K) → C, no bias; row 0 reads the video, rows 1… the constant channels
        self.stem = nnx.Param(fan_out_normal(rngs.params(), (1 + constant_channels, stem_channels), stem_channels))
        self.stem_norm = batch_norm(stem_channels, dtype, rngs)
        impl = resolve_depthwise(depthwise)
        blocks, channels = [], stem_channels
        num_blocks = len(block_channels)
        for i, (out, stride) in enumerate(zip(block_channels, block_strides, strict=True)):
            blocks.append(
                InvertedResidual3d(
                    channels,
                    out,
                    stride,
                    expansion,
                    se_reduction,
                    spatial_kernel,
                    temporal_kernel,
                    drop_path * i / num_blocks,
                    dtype,
                    impl,
                    rngs=rngs,
                )
            )
            channels = out
        self.blocks = nnx.List(blocks)
        self.out_channels = channels

    def stem_features(self, video: jax.Array, constants: jax.Array, train: bool) -> jax.Array:
        """The stem on the video plus constant maps: ``video (N, T, H, W)``, ``constants (N, T, K)`` → ``(N, T, H, W,
        C)``. A 1 × 1 × 1 conv of a constant map is the constant times its weight: added, not broadcast first."""
        kernel = self.stem[...].astype(self.dtype)
        x = video.astype(self.dtype)[..., None] * kernel[0]
        x = x + jnp.einsum("ntk,kc->ntc", constants.astype(self.dtype), kernel[1:])[:, :, None, None, :]
        return self.stem_norm(x, use_running_average=not train)

    def __call__(
        self, video: jax.Array, constants: jax.Array, *, train: bool, key: jax.Array | None = None
    ) -> jax.Array:
        """``video (N, T, H, W)``, ``constants (N, T, K)`` → ``(N, T, H', W', C_out)``; ``key`` drives DropPath."""
        x = self.stem_features(video, constants, train)
        for i, block in enumerate(self.blocks):
            _, t, h, w, c = x.shape
            x = x + positional_encoding_3d(t, h, w, c).astype(x.dtype)
            x = block(x, train=train, key=None if key is None else jax.random.fold_in(key, i))
        return x
