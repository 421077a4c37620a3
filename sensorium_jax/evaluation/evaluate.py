"""Full-length inference on the evaluation tiers and the benchmark scores per mouse, tier and overall.

Each trial is predicted whole (cut to the 300 frames the benchmark scores), in fixed-shape batches so inference
compiles once. The model's own burn-in is handled by aligning predictions to the *end* of the trial; scoring then
skips the first 50 frames, exactly like the benchmark.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sensorium_jax.data import layout
from sensorium_jax.data.pipeline import eval_batches
from sensorium_jax.data.reader import Session
from sensorium_jax.evaluation import metrics


@dataclasses.dataclass
class TierPredictions:
    """Predictions of one mouse on one tier, per trial, cut to the valid frames (time-first: (T, N))."""

    trials: list[int]
    responses: list[np.ndarray]  # (T_i, N)
    predictions: list[np.ndarray]  # (T_i − burn_in, N), aligned to the last frames
    video_ids: list[str]


def eval_frames(sessions: Sequence[Session], tiers: Sequence[str]) -> int:
    """One padded length for all evaluation batches: the longest scored trial, at most 300 frames."""
    longest = 0
    for session in sessions:
        for tier in tiers:
            trials = session.trials(tier)
            if trials.size:
                longest = max(longest, int(session.valid_lengths[trials].max()))
    return min(longest, layout.SCORED_FRAMES)


def predict_tier(
    predict: Callable,
    state,
    session: Session,
    mouse: int,
    tier: str,
    burn_in: int,
    batch_size: int,
    frames: int,
    max_neurons: int,
) -> TierPredictions:
    out = TierPredictions([], [], [], [])
    for batch in eval_batches(session, mouse, tier, batch_size, frames, max_neurons):
        prediction = np.asarray(predict(state, jnp.int32(mouse), batch.videos, batch.behavior, batch.pupil_center))
        for row, trial in enumerate(batch.trials):
            if trial < 0:
                continue
            length = int(batch.lengths[row])
            n = session.num_neurons
            out.trials.append(int(trial))
            out.responses.append(batch.responses[row, :length, :n])
            out.predictions.append(prediction[row, : length - burn_in, :n])
            out.video_ids.append(metrics.video_hash(batch.videos[row, :length]))
    return out


def score_tier(tier_predictions: TierPredictions) -> dict:
    """Benchmark scores of one mouse on one tier (per-neuron arrays included for reports)."""
    responses = [r.T for r in tier_predictions.responses]
    predictions = [p.T for p in tier_predictions.predictions]
    single = metrics.single_trial_correlation_np(responses, predictions)
    result = {
        "single_trial_correlation": float(single.mean()),
        "num_trials": len(responses),
        "per_neuron_single_trial": single,
    }
    if metrics.group_repeats(tier_predictions.video_ids):
        average = metrics.correlation_to_average_np(responses, predictions, tier_predictions.video_ids)
        result["correlation_to_average"] = float(average.mean())
        result["per_neuron_correlation_to_average"] = average
    return result


def evaluate(
    predict: Callable,
    state,
    sessions: Sequence[Session],
    tiers: Sequence[str],
    burn_in: int,
    batch_size: int,
    max_neurons: int,
) -> dict:
    """Scores per mouse and tier, and per tier over all neurons of all mice (the benchmark's pooled mean).

    Tiers whose responses are all zero (withheld test labels of competition mice) are skipped.
    """
    frames = eval_frames(sessions, tiers)
    per_mouse: dict[str, dict] = {}
    pooled: dict[str, dict[str, list]] = {}
    for mouse, session in enumerate(sessions):
        per_mouse[session.name] = {}
        for tier in tiers:
            if session.trials(tier).size == 0:
                continue
            tp = predict_tier(predict, state, session, mouse, tier, burn_in, batch_size, frames, max_neurons)
            if not any(np.any(r != 0) for r in tp.responses):
                continue  # unlabelled (competition test tier)
            scores = score_tier(tp)
            per_mouse[session.name][tier] = scores
            for key in ("per_neuron_single_trial", "per_neuron_correlation_to_average"):
                if key in scores:
                    pooled.setdefault(tier, {}).setdefault(key, []).append(scores[key])
    overall = {}
    for tier, values in pooled.items():
        overall[tier] = {"single_trial_correlation": float(np.concatenate(values["per_neuron_single_trial"]).mean())}
        if "per_neuron_correlation_to_average" in values:
            overall[tier]["correlation_to_average"] = float(
                np.concatenate(values["per_neuron_correlation_to_average"]).mean()
            )
    return {"mice": per_mouse, "overall": overall}


def validation_correlation(
    predict: Callable,
    state,
    sessions: Sequence[Session],
    burn_in: int,
    batch_size: int,
    max_neurons: int,
    tier: str = layout.Tier.ORACLE.value,
) -> float:
    """Single-trial correlation on one tier, all neurons of all mice pooled, computed on device.

    Used for early stopping: one host transfer (a scalar) per evaluation.
    """
    frames = eval_frames(sessions, [tier])
    totals = []
    for mouse, session in enumerate(sessions):
        if session.trials(tier).size == 0:
            continue
        predictions, targets, masks = [], [], []
        for batch in eval_batches(session, mouse, tier, batch_size, frames, max_neurons):
            predictions.append(predict(state, jnp.int32(mouse), batch.videos, batch.behavior, batch.pupil_center))
            targets.append(batch.responses[:, burn_in:])
            t = np.arange(burn_in, frames)[None, :]
            masks.append((t >= layout.BURN_IN_FRAMES) & (t < batch.lengths[:, None]))
        corr = metrics.masked_correlation(
            jnp.asarray(np.concatenate(targets)),
            jnp.concatenate(predictions),
            jnp.asarray(np.concatenate(masks)),
        )
        totals.append(corr[: session.num_neurons].sum())
    count = sum(s.num_neurons for s in sessions if s.trials(tier).size)
    return float(jax.device_get(sum(totals))) / max(count, 1)
