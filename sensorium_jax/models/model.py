"""The video model: a shared core, per-mouse Gaussian readouts and shifters, and the output nonlinearity.

Built from a config (``config.model``) and the data it will see (:class:`MiceInfo`); the core is chosen by name
from :data:`sensorium_jax.models.cores.CORES`, so adding a core is one file and one registry line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sensorium_jax.models.cores import CORES
from sensorium_jax.models.layers import elu_plus_one
from sensorium_jax.models.readouts import GaussianReadouts
from sensorium_jax.models.shifter import MLPShifters

OUTPUT_NONLINEARITIES = {"elu1": elu_plus_one, "exp": jnp.exp, "softplus": jax.nn.softplus}


@dataclasses.dataclass(frozen=True)
class MiceInfo:
    """What a model needs to know about the recordings it reads out."""

    names: tuple[str, ...]
    coordinates: tuple[np.ndarray, ...]  # (N_m, 3) cortical positions
    mean_responses: tuple[np.ndarray, ...]  # (N_m,) normalised, initialises the readout biases

    @property
    def num_neurons(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coordinates)

    @property
    def max_neurons(self) -> int:
        return max(self.num_neurons)

    @classmethod
    def from_sessions(cls, sessions: Sequence) -> MiceInfo:
        return cls(
            names=tuple(s.name for s in sessions),
            coordinates=tuple(s.coordinates for s in sessions),
            mean_responses=tuple(s.mean_response() for s in sessions),
        )


class VideoModel(nnx.Module):
    def __init__(self, config: ml_collections.ConfigDict, mice: MiceInfo, *, rngs: nnx.Rngs):
        core_config = dict(config.core)
        core_name = core_config.pop("name")
        if core_name not in CORES:
            raise ValueError(f"unknown core {core_name!r}; available: {sorted(CORES)}")
        self.use_behavior = bool(config.behavior_channels)
        self.use_pupil_channels = bool(config.pupil_center_channels)
        constant_channels = 2 * self.use_behavior + 2 * self.use_pupil_channels
        self.core = CORES[core_name](constant_channels=constant_channels, **core_config, rngs=rngs)
        self.readouts = GaussianReadouts(
            mice.coordinates,
            self.core.out_channels,
            mean_responses=mice.mean_responses,
            **dict(config.readout),
            rngs=rngs,
        )
        self.shifters = MLPShifters(len(mice.names), **dict(config.shifter), rngs=rngs) if config.use_shifter else None
        if config.output not in OUTPUT_NONLINEARITIES:
            raise ValueError(f"unknown output nonlinearity {config.output!r}; one of {sorted(OUTPUT_NONLINEARITIES)}")
        self.output = config.output
        self.burn_in = self.core.burn_in

    def _constants(self, behavior: jax.Array, pupil_center: jax.Array) -> jax.Array | None:
        parts = [behavior] * self.use_behavior + [pupil_center] * self.use_pupil_channels
        return jnp.concatenate(parts, axis=-1) if parts else None

    def __call__(
        self,
        videos: jax.Array,
        behavior: jax.Array,
        pupil_center: jax.Array,
        *,
        train: bool,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Every mouse's sub-batch: ``videos (M, b, T, H, W)`` … → rates ``(M, b, T − burn_in, N_max)``.

        ``key`` draws the readout positions (training); without it the mean positions are used.
        """
        m, b, t = videos.shape[:3]
        flat = lambda x: x.reshape(m * b, *x.shape[2:])
        features = self.core(flat(videos), self._constants(flat(behavior), flat(pupil_center)), train=train)
        t_out = features.shape[1]
        features = features.reshape(m, b * t_out, *features.shape[2:])
        shift = None
        if self.shifters is not None:
            shift = self.shifters(pupil_center[:, :, t - t_out :].reshape(m, b * t_out, 2))
        rates = OUTPUT_NONLINEARITIES[self.output](self.readouts(features, shift, key))
        return rates.reshape(m, b, t_out, -1)

    def predict_mouse(
        self, mouse: jax.Array, videos: jax.Array, behavior: jax.Array, pupil_center: jax.Array
    ) -> jax.Array:
        """Evaluation of one mouse (traced index): ``videos (E, T, H, W)`` → ``(E, T − burn_in, N_max)``."""
        e, t = videos.shape[:2]
        features = self.core(videos, self._constants(behavior, pupil_center), train=False)
        t_out = features.shape[1]
        features = features.reshape(e * t_out, *features.shape[2:])
        shift = None
        if self.shifters is not None:
            shift = self.shifters(pupil_center[:, t - t_out :].reshape(e * t_out, 2), mouse=mouse)
        rates = OUTPUT_NONLINEARITIES[self.output](self.readouts.one_mouse(mouse, features, shift))
        return rates.reshape(e, t_out, -1)

    def regularizer(self) -> jax.Array:
        """Per-mouse penalty (M,): the core's, counted once per mouse batch as in the reference, plus the readout's."""
        return self.core.regularizer() + self.readouts.regularizer()


def count_parameters(model: nnx.Module) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
