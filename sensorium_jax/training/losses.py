"""Losses on padded, masked per-mouse batches ``(M, b, T, N_max)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

POISSON_EPS = 1e-8


def poisson_loss(prediction: jax.Array, target: jax.Array, neuron_mask: jax.Array) -> jax.Array:
    """Per-mouse Poisson negative log-likelihood without the constant term: Σ (ŷ − y·log(ŷ + ε)), shape (M,).

    neuralpredictors ``PoissonLoss(avg=False)``: summed over clips, frames and real (unmasked) neurons.
    """
    loss = prediction - target * jnp.log(prediction + POISSON_EPS)
    loss = loss * neuron_mask[:, None, None, :]
    return loss.sum(axis=(1, 2, 3))


def correlation_loss(prediction: jax.Array, target: jax.Array, neuron_mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Per-mouse Σ_neurons (1 − corr), correlation over clips and frames of each neuron; shape (M,)."""
    m, n = prediction.shape[0], prediction.shape[-1]
    p = prediction.reshape(m, -1, n)
    t = target.reshape(m, -1, n)
    p = (p - p.mean(1, keepdims=True)) / (p.std(1, keepdims=True) + eps)
    t = (t - t.mean(1, keepdims=True)) / (t.std(1, keepdims=True) + eps)
    corr = (p * t).mean(1)
    return ((1.0 - corr) * neuron_mask).sum(-1)
