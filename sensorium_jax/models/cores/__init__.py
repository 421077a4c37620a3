"""Cores: shared feature extractors, one file each, registered by name for the configs."""

from sensorium_jax.models.cores.factorized import Factorized3dCore

CORES = {
    "factorized": Factorized3dCore,
}

__all__ = ["CORES", "Factorized3dCore"]
