"""The SENSORIUM 2023 metrics, as the benchmark computes them.

Single-trial correlation (sensorium_2023 ``scores.py`` + neuralpredictors ``np_functions.corr``):
per trial keep ``responses[:, 50:]`` and the *last* ``T - 50`` predictions, concatenate all trials along time,
standardise each neuron with the population std (ddof 0) plus ``eps = 1e-8``, take the mean of the product,
turn NaN into 0, and average over neurons.

Correlation to average: trials showing the same video (found by hashing the frames, as the real data ships no
video ids) are averaged — responses and predictions alike — and the averages go through the same formula.
Only videos shown at least twice take part.

Two implementations that agree to float precision: numpy (``*_np``) for reports and tests, and a jitted kernel
(:func:`masked_correlation`) that runs on padded device arrays during training.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import defaultdict
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sensorium_jax.data.layout import BURN_IN_FRAMES

EPS = 1e-8


def correlation_np(y1: np.ndarray, y2: np.ndarray, axis: int = 0, eps: float = EPS) -> np.ndarray:
    """Pearson correlation along ``axis`` with the benchmark's eps; NaN (e.g. a constant row) becomes 0."""
    y1 = np.asarray(y1, dtype=np.float64)
    y2 = np.asarray(y2, dtype=np.float64)
    z1 = (y1 - y1.mean(axis=axis, keepdims=True)) / (y1.std(axis=axis, keepdims=True, ddof=0) + eps)
    z2 = (y2 - y2.mean(axis=axis, keepdims=True)) / (y2.std(axis=axis, keepdims=True, ddof=0) + eps)
    corr = (z1 * z2).mean(axis=axis)
    if np.isnan(corr).any():
        warnings.warn(f"{int(np.isnan(corr).sum())} NaN correlations set to 0", RuntimeWarning, stacklevel=2)
        corr = np.nan_to_num(corr, nan=0.0)
    return corr


def scored_frames(
    response: np.ndarray, prediction: np.ndarray, burn_in: int = BURN_IN_FRAMES
) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's alignment of one trial: responses from frame 50, the last ``T - 50`` predictions.

    ``response`` is (N, T); ``prediction`` is (N, T') with T' ≤ T, aligned to the *end* of the trial (a model with
    a burn-in predicts only the last frames).
    """
    target = response[:, burn_in:]
    length = target.shape[1]
    if prediction.shape[1] < length:
        raise ValueError(
            f"prediction has {prediction.shape[1]} frames but {length} are scored "
            f"(trial of {response.shape[1]} frames minus the {burn_in}-frame burn-in)"
        )
    return target, prediction[:, prediction.shape[1] - length :]


def single_trial_correlation_np(
    responses: Sequence[np.ndarray], predictions: Sequence[np.ndarray], burn_in: int = BURN_IN_FRAMES
) -> np.ndarray:
    """Per-neuron single-trial correlation over a list of (N, T_i) trials; returns (N,)."""
    pairs = [scored_frames(r, p, burn_in) for r, p in zip(responses, predictions, strict=True)]
    target = np.concatenate([t for t, _ in pairs], axis=1)
    output = np.concatenate([o for _, o in pairs], axis=1)
    return correlation_np(target, output, axis=1)


def video_hash(video: np.ndarray) -> str:
    """Identity of a stimulus clip from its pixels (repeats of a clip hash identically)."""
    return hashlib.sha1(np.ascontiguousarray(np.asarray(video, dtype=np.float32)).tobytes()).hexdigest()


def group_repeats(video_ids: Sequence[str]) -> list[list[int]]:
    """Indices of trials grouped by identical video id, keeping only videos shown at least twice."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, vid in enumerate(video_ids):
        groups[vid].append(index)
    return [g for g in groups.values() if len(g) >= 2]


def correlation_to_average_np(
    responses: Sequence[np.ndarray],
    predictions: Sequence[np.ndarray],
    video_ids: Sequence[str],
    burn_in: int = BURN_IN_FRAMES,
) -> np.ndarray:
    """Per-neuron correlation between repeat-averaged responses and repeat-averaged predictions; (N,)."""
    groups = group_repeats(video_ids)
    if not groups:
        raise ValueError("correlation to average needs at least one video shown twice; none is repeated")
    targets, outputs = [], []
    for group in groups:
        pairs = [scored_frames(responses[i], predictions[i], burn_in) for i in group]
        length = min(t.shape[1] for t, _ in pairs)
        targets.append(np.mean([t[:, :length] for t, _ in pairs], axis=0))
        outputs.append(np.mean([o[:, :length] for _, o in pairs], axis=0))
    return correlation_np(np.concatenate(targets, axis=1), np.concatenate(outputs, axis=1), axis=1)


@jax.jit
def masked_correlation(target: jax.Array, prediction: jax.Array, frame_mask: jax.Array, eps: float = EPS) -> jax.Array:
    """Benchmark correlation per neuron over the frames where ``frame_mask`` is true.

    ``target``/``prediction``: (..., T, N) padded arrays; ``frame_mask``: (..., T) — burn-in and NaN padding
    already masked out. Statistics are taken over all leading axes and T together (trials concatenated in time).
    Padded neurons (all-zero columns) come out as exactly 0, like a constant neuron.
    """
    n = target.shape[-1]
    t = target.reshape(-1, n).astype(jnp.float32)
    p = prediction.reshape(-1, n).astype(jnp.float32)
    w = frame_mask.reshape(-1, 1).astype(jnp.float32)
    count = jnp.maximum(w.sum(), 1.0)

    def standardise(x):
        mean = (x * w).sum(0) / count
        centred = (x - mean) * w
        std = jnp.sqrt((centred**2).sum(0) / count)
        return centred / (std + eps)

    corr = (standardise(t) * standardise(p)).sum(0) / count
    return jnp.nan_to_num(corr, nan=0.0)


def leave_one_out_oracle_np(
    responses: Sequence[np.ndarray], video_ids: Sequence[str], burn_in: int = BURN_IN_FRAMES
) -> np.ndarray:
    """Repeat-based estimate of each neuron's attainable single-trial correlation (the "oracle"); (N,).

    Every trial of a video shown at least twice is predicted by the mean of the *other* repeats of that video
    (sensorium 2022's oracle score, here on the 2023 frames: first ``burn_in`` skipped, trials concatenated in
    time, the benchmark's correlation). Without noise-free ground truth this is the usual stand-in for the
    noise ceiling; it is biased low for few repeats, since the leave-one-out mean is itself noisy.
    """
    groups = group_repeats(video_ids)
    if not groups:
        raise ValueError("the oracle estimate needs at least one video shown twice; none is repeated")
    targets, oracles = [], []
    for group in groups:
        length = min(responses[i].shape[1] for i in group) - burn_in
        if length <= 0:
            raise ValueError(f"repeats of {length + burn_in} frames leave nothing after the {burn_in}-frame burn-in")
        trials = np.stack([np.asarray(responses[i], np.float64)[:, burn_in : burn_in + length] for i in group])
        total = trials.sum(axis=0)
        for k in range(len(group)):
            targets.append(trials[k])
            oracles.append((total - trials[k]) / (len(group) - 1))
    return correlation_np(np.concatenate(targets, axis=1), np.concatenate(oracles, axis=1), axis=1)


# --------------------------------------------------------------------------------------------------------------
# SENSORIUM 2022 (static images): sensorium ``utility/metrics.py`` + neuralpredictors ``fev``.
# One response per trial: ``responses`` and ``predictions`` are (n_trials, N); repeats of an image share its
# ``frame_image_id``. The ground truth is the normalised response (``responses / std``).

#: Neurons whose fraction of explainable variance is below this are left out of FEVE (the benchmark's threshold).
FEV_THRESHOLD = 0.15


def static_single_trial_correlation_np(responses: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Per-neuron correlation over trials (the benchmark's ``corr(predictions, responses, axis=0)``); (N,)."""
    return correlation_np(np.asarray(responses), np.asarray(predictions), axis=0)


def split_by_image(values: np.ndarray, image_ids: Sequence, repeated_only: bool = False) -> list[np.ndarray]:
    """Rows of ``values`` (n, N) grouped by image id in ascending id order (the benchmark's ``split_images``).

    ``repeated_only`` keeps only images shown at least twice.
    """
    image_ids = np.asarray(image_ids)
    if len(image_ids) != len(values):
        raise ValueError(f"{len(image_ids)} image ids for {len(values)} trials")
    groups = [values[image_ids == image] for image in np.unique(image_ids)]
    return [g for g in groups if len(g) >= 2] if repeated_only else groups


def static_correlation_to_average_np(responses: np.ndarray, predictions: np.ndarray, image_ids: Sequence) -> np.ndarray:
    """Per-neuron correlation between the mean response and the mean prediction per image, across images; (N,).

    As the benchmark: every image id takes part (an image shown once is its own mean); it is meant for the test
    tiers, where every image is repeated.
    """
    mean_responses = np.stack([g.mean(axis=0) for g in split_by_image(np.asarray(responses, np.float64), image_ids)])
    mean_predictions = np.stack(
        [g.mean(axis=0) for g in split_by_image(np.asarray(predictions, np.float64), image_ids)]
    )
    return correlation_np(mean_responses, mean_predictions, axis=0)


def fev_np(targets: Sequence[np.ndarray], predictions: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of explainable variance (FEV) and fraction of it explained by the predictions (FEVE), per neuron.

    ``targets``/``predictions``: one ``(repeats, N)`` array per image. neuralpredictors ``fev``: noise variance =
    mean over images of the across-repeat variance, total variance over all trials (both ``ddof=1``);
    ``FEV = (total − noise) / total``, ``FEVE = 1 − (MSE − noise) / (total − noise)`` with the MSE over all trials.
    """
    targets = [np.asarray(t, np.float64) for t in targets]
    predictions = [np.asarray(p, np.float64) for p in predictions]
    noise_var = np.mean(np.stack([t.var(axis=0, ddof=1) for t in targets]), axis=0)
    total_var = np.vstack(targets).var(axis=0, ddof=1)
    mse = np.mean(np.vstack([(t - p) ** 2 for t, p in zip(targets, predictions, strict=True)]), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):  # a neuron without variance: NaN, as the reference
        fev = (total_var - noise_var) / total_var
        feve = 1.0 - (mse - noise_var) / (total_var - noise_var)
    return fev, feve


def static_feve_np(
    responses: np.ndarray, predictions: np.ndarray, image_ids: Sequence, fev_threshold: float = FEV_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """FEVE of the neurons with FEV ≥ ``fev_threshold``, and the boolean selection (N,) (the benchmark's ``feve``).

    Only images shown at least twice enter (a single presentation has no across-repeat variance); on the test
    tiers, where every image repeats, this is exactly the benchmark. Returns ``(feve[selected], selected)``.
    """
    targets = split_by_image(np.asarray(responses), image_ids, repeated_only=True)
    if not targets:
        raise ValueError("FEVE needs at least one image shown twice; none is repeated")
    fev, feve = fev_np(targets, split_by_image(np.asarray(predictions), image_ids, repeated_only=True))
    selected = fev >= fev_threshold
    return feve[selected], selected
