"""The video model: a shared core, per-mouse Gaussian readouts and shifters, and the output nonlinearity.

Built from a config (``config.model``) and the data it will see (:class:`MiceInfo`); the core is chosen by name
from :data:`sensorium_jax.models.cores.CORES`, so adding a core is one file and one registry line.

Optional pieces, off unless the config asks for them (the factorised baseline uses none):

* ``config.behavior_encoder.enabled``: ViV1T's per-mouse behaviour state encoder, added to the sampled features.
* ``config.modulator.enabled``: a per-mouse behavioural gain (``readouts/modulator.py``) multiplying the rates.
* Cores whose ``__call__`` takes ``key`` (dropout: ViV1T) get their own stream derived from the step's key; cores
  that take ``lengths`` (bidirectional temporal attention) are told how many frames of each trial are valid.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sensorium_jax.models.cores import CORES
from sensorium_jax.models.layers import elu_plus_one
from sensorium_jax.models.readouts import GaussianReadouts
from sensorium_jax.models.readouts.behavior_encoder import BehaviorEncoders
from sensorium_jax.models.readouts.gaussian import pixels_to_grid
from sensorium_jax.models.readouts.modulator import GainModulators
from sensorium_jax.models.shifter import MLPShifters

OUTPUT_NONLINEARITIES = {"elu1": elu_plus_one, "exp": jnp.exp, "softplus": jax.nn.softplus}


@dataclasses.dataclass(frozen=True)
class MiceInfo:
    """What a model needs to know about the recordings it reads out."""

    names: tuple[str, ...]
    coordinates: tuple[np.ndarray, ...]  # (N_m, 3) cortical positions
    mean_responses: tuple[np.ndarray, ...]  # (N_m,) normalised, initialises the readout biases
    # (N_m, 2) estimated receptive-field centres in pixels (x, y) of ``image_size`` frames (data/rf_estimate.py):
    # start the readout positions there when ``readout.init_positions = "receptive_fields"``
    rf_centres: tuple[np.ndarray, ...] | None = None
    image_size: tuple[int, int] | None = None

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


def initial_positions(core: nnx.Module, mice: MiceInfo, kind: str, readout: dict) -> list[np.ndarray] | None:
    """Readout positions to start from, per mouse ``(N_m, 2)`` in grid units, or None (the readout's random init).

    ``kind`` "random", or "receptive_fields": each neuron at its estimated receptive-field centre, carried onto the
    core's feature map through the core's ``feature_pixels`` (where each output cell's centre lies on the image).
    Without estimates in ``mice`` (a model rebuilt only to restore a checkpoint) the random init is used.
    """
    if kind not in ("random", "receptive_fields"):
        raise ValueError(f"readout.init_positions {kind!r}: one of 'random', 'receptive_fields'")
    if kind == "random":
        return None
    if readout.get("grid_mean_predictor", True):
        raise ValueError(
            "readout.init_positions='receptive_fields' sets free per-neuron positions: it needs "
            "readout.grid_mean_predictor=False"
        )
    if not hasattr(core, "feature_pixels"):
        raise ValueError(
            f"readout.init_positions='receptive_fields': the {type(core).__name__} core does not say where its "
            "feature map lies on the image (feature_pixels); use init_positions='random'"
        )
    if mice.rf_centres is None or mice.image_size is None:
        return None
    rows, cols = core.feature_pixels(mice.image_size)
    return [pixels_to_grid(centres, rows, cols) for centres in mice.rf_centres]


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
        core_arguments = inspect.signature(type(self.core).__call__).parameters
        self.core_takes_key = "key" in core_arguments
        self.core_takes_lengths = "lengths" in core_arguments
        readout = dict(config.readout)
        self.readouts = GaussianReadouts(
            mice.coordinates,
            self.core.out_channels,
            mean_responses=mice.mean_responses,
            initial_positions=initial_positions(self.core, mice, readout.pop("init_positions", "random"), readout),
            **readout,
            rngs=rngs,
        )
        self.shifters = MLPShifters(len(mice.names), **dict(config.shifter), rngs=rngs) if config.use_shifter else None
        encoder = dict(config.get("behavior_encoder") or {})
        self.behavior_encoder = (
            BehaviorEncoders(len(mice.names), self.core.out_channels, **encoder, rngs=rngs)
            if encoder.pop("enabled", False)
            else None
        )
        modulator = dict(config.get("modulator") or {})
        self.modulators = (
            GainModulators(len(mice.names), mice.max_neurons, **modulator, rngs=rngs)
            if modulator.pop("enabled", False)
            else None
        )
        if config.output not in OUTPUT_NONLINEARITIES:
            raise ValueError(f"unknown output nonlinearity {config.output!r}; one of {sorted(OUTPUT_NONLINEARITIES)}")
        self.output = config.output
        self.burn_in = self.core.burn_in

    def _constants(self, behavior: jax.Array, pupil_center: jax.Array) -> jax.Array | None:
        parts = [behavior] * self.use_behavior + [pupil_center] * self.use_pupil_channels
        return jnp.concatenate(parts, axis=-1) if parts else None

    def _core(self, videos, constants, train: bool, key: jax.Array | None, lengths: jax.Array | None) -> jax.Array:
        kwargs = {}
        if self.core_takes_key:
            kwargs["key"] = key
        if self.core_takes_lengths and lengths is not None:
            kwargs["lengths"] = lengths
        return self.core(videos, constants, train=train, **kwargs)

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

        ``key`` draws the readout positions (training); without it the mean positions are used. Cores and
        encoders with dropout get streams folded from it, so the readout's draws are the same with or without them.
        """
        m, b, t = videos.shape[:3]
        flat = lambda x: x.reshape(m * b, *x.shape[2:])
        fold = lambda i: None if key is None else jax.random.fold_in(key, i)
        constants = self._constants(flat(behavior), flat(pupil_center))
        features = self._core(flat(videos), constants, train, fold(1), None)
        t_out = features.shape[1]
        features = features.reshape(m, b * t_out, *features.shape[2:])
        shift = None
        if self.shifters is not None:
            shift = self.shifters(pupil_center[:, :, t - t_out :].reshape(m, b * t_out, 2))
        out = self.readouts(features, shift, key)
        if self.behavior_encoder is not None:
            states = jnp.concatenate([behavior, pupil_center], -1)[:, :, t - t_out :].reshape(m, b * t_out, -1)
            encoded = self.behavior_encoder(states, fold(2) if train else None)  # (M, S, C)
            # Added to the sampled features = added after the (linear) feature weights: Σ_c e_c · w_cn.
            out = out + jnp.einsum("msc,mcn->msn", encoded, self.readouts.features[...])
        rates = OUTPUT_NONLINEARITIES[self.output](out)
        if self.modulators is not None:
            rates = rates * self.modulators(behavior[:, :, t - t_out :].reshape(m, b * t_out, -1))
        return rates.reshape(m, b, t_out, -1)

    def predict_mouse(
        self,
        mouse: jax.Array,
        videos: jax.Array,
        behavior: jax.Array,
        pupil_center: jax.Array,
        lengths: jax.Array | None = None,
    ) -> jax.Array:
        """Evaluation of one mouse (traced index): ``videos (E, T, H, W)`` → ``(E, T − burn_in, N_max)``.

        ``lengths (E,)``: valid frames of each zero-padded trial. Causal cores ignore it (padding after a frame
        cannot change it); a core with bidirectional temporal attention masks the padded frames.
        """
        e, t = videos.shape[:2]
        features = self._core(videos, self._constants(behavior, pupil_center), False, None, lengths)
        t_out = features.shape[1]
        features = features.reshape(e * t_out, *features.shape[2:])
        shift = None
        if self.shifters is not None:
            shift = self.shifters(pupil_center[:, t - t_out :].reshape(e * t_out, 2), mouse=mouse)
        out = self.readouts.one_mouse(mouse, features, shift)
        if self.behavior_encoder is not None:
            states = jnp.concatenate([behavior, pupil_center], -1)[:, t - t_out :].reshape(e * t_out, -1)
            encoded = self.behavior_encoder.one_mouse(mouse, states)
            out = out + encoded @ self.readouts.features[...][mouse]
        rates = OUTPUT_NONLINEARITIES[self.output](out)
        if self.modulators is not None:
            rates = rates * self.modulators.one_mouse(mouse, behavior[:, t - t_out :].reshape(e * t_out, -1))
        return rates.reshape(e, t_out, -1)

    def regularizer(self) -> jax.Array:
        """Per-mouse penalty (M,): the core's, counted once per mouse batch as in the reference, plus the readout's."""
        return self.core.regularizer() + self.readouts.regularizer()


# Parameters with a (padded) neuron axis, by module, and which axis it is (layouts of GaussianReadouts, GainModulators).
_NEURON_AXIS = {
    "readouts": {"mu": 1, "sigma": 1, "features": 2, "bias": 1},
    "modulators": {"w2": 2, "b2": 1},
}


def count_parameters(model: nnx.Module, include_padding: bool = False) -> int:
    """Trainable parameters. By default the padded neuron slots of the stacked per-mouse modules (every mouse
    holds ``N_max``) are left out, so the figure is what per-mouse readouts of the true sizes have, as in the
    reference."""
    total = int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
    num_neurons = getattr(getattr(model, "readouts", None), "num_neurons", None)
    if include_padding or not num_neurons:
        return total
    slots = len(num_neurons) * max(num_neurons)
    for module_name, axes in _NEURON_AXIS.items():
        module = getattr(model, module_name, None)
        for name, axis in axes.items():
            param = getattr(module, name, None)
            if isinstance(param, nnx.Param) and param.shape[axis] == max(num_neurons):
                per_slot = int(np.prod(param.shape)) // slots
                total -= per_slot * (slots - sum(num_neurons))
    # Readouts with padded slots of their own layout (hierarchical levels) say how many they hold.
    padding = getattr(model.readouts, "padding_parameters", None)
    return total - padding() if padding is not None else total
