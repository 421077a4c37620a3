"""In-silico results against the synthetic dataset's ground truth (``synthetic.load_ground_truth``).

Only neurons the model predicts well are judged: single-trial correlation on the oracle tier at least half the
neuron's own noise ceiling (the correlation of its noiseless rate with its recorded responses). For them:

* receptive-field centres within 2 px of the true Gabor centre (target: ≥ 80 % of the neurons);
* preferred orientation (drifting gratings) within 15° of the true wave-vector angle, modulo 180°;
* DSI ranks the truly direction-selective neurons above the rest: ROC AUC of DSI for selective vs not
  (0.5 = chance, 1 = every selective neuron above every other); and whether the selective neurons' preferred
  direction is the true one;
* the running gain: correlation of the fitted log-gain slope with the true ``gain_running``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CENTRE_TOLERANCE_PX = 2.0
ORIENTATION_TOLERANCE_DEG = 15.0
DIRECTION_TOLERANCE_DEG = 22.5  # one step of the default 16-direction grid
CENTRE_TARGET = 0.8
WELL_PREDICTED_FRACTION = 0.5


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann–Whitney U, tied scores share ranks);
    NaN without both classes."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def angle_difference(a: np.ndarray, b: np.ndarray, period: float) -> np.ndarray:
    """Smallest absolute difference of angles (degrees) on a circle of ``period`` degrees (180: orientations)."""
    return np.abs(np.mod(np.asarray(a) - np.asarray(b) + period / 2.0, period) - period / 2.0)


def well_predicted(correlations: np.ndarray, ceilings: np.ndarray, fraction: float = WELL_PREDICTED_FRACTION):
    """Neurons whose correlation reaches ``fraction`` of their own (positive) ceiling."""
    correlations, ceilings = np.asarray(correlations), np.asarray(ceilings)
    return (ceilings > 0) & (correlations >= fraction * ceilings)


def model_correlations(model: Any, session_path: str | Path, tier: str = "oracle", batch_size: int = 8):
    """Per-neuron single-trial correlation of a trained model (or ensemble) on ``tier`` and the neurons' true
    noise ceilings there, both ``(N,)`` over the benchmark's scored frames."""
    from sensorium_jax.data import synthetic
    from sensorium_jax.data.reader import Session
    from sensorium_jax.evaluation import metrics
    from sensorium_jax.evaluation.evaluate import predict_trials

    session = Session(session_path, validate="headers")
    model.check_session(session)
    tp = predict_trials(model, session, tier, batch_size=batch_size)
    correlations = metrics.single_trial_correlation_np([r.T for r in tp.responses], [p.T for p in tp.predictions])
    ceilings = synthetic.ceiling_correlations(session_path, (tier,))["single_trial_per_neuron"]
    return correlations, ceilings


def _fraction(mask: np.ndarray) -> float | None:
    return float(np.mean(mask)) if np.size(mask) else None


def validate(
    truth: dict[str, Any],
    neurons: np.ndarray,
    *,
    receptive_fields: dict[str, np.ndarray] | None = None,
    tuning: dict[str, np.ndarray] | None = None,
    behaviour: dict[str, dict[str, np.ndarray]] | None = None,
    judged: np.ndarray | None = None,
) -> dict[str, Any]:
    """Recovery figures for ``neurons`` (readout indices; tables are in the same order).

    ``judged (len(neurons),)``: which neurons count (the well-predicted ones); default all. Every figure comes
    with the number of neurons it is computed over.
    """
    neurons = np.asarray(neurons)
    judged = np.ones(len(neurons), bool) if judged is None else np.asarray(judged, bool)
    out: dict[str, Any] = {"neurons_probed": len(neurons), "neurons_judged": int(judged.sum())}
    if receptive_fields is not None:
        distance = np.hypot(
            receptive_fields["centre_x"] - truth["centre_x"][neurons],
            receptive_fields["centre_y"] - truth["centre_y"][neurons],
        )[judged]
        out["centre_within_2px"] = _fraction(distance <= CENTRE_TOLERANCE_PX)
        out["centre_median_error_px"] = float(np.median(distance)) if distance.size else None
        out["centre_target_met"] = None if not distance.size else bool(np.mean(distance <= 2.0) >= CENTRE_TARGET)
        if "orientation_deg" in receptive_fields:
            error = angle_difference(receptive_fields["orientation_deg"], truth["orientation_deg"][neurons], 180.0)
            out["rf_orientation_within_15deg"] = _fraction(error[judged] <= ORIENTATION_TOLERANCE_DEG)
    if tuning is not None:
        error = angle_difference(tuning["preferred_orientation_deg"], truth["orientation_deg"][neurons], 180.0)
        out["orientation_within_15deg"] = _fraction(error[judged] <= ORIENTATION_TOLERANCE_DEG)
        out["orientation_median_error_deg"] = float(np.median(error[judged])) if judged.any() else None
        selective = np.asarray(truth["direction_selective"], bool)[neurons]
        out["direction_selective_judged"] = int((selective & judged).sum())
        out["dsi_auc"] = roc_auc(selective[judged], tuning["dsi"][judged])
        both = selective & judged
        if both.any():
            direction_error = angle_difference(
                tuning["preferred_direction_deg"][both], truth["preferred_direction_deg"][neurons][both], 360.0
            )
            out["direction_within_22.5deg"] = _fraction(direction_error <= DIRECTION_TOLERANCE_DEG)
        out["dsi_mean_selective"] = float(tuning["dsi"][both].mean()) if both.any() else None
        others = judged & ~selective
        out["dsi_mean_other"] = float(tuning["dsi"][others].mean()) if others.any() else None
    if behaviour is not None and "running" in behaviour:
        slope = behaviour["running"]["log_gain_per_std"][judged]
        true_gain = np.asarray(truth["gain_running"])[neurons][judged]
        out["running_gain_correlation"] = float(np.corrcoef(slope, true_gain)[0, 1]) if slope.size > 2 else None
    return out
