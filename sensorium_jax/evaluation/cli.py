"""Shared plumbing of ``experiments.evaluate`` and ``experiments.submit``: models, data and output folders."""

from __future__ import annotations

import logging as std_logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import logging as absl_logging

from sensorium_jax.data import layout
from sensorium_jax.data.reader import Session, open_sessions
from sensorium_jax.evaluation import benchmark, loading, submission


class QuietLibraries(std_logging.Filter):
    """Orbax and grain log every restore and worker at INFO; keep the evaluation's own lines readable."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        noisy = any(name in record.pathname for name in ("/orbax/", "/grain/", "/jax/_src/"))
        return record.levelno >= std_logging.WARNING or not noisy


def quiet() -> None:
    absl_logging.get_absl_handler().addFilter(QuietLibraries())


def load_model(workdir_spec: str, checkpoint: str = "best") -> loading.Ensemble:
    """``--workdir=A`` or ``--workdir=A,B,C`` (globs allowed): one model or the ensemble of several."""
    workdirs = loading.parse_workdirs(workdir_spec)
    model = loading.load_ensemble(workdirs, checkpoint)
    for member in model.members:
        absl_logging.info(
            "model %s: %s checkpoint step %d (%s), burn-in %d frames, mice %s",
            member.workdir,
            checkpoint,
            member.step,
            member.checkpoint,
            member.burn_in,
            member.mouse_names,
        )
    return model.members[0] if len(model.members) == 1 else model


def open_data(model, data_spec: str = "", validate: str = "headers") -> list[Session]:
    """The sessions of ``--data`` (folders or globs), else the ones the (first) model was trained on."""
    if data_spec:
        paths = loading.parse_paths(data_spec)
    else:
        first = model.members[0]
        paths = [Path(m.path) for m in first.mice]
        missing = [str(p) for p in paths if not p.is_dir()]
        if missing:
            raise FileNotFoundError(
                f"the training data of {first.workdir} are no longer at {missing}; point --data at the sessions"
            )
    return open_sessions(paths, validate=validate)


def default_output(model, leaf: str) -> Path:
    """``<workdir>/<leaf>`` for one model; ``<common parent>/ensemble-<a>+<b>/<leaf>`` for an ensemble."""
    workdirs = [m.workdir.absolute() for m in model.members]
    if len(workdirs) == 1:
        return workdirs[0] / leaf
    parent = Path(os.path.commonpath([str(w.parent) for w in workdirs]))
    return parent / f"ensemble-{'+'.join(w.name for w in workdirs)}" / leaf


def batch_size(model, requested: int) -> int:
    return requested or int(model.members[0].config.eval.batch_size)


def run_evaluate(
    workdir: str,
    data: str = "",
    output: str = "",
    checkpoint: str = "best",
    tiers: Sequence[str] = (),
    window: int = 0,
    batch: int = 0,
    max_frames: int = 300,
    stimulus_types: str = "",
    report: bool = True,
    validate: str = "headers",
) -> tuple[benchmark.Benchmark, Path, list[Path]]:
    """What ``experiments.evaluate`` does: score, write ``metrics.json`` + ``per_neuron.npz`` + the plots."""
    model = load_model(workdir, checkpoint)
    sessions = open_data(model, data, validate)
    out = Path(output) if output else default_output(model, "evaluation")
    tiers = list(tiers) or list(layout.EVALUATION_TIERS)
    unknown = sorted(set(tiers) - set(layout.KNOWN_TIERS))
    if unknown:
        raise ValueError(f"unknown tiers {unknown}; known: {sorted(layout.KNOWN_TIERS)}")
    result = benchmark.run(
        model,
        sessions,
        tiers,
        batch_size=batch_size(model, batch),
        window=window,
        max_frames=max_frames,
        stimulus_types_dir=stimulus_types or None,
    )
    out.mkdir(parents=True, exist_ok=True)
    benchmark.write_json(result.results, out / "metrics.json")
    per_neuron = {
        f"{mouse}/{tier}/{key}": value
        for mouse, per_tier in result.scores.items()
        for tier, entry in per_tier.items()
        for key, value in entry.items()
        if key.startswith("per_neuron")
    }
    np.savez(out / "per_neuron.npz", **per_neuron)
    from sensorium_jax.evaluation import report as plots  # matplotlib only when plotting

    written = plots.write_report(model, result, out) if report else []
    return result, out, written


def run_submit(
    workdir: str,
    data: str = "",
    output: str = "",
    mice: str = "competition",
    checkpoint: str = "best",
    window: int = 0,
    batch: int = 0,
    max_frames: int = 300,
    validate: str = "headers",
) -> tuple[dict, Path]:
    """What ``experiments.submit`` does: predict the test tiers, write and validate the files and zips."""
    model = load_model(workdir, checkpoint)
    sessions = open_data(model, data, validate)
    out = Path(output) if output else default_output(model, "submission")
    summary = submission.write_submission(
        model,
        sessions,
        out,
        mice=mice,
        batch_size=batch_size(model, batch),
        window=window,
        max_frames=max_frames,
    )
    return summary, out
