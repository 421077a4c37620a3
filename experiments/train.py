"""Train and evaluate a model: ``python -m experiments.train --config=factorized:cpu --workdir=runs/demo``.

Static images (SENSORIUM 2022): ``python -m experiments.train --config=static_baseline:cpu --workdir=runs/static``.

Any config in ``experiments/configs/`` works by name; override fields with ``--config.optim.lr=0.001``.
Multi-host: start the same command on every host (``--coordinator=host:port --num_processes --process_id``
where the launcher does not set them up itself, e.g. outside TPU pods and SLURM).
"""

from __future__ import annotations

import logging as std_logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from experiments.config_flags_util import resolve_config_argv
from sensorium_jax.huge_pages import reexec_with_huge_pages

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiments/configs/<name>.py[:variant]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs and metrics go (resumes if present)")
_COORDINATOR = flags.DEFINE_string("coordinator", "", "multi-host: coordinator address host:port")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "multi-host: number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "multi-host: this process's id")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
    """Keep the progress lines readable: orbax and grain log every save and worker at INFO."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        noisy = any(name in record.pathname for name in ("/orbax/", "/grain/", "/jax/_src/"))
        return record.levelno >= std_logging.WARNING or not noisy


def main(argv: list[str]) -> None:
    del argv
    absl_logging.get_absl_handler().addFilter(_QuietLibraries())
    from sensorium_jax import parallel

    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    import jax

    from sensorium_jax.evaluation.loading import write_run_info
    from sensorium_jax.training.loop import is_static, train_and_evaluate

    config = _CONFIG.value
    if jax.process_index() == 0:
        # config.json + mice.json: experiments.evaluate / experiments.submit rebuild the model from them.
        write_run_info(_static_run_config(config) if is_static(config) else config, _WORKDIR.value)
    train_and_evaluate(config, _WORKDIR.value)


def _static_run_config(config):
    """The config with the static session folders spelled out in ``data.paths``: the run-info writer resolves
    synthetic data with the video generator, so it is given the (generated on first use) static folders."""
    import ml_collections

    from sensorium_jax.training.loop import static_session_paths

    paths, _ = static_session_paths(config.data)
    resolved = ml_collections.ConfigDict(config.to_dict())
    resolved.data.paths = ",".join(str(p) for p in paths)
    return resolved


def parse_flags(argv: list[str]) -> list[str]:
    return flags.FLAGS(resolve_config_argv(argv))


if __name__ == "__main__":
    reexec_with_huge_pages()  # glibc reads its tunables only at start-up
    app.run(main, flags_parser=parse_flags)
