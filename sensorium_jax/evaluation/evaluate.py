"""Full-length inference on the evaluation tiers and the benchmark scores per mouse, tier and overall.

Two entry points:

* the training loop's (:func:`predict_tier`, :func:`evaluate`, :func:`validation_correlation`): a jitted
  ``predict(state, mouse, ...)`` over whole trials (cut to the 300 frames the benchmark scores) in fixed-shape
  batches, predictions aligned to the *end* of the trial;
* restored models and ensembles (:func:`predict_trials`): any object with ``burn_in`` and
  ``predict_members(mouse_name, videos, behavior, pupil_center)`` (see :mod:`sensorium_jax.evaluation.loading`),
  run either on whole trials or on sliding windows, every trial yielding exactly the ``T − 50`` frames that the
  benchmark scores and the submission holds.

Scoring skips the first 50 frames, exactly like the benchmark.
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
    # Ensembles: every member's predictions, like ``predictions`` (one list per member); empty for one model.
    member_predictions: list[list[np.ndarray]] = dataclasses.field(default_factory=list)

    def subset(self, keep: Sequence[int]) -> TierPredictions:
        """The trials at positions ``keep`` (e.g. one stimulus type of a bonus tier)."""
        pick = lambda values: [values[i] for i in keep]
        return TierPredictions(
            pick(self.trials),
            pick(self.responses),
            pick(self.predictions),
            pick(self.video_ids),
            [pick(member) for member in self.member_predictions],
        )

    def member(self, index: int) -> TierPredictions:
        """The same trials with one ensemble member's predictions."""
        return TierPredictions(self.trials, self.responses, self.member_predictions[index], self.video_ids)


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
        lengths = jnp.asarray(batch.lengths, jnp.int32)
        prediction = np.asarray(
            predict(state, jnp.int32(mouse), batch.videos, batch.behavior, batch.pupil_center, lengths)
        )
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
            lengths = jnp.asarray(batch.lengths, jnp.int32)
            predictions.append(
                predict(state, jnp.int32(mouse), batch.videos, batch.behavior, batch.pupil_center, lengths)
            )
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


# --------------------------------------------------------------------------------------------------------------
# Restored models and ensembles: whole trials or sliding windows, exactly the scored frames


def window_starts(length: int, window: int, burn_in: int) -> list[int]:
    """Starts of the windows that cover every predictable frame ``[burn_in, length)`` of a trial.

    A window ``[s, s + window)`` yields frames ``[s + burn_in, s + window)``; consecutive windows overlap by
    ``burn_in`` frames so their outputs tile the trial, and the last one ends at the trial's end. For a model
    whose output at frame t depends only on frames ``t − burn_in … t`` (a causal core), the stitched windows
    equal one pass over the whole trial.
    """
    if window <= 0 or window >= length:
        return [0]
    if window <= burn_in:
        raise ValueError(f"window of {window} frames must exceed the model's burn-in of {burn_in} frames")
    stride = window - burn_in
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def predict_trials(
    model,
    session: Session,
    tier: str,
    batch_size: int = 8,
    window: int = 0,
    max_frames: int = layout.SCORED_FRAMES,
    keep_responses: bool = True,
) -> TierPredictions:
    """Predict every trial of a tier; each prediction holds exactly the scored frames ``(T − 50, N)``.

    ``T`` is the trial's valid length, at most ``max_frames`` (the benchmark scores the first 300).
    ``window=0`` runs each trial whole (trials batched by length, so every batch is exact even for a model
    that is not causal); ``window=W`` slides W-frame windows (see :func:`window_starts`), for models that take
    a fixed clip length or to bound memory. A model whose burn-in exceeds the 50 unscored frames cannot predict
    frames 50 … burn-in from the trial alone: its input is padded at the front with copies of the first frame.
    Trials are read batch by batch; ``keep_responses=False`` (submissions) does not keep the recorded responses.
    """
    burn_in = int(model.burn_in)
    front = max(0, burn_in - layout.BURN_IN_FRAMES)
    trials = [int(t) for t in session.trials(tier)]
    lengths = {t: min(int(session.valid_lengths[t]), max_frames) for t in trials}
    for trial, length in lengths.items():
        if length <= layout.BURN_IN_FRAMES:
            raise layout.DataFormatError(
                layout.trial_path(session.path, "responses", trial),
                f"{length} valid frames: nothing is left after the benchmark's {layout.BURN_IN_FRAMES}-frame burn-in",
            )

    # Every window of every trial, grouped by window length: each group runs in fixed-shape batches.
    groups: dict[int, list[tuple[int, int]]] = {}
    for trial in trials:
        padded = lengths[trial] + front
        size = padded if window <= 0 else min(window, padded)
        for start in window_starts(padded, size, burn_in):
            groups.setdefault(size, []).append((trial, start))

    responses: dict[int, np.ndarray] = {}
    video_ids: dict[int, str] = {}
    cache: dict[int, dict[str, np.ndarray]] = {}

    def inputs(trial: int) -> dict[str, np.ndarray]:
        if trial not in cache:
            data = session.load(trial, 0, lengths[trial])
            if trial not in video_ids:
                video_ids[trial] = metrics.video_hash(data["videos"])
                if keep_responses:
                    responses[trial] = data["responses"]
            cache[trial] = {
                key: np.concatenate([np.repeat(data[key][:1], front, axis=0), data[key]]) if front else data[key]
                for key in ("videos", "behavior", "pupil_center")
            }
        return cache[trial]

    outputs: dict[int, list[np.ndarray]] = {}
    for size, items in groups.items():
        for first in range(0, len(items), batch_size):
            chunk = items[first : first + batch_size]
            for stale in set(cache) - {trial for trial, _ in chunk}:  # a trial's windows are consecutive
                del cache[stale]
            batch = {
                key: np.zeros((batch_size, size, *inputs(chunk[0][0])[key].shape[1:]), np.float32)
                for key in ("videos", "behavior", "pupil_center")
            }
            for row, (trial, start) in enumerate(chunk):
                for key in batch:
                    batch[key][row] = inputs(trial)[key][start : start + size]
            members = model.predict_members(session.name, batch["videos"], batch["behavior"], batch["pupil_center"])
            for row, (trial, start) in enumerate(chunk):
                if trial not in outputs:
                    shape = (lengths[trial] + front - burn_in, members[0].shape[-1])
                    outputs[trial] = [np.zeros(shape, np.float32) for _ in members]
                for stitched, prediction in zip(outputs[trial], members, strict=True):
                    # output frame j of this window is trial frame start + burn_in + j
                    stitched[start : start + size - burn_in] = prediction[row]
    cache.clear()

    out = TierPredictions([], [], [], [])
    for trial in trials:
        scored = lengths[trial] - layout.BURN_IN_FRAMES
        per_member = [p[-scored:] for p in outputs.pop(trial)]
        out.trials.append(trial)
        out.responses.append(responses.pop(trial) if keep_responses else np.zeros((0, 0), np.float32))
        out.video_ids.append(video_ids[trial])
        out.predictions.append(np.mean(per_member, axis=0) if len(per_member) > 1 else per_member[0])
        if len(per_member) > 1:
            if not out.member_predictions:
                out.member_predictions = [[] for _ in per_member]
            for m, p in enumerate(per_member):
                out.member_predictions[m].append(p)
    return out


def is_labelled(tier_predictions: TierPredictions) -> bool:
    """False for withheld test labels (the competition mice's test responses are all zeros)."""
    return any(np.any(r != 0) for r in tier_predictions.responses)
