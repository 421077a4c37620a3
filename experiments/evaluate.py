"""Score a trained model or ensemble like the benchmark, with a report of plots.

    python -m experiments.evaluate --workdir=runs/demo
    python -m experiments.evaluate --workdir=runs/seed0,runs/seed1 --data='/data/sensorium2023/dynamic*'

Loads the best checkpoint of each workdir (several workdirs: an ensemble predicting the mean), predicts every
trial of every labelled evaluation tier whole (or in ``--window`` frame windows), and writes
``metrics.json``, ``per_neuron.npz`` and the report's PNGs into ``--output`` (default ``<workdir>/evaluation``,
for an ensemble ``<parent>/ensemble-<a>+<b>/evaluation``); the score table goes to the terminal.
"""

from __future__ import annotations

import sys

from absl import app, flags

from sensorium_jax.huge_pages import reexec_with_huge_pages

_WORKDIR = flags.DEFINE_string("workdir", None, "run folder(s) of experiments.train; comma-separated or a glob")
_DATA = flags.DEFINE_string("data", "", "session folders or globs (default: the data the model was trained on)")
_OUTPUT = flags.DEFINE_string("output", "", "where metrics and plots go (default: see the module docstring)")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "which checkpoint of each run")
_TIERS = flags.DEFINE_list("tiers", [], "tiers to score (default: oracle, live/final test main and bonus)")
_WINDOW = flags.DEFINE_integer("window", 0, "sliding-window length in frames; 0: each trial whole")
_BATCH = flags.DEFINE_integer("batch_size", 0, "trials (windows) per inference batch; 0: the run's eval.batch_size")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", 300, "frames of a trial that are scored (the benchmark's 300)")
_STIMULUS_TYPES = flags.DEFINE_string(
    "stimulus_types", "", "folder with <session>.npy stimulus type per trial (for per-type bonus scores)"
)
_REPORT = flags.DEFINE_boolean("report", True, "write the PNG report")
_VALIDATE = flags.DEFINE_enum("validate", "headers", ["headers", "full"], "data validation before evaluating")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    del argv
    from sensorium_jax.evaluation import benchmark, cli

    cli.quiet()
    result, output, written = cli.run_evaluate(
        _WORKDIR.value,
        data=_DATA.value,
        output=_OUTPUT.value,
        checkpoint=_CHECKPOINT.value,
        tiers=_TIERS.value,
        window=_WINDOW.value,
        batch=_BATCH.value,
        max_frames=_MAX_FRAMES.value,
        stimulus_types=_STIMULUS_TYPES.value,
        report=_REPORT.value,
        validate=_VALIDATE.value,
    )
    print(benchmark.format_table(result.results))
    print(f"\nmetrics: {output / 'metrics.json'}")
    for path in written:
        print(f"plot:    {path}")
    if not any(result.results["mice"].values()):
        print("no labelled tier to score in these sessions", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    reexec_with_huge_pages()  # glibc reads its tunables only at start-up
    app.run(main)
