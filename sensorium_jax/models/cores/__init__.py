"""Cores: shared feature extractors, one file each, registered by name for the configs."""

from sensorium_jax.models.cores.factorized import Factorized3dCore
from sensorium_jax.models.cores.gru import GRUCore
from sensorium_jax.models.cores.viv1t import ViV1TCore

CORES = {
    "factorized": Factorized3dCore,
    "viv1t": ViV1TCore,
    "gru": GRUCore,
}

__all__ = ["CORES", "Factorized3dCore", "ViV1TCore"]
