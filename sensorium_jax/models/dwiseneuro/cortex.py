"""DwiseNeuro's "cortex": ``ShuffleLayer``s that widen the pooled per-frame features (256 → 1024 → 2048 → 4096).

Layer: grouped 1 × 1 conv (groups 2, no bias) → BN → SiLU → channel shuffle → DropPath, plus the input tiled to
the new width through its own BN. Works on ``(N, T, C)``: one feature vector per frame, no spatial extent left.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sensorium_jax.models.dwiseneuro.core import batch_norm
from sensorium_jax.models.dwiseneuro.layers import (
    channel_shuffle,
    drop_path,
    fan_out_normal,
    grouped_pointwise,
    tile_channels,
)


class ShuffleLayer(nnx.Module):
    def __init__(
        self, in_channels: int, out_channels: int, groups: int, drop_path_rate: float, dtype, *, rngs: nnx.Rngs
    ):
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels} → {out_channels} are not divisible by {groups} groups")
        self.groups = groups
        self.out_channels = out_channels
        self.drop_path_rate = drop_path_rate
        self.dtype = dtype
        shape = (groups, in_channels // groups, out_channels // groups)
        self.kernel = nnx.Param(fan_out_normal(rngs.params(), shape, out_channels // groups))
        self.norm = batch_norm(out_channels, dtype, rngs)
        self.shortcut_norm = batch_norm(out_channels, dtype, rngs)

    def __call__(self, x: jax.Array, *, train: bool, key: jax.Array | None) -> jax.Array:
        ra = not train
        h = jax.nn.silu(self.norm(grouped_pointwise(x, self.kernel[...].astype(self.dtype)), use_running_average=ra))
        h = drop_path(channel_shuffle(h, self.groups), self.drop_path_rate, key)
        return h + self.shortcut_norm(tile_channels(x, self.out_channels), use_running_average=ra)


class Cortex(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (1024, 2048, 4096),
        groups: int = 2,
        drop_path: float = 0.1,
        compute_dtype: str = "float32",
        *,
        rngs: nnx.Rngs,
    ):
        dtype = jnp.dtype(compute_dtype)
        layers, previous = [], in_channels
        for out in channels:
            layers.append(ShuffleLayer(previous, out, groups, drop_path, dtype, rngs=rngs))
            previous = out
        self.layers = nnx.List(layers)
        self.out_channels = previous

    def __call__(self, x: jax.Array, *, train: bool, key: jax.Array | None = None) -> jax.Array:
        """``(N, T, C_in)`` → ``(N, T, C_out)``; ``key`` drives DropPath."""
        for i, layer in enumerate(self.layers):
            x = layer(x, train=train, key=None if key is None else jax.random.fold_in(key, i))
        return x
