"""Per-mouse readouts, stacked over mice and vmapped."""

from sensorium_jax.models.readouts.behavior_encoder import BehaviorEncoders
from sensorium_jax.models.readouts.gaussian import GaussianReadouts
from sensorium_jax.models.readouts.modulator import GainModulators

__all__ = ["BehaviorEncoders", "GainModulators", "GaussianReadouts"]
