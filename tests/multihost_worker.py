"""One process of the two-process test (tests/test_multihost.py): trains the tiny config of tests/test_train.py
over a mesh spanning both processes (2 CPU devices each, gloo collectives) and prints its results as one line.

``python -m tests.multihost_worker PORT PROCESS_ID NUM_PROCESSES WORKDIR EPOCHS PATHS``
"""

import json
import sys


def main(port: str, process_id: str, num_processes: str, workdir: str, epochs: str, paths: str) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from sensorium_jax import parallel

    parallel.initialize_distributed(f"localhost:{port}", int(num_processes), int(process_id))

    from sensorium_jax.training.loop import train_and_evaluate
    from tests.test_train import tiny_config

    config = tiny_config(paths)
    config.data.batch_size = 4  # 4 devices in all: each process loads 2 clips per mouse
    config.train.max_epochs = int(epochs)
    results = train_and_evaluate(config, workdir)
    record = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "oracle": results["overall"]["oracle"]["single_trial_correlation"],
        "epochs": results["epochs"],
        "best_epoch": results["best_epoch"],
    }
    print("RESULT " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
