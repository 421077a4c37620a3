"""Inference on the static evaluation tiers and the SENSORIUM 2022 scores per mouse, tier and overall.

The jitted ``predict(state, mouse, videos, behavior, pupil_center)`` of the video path
(:func:`sensorium_jax.training.step.make_predict`) runs a :class:`~sensorium_jax.models.static_model.StaticModel`
on one-frame batches (:func:`~sensorium_jax.data.pipeline.static_eval_batches`). Scores (see
:mod:`sensorium_jax.evaluation.metrics`): single-trial correlation over the trials of a tier; on tiers with repeated
images also the correlation to the average over repeats of each ``frame_image_id`` and FEVE of the neurons with
FEV ≥ 0.15. Pooled scores average over all neurons of all mice, like the video benchmark.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sensorium_jax.data.pipeline import static_eval_batches
from sensorium_jax.data.static_reader import StaticSession, StaticTier
from sensorium_jax.evaluation import metrics


@dataclasses.dataclass
class StaticTierPredictions:
    """Predictions of one mouse on one tier, one row per trial in file order."""

    trials: np.ndarray  # (n,) trial (file) index
    responses: np.ndarray  # (n, N) normalised responses (the benchmark's ground truth)
    predictions: np.ndarray  # (n, N)
    image_ids: np.ndarray  # (n,) frame_image_id
    trial_idx: np.ndarray  # (n,) meta/trials/trial_idx (what a submission calls trial_indices)


def predict_static_tier(
    predict: Callable, state, session: StaticSession, mouse: int, tier: str, batch_size: int, max_neurons: int
) -> StaticTierPredictions:
    trials, responses, predictions = [], [], []
    n = session.num_neurons
    for batch in static_eval_batches(session, mouse, tier, batch_size, max_neurons):
        output = np.asarray(predict(state, jnp.int32(mouse), batch.videos, batch.behavior, batch.pupil_center))
        rows = batch.trials >= 0
        trials.append(batch.trials[rows])
        responses.append(batch.responses[rows, 0, :n])
        predictions.append(output[rows, 0, :n])
    trials = np.concatenate(trials) if trials else np.zeros(0, np.int64)
    empty = np.zeros((0, n), np.float32)
    return StaticTierPredictions(
        trials=trials,
        responses=np.concatenate(responses) if responses else empty,
        predictions=np.concatenate(predictions) if predictions else empty,
        image_ids=session.frame_image_id[trials],
        trial_idx=session.trial_idx[trials],
    )


def score_static_tier(tier_predictions: StaticTierPredictions) -> dict:
    """Benchmark scores of one mouse on one tier (per-neuron arrays included for pooling and reports)."""
    tp = tier_predictions
    single = metrics.static_single_trial_correlation_np(tp.responses, tp.predictions)
    result = {
        "single_trial_correlation": float(single.mean()),
        "num_trials": len(tp.trials),
        "per_neuron_single_trial": single,
    }
    if metrics.split_by_image(tp.responses, tp.image_ids, repeated_only=True):
        average = metrics.static_correlation_to_average_np(tp.responses, tp.predictions, tp.image_ids)
        feve, selected = metrics.static_feve_np(tp.responses, tp.predictions, tp.image_ids)
        result.update(
            correlation_to_average=float(average.mean()),
            per_neuron_correlation_to_average=average,
            feve=float(feve.mean()) if feve.size else float("nan"),
            per_neuron_feve=feve,
            fev_selected_neurons=int(selected.sum()),
        )
    return result


def evaluate_static(
    predict: Callable,
    state,
    sessions: Sequence[StaticSession],
    tiers: Sequence[str],
    batch_size: int,
    max_neurons: int,
) -> dict:
    """Scores per mouse and tier, and per tier over all neurons of all mice (FEVE: over the selected neurons).

    Tiers whose responses are all zero (withheld test labels of the competition sessions) are skipped.
    """
    per_mouse: dict[str, dict] = {}
    pooled: dict[str, dict[str, list]] = {}
    for mouse, session in enumerate(sessions):
        per_mouse[session.name] = {}
        for tier in tiers:
            if session.trials(tier).size == 0:
                continue
            tp = predict_static_tier(predict, state, session, mouse, tier, batch_size, max_neurons)
            if not np.any(tp.responses != 0):
                continue  # unlabelled (competition test tier)
            scores = score_static_tier(tp)
            per_mouse[session.name][tier] = scores
            for key in ("per_neuron_single_trial", "per_neuron_correlation_to_average", "per_neuron_feve"):
                if key in scores:
                    pooled.setdefault(tier, {}).setdefault(key, []).append(scores[key])
    overall = {}
    names = {
        "per_neuron_single_trial": "single_trial_correlation",
        "per_neuron_correlation_to_average": "correlation_to_average",
        "per_neuron_feve": "feve",
    }
    for tier, values in pooled.items():
        overall[tier] = {}
        for key, name in names.items():
            if key in values:
                joined = np.concatenate(values[key])
                overall[tier][name] = float(joined.mean()) if joined.size else None
    return {"mice": per_mouse, "overall": overall}


def static_validation_correlation(
    predict: Callable,
    state,
    sessions: Sequence[StaticSession],
    batch_size: int,
    max_neurons: int,
    tier: str = StaticTier.VALIDATION.value,
) -> float:
    """Single-trial correlation on one tier, all neurons of all mice pooled, computed on device (early stopping).

    The video path's jitted :func:`~sensorium_jax.evaluation.metrics.masked_correlation`, with every real trial
    one unmasked "frame".
    """
    totals = []
    for mouse, session in enumerate(sessions):
        if session.trials(tier).size == 0:
            continue
        predictions, targets, masks = [], [], []
        for batch in static_eval_batches(session, mouse, tier, batch_size, max_neurons):
            predictions.append(predict(state, jnp.int32(mouse), batch.videos, batch.behavior, batch.pupil_center))
            targets.append(batch.responses)
            masks.append(batch.lengths[:, None] > 0)
        corr = metrics.masked_correlation(
            jnp.asarray(np.concatenate(targets)), jnp.concatenate(predictions), jnp.asarray(np.concatenate(masks))
        )
        totals.append(corr[: session.num_neurons].sum())
    count = sum(s.num_neurons for s in sessions if s.trials(tier).size)
    return float(jax.device_get(sum(totals))) / max(count, 1)
