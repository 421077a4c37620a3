"""Behavioural gain modulator: a per-mouse MLP from the behaviour state to a multiplicative gain per neuron.

Running and arousal scale the responses of mouse V1 neurons multiplicatively (Niell & Stryker 2010; the
"modulator" of Sinz et al. 2018). Feeding behaviour as constant core channels (the SENSORIUM baselines) asks the
shared core to reproduce a per-neuron gain through its batch-normalised features; this module models it directly:

    rate_n(t) = output(readout_n(t)) · exp(g_n(b(t))),   g = Linear_H→N(ELU(Linear_F→H(b)))

The last layer starts at zero, so the gain starts at exactly 1 and the model begins as the plain readout. Stacked
over mice like the readouts (padded neurons get a gain too; their loss is masked).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sensorium_jax.models.layers import torch_linear_init


def _log_gain(params: dict, states: jax.Array) -> jax.Array:
    """One mouse: ``states (S, F)`` → log-gain ``(S, N)``."""
    hidden = jax.nn.elu(states.astype(jnp.float32) @ params["w1"] + params["b1"])
    return hidden @ params["w2"] + params["b2"]


class GainModulators(nnx.Module):
    """One modulator per mouse: ``F`` behaviour values → ``hidden`` units → one log-gain per (padded) neuron."""

    def __init__(self, num_mice: int, max_neurons: int, in_features: int = 2, hidden: int = 8, *, rngs: nnx.Rngs):
        m = num_mice
        self.w1 = nnx.Param(torch_linear_init(rngs.params(), (m, in_features, hidden), in_features))
        self.b1 = nnx.Param(torch_linear_init(rngs.params(), (m, hidden), in_features))
        self.w2 = nnx.Param(jnp.zeros((m, hidden, max_neurons)))
        self.b2 = nnx.Param(jnp.zeros((m, max_neurons)))

    def _params(self) -> dict:
        return {name: getattr(self, name)[...] for name in ("w1", "b1", "w2", "b2")}

    def __call__(self, states: jax.Array) -> jax.Array:
        """All mice: ``states (M, S, F)`` → gains ``(M, S, N_max)``."""
        return jnp.exp(jax.vmap(_log_gain)(self._params(), states))

    def one_mouse(self, mouse: jax.Array, states: jax.Array) -> jax.Array:
        """One mouse by a traced index: ``states (S, F)`` → gains ``(S, N_max)``."""
        return jnp.exp(_log_gain(jax.tree.map(lambda p: p[mouse], self._params()), states))
