"""Where each neuron looks, estimated from the recordings alone, to start the Gaussian readout near it.

A V1 neuron prefers a pattern of some orientation and spatial frequency inside its receptive field. A complex cell
responds to that pattern's contrast whatever its phase, so its response correlates with the *energy* of a
quadrature pair of Gabor filters (the squared magnitude of even + i·odd) a few frames earlier; a simple cell
prefers one phase, so its response correlates with the pair's *linear* outputs (the map is the amplitude of the
two correlations, which leaves the phase free). Both maps peak at the receptive-field centre, most clearly for the
Gabor channel whose orientation and period match the neuron's. The bank has 2 periods × 6 orientations; per neuron
the estimate is the smoothed peak of the highest of its 24 maps. Three GEMMs per channel, (neurons × frames) ·
(frames × pixels), give every neuron's maps at once.

On the synthetic set (3 mice, 660 neurons, 17,780 training frames each) 94 % of the estimates lie within 2 px of
the true centres (median error 0.86 px): 94 % of the simple and 95 % of the complex cells. Isotropic contrast
energy (high-pass, square, blur; the first version) placed 44 % there (2.2 px); the energy maps of the oriented
bank alone 79 % (simple cells 65 %). The maps are computed on a 2×-coarser grid: the same accuracy within noise,
a quarter of the GEMMs (BUILD_NOTES.md, in-silico section).

Cost: about 10 s per synthetic mouse on 2 CPU cores; the GEMMs grow with neurons × frames, about 6.6 TFLOP
(≈ 1 min at 2-core speed) for a real-sized mouse of 8,000 neurons and 20,000 frames. The training loop keeps the
result in its workdir, so a run computes it once.

Why it matters: a readout position that starts far from the receptive field gets no gradient towards it (the
core's features there never see the neuron's stimulus), so Adam's normalised noise steps make it wander, and the
core learns features displaced by several pixels to reach the neuron instead. On the synthetic set this left
the trained model's positions almost unrelated to the true centres, and its in-silico receptive fields several
pixels off. ``config.model.readout.init_positions = "receptive_fields"`` starts every free position at its
estimate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
from absl import logging
from scipy import ndimage

from sensorium_jax.data.reader import Session

#: Spatial periods of the Gabor channels (pixels of the 36 × 64 screen): V1's preferred spatial frequencies at
#: this resolution span roughly 6–14 px; two channels an octave-half apart cover them (three did no better).
PERIODS_PX = (7.0, 11.0)
#: Orientations per period, evenly spaced over 180° (six were 2 % better than four at 1.5× the cost).
ORIENTATIONS = 6
#: Gabor envelope σ as a fraction of the period (about one and a half visible cycles, like V1 receptive fields).
ENVELOPE_FRACTION = 0.4
#: Response frame t is compared with the filtered frames t − lag (30 Hz: 33–133 ms, where visual responses peak;
#: 1–4 placed 2 % more centres within 2 px than 1–6).
LAGS = (1, 2, 3, 4)
#: The maps are computed on a grid this many times coarser than the screen (the frames are average-pooled).
MAP_STRIDE = 2
#: The correlation map is smoothed before its peak is taken (σ, screen pixels).
MAP_SIGMA = 1.5
#: The peak is refined to sub-pixel by the centroid over ±this many map cells around it.
PEAK_RADIUS = 2


@dataclasses.dataclass(frozen=True)
class ReceptiveFieldEstimate:
    centres: np.ndarray  # (N, 2) pixels (x = column, y = row)
    # (N,) the winning map's smoothed peak: a correlation (energy maps) or the amplitude of two correlations
    # (linear maps); how clear the estimate is, with pure noise near the bottom of the range
    peak_correlation: np.ndarray
    # (N,) the map the estimate came from: 2·k for Gabor channel k's energy map (phase-blind: complex cells),
    # 2·k + 1 for its linear quadrature-amplitude map (a fixed phase preference: simple cells)
    channel: np.ndarray
    image_size: tuple[int, int]  # (H, W)
    frames: int  # response frames used


def gabor_bank(
    periods: Sequence[float] = PERIODS_PX, orientations: int = ORIENTATIONS, envelope: float = ENVELOPE_FRACTION
) -> list[np.ndarray]:
    """Complex Gabor kernels ``even + i·odd``, each part of unit norm and the even part of zero mean (so mean
    luminance gives no energy); orientation θ is the wave vector's angle in (x, y) = (column, row)."""
    kernels = []
    for period in periods:
        sigma = envelope * period
        radius = int(np.ceil(3 * sigma))
        yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float64)
        window = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
        for k in range(orientations):
            theta = k * np.pi / orientations
            phase = 2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period
            even = window * np.cos(phase)
            even -= window * even.sum() / window.sum()
            odd = window * np.sin(phase)
            kernels.append((even / np.linalg.norm(even) + 1j * odd / np.linalg.norm(odd)).astype(np.complex64))
    return kernels


def gabor_responses(videos: np.ndarray, kernels: Sequence[np.ndarray]) -> np.ndarray:
    """``(T, H, W)`` frames → ``(C, T, H, W)`` complex ``video ⊛ kernel`` per kernel: the real part is the even
    filter's output, the imaginary part the odd one's, and the squared magnitude the quadrature-pair energy.

    FFT convolution over the edge-replicated frames (the frames' transform is shared by the kernels passed
    together); equal to a direct convolution with ``mode="nearest"`` borders.
    """
    videos = np.asarray(videos, np.float32)
    _, h, w = videos.shape
    radius = max(k.shape[0] for k in kernels) // 2
    padded = np.pad(videos, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
    # Zero-filled up to sizes the FFT factorises well (e.g. 46 × 78 → 48 × 80); the zeros only meet output
    # pixels beyond the padded border, which are cut away.
    shape = tuple(scipy.fft.next_fast_len(n, real=False) for n in padded.shape[1:])
    spectrum = scipy.fft.fft2(padded, s=shape, workers=-1)
    out = np.empty((len(kernels), *videos.shape), np.complex64)
    for c, kernel in enumerate(kernels):
        # Centre the kernel on the origin of the periodic grid, so output pixel p is the response at p.
        r = kernel.shape[0] // 2
        centred = np.zeros(shape, np.complex64)
        centred[: 2 * r + 1, : 2 * r + 1] = kernel
        centred = np.roll(centred, (-r, -r), axis=(0, 1))
        out[c] = scipy.fft.ifft2(spectrum * scipy.fft.fft2(centred), workers=-1)[
            :, radius : radius + h, radius : radius + w
        ]
    return out


def _pool(x: np.ndarray, stride: int) -> np.ndarray:
    """Average-pool the last two axes by ``stride`` (edge-replicated up to a multiple of it)."""
    if stride == 1:
        return x
    h, w = x.shape[-2:]
    pad = [(0, 0)] * (x.ndim - 2) + [(0, -h % stride), (0, -w % stride)]
    x = np.pad(x, pad, mode="edge")
    h, w = x.shape[-2:]
    return x.reshape(*x.shape[:-2], h // stride, stride, w // stride, stride).mean(axis=(-3, -1))


def lagged(stimulus: np.ndarray, lags: Sequence[int] = LAGS) -> np.ndarray:
    """``(..., T, P)`` → ``(..., T − max(lags), P)``: row j is Σ_lag stimulus(j + max(lags) − lag), what drives
    response frame ``j + max(lags)``. Computed within one trial, so no lag crosses a trial boundary."""
    first, length = max(lags), stimulus.shape[-2]
    return sum(stimulus[..., first - lag : length - lag, :] for lag in lags)


def _standardise(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-2, keepdims=True)
    return x / np.maximum(x.std(axis=-2, keepdims=True), 1e-8)


def _smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(np.asarray(maps, np.float64), (0, sigma, sigma), mode="nearest")


def _refined_peaks(smooth: np.ndarray, radius: int) -> np.ndarray:
    """``(N, H, W)`` smoothed maps → ``(N, 2)`` (x, y): the peak cell refined to sub-cell by the centroid of the map
    above its mean within ±``radius`` cells; a flat map (a neuron that never varied) gives the middle."""
    n, h, w = smooth.shape
    rows, cols = np.unravel_index(smooth.reshape(n, -1).argmax(axis=1), (h, w))
    centres = np.empty((n, 2))
    for i in range(n):
        r0, r1 = max(rows[i] - radius, 0), min(rows[i] + radius + 1, h)
        c0, c1 = max(cols[i] - radius, 0), min(cols[i] + radius + 1, w)
        window = np.maximum(smooth[i, r0:r1, c0:c1] - smooth[i].mean(), 0.0)
        total = window.sum()
        yy, xx = np.mgrid[r0:r1, c0:c1]
        if total > 0:
            centres[i] = (xx * window).sum() / total, (yy * window).sum() / total
        else:  # no evidence, so the middle of the image
            centres[i] = (w - 1) / 2, (h - 1) / 2
    return centres.astype(np.float32)


def peak_centres(
    maps: np.ndarray, sigma: float = MAP_SIGMA, radius: int = PEAK_RADIUS
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H, W)`` correlation maps → centres ``(N, 2)`` (x, y) and the smoothed peak values ``(N,)``."""
    smooth = _smooth(maps, sigma)
    return _refined_peaks(smooth, radius), smooth.reshape(len(smooth), -1).max(axis=1).astype(np.float32)


def _correlations(rates: np.ndarray, stimulus: np.ndarray) -> np.ndarray:
    """Standardised ``rates`` (T, N) against ``stimulus`` (T, P) → (N, P) correlations (each stimulus column
    standardised on its own)."""
    return rates.T @ _standardise(stimulus) / len(rates)


def estimate_receptive_fields(
    session: Session, max_frames: int = 20_000, tier: str = "train"
) -> ReceptiveFieldEstimate:
    """Every neuron's receptive-field centre from up to ``max_frames`` response frames of ``tier`` (normalised
    data, as the model sees it)."""
    trials = session.trials(tier)
    if len(trials) == 0:
        raise ValueError(f"{session.path}: no {tier!r} trials to estimate receptive fields from")
    # The frames are pooled to the coarse grid first and filtered there with Gabors of proportionally shorter
    # periods: the channels' periods stay well above the coarse grid's Nyquist limit, and the FFTs are 4× smaller.
    kernels = gabor_bank([period / MAP_STRIDE for period in PERIODS_PX], ORIENTATIONS, ENVELOPE_FRACTION)
    videos, responses, used = [], [], 0
    for trial in trials:
        data = session.load(int(trial))
        # The last trial needs only the frames that fill up max_frames (plus the lags in front of them).
        frames = data["videos"][: max_frames - used + max(LAGS)]
        if len(frames) <= max(LAGS):
            continue
        videos.append(_pool(frames, MAP_STRIDE))
        responses.append(data["responses"][max(LAGS) : len(frames)])
        used += len(responses[-1])
        if used >= max_frames:
            break
    if not responses:
        raise ValueError(f"{session.path}: every {tier!r} trial is shorter than {max(LAGS) + 1} frames")
    image_size = tuple(int(s) for s in data["videos"].shape[1:])
    grid = videos[0].shape[1:]
    rates = _standardise(np.concatenate(responses))
    del responses, data  # the trials' full arrays: a real mouse's responses alone are ~0.6 GB
    neurons = rates.shape[1]
    best_maps = np.zeros((neurons, *grid))
    peaks = np.full(neurons, -np.inf, np.float32)
    channel = np.zeros(neurons, np.int32)
    # One channel at a time, so memory holds a single channel's stimulus (frames × coarse pixels), not all.
    for c, kernel in enumerate(kernels):
        filtered = [gabor_responses(v, [kernel])[0].reshape(len(v), -1) for v in videos]  # (T, pixels) complex
        # Energy is squared frame by frame before the lags are summed; the linear outputs are summed as they are.
        energy = np.concatenate([lagged(f.real**2 + f.imag**2, LAGS) for f in filtered])
        linear = np.concatenate([lagged(f, LAGS) for f in filtered])
        maps = _correlations(rates, np.concatenate([energy, linear.real, linear.imag], axis=1))  # one GEMM
        energy_map, even_map, odd_map = np.split(maps, 3, axis=1)
        for kind, found in enumerate((energy_map, np.hypot(even_map, odd_map))):
            smooth = _smooth(found.reshape(-1, *grid), MAP_SIGMA / MAP_STRIDE)
            peak = smooth.reshape(neurons, -1).max(axis=1)
            better = peak > peaks
            best_maps[better], peaks[better], channel[better] = smooth[better], peak[better], 2 * c + kind
    centres = _refined_peaks(best_maps, PEAK_RADIUS)
    # A coarse cell k covers screen pixels k·s … k·s + s − 1, so its centre is at k·s + (s − 1)/2.
    centres = centres * MAP_STRIDE + (MAP_STRIDE - 1) / 2
    return ReceptiveFieldEstimate(centres, peaks, channel, image_size, len(rates))


def estimate_all(
    sessions: Sequence[Session], max_frames: int = 20_000, cache: str | Path | None = None, write_cache: bool = True
) -> list[ReceptiveFieldEstimate]:
    """:func:`estimate_receptive_fields` for every mouse, logged.

    With ``cache`` (a file in the run's workdir), a resumed run reads the estimates its first start made instead of
    computing them again (about 10 s per synthetic mouse on 2 cores); a cache of other mice or settings is ignored
    and rewritten. Only the process with ``write_cache`` writes it, atomically, so hosts never read half a file.
    """
    key = _cache_key(sessions, max_frames)
    if cache is not None and Path(cache).exists():
        cached = _read_cache(Path(cache), key)
        if cached is not None:
            logging.info("receptive-field estimates read from %s", cache)
            return cached
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
    if cache is not None and write_cache:
        _write_cache(Path(cache), key, estimates)
    return estimates


#: Bump when the method changes, so that a cache from an older estimator is recomputed.
ESTIMATOR_VERSION = 2


def _cache_key(sessions: Sequence[Session], max_frames: int) -> str:
    settings = (PERIODS_PX, ORIENTATIONS, ENVELOPE_FRACTION, LAGS, MAP_STRIDE, MAP_SIGMA, PEAK_RADIUS, max_frames)
    return json.dumps(
        {
            "version": ESTIMATOR_VERSION,
            "sessions": [str(Path(s.path).absolute()) for s in sessions],
            "settings": repr(settings),
        }
    )


def _write_cache(path: Path, key: str, estimates: Sequence[ReceptiveFieldEstimate]) -> None:
    arrays: dict[str, np.ndarray] = {"key": np.array(key)}
    for i, estimate in enumerate(estimates):
        for field in dataclasses.fields(estimate):
            arrays[f"{i}/{field.name}"] = np.asarray(getattr(estimate, field.name))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def _read_cache(path: Path, key: str) -> list[ReceptiveFieldEstimate] | None:
    try:
        with np.load(path) as arrays:
            if str(arrays["key"]) != key:
                logging.info("%s holds estimates of other mice or settings: estimating again", path)
                return None
            return _estimates_from(arrays, len(json.loads(key)["sessions"]))
    # A damaged file costs a recomputation, not the run.
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        logging.warning("%s cannot be read (%s): estimating again", path, error)
        return None


def _estimates_from(arrays: Any, count: int) -> list[ReceptiveFieldEstimate]:
    return [
        ReceptiveFieldEstimate(
            centres=arrays[f"{i}/centres"],
            peak_correlation=arrays[f"{i}/peak_correlation"],
            channel=arrays[f"{i}/channel"],
            image_size=tuple(int(n) for n in arrays[f"{i}/image_size"]),
            frames=int(arrays[f"{i}/frames"]),
        )
        for i in range(count)
    ]
