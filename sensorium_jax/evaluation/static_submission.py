"""SENSORIUM 2022 submission files: one CSV per test tier, as the benchmark's ``generate_submission_file`` writes.

Files ``submission_file_live_test.csv`` (tier ``test``) and ``submission_file_final_test.csv`` (tier
``final_test``), one row per trial, columns (sensorium ``utility/submission.py``):

* ``trial_indices`` — the trial's ``meta/trials/trial_idx`` (hashed strings in the competition sessions);
* ``image_ids`` — its ``meta/trials/frame_image_id``;
* ``prediction`` — the list of N predicted responses, in ``unit_ids`` order, written as a Python list literal;
* ``neuron_ids`` — ``meta/neurons/unit_ids`` as a list literal, the same in every row.

The benchmark reads the lists back with ``ast.literal_eval``, orders rows by ``trial_indices`` and neurons by
``neuron_ids``, checks both against the ground truth and scores. :func:`read_csv` and :func:`score_submission` do
the same, so a written file can be checked end to end; :func:`write_ground_truth_csv` writes the benchmark's
ground-truth file (column ``responses``: the normalised responses) of a labelled tier.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from sensorium_jax.data.static_reader import StaticSession, StaticTier
from sensorium_jax.evaluation import metrics
from sensorium_jax.evaluation.static_evaluate import predict_static_tier

SUBMISSION_FILES = {
    StaticTier.TEST.value: "submission_file_live_test.csv",
    StaticTier.FINAL_TEST.value: "submission_file_final_test.csv",
}


def _plain(values: np.ndarray) -> list:
    """numpy → Python scalars, so the CSV holds ``[1, 2]`` / ``['a']`` literals, not ``np.int64(1)``."""
    return np.asarray(values).tolist()


def write_csv(
    path: str | Path,
    trial_indices: np.ndarray,
    image_ids: np.ndarray,
    values: np.ndarray,
    neuron_ids: np.ndarray,
    column: str = "prediction",
) -> Path:
    """One row per trial: ``trial_indices, image_ids, <column>, neuron_ids``; ``values`` is (n_trials, N)."""
    values = np.asarray(values)
    n = len(trial_indices)
    if values.ndim != 2 or values.shape != (n, len(neuron_ids)) or len(image_ids) != n:
        raise ValueError(
            f"{path}: {column} of shape {values.shape} for {n} trials, {len(image_ids)} image ids "
            f"and {len(neuron_ids)} neurons"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{path}: {column} holds non-finite values")
    neurons = _plain(neuron_ids)
    frame = pd.DataFrame(
        {
            "trial_indices": _plain(trial_indices),
            "image_ids": _plain(image_ids),
            # float32 → Python float: repr prints the shortest string that reads back to the same float64, which
            # casts back to exactly the same float32.
            column: [str(row) for row in values.astype(np.float64).tolist()],
            "neuron_ids": [str(neurons)] * n,
        }
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    frame.to_csv(temporary, index=False)
    temporary.replace(path)
    return path


def read_csv(path: str | Path, column: str = "prediction") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(trial_indices, image_ids, neuron_ids, values (n, N))`` of a submission (or ground-truth) file, parsed
    like the benchmark (``ast.literal_eval``)."""
    frame = pd.read_csv(path)
    missing = {"trial_indices", "image_ids", column, "neuron_ids"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    neuron_ids = np.array(ast.literal_eval(frame["neuron_ids"].values[0]))
    values = np.array([ast.literal_eval(v) for v in frame[column].values], dtype=np.float64)
    return frame["trial_indices"].values, frame["image_ids"].values, neuron_ids, values


def score_submission(
    predictions: np.ndarray,
    trial_indices: np.ndarray,
    neuron_ids: np.ndarray,
    responses: np.ndarray,
    true_trial_indices: np.ndarray,
    true_image_ids: np.ndarray,
    true_neuron_ids: np.ndarray,
) -> dict[str, float]:
    """The benchmark's scoring of a submission against the ground truth: both sorted by trial index and neuron id,
    which must then agree; single-trial correlation, correlation to average and FEVE (neurons with FEV ≥ 0.15)."""

    def order(values, trials, neurons, image_ids=None):
        by_trial, by_neuron = np.argsort(trials, kind="stable"), np.argsort(neurons, kind="stable")
        ids = None if image_ids is None else np.asarray(image_ids)[by_trial]
        ordered = np.asarray(values)[by_trial][:, by_neuron]
        return ordered, np.asarray(trials)[by_trial], np.asarray(neurons)[by_neuron], ids

    truth, trials, neurons, image_ids = order(responses, true_trial_indices, true_neuron_ids, true_image_ids)
    prediction, submitted_trials, submitted_neurons, _ = order(predictions, trial_indices, neuron_ids)
    if not np.array_equal(trials, submitted_trials):
        raise ValueError("trial indices of the submission do not match the ground truth")
    if not np.array_equal(neurons, submitted_neurons):
        raise ValueError("neuron ids of the submission do not match the ground truth")
    feve, _ = metrics.static_feve_np(truth, prediction, image_ids)
    return {
        "single_trial_correlation": float(metrics.static_single_trial_correlation_np(truth, prediction).mean()),
        "correlation_to_average": float(metrics.static_correlation_to_average_np(truth, prediction, image_ids).mean()),
        "feve": float(feve.mean()),
    }


def write_submission(
    predict: Callable,
    state,
    session: StaticSession,
    mouse: int,
    out_dir: str | Path,
    batch_size: int,
    max_neurons: int,
    tiers: tuple[str, ...] = (StaticTier.TEST.value, StaticTier.FINAL_TEST.value),
) -> list[Path]:
    """Predict the test tiers of one session (a competition track is one session) and write their CSV files.

    ``predict`` is the jitted prediction of :func:`sensorium_jax.training.step.make_predict`; tiers the session
    lacks are skipped. Returns the files written.
    """
    written = []
    for tier in tiers:
        if session.trials(tier).size == 0:
            continue
        tp = predict_static_tier(predict, state, session, mouse, tier, batch_size, max_neurons)
        path = Path(out_dir) / SUBMISSION_FILES[tier]
        written.append(write_csv(path, tp.trial_idx, tp.image_ids, tp.predictions, session.unit_ids))
    return written


def write_ground_truth_csv(session: StaticSession, tier: str, path: str | Path) -> Path:
    """The benchmark's ground-truth file of a labelled tier (column ``responses``: the normalised responses)."""
    trials = session.trials(tier)
    responses = session.load_many(trials)["responses"]
    return write_csv(
        path, session.trial_idx[trials], session.frame_image_id[trials], responses, session.unit_ids, "responses"
    )
