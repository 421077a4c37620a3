"""Write SENSORIUM 2023 submission files for a trained model or ensemble.

    python -m experiments.submit --workdir=runs/demo
    python -m experiments.submit --workdir=runs/seed0,runs/seed1 --data='/data/sensorium2023/dynamic*'

Predicts every test trial of the competition mice (those whose test responses are withheld; every mouse with
test trials when none are) and writes, into ``--output`` (default ``<workdir>/submission``):
``predictions_{live,final}_main.parquet.brotli`` zipped together as ``submission_main.zip``, and the bonus
track's ``predictions_{live,final}_test_bonus_ood.parquet.brotli``, each in its own zip. Every file is read back
and validated before it is given its name; an invalid one is never written.
"""

from __future__ import annotations

from absl import app, flags

from sensorium_jax.huge_pages import reexec_with_huge_pages

_WORKDIR = flags.DEFINE_string("workdir", None, "run folder(s) of experiments.train; comma-separated or a glob")
_DATA = flags.DEFINE_string("data", "", "session folders or globs (default: the data the model was trained on)")
_OUTPUT = flags.DEFINE_string("output", "", "where the files go (default: <workdir>/submission)")
_MICE = flags.DEFINE_string("mice", "competition", "'competition', 'all' or comma-separated session names")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "which checkpoint of each run")
_WINDOW = flags.DEFINE_integer("window", 0, "sliding-window length in frames; 0: each trial whole")
_BATCH = flags.DEFINE_integer("batch_size", 0, "trials (windows) per inference batch; 0: the run's eval.batch_size")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", 300, "frames per trial that are predicted (the benchmark's 300)")
_VALIDATE = flags.DEFINE_enum("validate", "headers", ["headers", "full"], "data validation before predicting")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    del argv
    from sensorium_jax.evaluation import cli

    cli.quiet()
    summary, output = cli.run_submit(
        _WORKDIR.value,
        data=_DATA.value,
        output=_OUTPUT.value,
        mice=_MICE.value,
        checkpoint=_CHECKPOINT.value,
        window=_WINDOW.value,
        batch=_BATCH.value,
        max_frames=_MAX_FRAMES.value,
        validate=_VALIDATE.value,
    )
    print(f"submission for mice {', '.join(summary['mice'])}:")
    for name, info in summary["files"].items():
        print(f"  {output / name}: {info['rows']} rows ({info['tier']}), validated")
    for name, files in summary["zips"].items():
        print(f"  {output / name}: {', '.join(files)}")


if __name__ == "__main__":
    reexec_with_huge_pages()  # glibc reads its tunables only at start-up
    app.run(main)
