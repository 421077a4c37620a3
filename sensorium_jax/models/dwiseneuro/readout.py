"""DwiseNeuro's per-mouse readouts, stacked: a grouped 1 × 1 convolution ``C → n`` per mouse (groups 2, bias).

The reference's readout of a mouse with ``n`` neurons is ``Conv1d(C, n', 1, groups=2)`` with ``n' = ceil(n/2)·2``,
its output sliced to ``n``. Output channel ``j`` belongs to group ``j // (n'/2)`` and reads the input channels of
that group only. Here every mouse holds ``N_max`` neuron slots: ``features (M, C/g, N_max)`` (neuron ``j``'s
weights over the channels of its group), ``bias (M, N_max)``, and a constant ``neuron_group (M, N_max)``; a
constant ``neuron_mask`` marks the real neurons. The response is computed against every group and the neuron's
own group picked: ``g×`` the multiply-adds of the grouped conv, but each weight is read once, which is what bounds
this layer (a few rows times 4096 × 8000 weights per mouse).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sensorium_jax.models.layers import Constant


def neuron_groups(num_neurons: int, slots: int, groups: int) -> np.ndarray:
    """Group of each of ``slots`` neuron slots for a mouse with ``num_neurons``: ``j // ceil(n / g)`` (the
    reference's contiguous output groups of ``n' / g`` channels); padding slots take the last group."""
    per_group = math.ceil(num_neurons / groups)
    return np.minimum(np.arange(slots) // per_group, groups - 1).astype(np.int32)


def _read_one_mouse(features: jax.Array, bias: jax.Array, group: jax.Array, x: jax.Array) -> jax.Array:
    """``x (S, C)`` → ``(S, N)``; ``features (C/g, N)``, ``group (N,)``."""
    cg = features.shape[0]
    grouped = x.reshape(x.shape[0], -1, cg)  # (S, g, C/g)
    every_group = jnp.einsum("sgc,cn->sgn", grouped, features.astype(x.dtype))
    own = jnp.take_along_axis(every_group, group[None, None, :], axis=1)[:, 0]
    return own.astype(jnp.float32) + bias


class GroupedReadouts(nnx.Module):
    def __init__(
        self,
        num_neurons: Sequence[int],
        in_channels: int,
        groups: int = 2,
        initial_bias: Sequence[np.ndarray] | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        """``initial_bias``: per-mouse ``(n,)`` starting biases (zeros without it, the reference's conv init)."""
        if in_channels % groups:
            raise ValueError(f"{in_channels} readout input channels are not divisible by {groups} groups")
        counts = tuple(int(n) for n in num_neurons)
        m, n_max = len(counts), max(counts)
        self.num_neurons = counts
        self.groups = groups
        mask = np.zeros((m, n_max), bool)
        group = np.zeros((m, n_max), np.int32)
        std = np.zeros((m, 1, 1), np.float32)
        for i, n in enumerate(counts):
            mask[i, :n] = True
            group[i] = neuron_groups(n, n_max, groups)
            # the reference's init, N(0, 2 / fan_out) with fan_out = n' / g of this mouse's conv
            std[i] = math.sqrt(2.0 / (math.ceil(n / groups)))
        self.neuron_mask = Constant(jnp.asarray(mask))
        self.neuron_group = Constant(jnp.asarray(group))
        weights = jax.random.normal(rngs.params(), (m, in_channels // groups, n_max), jnp.float32)
        self.features = nnx.Param(weights * jnp.asarray(std))
        bias = np.zeros((m, n_max), np.float32)
        for i, values in enumerate(initial_bias or ()):
            bias[i, : counts[i]] = values
        self.bias = nnx.Param(jnp.asarray(bias))

    def __call__(self, x: jax.Array) -> jax.Array:
        """All mice: ``x (M, S, C)`` → ``(M, S, N_max)`` (padding slots are garbage; mask them)."""
        return jax.vmap(_read_one_mouse)(self.features[...], self.bias[...], self.neuron_group[...], x)

    def one_mouse(self, mouse: jax.Array, x: jax.Array) -> jax.Array:
        """One mouse chosen by a traced index (one compile for all mice): ``x (S, C)`` → ``(S, N_max)``."""
        pick = lambda v: v[...][mouse]
        return _read_one_mouse(pick(self.features), pick(self.bias), pick(self.neuron_group), x)

    def regularizer(self) -> jax.Array:
        """None in the reference: zeros ``(M,)``."""
        return jnp.zeros((len(self.num_neurons),), jnp.float32)
