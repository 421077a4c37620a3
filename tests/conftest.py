"""8 fake CPU devices for every test run, so sharding is exercised everywhere (must precede any JAX use)."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax

jax.config.update("jax_num_cpu_devices", 8)
# The tests compare against float64 references; on GPUs float32 matmuls and convolutions default to TF32
# (about 1e-3 relative error), so ask for full float32 there. CPU results are unchanged.
jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402

from tests.fake_data import write_session  # noqa: E402


@pytest.fixture
def tiny_sessions(tmp_path):
    """Two small sessions in the real format, written independently of the synthetic generator."""
    return [
        write_session(tmp_path / "mouse-a", num_neurons=6, seed=1),
        write_session(tmp_path / "mouse-b", num_neurons=9, seed=2),
    ]
