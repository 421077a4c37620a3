"""Exponential moving average of the parameters and the batch-norm statistics (DwiseNeuro's ``ModelEma``).

DwiseNeuro keeps ``ema ← d · ema + (1 − d) · value`` over *everything* in the model's state dict — parameters
and BatchNorm running statistics — after every optimiser step (d = 0.999, starting from a copy of the initial
model), and validates, keeps and submits the EMA model. Averaging the parameters alone would pair averaged
weights with batch statistics of the raw weights, so both are averaged here (``winning_models.md``, "Port
gotchas"). Non-float leaves (none in the current models) are copied rather than averaged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct


@struct.dataclass
class EmaWeights:
    """The averaged model: parameters and batch statistics, in the train state's layout."""

    params: nnx.State
    batch_stats: nnx.State


def init_ema(params: nnx.State, batch_stats: nnx.State) -> EmaWeights:
    """Start from a copy of the current model (the reference deep-copies the model when training starts)."""
    copy = lambda tree: jax.tree.map(jnp.array, tree)
    return EmaWeights(params=copy(params), batch_stats=copy(batch_stats))


def _average(decay: float):
    def average(old: jax.Array, new: jax.Array) -> jax.Array:
        if not jnp.issubdtype(new.dtype, jnp.inexact):
            return new
        return (decay * old + (1.0 - decay) * new).astype(new.dtype)

    return average


def update_ema(ema: EmaWeights, params: nnx.State, batch_stats: nnx.State, decay: float) -> EmaWeights:
    """One step of ``ema ← decay · ema + (1 − decay) · value`` for parameters and batch statistics."""
    average = _average(decay)
    return EmaWeights(
        params=jax.tree.map(average, ema.params, params),
        batch_stats=jax.tree.map(average, ema.batch_stats, batch_stats),
    )
