"""Devices, meshes and shardings, decided in one place.

Data parallelism over a 1-D mesh axis ``data``: the per-mouse clip axis of a batch ``(M, B, ...)`` is split over
devices, parameters and optimiser state are replicated, and the step donates its state. The same code runs on one
CPU, 8 fake CPU devices, one GPU, or every host of a TPU pod (``jax.distributed.initialize`` first).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """Start JAX's multi-host runtime when the launch asks for it; a no-op for a single process.

    On TPU pods, SLURM and Open MPI ``jax.distributed.initialize()`` finds its peers itself; elsewhere pass the
    coordinator address, the process count and this process's id. Must run before any other JAX call.
    """
    auto = any(v in os.environ for v in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"))
    if coordinator:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif auto and int(os.environ.get("SLURM_NTASKS", os.environ.get("OMPI_COMM_WORLD_SIZE", "2"))) > 1:
        jax.distributed.initialize()
    else:
        return
    logging.info(
        "process %d of %d, %d local devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
    )


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """A 1-D data-parallel mesh over ``num_devices`` devices (0: all of them, across hosts)."""
    count = num_devices or jax.device_count()
    if count > jax.device_count():
        raise ValueError(f"asked for {count} devices but only {jax.device_count()} are available")
    devices = np.asarray(jax.devices()[:count])
    # Auto axes: the readout's gradient contracts over the sharded batch, which Explicit axes reject.
    return jax.sharding.Mesh(devices, (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def mouse_batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Shard axis 1 (clips of each mouse) of ``(M, B, ...)`` arrays."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assemble a global batch from this process's slice of it (every process calls this)."""
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
