"""Where each neuron looks, estimated from the recordings alone, to start the Gaussian readout near it.

A V1 neuron, simple or complex, responds more when there is more contrast inside its receptive field, whatever
the pattern's phase. So the correlation of its response with the local contrast energy of the video a few frames
earlier (high-pass the frame, square, blur) peaks near its receptive-field centre. One GEMM per mouse of
(neurons × frames) · (frames × pixels) gives every neuron's map; its smoothed peak is the estimate.

Why it matters: a readout position that starts far from the receptive field gets no gradient towards it (the
core's features there never see the neuron's stimulus), so Adam's normalised noise steps make it wander, and the
core learns features displaced by several pixels to reach the neuron instead. On the synthetic set this left
the trained model's positions almost unrelated to the true centres, and its in-silico receptive fields several
pixels off (BUILD_NOTES.md, in-silico section). ``config.model.readout.init_positions = "receptive_fields"``
starts every free position at its estimate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from absl import logging
from scipy import ndimage

from sensorium_jax.data.reader import Session

#: High-pass scale (σ, pixels): removes the mean luminance and slow gradients, keeps Gabor-scale contrast.
HIGH_PASS_SIGMA = 3.0
#: The energy is pooled over about a receptive field's size (σ, pixels).
ENERGY_SIGMA = 2.0
#: Response frame t is compared with the energy of frames t − lag (30 Hz: 33–200 ms, where visual responses peak).
LAGS = (1, 2, 3, 4, 5, 6)
#: The correlation map is smoothed before its peak is taken (σ, pixels).
MAP_SIGMA = 1.5


@dataclasses.dataclass(frozen=True)
class ReceptiveFieldEstimate:
    centres: np.ndarray  # (N, 2) pixels (x = column, y = row)
    peak_correlation: np.ndarray  # (N,) the smoothed map's peak correlation: how clear the estimate is
    image_size: tuple[int, int]  # (H, W)
    frames: int  # response frames used


def contrast_energy(videos: np.ndarray) -> np.ndarray:
    """``(T, H, W)`` frames → ``(T, H, W)`` local contrast energy: blur((v − blur_hp(v))²)."""
    videos = np.asarray(videos, np.float32)
    high = videos - ndimage.gaussian_filter(videos, (0, HIGH_PASS_SIGMA, HIGH_PASS_SIGMA), mode="nearest")
    return ndimage.gaussian_filter(high * high, (0, ENERGY_SIGMA, ENERGY_SIGMA), mode="nearest")


def lagged_energy(videos: np.ndarray, lags: Sequence[int] = LAGS) -> np.ndarray:
    """``(T, H, W)`` → ``(T − max(lags), H·W)``: row j is Σ_lag energy(j + max(lags) − lag), the stimulus that
    drives response frame ``j + max(lags)``. Computed within one trial, so no lag crosses a trial boundary."""
    energy = contrast_energy(videos).reshape(len(videos), -1)
    first = max(lags)
    return sum(energy[first - lag : len(energy) - lag] for lag in lags)


def _standardise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0, keepdims=True)
    return x / np.maximum(x.std(axis=0, keepdims=True), 1e-8)


def peak_centres(maps: np.ndarray, sigma: float = MAP_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H, W)`` correlation maps → centres ``(N, 2)`` (x, y) and the smoothed peak values ``(N,)``.

    The peak pixel is refined to sub-pixel by the centroid of the smoothed map above its mean in a 5 × 5 window; a
    flat map (a neuron that never varied) gives the middle of the image.
    """
    smooth = ndimage.gaussian_filter(np.asarray(maps, np.float64), (0, sigma, sigma), mode="nearest")
    n, h, w = smooth.shape
    flat = smooth.reshape(n, -1).argmax(axis=1)
    rows, cols = np.unravel_index(flat, (h, w))
    centres = np.empty((n, 2))
    for i in range(n):
        r0, r1 = max(rows[i] - 2, 0), min(rows[i] + 3, h)
        c0, c1 = max(cols[i] - 2, 0), min(cols[i] + 3, w)
        window = np.maximum(smooth[i, r0:r1, c0:c1] - smooth[i].mean(), 0.0)
        total = window.sum()
        yy, xx = np.mgrid[r0:r1, c0:c1]
        if total > 0:
            centres[i] = (xx * window).sum() / total, (yy * window).sum() / total
        else:  # a flat map (a silent neuron): no evidence, so the middle of the image
            centres[i] = (w - 1) / 2, (h - 1) / 2
    return centres.astype(np.float32), smooth.reshape(n, -1).max(axis=1).astype(np.float32)


def estimate_receptive_fields(
    session: Session, max_frames: int = 20_000, tier: str = "train"
) -> ReceptiveFieldEstimate:
    """Every neuron's receptive-field centre from up to ``max_frames`` response frames of ``tier`` (normalised
    data, as the model sees it)."""
    trials = session.trials(tier)
    if len(trials) == 0:
        raise ValueError(f"{session.path}: no {tier!r} trials to estimate receptive fields from")
    stimulus, responses, used = [], [], 0
    for trial in trials:
        data = session.load(int(trial))
        if len(data["videos"]) <= max(LAGS):
            continue
        stimulus.append(lagged_energy(data["videos"]))
        responses.append(data["responses"][max(LAGS) :])
        used += len(responses[-1])
        if used >= max_frames:
            break
    if not responses:
        raise ValueError(f"{session.path}: every {tier!r} trial is shorter than {max(LAGS) + 1} frames")
    image_size = tuple(int(s) for s in data["videos"].shape[1:])
    energy = _standardise(np.concatenate(stimulus)[:max_frames])
    rates = _standardise(np.concatenate(responses)[:max_frames])
    maps = (rates.T @ energy / len(rates)).reshape(-1, *image_size)  # (N, H, W) correlations
    centres, peaks = peak_centres(maps)
    return ReceptiveFieldEstimate(centres, peaks, image_size, len(rates))


def estimate_all(sessions: Sequence[Session], max_frames: int = 20_000) -> list[ReceptiveFieldEstimate]:
    """:func:`estimate_receptive_fields` for every mouse, logged."""
    estimates = []
    for session in sessions:
        estimate = estimate_receptive_fields(session, max_frames)
        logging.info(
            "%s: receptive-field centres estimated from %d frames (median peak correlation %.3f)",
            session.name,
            estimate.frames,
            float(np.median(estimate.peak_correlation)),
        )
        estimates.append(estimate)
    return estimates
