"""The synthetic dataset's own neurons as a model with ``predict_mouse``: the tools' upper bound.

Running an experiment on this "ground-truth twin" measures how well the *tools* recover known receptive fields
(a perfect model); running it on a trained model measures the model. The computation follows
:mod:`sensorium_jax.data.synthetic` (``_Model``): Gabor quadrature filters, fast/slow temporal kernels
(space-time inseparable for direction-selective cells), simple (linear) or complex (energy) drive, smooth
threshold with saturation, multiplicative behaviour gain — in jnp, from the model's normalised inputs. The eye is
taken to be at its reference position (no retinal shift): in-silico stimuli are shown at the mean eye position.
Rates are in the model's normalised response units (raw × the session's response precision).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sensorium_jax.data import synthetic
from sensorium_jax.insilico.twin import DigitalTwin, InputSpace, twin_from_module

_GREY = 127.5


class GroundTruthNeurons:
    """``predict_mouse(mouse, videos, behavior, pupil_center)`` of one synthetic population (mouse ignored).

    Inputs are in the units of ``space`` (the session's normalisation); output ``(E, T − burn_in, N)``.
    """

    def __init__(self, population: synthetic.Population, space: InputSpace, output_scale: np.ndarray | None = None):
        even, odd = population.spatial_filters()
        fast, slow = population.temporal_kernels()
        n = population.num_neurons
        self.num_neurons = n
        self.burn_in = fast.shape[1] - 1
        self.space = space
        self.filters = jnp.asarray(np.concatenate([even.reshape(n, -1), odd.reshape(n, -1)]).T)  # (HW, 2N)
        self.fast, self.slow = jnp.asarray(fast), jnp.asarray(slow)
        f32 = lambda name: jnp.asarray(np.asarray(getattr(population, name), np.float32))
        self.sign = f32("direction_sign")
        self.is_complex = jnp.asarray(population.is_complex.astype(bool))
        self.constants = {
            name: f32(name)
            for name in (
                "drive_mean",
                "drive_std",
                "threshold",
                "saturation",
                "response_mean",
                "baseline",
                "gain_running",
                "gain_pupil",
                "rate_scale",
                "amplitude",
                "running_mean",
                "running_std",
                "pupil_mean",
                "pupil_std",
            )
        }
        self.output_scale = jnp.ones(n) if output_scale is None else jnp.asarray(output_scale, jnp.float32)

    def _causal(self, x: jax.Array, kernels: jax.Array) -> jax.Array:
        """x (E, T, N), kernels (N, taps) → (E, T − burn_in, N): frames with a full kernel history only."""
        t_out = x.shape[1] - self.burn_in
        return sum(
            kernels[:, lag] * x[:, self.burn_in - lag : self.burn_in - lag + t_out] for lag in range(self.burn_in + 1)
        )

    def predict_mouse(self, mouse, videos, behavior, pupil_center, lengths=None):
        del mouse, pupil_center, lengths
        c = self.constants
        space = self.space
        raw = videos / space.video_scale + space.video_mean
        contrast = (raw - _GREY) / _GREY
        e, t = contrast.shape[:2]
        spatial = contrast.reshape(e, t, -1) @ self.filters  # (E, T, 2N)
        n = self.num_neurons
        even, odd = spatial[..., :n], spatial[..., n:]
        a = self._causal(even, self.fast) + self.sign * self._causal(odd, self.slow)
        b = self._causal(odd, self.fast) - self.sign * self._causal(even, self.slow)
        drive = jnp.where(self.is_complex, a**2 + b**2, a)
        u = (drive - c["drive_mean"]) / c["drive_std"]
        rectified = jax.nn.softplus(3.0 * (u - c["threshold"])) / 3.0
        stimulus = rectified / (1.0 + rectified / c["saturation"]) / c["response_mean"]
        raw_behaviour = behavior[:, self.burn_in :] / space.behavior_scale  # (E, T', 2) [pupil, running]
        running_z = 3.0 * jnp.tanh((raw_behaviour[..., 1:2] - c["running_mean"]) / c["running_std"] / 3.0)
        pupil_z = 3.0 * jnp.tanh((raw_behaviour[..., 0:1] - c["pupil_mean"]) / c["pupil_std"] / 3.0)
        gain = jnp.exp(c["gain_running"] * running_z + c["gain_pupil"] * pupil_z)
        events = (c["baseline"] + (1.0 - c["baseline"]) * stimulus) * gain * c["rate_scale"]
        return events * c["amplitude"] * self.output_scale


def ground_truth_twin(session_path: str | Path) -> DigitalTwin:
    """The twin of a synthetic session's true neurons, in the session's normalised units."""
    from sensorium_jax.data.reader import Session

    session = Session(session_path, validate="headers")
    arrays = dict(np.load(Path(session_path) / synthetic.GROUND_TRUTH_DIR / "neurons.npz"))
    population = synthetic.Population.from_dict(arrays)
    space = InputSpace.from_session(session)
    precision = session.statistics["responses"].scale
    precision = precision.mean(axis=-1) if precision.ndim == 2 else precision
    model = GroundTruthNeurons(population, space, output_scale=np.broadcast_to(precision, (population.num_neurons,)))
    return twin_from_module(
        model,
        num_neurons=population.num_neurons,
        unit_ids=session.unit_ids,
        space=space,
        name="ground truth",
        mouse_name=session.name,
    )
