"""Behavioural modulation of a digital twin: predicted gain versus running speed and pupil size, stimulus fixed.

One behaviour variable is swept over raw values (default: the session's mean ± 2 std, within the recorded range)
while the other stays at its mean and the eye at its mean position; the stimulus is the same clip for every value.
A variable the model never saw (its prediction does not change with it) is an error, not a flat line.

Per neuron: the gain ``r(value) / r(mean)`` at every sweep value, and ``log_gain_per_std``, the least-squares slope
of ``log r`` against the value in the model's units (raw / std). For a multiplicative gain ``exp(g · z)`` — the
synthetic dataset's — the slope is ``g``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sensorium_jax.insilico.twin import BEHAVIOUR_VARIABLES, DigitalTwin


def sweep_values(twin: DigitalTwin, variable: str, points: int = 9) -> np.ndarray:
    """Raw values from the session's low to high end of ``variable`` (``points`` evenly spaced)."""
    channel = BEHAVIOUR_VARIABLES[variable]
    return np.linspace(twin.space.behavior_low[channel], twin.space.behavior_high[channel], points)


def sweep(
    twin: DigitalTwin, neurons: np.ndarray, stimulus: np.ndarray, variable: str, values_raw: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean predicted rates ``(N, V)`` to ``stimulus (T, H, W)`` (contrast units) with ``variable`` at each raw
    value, and ``(N,)`` at the session's mean behaviour."""
    twin.require_behaviour([variable])
    channel = BEHAVIOUR_VARIABLES[variable]
    stimulus = jnp.asarray(stimulus, jnp.float32)
    frames = stimulus.shape[0]
    if frames <= twin.burn_in or frames < twin.min_frames:
        raise ValueError(f"the stimulus needs more than {twin.burn_in} frames (and ≥ {twin.min_frames}), got {frames}")
    neuron_index = jnp.asarray(neurons)

    @jax.jit
    def respond(params, values):
        count = values.shape[0]
        behavior, pupil = twin.default_behavior(count, frames)
        scaled = twin.space.behavior_to_model(jnp.zeros(2).at[channel].set(1.0))[channel] * values
        behavior = behavior.at[..., channel].set(jnp.broadcast_to(scaled[:, None], (count, frames)))
        videos = jnp.broadcast_to(stimulus, (count, *stimulus.shape))
        return twin.respond(params, videos, behavior, pupil)[..., neuron_index].mean(axis=1)  # (V, N)

    mean_value = jnp.asarray([twin.space.behavior_mean[channel]], jnp.float32)
    values = jnp.concatenate([jnp.asarray(values_raw, jnp.float32), mean_value])
    rates = np.asarray(respond(twin.params, values))
    return rates[:-1].T, rates[-1]


def run_behaviour(
    twin: DigitalTwin,
    neurons: np.ndarray,
    stimulus: np.ndarray,
    variables: tuple[str, ...] = ("running", "pupil"),
    points: int = 9,
) -> dict[str, dict[str, np.ndarray]]:
    """Per variable: ``values_raw (V,)``, ``rates (N, V)``, ``reference (N,)``, ``gain (N, V)`` and
    ``log_gain_per_std (N,)``. Checks every variable first, so a missing one fails before any work."""
    twin.require_behaviour(list(variables))
    out = {}
    for variable in variables:
        values = sweep_values(twin, variable, points)
        rates, reference = sweep(twin, neurons, stimulus, variable, values)
        scale = float(twin.space.behavior_scale[BEHAVIOUR_VARIABLES[variable]])
        out[variable] = {
            "values_raw": values,
            "rates": rates,
            "reference": reference,
            "gain": rates / np.maximum(reference[:, None], 1e-12),
            "log_gain_per_std": log_slope(values * scale, rates),
        }
    return out


def log_slope(values: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``log rates (N, V)`` against ``values (V,)``."""
    x = np.asarray(values, np.float64) - np.mean(values)
    log_rates = np.log(np.maximum(np.asarray(rates, np.float64), 1e-12))
    return (log_rates - log_rates.mean(axis=1, keepdims=True)) @ x / np.maximum((x**2).sum(), 1e-20)
