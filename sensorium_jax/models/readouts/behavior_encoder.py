"""ViV1T's behaviour state encoder, one per mouse, stacked over mice like the readouts.

Per frame, the 4 behaviour values (pupil dilation, running speed, pupil centre x, y) go through
Linear 4→C → LayerNorm → GELU → dropout → Linear C→C → tanh, and the result is added to the C features each
neuron's Gaussian readout sampled from the core. The readout is linear in those features, so adding the encoding
before the feature weights equals adding ``encoding · W_features`` to the readout's output — which is how
:class:`~sensorium_jax.models.model.VideoModel` applies it, without touching the sampling code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sensorium_jax.models.layers import torch_linear_init


def _encode(params: dict, states: jax.Array, key: jax.Array | None, rate: float) -> jax.Array:
    """One mouse: ``states (S, F)`` → ``(S, C)``."""
    x = states.astype(jnp.float32) @ params["w1"] + params["b1"]
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    x = (x - mean) * jax.lax.rsqrt(var + 1e-5) * params["norm_scale"] + params["norm_bias"]
    x = jax.nn.gelu(x, approximate=False)
    if key is not None and rate > 0.0:
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
        x = jnp.where(keep, x / (1.0 - rate), 0.0)
    return jnp.tanh(x @ params["w2"] + params["b2"])


class BehaviorEncoders(nnx.Module):
    def __init__(self, num_mice: int, channels: int, in_features: int = 4, dropout: float = 0.0, *, rngs: nnx.Rngs):
        m, c = num_mice, channels
        self.dropout = dropout
        self.w1 = nnx.Param(torch_linear_init(rngs.params(), (m, in_features, c), in_features))
        self.b1 = nnx.Param(torch_linear_init(rngs.params(), (m, c), in_features))
        self.norm_scale = nnx.Param(jnp.ones((m, c)))
        self.norm_bias = nnx.Param(jnp.zeros((m, c)))
        self.w2 = nnx.Param(torch_linear_init(rngs.params(), (m, c, c), c))
        self.b2 = nnx.Param(torch_linear_init(rngs.params(), (m, c), c))

    def _params(self) -> dict:
        return {name: getattr(self, name)[...] for name in ("w1", "b1", "norm_scale", "norm_bias", "w2", "b2")}

    def __call__(self, states: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """All mice: ``states (M, S, F)`` → ``(M, S, C)``; ``key`` enables dropout (training)."""
        keys = None if key is None else jax.random.split(key, states.shape[0])
        return jax.vmap(_encode, in_axes=(0, 0, None if key is None else 0, None))(
            self._params(), states, keys, self.dropout
        )

    def one_mouse(self, mouse: jax.Array, states: jax.Array) -> jax.Array:
        """One mouse by a traced index, no dropout: ``states (S, F)`` → ``(S, C)``."""
        return _encode(jax.tree.map(lambda p: p[mouse], self._params()), states, None, 0.0)
