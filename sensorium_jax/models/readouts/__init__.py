"""Per-mouse readouts, stacked over mice and vmapped."""

from sensorium_jax.models.readouts.gaussian import GaussianReadouts

__all__ = ["GaussianReadouts"]
