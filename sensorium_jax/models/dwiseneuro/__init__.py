"""DwiseNeuro, the SENSORIUM 2023 first-place model: factorised depthwise 3-D core, "cortex", grouped readouts."""

from sensorium_jax.models.dwiseneuro.model import DwiseNeuroModel

__all__ = ["DwiseNeuroModel"]
