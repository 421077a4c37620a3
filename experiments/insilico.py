"""In-silico experiments on a trained digital twin (or an ensemble of them).

    python -m experiments.insilico --workdir=runs/demo --experiment=rf
    python -m experiments.insilico --workdir=runs/demo --experiment=tuning --neuron_indices=0-49
    python -m experiments.insilico --workdir=runs/demo --experiment=mei --neurons=1234,5678 --mei_kind=video
    python -m experiments.insilico --workdir=runs/demo --experiment=behaviour --mouse=<session folder name>
    python -m experiments.insilico --workdir=runs/demo --experiment=validate   # synthetic data: recovery figures

Writes per-neuron tables (CSV, parquet when pyarrow is installed, arrays as .npz) and PNG galleries into
``<workdir>/insilico/<experiment>/`` (``--output`` changes the root). ``--ground_truth`` runs the same experiment
on the synthetic session's true neurons instead of the model: what the tools recover from a perfect model.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from sensorium_jax.huge_pages import reexec_with_huge_pages

_WORKDIR = flags.DEFINE_string("workdir", "", "run folder(s) of experiments.train; comma-separated or a glob")
_EXPERIMENT = flags.DEFINE_enum(
    "experiment", None, ["mei", "rf", "tuning", "behaviour", "validate"], "which in-silico experiment"
)
_MOUSE = flags.DEFINE_string("mouse", "", "session folder name of the mouse (default: the model's first)")
_NEURONS = flags.DEFINE_list("neurons", None, "neuron (unit) ids to probe, comma-separated")
_INDICES = flags.DEFINE_string("neuron_indices", "", "readout indices to probe, e.g. 0-9,15")
_MAX_NEURONS = flags.DEFINE_integer("max_neurons", -1, "probe only the first k neurons; -1: 16 for mei, else all")
_DATA = flags.DEFINE_string("data", "", "session folders (default: where the model was trained)")
_OUTPUT = flags.DEFINE_string("output", "", "output root (default <workdir>/insilico)")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "which checkpoint of each run")
_GROUND_TRUTH = flags.DEFINE_boolean("ground_truth", False, "probe the synthetic session's true neurons instead")
_BATCH = flags.DEFINE_integer("batch", 32, "clips per compiled call")
_SEED = flags.DEFINE_integer("seed", 0, "noise and random starts")
_NOISE_FRAMES = flags.DEFINE_integer("noise_frames", 20_000, "rf: predicted frames of white noise for the STA")
_GRADIENT_SAMPLES = flags.DEFINE_integer("gradient_samples", 8, "rf: noise clips per neuron for gradient maps")
_MEI_KIND = flags.DEFINE_enum("mei_kind", "image", ["image", "video"], "mei: a static image or a free video")
_MEI_STEPS = flags.DEFINE_integer("mei_steps", 200, "mei: gradient-ascent steps")
_MEI_STARTS = flags.DEFINE_integer("mei_starts", 3, "mei: random starts per neuron")
_CONTRAST = flags.DEFINE_float("contrast", 0.0, "grey levels: MEI RMS budget / grating amplitude (0: defaults)")
_NATURAL_CLIPS = flags.DEFINE_integer("natural_clips", 16, "mei: session clips for the best-natural comparison")
_SIZE_TUNING = flags.DEFINE_boolean("size_tuning", True, "tuning: also size tuning at each neuron's RF centre")
_PLOTS = flags.DEFINE_boolean("plots", True, "write the PNG galleries")
flags.mark_flags_as_required(["experiment"])


def main(argv: list[str]) -> None:
    del argv
    from sensorium_jax.evaluation import cli as evaluation_cli
    from sensorium_jax.insilico import cli
    from sensorium_jax.insilico.twin import InsilicoError

    evaluation_cli.quiet()
    try:
        options = cli.Options(
            experiment=_EXPERIMENT.value,
            mouse=_MOUSE.value,
            unit_ids=None if _NEURONS.value is None else [int(v) for v in _NEURONS.value],
            neuron_indices=_INDICES.value,
            max_neurons=_MAX_NEURONS.value,
            data=_DATA.value,
            output=_OUTPUT.value,
            checkpoint=_CHECKPOINT.value,
            ground_truth=_GROUND_TRUTH.value,
            batch=_BATCH.value,
            seed=_SEED.value,
            noise_frames=_NOISE_FRAMES.value,
            gradient_samples=_GRADIENT_SAMPLES.value,
            mei_kind=_MEI_KIND.value,
            mei_steps=_MEI_STEPS.value,
            mei_starts=_MEI_STARTS.value,
            contrast=_CONTRAST.value,
            natural_clips=_NATURAL_CLIPS.value,
            size_tuning=_SIZE_TUNING.value,
            plots=_PLOTS.value,
        )
        setup, result = cli.run(_WORKDIR.value, options)
    except (InsilicoError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"{options.experiment}: {len(setup.neurons)} neurons of mouse {setup.twin.mouse} ({setup.twin.name})")
    for path in result["written"]:
        print(f"wrote {path}")
    if result["validation"] is not None:
        print("ground-truth recovery:", json.dumps(result["validation"], indent=1))


if __name__ == "__main__":
    reexec_with_huge_pages()  # glibc reads its tunables only at start-up
    app.run(main)
