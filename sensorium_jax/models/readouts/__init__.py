"""Per-mouse readouts, stacked over mice and vmapped."""

from sensorium_jax.models.readouts.behavior_encoder import BehaviorEncoders
from sensorium_jax.models.readouts.gaussian import GaussianReadouts

__all__ = ["BehaviorEncoders", "GaussianReadouts"]
