"""What ``experiments.insilico`` does: load a model as a twin, run one experiment, write tables and galleries.

Outputs go to ``<workdir>/insilico/<experiment>/`` (an ensemble: ``<parent>/ensemble-<a>+<b>/insilico/...``):

* ``<experiment>.csv`` — one row per neuron (``mouse``, ``neuron_index``, ``unit_id`` and scalar results), also
  ``<experiment>.parquet`` when pandas and pyarrow are installed;
* ``<experiment>_arrays.npz`` — per-neuron arrays (maps, curves, profiles, MEIs);
* PNG galleries; on a synthetic session ``validation.json`` (+ ``validation.png``), the recovery of the ground
  truth over the neurons the model predicts well.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from sensorium_jax.data import layout
from sensorium_jax.insilico import behaviour, mei, plots, receptive_fields, tuning, validation
from sensorium_jax.insilico.twin import DigitalTwin, InsilicoError, twin_from_trained

EXPERIMENTS = ("mei", "rf", "tuning", "behaviour", "validate")
#: Neurons probed when neither --neurons nor --max_neurons says otherwise (MEIs cost one optimisation each).
DEFAULT_MAX_NEURONS = {"mei": 16}


@dataclasses.dataclass
class Options:
    experiment: str
    mouse: str = ""  # default: the model's first mouse
    unit_ids: Sequence[int] | None = None
    neuron_indices: str = ""  # "0-9,15"
    max_neurons: int = -1  # -1: the experiment's default (all but for MEIs); 0: all
    data: str = ""  # session folder(s) to take the mouse's normalisation from (default: where it was trained)
    output: str = ""
    checkpoint: str = "best"
    ground_truth: bool = False  # probe the synthetic session's true neurons instead of the model
    batch: int = 32
    seed: int = 0
    noise_frames: int = 20_000
    gradient_samples: int = 8
    mei_kind: str = "image"
    mei_steps: int = 200
    mei_starts: int = 3
    contrast: float = 0.0  # 0: defaults (MEI budget = natural RMS; gratings = half of it)
    natural_clips: int = 16
    size_tuning: bool = True
    plots: bool = True

    def __post_init__(self) -> None:
        if self.experiment not in EXPERIMENTS:
            raise InsilicoError(f"unknown experiment {self.experiment!r}; one of {list(EXPERIMENTS)}")


def parse_indices(spec: str) -> list[int] | None:
    """``"0-9,15"`` → [0, …, 9, 15]; empty → None."""
    if not spec.strip():
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            out.extend(range(int(first), int(last) + 1) if dash else [int(first)])
        except ValueError as error:
            raise InsilicoError(f"bad neuron index range {part!r} (expected e.g. 0-9,15)") from error
    return out


# ----------------------------------------------------------------------------------------------------------------
# Model, session, neurons


@dataclasses.dataclass
class Setup:
    twin: DigitalTwin
    model: Any  # the restored run / ensemble (None for the ground-truth twin without a workdir)
    session_path: Path
    neurons: np.ndarray
    output: Path
    # shared by the copies dataclasses.replace makes (validate runs rf, tuning, behaviour on one setup)
    cache: dict = dataclasses.field(default_factory=dict)

    @property
    def has_ground_truth(self) -> bool:
        from sensorium_jax.data import synthetic

        return (self.session_path / synthetic.GROUND_TRUTH_DIR / "neurons.npz").is_file()


def _session_for(model, mouse: str, data: str) -> Path:
    if data:
        from sensorium_jax.evaluation.loading import parse_paths

        for path in parse_paths(data):
            if path.name == mouse:
                return path
        raise InsilicoError(f"--data holds no session folder named {mouse!r} (the model's mouse)")
    first = model.members[0]
    return Path(first.mice[first.mouse_index(mouse)].path)


def prepare(workdir: str, options: Options) -> Setup:
    """Load the model (or the ground-truth twin), pick the mouse and the neurons, decide the output folder."""
    from sensorium_jax.data.reader import Session
    from sensorium_jax.evaluation import cli as evaluation_cli
    from sensorium_jax.insilico.ground_truth import ground_truth_twin
    from sensorium_jax.insilico.twin import InputSpace

    model = None
    if workdir:
        model = evaluation_cli.load_model(workdir, options.checkpoint)
        names = list(model.mouse_names)
        mouse = options.mouse or names[0]
        if mouse not in names:
            from sensorium_jax.insilico.twin import MouseNotInModel

            raise MouseNotInModel(f"mouse {mouse!r} is absent from the model {model.name} (trained on {names})")
        session_path = _session_for(model, mouse, options.data)
        if not session_path.is_dir():
            raise FileNotFoundError(
                f"{session_path}: the session of mouse {mouse!r} is needed for its normalisation statistics; "
                "point --data at the session folders"
            )
        if options.ground_truth:
            twin = ground_truth_twin(session_path)
        else:
            twin = twin_from_trained(model, mouse, InputSpace.from_session(Session(session_path, validate="headers")))
        leaf = "insilico-ground-truth" if options.ground_truth else "insilico"
        root = Path(options.output) if options.output else evaluation_cli.default_output(model, leaf)
    else:
        if not (options.ground_truth and options.data and options.output):
            raise InsilicoError("without --workdir, give --ground_truth with --data=<synthetic session> and --output")
        from sensorium_jax.evaluation.loading import parse_paths

        session_path = parse_paths(options.data)[0]
        twin = ground_truth_twin(session_path)
        root = Path(options.output)
    neurons = twin.neuron_indices(unit_ids=options.unit_ids, indices=parse_indices(options.neuron_indices))
    limit = DEFAULT_MAX_NEURONS.get(options.experiment, 0) if options.max_neurons < 0 else options.max_neurons
    explicit = options.unit_ids is not None or options.neuron_indices.strip()
    if limit and not explicit:
        neurons = neurons[:limit]
    output = root / options.experiment
    logging.info("%s: mouse %s, %d neurons, output %s", twin.name, twin.mouse, len(neurons), output)
    return Setup(twin, model, session_path, neurons, output)


# ----------------------------------------------------------------------------------------------------------------
# Tables


def write_table(columns: dict[str, np.ndarray], path_stem: Path) -> list[Path]:
    """Scalar per-neuron columns as CSV (and parquet when pandas + pyarrow are installed); ``(N, ...)`` arrays
    with more dimensions go to ``<stem>_arrays.npz``."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    scalars = {k: np.asarray(v) for k, v in columns.items() if np.asarray(v).ndim == 1}
    arrays = {k: np.asarray(v) for k, v in columns.items() if np.asarray(v).ndim > 1}
    written = []
    csv_path = path_stem.with_suffix(".csv")
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        frame = pd.DataFrame(scalars)
        frame.to_csv(csv_path, index=False)
        written.append(csv_path)
        try:
            frame.to_parquet(path_stem.with_suffix(".parquet"), index=False)
            written.append(path_stem.with_suffix(".parquet"))
        except ImportError:
            pass
    else:
        import csv

        with open(csv_path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(scalars)
            writer.writerows(zip(*(v.tolist() for v in scalars.values())))
        written.append(csv_path)
    if arrays:
        npz = path_stem.parent / f"{path_stem.name}_arrays.npz"
        np.savez_compressed(npz, **arrays)
        written.append(npz)
    return written


def _identity_columns(setup: Setup) -> dict[str, np.ndarray]:
    n = len(setup.neurons)
    return {
        "mouse": np.array([setup.twin.mouse] * n),
        "neuron_index": setup.neurons,
        "unit_id": np.asarray(setup.twin.unit_ids)[setup.neurons],
    }


def _unit_ids(setup: Setup) -> np.ndarray:
    return np.asarray(setup.twin.unit_ids)[setup.neurons]


# ----------------------------------------------------------------------------------------------------------------
# Natural clips (MEI comparison, behaviour stimulus)


def natural_clips(setup: Setup, count: int, max_frames: int = layout.SCORED_FRAMES) -> np.ndarray:
    """Up to ``count`` distinct clips of the session (repeated tiers first), contrast units ``(C, T, H, W)``,
    all cut to the shortest one's length."""
    from sensorium_jax.data.reader import Session
    from sensorium_jax.evaluation.metrics import video_hash

    session = Session(setup.session_path, validate="headers")
    order = [layout.Tier.ORACLE, layout.Tier.LIVE_TEST_MAIN, layout.Tier.FINAL_TEST_MAIN, layout.Tier.TRAIN]
    clips, seen = [], set()
    for tier in order:
        for trial in session.trials(tier.value):
            length = min(int(session.valid_lengths[trial]), max_frames)
            raw = session.load(int(trial), 0, length, normalize=False)["videos"]
            digest = video_hash(raw)
            if digest in seen:
                continue
            seen.add(digest)
            clips.append(raw - setup.twin.space.grey)
            if len(clips) >= count:
                break
        if len(clips) >= count:
            break
    if not clips:
        raise InsilicoError(f"{setup.session_path}: no clip to compare with")
    shortest = min(len(c) for c in clips)
    return np.stack([c[:shortest] for c in clips]).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Validation against ground truth


def judged_neurons(setup: Setup) -> tuple[np.ndarray, dict[str, Any]]:
    """Which probed neurons count for validation: the well-predicted ones (all, for the ground-truth twin)."""
    if setup.model is None or setup.twin.name == "ground truth":
        return np.ones(len(setup.neurons), bool), {"judged": "all (ground-truth twin)"}
    if "correlations" not in setup.cache:  # one pass over the oracle tier per run, however many experiments
        setup.cache["correlations"] = validation.model_correlations(setup.model, setup.session_path)
    correlations, ceilings = setup.cache["correlations"]
    judged = validation.well_predicted(correlations, ceilings)[setup.neurons]
    info = {
        "judged": f"correlation >= {validation.WELL_PREDICTED_FRACTION} x ceiling (oracle tier)",
        "mean_correlation": float(correlations.mean()),
        "mean_ceiling": float(ceilings.mean()),
        "well_predicted_of_all_neurons": float(validation.well_predicted(correlations, ceilings).mean()),
    }
    return judged, info


def _validate(setup: Setup, rf=None, tuning_result=None, behaviour_result=None) -> dict[str, Any] | None:
    if not setup.has_ground_truth:
        return None
    from sensorium_jax.data import synthetic

    truth = synthetic.load_ground_truth(setup.session_path)
    judged, info = judged_neurons(setup)
    figures = validation.validate(
        truth,
        setup.neurons,
        receptive_fields=rf,
        tuning=tuning_result,
        behaviour=behaviour_result,
        judged=judged,
    )
    figures.update(info)
    # strict JSON has no NaN (e.g. the AUC without selective neurons among the judged)
    figures = {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in figures.items()}
    setup.output.mkdir(parents=True, exist_ok=True)
    (setup.output / "validation.json").write_text(json.dumps(figures, indent=1) + "\n")
    if (rf is not None or tuning_result is not None) and judged.any():
        plots.validation_figure(truth, setup.neurons, rf, tuning_result, judged, setup.output / "validation.png")
    return figures


# ----------------------------------------------------------------------------------------------------------------
# Experiments


def run_rf(setup: Setup, options: Options) -> dict[str, Any]:
    twin, neurons = setup.twin, setup.neurons
    sta = receptive_fields.spike_triggered(
        twin, neurons, frames=options.noise_frames, batch=max(1, options.batch // 2), seed=options.seed
    )
    gradients = None
    if options.gradient_samples > 0:
        gradients = receptive_fields.gradient_maps(
            twin, neurons, samples=options.gradient_samples, batch=options.batch, seed=options.seed
        )
    table = receptive_fields.summarise(sta, gradients)
    energy = (gradients or sta).energy_map()
    columns = {**_identity_columns(setup), **table, "sta_peak_map": sta.signed_at_peak(), "energy_map": energy}
    if gradients is not None:
        columns["gradient_peak_map"] = gradients.signed_at_peak()
    written = write_table(columns, setup.output / "rf")
    figures = _validate(setup, rf=table)
    if options.plots:
        shown = dict(table)
        if figures is not None:
            from sensorium_jax.data import synthetic

            truth = synthetic.load_ground_truth(setup.session_path)
            shown["true_centre_x"], shown["true_centre_y"] = truth["centre_x"][neurons], truth["centre_y"][neurons]
        written.append(
            plots.rf_gallery(sta.signed_at_peak(), energy, shown, _unit_ids(setup), setup.output / "rf_maps.png")
        )
        written.append(
            plots.temporal_profiles(
                table["temporal_profile"],
                twin.space.frame_rate,
                _unit_ids(setup),
                setup.output / "temporal_profiles.png",
            )
        )
    return {"table": table, "written": written, "validation": figures}


def _centres(setup: Setup, options: Options) -> tuple[np.ndarray, np.ndarray]:
    """RF centres for size tuning: from this output root's rf table when it covers the neurons, else a quick
    gradient-energy map."""
    rf_csv = setup.output.parent / "rf" / "rf.csv"
    if rf_csv.is_file():
        import pandas as pd

        frame = pd.read_csv(rf_csv)
        lookup = dict(zip(frame["neuron_index"], zip(frame["centre_x"], frame["centre_y"])))
        if all(int(n) in lookup for n in setup.neurons):
            logging.info("size tuning at the centres of %s", rf_csv)
            pairs = np.array([lookup[int(n)] for n in setup.neurons])
            return pairs[:, 0], pairs[:, 1]
    gradients = receptive_fields.gradient_maps(
        setup.twin, setup.neurons, samples=4, batch=options.batch, seed=options.seed
    )
    from sensorium_jax.insilico import fitting

    fit = fitting.fit_gaussian(gradients.energy_map())
    return fit["centre_x"], fit["centre_y"]


def run_tuning(setup: Setup, options: Options) -> dict[str, Any]:
    protocol = tuning.GratingProtocol(amplitude=options.contrast or None)
    centre_x = centre_y = None
    if options.size_tuning:
        centre_x, centre_y = _centres(setup, options)
    result = tuning.run_tuning(setup.twin, setup.neurons, protocol, centre_x, centre_y, batch=options.batch)
    columns = {**_identity_columns(setup), **result}
    if centre_x is not None:
        columns["size_centre_x"], columns["size_centre_y"] = centre_x, centre_y
    written = write_table(columns, setup.output / "tuning")
    figures = _validate(setup, tuning_result=result)
    if options.plots:
        ids = _unit_ids(setup)
        written.append(plots.tuning_curves(result, protocol, ids, setup.output / "tuning_curves.png"))
        written.append(plots.polar_plots(result, protocol, ids, setup.output / "polar.png"))
    return {"table": result, "written": written, "validation": figures}


def run_mei(setup: Setup, options: Options) -> dict[str, Any]:
    config = mei.MEIConfig(
        kind=options.mei_kind,
        steps=options.mei_steps,
        starts=options.mei_starts,
        rms_contrast=options.contrast or None,
        seed=options.seed,
    )
    result = mei.optimise(setup.twin, setup.neurons, config, batch=options.batch)
    clips = natural_clips(setup, options.natural_clips)
    natural, clip_index = mei.best_natural_response(setup.twin, setup.neurons, clips, config.output_frames)
    table = mei.summarise(result, natural)
    table["best_natural_clip"] = clip_index
    columns = {**_identity_columns(setup), **table, "mei": result.best, "mei_all_starts": result.inputs}
    columns["start_responses"] = result.responses
    written = write_table(columns, setup.output / "mei")
    if options.plots:
        title = f"most exciting {config.kind}s, RMS contrast {result.budget_rms:.1f} grey levels ({setup.twin.name})"
        written.append(
            plots.mei_gallery(
                result.inputs, result.responses, _unit_ids(setup), setup.output / "mei_gallery.png", title
            )
        )
    return {"table": table, "written": written, "validation": None}


def run_behaviour(setup: Setup, options: Options) -> dict[str, Any]:
    setup.twin.require_behaviour(list(behaviour.BEHAVIOUR_VARIABLES))  # fail before loading any clip
    stimulus = natural_clips(setup, 1)[0][: setup.twin.clip_frames(60)]
    result = behaviour.run_behaviour(setup.twin, setup.neurons, stimulus)
    columns = dict(_identity_columns(setup))
    for variable, entry in result.items():
        columns[f"{variable}_log_gain_per_std"] = entry["log_gain_per_std"]
        columns[f"{variable}_gain_at_low"] = entry["gain"][:, 0]
        columns[f"{variable}_gain_at_high"] = entry["gain"][:, -1]
        columns[f"{variable}_gain"] = entry["gain"]
        columns[f"{variable}_rates"] = entry["rates"]
    columns["reference_rate"] = next(iter(result.values()))["reference"]
    written = write_table(columns, setup.output / "behaviour")
    np.savez(setup.output / "behaviour_values.npz", **{v: e["values_raw"] for v, e in result.items()})
    figures = _validate(setup, behaviour_result=result)
    if options.plots:
        written.append(plots.behaviour_curves(result, _unit_ids(setup), setup.output / "behaviour_gain.png"))
    return {"table": result, "written": written, "validation": figures}


def run_validate(setup: Setup, options: Options) -> dict[str, Any]:
    """rf and tuning (and behaviour when the model uses it) into their own folders, then every figure at once."""
    if not setup.has_ground_truth:
        raise InsilicoError(f"{setup.session_path} has no ground truth (not a synthetic session): nothing to validate")
    root = setup.output.parent
    rf = run_rf(dataclasses.replace(setup, output=root / "rf"), options)
    tuned = run_tuning(dataclasses.replace(setup, output=root / "tuning"), options)
    behaviour_result = None
    if all(setup.twin.behaviour_dependence().values()):
        behaviour_result = run_behaviour(dataclasses.replace(setup, output=root / "behaviour"), options)["table"]
    figures = _validate(setup, rf["table"], tuned["table"], behaviour_result)
    written = [*rf["written"], *tuned["written"], setup.output / "validation.json"]
    return {"table": None, "written": written, "validation": figures}


RUNNERS = {"mei": run_mei, "rf": run_rf, "tuning": run_tuning, "behaviour": run_behaviour, "validate": run_validate}


def run(workdir: str, options: Options) -> tuple[Setup, dict[str, Any]]:
    setup = prepare(workdir, options)
    setup.output.mkdir(parents=True, exist_ok=True)
    return setup, RUNNERS[options.experiment](setup, options)
