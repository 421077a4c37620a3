"""A simulated mouse V1 population with known ground truth, written in the SENSORIUM 2023 folder format.

The real data cannot be shipped with the code and offers no ground truth, so the framework is developed and
tested against this simulation. Each session folder follows the real on-disk format exactly (see
:mod:`sensorium_jax.data.layout`), plus a ``ground_truth/`` folder that the reader never looks at::

    <session>/ground_truth/rates/{i}.npy           (N, T_valid) noiseless expected response of trial i
    <session>/ground_truth/neurons.npz             receptive-field parameters and every model constant
    <session>/ground_truth/video_ids.npy           (n_trials,) id of the clip shown in trial i
    <session>/ground_truth/synthetic_config.json   the generating :class:`SyntheticConfig`

The simulation, per mouse:

* Stimuli: 1/f^α noise images drifting with a random velocity (sub-pixel translation by the Fourier shift
  theorem), scene cuts every 1–3 s, varying mean luminance and contrast, grey levels rounded to integers in
  0–255. Train and ``none`` clips are unique; the repeated clips of the ``oracle`` and test tiers are
  pixel-identical in every repeat and shared by all mice (as in the competition).
* Behaviour: running speed from a still/running two-state process, pupil dilation following running, eye
  position (pupil centre) drifting with occasional saccades.
* Eye movements shift the retinal image: the neurons see ``frame(p + d)`` with
  ``d = eye_shift_px_per_unit * (pupil_center - eye_reference)`` (bilinear, same for all neurons), i.e. the
  effective receptive field on the screen moves by ``+d``.
* Neurons: Gabor receptive fields placed retinotopically from the cortical coordinates; simple cells (linear,
  rectified) and complex cells (quadrature energy), some of either kind direction selective (space-time
  inseparable: fast and slow temporal kernels in temporal quadrature); a smooth threshold nonlinearity; a gain
  ``exp(gain_running · running_z + gain_pupil · pupil_z)``.
* Responses: gamma-Poisson (negative binomial) event counts times a per-neuron amplitude with lognormal
  jitter — sparse, non-negative and overdispersed like deconvolved calcium. The saved rate is the exact
  expectation of the recorded response given stimulus and behaviour, so it is the best possible prediction
  (the noise ceiling).

Angles use image coordinates: x = column (to the right), y = row (downwards); an angle θ means the vector
(cos θ, sin θ) in (x, y).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from sensorium_jax.data import layout
from sensorium_jax.data.layout import (
    BURN_IN_FRAMES,
    DATA_KEYS,
    SCORED_FRAMES,
    VIDEO_HEIGHT,
    VIDEO_WIDTH,
    DataFormatError,
    Tier,
)
from sensorium_jax.evaluation.metrics import (
    correlation_to_average_np,
    single_trial_correlation_np,
    video_hash,
)

#: Bump when the simulation changes, so cached datasets of an older generator are not reused.
GENERATOR_VERSION = 1

STATISTICS = ("mean", "std", "min", "max", "median")
STATISTICS_SOURCES = ("all", "stimulus_frame")
GROUND_TRUTH_DIR = "ground_truth"
CEILING_TIERS = (Tier.ORACLE.value, Tier.LIVE_TEST_MAIN.value, Tier.FINAL_TEST_MAIN.value)

_TEMPORAL_TAPS = 12  # 400 ms at 30 Hz: long enough for the biphasic kernels to decay below 2 % of their peak
# Periodic noise canvas larger than the 36×64 screen, so drifting scenes do not wrap around at once.
_CANVAS = (96, 128)
_GREY = 127.5
# Unique clips of mouse m get ids from (m + 1) * _MOUSE_CLIP_ID_STRIDE; repeated (shared) clips count from 0.
_MOUSE_CLIP_ID_STRIDE = 100_000


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and physiology of a simulated dataset. Every field enters the dataset name hash."""

    num_mice: int = 3
    neurons_per_mouse: tuple[int, ...] = (180, 220, 260)  # one count per mouse; len == num_mice
    train_trials: int = 60
    oracle_videos: int = 6
    oracle_repeats: int = 4  # oracle tier = repeated clips
    test_videos: int = 4
    test_repeats: int = 4  # for both live_test_main and final_test_main
    none_trials: int = 2  # tier 'none' (excluded by the reference loader)
    frames: int = 300  # valid frames per trial
    pad_frames: int = 20  # NaN padding at the end (>= 1, the pinned reference loader crashes without NaN)
    long_trials: int = 2  # train trials with frames + pad_frames // 2 valid frames, like the real data
    seed: int = 0
    # --- stimulus ---
    scene_frames: tuple[int, int] = (30, 90)  # scene cut every 1–3 s at 30 Hz
    max_drift_px_per_frame: float = 1.0
    static_scene_fraction: float = 0.25
    # --- receptive fields ---
    complex_fraction: float = 0.5
    direction_selective_fraction: float = 0.3
    spatial_period_px: tuple[float, float] = (6.0, 14.0)
    sigma_px: tuple[float, float] = (2.0, 5.0)
    retinotopic_scatter_px: float = 1.0
    rf_margin_x_px: float = 10.0  # keep RF centres where an unpadded conv core still sees them
    rf_margin_y_px: float = 8.0
    # --- behaviour and eye movements ---
    running_gain_mean: float = 0.3  # most neurons are driven up by running
    running_gain_std: float = 0.15
    pupil_gain_mean: float = 0.05
    pupil_gain_std: float = 0.15
    eye_shift_px_per_unit: float = 0.6  # screen pixels per eye-camera pixel of pupil displacement
    # --- response statistics ---
    event_rate_range: tuple[float, float] = (0.1, 0.3)  # mean events per frame
    median_mean_response: float = 0.5  # mean recorded response per frame, raw units
    baseline_fraction: float = 0.3  # mean stimulus-independent share of the rate
    overdispersion_shape: float = 2.0  # gamma shape of the negative-binomial noise; smaller = noisier
    event_amplitude_cv: float = 0.4

    def __post_init__(self) -> None:
        if self.num_mice < 1 or len(self.neurons_per_mouse) != self.num_mice:
            raise ValueError(
                f"neurons_per_mouse has {len(self.neurons_per_mouse)} entries for num_mice={self.num_mice}"
            )
        if min(self.neurons_per_mouse) < 1:
            raise ValueError("every mouse needs at least one neuron")
        if self.frames <= BURN_IN_FRAMES:
            raise ValueError(f"frames={self.frames} must exceed the {BURN_IN_FRAMES}-frame scoring burn-in")
        if self.pad_frames < 1:
            raise ValueError("pad_frames must be >= 1: readers find the valid length by the NaN pad")
        if self.train_trials < 1:
            raise ValueError("train_trials must be >= 1 (the statistics are computed on the train tier)")
        if not 0 <= self.long_trials <= self.train_trials:
            raise ValueError(f"long_trials={self.long_trials} must be within 0..train_trials")
        tier_sizes = (self.oracle_videos, self.oracle_repeats, self.test_videos, self.test_repeats)
        if min(*tier_sizes, self.none_trials) < 0:
            raise ValueError("tier sizes must be non-negative")
        if not 1 <= self.scene_frames[0] <= self.scene_frames[1]:
            raise ValueError(f"scene_frames={self.scene_frames} must be an increasing pair of positive ints")

    @property
    def padded_frames(self) -> int:
        return self.frames + self.pad_frames

    @property
    def long_frames(self) -> int:
        return self.frames + self.pad_frames // 2


def config_hash(config: Any, generator_version: int = GENERATOR_VERSION) -> str:
    """32-hex-digit digest of a generator config dataclass and its generator's version (like the hash in real
    session names). Shared by the video and the static generators."""
    payload = json.dumps(
        {"generator_version": generator_version, **dataclasses.asdict(config)}, sort_keys=True, default=list
    ).encode()
    return hashlib.md5(payload).hexdigest()


def session_names(config: SyntheticConfig) -> list[str]:
    digest = config_hash(config)
    return [f"dynamic-synthetic-{m}-Video-{digest}" for m in range(config.num_mice)]


def dataset_name(config: SyntheticConfig) -> str:
    return f"sensorium-synthetic-{config_hash(config)[:16]}"


def stage_rng(config: Any, *tags: int) -> np.random.Generator:
    # One independent stream per (seed, purpose[, mouse]): changing one stage never reshuffles the others.
    return np.random.default_rng([config.seed, *tags])


_TAG_LIBRARY, _TAG_NEURONS, _TAG_PLAN, _TAG_CLIPS, _TAG_BEHAVIOUR, _TAG_NOISE, _TAG_IDS = range(1, 8)


# ------------------------------------------------------------------------------------------------------------
# Stimuli


def _natural_clip(rng: np.random.Generator, num_frames: int, config: SyntheticConfig) -> np.ndarray:
    """(T, 36, 64) float32 integer grey levels: drifting 1/f^α scenes with cuts and contrast changes."""
    height, width = _CANVAS
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0  # avoid 0 ** -α; the DC term is zeroed below
    frames = np.empty((num_frames, VIDEO_HEIGHT, VIDEO_WIDTH), np.float32)
    start = 0
    while start < num_frames:
        scene = int(rng.integers(config.scene_frames[0], config.scene_frames[1] + 1))
        length = min(scene, num_frames - start)
        alpha = rng.uniform(0.9, 1.5)  # amplitude-spectrum exponent; natural images sit near 1
        half_plane = (height, width // 2 + 1)
        noise = rng.standard_normal(half_plane) + 1j * rng.standard_normal(half_plane)
        spectrum = noise * radius**-alpha
        spectrum[0, 0] = 0.0
        if rng.random() < config.static_scene_fraction:
            velocity = np.zeros(2)
        else:
            speed = rng.uniform(0.2, config.max_drift_px_per_frame)
            angle = rng.uniform(0.0, 2 * np.pi)
            velocity = speed * np.array([np.cos(angle), np.sin(angle)])  # (vx, vy) px per frame
        t = np.arange(length)[:, None, None]
        # Fourier shift theorem: an exact sub-pixel translation of the periodic canvas, no interpolation blur.
        # The phase ramp factorises over the two axes, which saves most of the complex exponentials.
        ramp_x = np.exp(-2j * np.pi * fx * velocity[0] * t).astype(np.complex64)
        ramp_y = np.exp(-2j * np.pi * fy * velocity[1] * t).astype(np.complex64)
        canvas = np.fft.irfft2((spectrum.astype(np.complex64) * ramp_y) * ramp_x, s=(height, width))
        canvas /= canvas[0].std() + 1e-12
        oy = int(rng.integers(0, height - VIDEO_HEIGHT + 1))
        ox = int(rng.integers(0, width - VIDEO_WIDTH + 1))
        image = canvas[:, oy : oy + VIDEO_HEIGHT, ox : ox + VIDEO_WIDTH]
        luminance = rng.uniform(90.0, 165.0)
        rms = rng.uniform(15.0, 55.0)
        # Slow contrast modulation within a scene, so contrast varies continuously as well as at the cuts.
        period = rng.uniform(30.0, 120.0)
        modulation = 1.0 + 0.3 * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        frames[start : start + length] = np.clip(np.round(luminance + rms * modulation * image), 0, 255)
        start += length
    return frames


# ------------------------------------------------------------------------------------------------------------
# Behaviour


def _ar1(rng: np.random.Generator, shape: tuple[int, ...], num_frames: int, tau: float, std: float) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck samples (..., T) with time constant ``tau`` frames."""
    decay = np.exp(-1.0 / tau)
    innovation = rng.standard_normal((*shape, num_frames)) * std * np.sqrt(1 - decay**2)
    out = np.empty((*shape, num_frames))
    out[..., 0] = rng.standard_normal(shape) * std
    for t in range(1, num_frames):
        out[..., t] = decay * out[..., t - 1] + innovation[..., t]
    return out


def _smooth(x: np.ndarray, tau: float) -> np.ndarray:
    """Causal exponential smoothing along the last axis, started at the first value (no onset transient)."""
    weight = 1.0 - np.exp(-1.0 / tau)
    out = np.empty_like(x)
    out[..., 0] = x[..., 0]
    for t in range(1, x.shape[-1]):
        out[..., t] = out[..., t - 1] + weight * (x[..., t] - out[..., t - 1])
    return out


def _simulate_behaviour(
    rng: np.random.Generator, num_trials: int, num_frames: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Running speed (n, T), pupil dilation (n, T) and pupil centre (n, 2, T) for one mouse's trials."""
    # Mouse-specific habits: how often and how fast it runs, its pupil size and eye resting position.
    still_bout = rng.uniform(60.0, 150.0)  # mean frames spent still
    run_bout = rng.uniform(45.0, 120.0)  # mean frames spent running
    top_speed = rng.uniform(10.0, 30.0)  # cm/s
    pupil_base = rng.uniform(15.0, 25.0)
    pupil_per_speed = rng.uniform(0.2, 0.5)
    eye_rest = rng.uniform(140.0, 160.0, size=2)

    # Running: a two-state (still/running) Markov chain; the mouse is sometimes still, sometimes runs in bouts
    p_start, p_stop = 1.0 / still_bout, 1.0 / run_bout
    running = rng.random(num_trials) < p_start / (p_start + p_stop)
    flips = rng.random((num_trials, num_frames))
    state = np.empty((num_trials, num_frames), bool)
    for t in range(num_frames):
        running = np.where(running, flips[:, t] >= p_stop, flips[:, t] < p_start)
        state[:, t] = running
    level = top_speed * np.exp(_ar1(rng, (num_trials,), num_frames, tau=40.0, std=0.3))
    jitter = np.abs(_ar1(rng, (num_trials,), num_frames, tau=3.0, std=0.3))  # treadmill jitter while still
    speed = np.maximum(_smooth(state * level, tau=8.0) + jitter, 0.0)  # inertia: speed ramps up and down

    # Pupil dilation follows running with a lag of ~1–2 s, plus its own slow arousal fluctuations.
    dilation = pupil_base + pupil_per_speed * _smooth(speed, tau=45.0)
    dilation += _ar1(rng, (num_trials,), num_frames, tau=90.0, std=2.0)
    dilation = np.maximum(dilation, 2.0)

    # Eye position: slow drift plus saccades (jumps that relax back to rest); horizontal movements dominate.
    drift = _ar1(rng, (num_trials, 2), num_frames, tau=60.0, std=1.0) * np.array([1.2, 0.6])[:, None]
    saccade_prob = (0.3 / 30.0) * (1.0 + state)  # saccades are more frequent while running
    jumps = (rng.random((num_trials, num_frames)) < saccade_prob)[:, None, :] * (
        rng.standard_normal((num_trials, 2, num_frames)) * np.array([3.0, 1.5])[:, None]
    )
    decay = np.exp(-1.0 / 45.0)
    saccade = np.empty_like(jumps)
    saccade[..., 0] = jumps[..., 0]
    for t in range(1, num_frames):
        saccade[..., t] = decay * saccade[..., t - 1] + jumps[..., t]
    pupil_center = eye_rest[None, :, None] + drift + saccade
    return speed, dilation, pupil_center


# ------------------------------------------------------------------------------------------------------------
# Neurons


@dataclasses.dataclass
class Population:
    """Every parameter of one mouse's simulated neurons (arrays indexed by neuron, raw units)."""

    centre_x: np.ndarray
    centre_y: np.ndarray
    orientation_deg: np.ndarray  # angle of the Gabor wave vector (across the stripes), [0, 180)
    spatial_period_px: np.ndarray
    sigma_px: np.ndarray
    phase: np.ndarray  # radians, phase of the even filter at the centre
    is_complex: np.ndarray
    direction_selective: np.ndarray
    direction_sign: np.ndarray  # -1/+1 for direction-selective cells, 0 otherwise
    preferred_direction_deg: np.ndarray  # drift direction of the preferred grating; NaN if not selective
    temporal_rate: np.ndarray  # 1/frames, speed of the temporal kernel
    temporal_rebound: np.ndarray  # weight of the negative lobe of the biphasic kernel
    temporal_frequency_hz: np.ndarray  # where a direction-selective cell's null response cancels
    threshold: np.ndarray  # in SDs of the drive
    saturation: np.ndarray  # the rectified response saturates towards this (in SDs of the drive)
    gain_running: np.ndarray
    gain_pupil: np.ndarray
    baseline: np.ndarray
    event_rate: np.ndarray  # mean events per frame on the train tier
    amplitude: np.ndarray  # raw response per event
    # Calibration constants measured on the train tier (set after the behaviour and stimuli exist).
    drive_mean: np.ndarray
    drive_std: np.ndarray
    response_mean: np.ndarray
    rate_scale: np.ndarray
    # Session-level constants (0-d or (2,) arrays).
    eye_shift_px_per_unit: np.ndarray  # (2,) screen px per eye-camera px, (x, y)
    eye_reference: np.ndarray  # (2,) pupil centre that means "no shift"
    running_mean: np.ndarray
    running_std: np.ndarray
    pupil_mean: np.ndarray
    pupil_std: np.ndarray

    @property
    def num_neurons(self) -> int:
        return int(self.centre_x.shape[0])

    def to_dict(self) -> dict[str, np.ndarray]:
        return {f.name: np.asarray(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, arrays: dict[str, Any]) -> Population:
        return cls(**{f.name: np.asarray(arrays[f.name]) for f in dataclasses.fields(cls)})

    def spatial_filters(self) -> tuple[np.ndarray, np.ndarray]:
        """Even and odd (quadrature) Gabor filters, each (N, 36, 64), zero-mean and unit L2 norm."""
        y = np.arange(VIDEO_HEIGHT, dtype=np.float64)[None, :, None] - self.centre_y[:, None, None]
        x = np.arange(VIDEO_WIDTH, dtype=np.float64)[None, None, :] - self.centre_x[:, None, None]
        theta = np.deg2rad(self.orientation_deg)[:, None, None]
        sigma = self.sigma_px[:, None, None]
        carrier = 2 * np.pi / self.spatial_period_px[:, None, None] * (x * np.cos(theta) + y * np.sin(theta))
        carrier = carrier + self.phase[:, None, None]
        envelope = np.exp(-(x**2 + y**2) / (2 * sigma**2))
        # Cut the far tail: float32 denormals there would make the drive matmul ~100× slower.
        envelope[envelope < 1e-6] = 0.0
        filters = []
        for wave in (np.cos(carrier), np.sin(carrier)):
            gabor = envelope * wave
            # Remove the DC response within the envelope: a coarse Gabor would otherwise see mean luminance.
            gabor -= envelope * (gabor.sum((1, 2), keepdims=True) / envelope.sum((1, 2), keepdims=True))
            gabor /= np.sqrt((gabor**2).sum((1, 2), keepdims=True))
            filters.append(gabor.astype(np.float32))
        return filters[0], filters[1]

    def temporal_kernels(self) -> tuple[np.ndarray, np.ndarray]:
        """Fast (biphasic) and slow kernels, (N, taps).

        The slow kernel is the negative time derivative of the fast one — 90° later at every frequency —
        scaled to the fast kernel's gain at the neuron's ``temporal_frequency_hz``, so that for a
        direction-selective cell the null-direction response cancels at that frequency.
        """
        n = 3
        rate = self.temporal_rate[:, None]
        rebound = self.temporal_rebound[:, None]

        def kernel(t: np.ndarray) -> np.ndarray:
            s = np.maximum(rate * t, 0.0)
            return s**n * np.exp(-s) * (1 / 6 - rebound * s**2 / 120)  # 1/n!, β/(n+2)!; Adelson & Bergen 1985

        taps = np.arange(_TEMPORAL_TAPS, dtype=np.float64)[None, :]
        fast = kernel(taps)
        step = 1e-3
        slow = -(kernel(taps + step) - kernel(taps - step)) / (2 * step)
        fast /= np.linalg.norm(fast, axis=1, keepdims=True)
        omega = 2 * np.pi * self.temporal_frequency_hz[:, None] / layout.FRAME_RATE_HZ
        phasor = np.exp(-1j * omega * taps)
        slow *= np.abs((fast * phasor).sum(1, keepdims=True)) / np.abs((slow * phasor).sum(1, keepdims=True))
        return fast.astype(np.float32), slow.astype(np.float32)


def _retinotopy(rng: np.random.Generator, cortex_xy: np.ndarray, config: SyntheticConfig) -> np.ndarray:
    """RF centres (N, 2) in pixels (x, y): a per-mouse linear map of cortex onto the screen, plus scatter."""
    angle = rng.uniform(-np.pi / 6, np.pi / 6)
    flips = rng.choice([-1.0, 1.0], size=2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    mapped = (cortex_xy / 300.0) @ (rotation * flips[None, :]).T
    half = np.array(
        [VIDEO_WIDTH / 2 - config.rf_margin_x_px, VIDEO_HEIGHT / 2 - config.rf_margin_y_px], dtype=np.float64
    )
    # Scale each screen axis so the whole map fits inside the margins with room for the scatter; still linear.
    extent = np.abs(mapped).max(axis=0) + 1e-9
    room = np.maximum(half - 2 * config.retinotopic_scatter_px, 1.0)
    centre = np.array([(VIDEO_WIDTH - 1) / 2, (VIDEO_HEIGHT - 1) / 2])
    xy = centre + mapped * (room / extent) + rng.normal(0.0, config.retinotopic_scatter_px, size=mapped.shape)
    return np.clip(xy, centre - half, centre + half)


def _make_population(
    rng: np.random.Generator, num_neurons: int, config: SyntheticConfig
) -> tuple[Population, np.ndarray]:
    """Random neurons and their cortical coordinates (N, 3) µm; calibration constants are placeholders."""
    cortex = np.column_stack(
        [
            rng.uniform(-300.0, 300.0, size=(num_neurons, 2)),
            rng.uniform(200.0, 400.0, size=num_neurons),
        ]
    )
    centres = _retinotopy(rng, cortex[:, :2], config)
    orientation = rng.uniform(0.0, 180.0, num_neurons)
    is_complex = rng.random(num_neurons) < config.complex_fraction
    selective = rng.random(num_neurons) < config.direction_selective_fraction
    sign = np.where(selective, rng.choice([-1.0, 1.0], size=num_neurons), 0.0)
    # With sign -1 the fast-even and slow-odd parts add up for a grating drifting along the wave vector
    # (orientation); with +1 for the opposite drift. tests/test_synthetic.py checks it with drifting gratings.
    preferred = np.where(selective, (orientation + np.where(sign > 0, 180.0, 0.0)) % 360.0, np.nan)
    mean_response = np.clip(
        config.median_mean_response * np.exp(rng.normal(0.0, 0.5, num_neurons)), 0.1, 2.0
    )  # lognormal spread of mean deconvolved activity across neurons
    event_rate = rng.uniform(*config.event_rate_range, size=num_neurons)
    zeros = np.zeros(num_neurons)
    population = Population(
        centre_x=centres[:, 0],
        centre_y=centres[:, 1],
        orientation_deg=orientation,
        spatial_period_px=rng.uniform(*config.spatial_period_px, size=num_neurons),
        sigma_px=rng.uniform(*config.sigma_px, size=num_neurons),
        phase=rng.uniform(0.0, 2 * np.pi, num_neurons),
        is_complex=is_complex,
        direction_selective=selective,
        direction_sign=sign,
        preferred_direction_deg=preferred,
        temporal_rate=rng.uniform(1.2, 1.8, num_neurons),
        temporal_rebound=rng.uniform(0.5, 1.0, num_neurons),
        temporal_frequency_hz=rng.uniform(1.5, 4.0, num_neurons),
        threshold=rng.uniform(0.3, 1.2, num_neurons),
        saturation=rng.uniform(2.0, 5.0, num_neurons),
        gain_running=rng.normal(config.running_gain_mean, config.running_gain_std, num_neurons),
        gain_pupil=rng.normal(config.pupil_gain_mean, config.pupil_gain_std, num_neurons),
        # Beta-distributed (concentration 4): some neurons are strongly stimulus driven, others barely, which
        # spreads the per-neuron ceilings as in real recordings.
        baseline=rng.beta(4 * config.baseline_fraction, 4 * (1 - config.baseline_fraction), num_neurons),
        event_rate=event_rate,
        amplitude=mean_response / event_rate,
        drive_mean=zeros,
        drive_std=zeros + 1.0,
        response_mean=zeros + 1.0,
        rate_scale=zeros + 1.0,
        eye_shift_px_per_unit=np.full(2, config.eye_shift_px_per_unit),
        eye_reference=np.zeros(2),
        running_mean=np.array(0.0),
        running_std=np.array(1.0),
        pupil_mean=np.array(0.0),
        pupil_std=np.array(1.0),
    )
    return population, cortex


def _interpolation_matrices(shift: np.ndarray, size: int) -> np.ndarray:
    """(T, size, size) matrices whose row r samples position r + shift[t] bilinearly, clamped at the edges."""
    base = np.floor(shift).astype(np.int64)
    frac = (shift - base).astype(np.float32)
    index = np.arange(size)[None, :] + base[:, None]
    matrices = np.zeros((shift.shape[0], size, size), np.float32)
    t = np.arange(shift.shape[0])[:, None]
    r = np.arange(size)[None, :]
    # Each (t, r) pair appears once per assignment, so buffered fancy += is exact (also where both taps clamp)
    matrices[t, r, np.clip(index, 0, size - 1)] += (1.0 - frac)[:, None]
    matrices[t, r, np.clip(index + 1, 0, size - 1)] += frac[:, None]
    return matrices


def shift_frames(frames: np.ndarray, shift_xy: np.ndarray) -> np.ndarray:
    """Bilinear shift of (T, H, W) frames: output pixel p shows input p + shift_xy[t] ((T, 2) as (dx, dy))."""
    rows = _interpolation_matrices(shift_xy[:, 1], frames.shape[1])
    cols = _interpolation_matrices(shift_xy[:, 0], frames.shape[2])
    # Separable: a (H×H) row operator and a (W×W) column operator per frame, as two batched matmuls.
    return rows @ frames.astype(np.float32) @ cols.transpose(0, 2, 1)


def _causal_filter(x: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Per-neuron causal convolution in time: x (T, N), kernels (N, taps) → (T, N); grey before the trial."""
    out = np.zeros_like(x)
    for lag in range(min(kernels.shape[1], x.shape[0])):
        out[lag:] += kernels[:, lag] * x[: x.shape[0] - lag]
    return out


class _Model:
    """The forward model of one population with its filters precomputed."""

    def __init__(self, population: Population):
        self.population = population
        even, odd = population.spatial_filters()
        n = population.num_neurons
        self.weights = np.concatenate([even.reshape(n, -1), odd.reshape(n, -1)]).T.copy()  # (2304, 2N)
        self.fast, self.slow = population.temporal_kernels()

    def drive(self, frames: np.ndarray, pupil_center: np.ndarray) -> np.ndarray:
        """Raw stimulus drive (T, N): the linear filter output (simple) or quadrature energy (complex).

        ``frames``: (T, 36, 64) grey levels; ``pupil_center``: (T, 2) eye position in eye-camera pixels.
        """
        return self.drives([frames], [pupil_center])[0]

    def drives(self, frames: Sequence[np.ndarray], pupil_center: Sequence[np.ndarray]) -> list[np.ndarray]:
        """:meth:`drive` of many trials, with the spatial filtering of ~6000 frames at a time in one matmul
        (a few large matmuls run ~2× faster than one per trial)."""
        out: list[np.ndarray] = []
        chunk: list[np.ndarray] = []
        for i, (video, eye) in enumerate(zip(frames, pupil_center, strict=True)):
            chunk.append(self._retinal(video, eye))
            if sum(len(c) for c in chunk) >= 6000 or i == len(frames) - 1:
                spatial = np.concatenate(chunk).reshape(-1, VIDEO_HEIGHT * VIDEO_WIDTH) @ self.weights
                bounds = np.cumsum([len(c) for c in chunk])[:-1]
                out.extend(self._temporal(part) for part in np.split(spatial, bounds))
                chunk = []
        return out

    def _retinal(self, frames: np.ndarray, pupil_center: np.ndarray) -> np.ndarray:
        """Contrast frames as the retina sees them after the eye-position shift."""
        pop = self.population
        contrast = (frames.astype(np.float32) - _GREY) / _GREY
        shift = pop.eye_shift_px_per_unit[None, :] * (pupil_center - pop.eye_reference[None, :])
        return shift_frames(contrast, shift)

    def _temporal(self, spatial: np.ndarray) -> np.ndarray:
        pop = self.population
        n = pop.num_neurons
        even, odd = spatial[:, :n], spatial[:, n:]
        sign = pop.direction_sign.astype(np.float32)
        # Space-time inseparable (Adelson-Bergen style) pair: the slow kernel lags the fast one by 90°, so
        # adding the quadrature spatial filter through it makes the response depend on the drift direction.
        a = _causal_filter(even, self.fast) + sign * _causal_filter(odd, self.slow)
        b = _causal_filter(odd, self.fast) - sign * _causal_filter(even, self.slow)
        return np.where(pop.is_complex, a**2 + b**2, a)

    def stimulus_response(self, drive: np.ndarray) -> np.ndarray:
        """Response (T, N) to the standardised drive: smooth threshold (softplus, slope 3), then saturation.

        Without the saturation the heavy tail of the energy drive gives rare frames at hundreds of times the
        mean.
        """
        pop = self.population
        u = (drive - pop.drive_mean) / pop.drive_std
        slope = 3.0
        rectified = np.logaddexp(0.0, slope * (u - pop.threshold)) / slope
        return rectified / (1.0 + rectified / pop.saturation)

    def event_rate(self, drive: np.ndarray, running: np.ndarray, dilation: np.ndarray) -> np.ndarray:
        """Expected events per frame (T, N) without the rate scale (calibration) applied."""
        pop = self.population
        stimulus = self.stimulus_response(drive) / pop.response_mean
        # z-scores softly bounded to ±3: a sprint at 5 SD should not multiply the rate by e^(5·gain).
        running_z = 3.0 * np.tanh((running[:, None] - pop.running_mean) / pop.running_std / 3.0)
        pupil_z = 3.0 * np.tanh((dilation[:, None] - pop.pupil_mean) / pop.pupil_std / 3.0)
        gain = np.exp(pop.gain_running * running_z + pop.gain_pupil * pupil_z)
        return (pop.baseline + (1.0 - pop.baseline) * stimulus) * gain

    def rates(
        self, frames: np.ndarray, behavior: np.ndarray, pupil_center: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Events per frame and expected recorded response, both (N, T), for time-first inputs.

        ``behavior``: (T, 2) = [pupil dilation, running speed]; ``pupil_center``: (T, 2).
        """
        pop = self.population
        drive = self.drive(frames, pupil_center)
        events = self.event_rate(drive, behavior[:, 1], behavior[:, 0]) * pop.rate_scale
        return events.T, (events * pop.amplitude).T


def sample_responses(
    rng: np.random.Generator, events: np.ndarray, amplitude: np.ndarray, shape: float, amplitude_cv: float
) -> np.ndarray:
    """Recorded responses around the expected ``events · amplitude``: gamma-Poisson event counts times summed
    lognormal event amplitudes (mean 1 each) — sparse, non-negative and overdispersed like deconvolved calcium.

    ``shape`` is the gamma shape of the negative-binomial noise (smaller = noisier); ``amplitude`` broadcasts
    against ``events``.
    """
    # Gamma-Poisson counts: overdispersed like real deconvolved activity; mean stays `events`.
    counts = rng.poisson(events * rng.gamma(shape, 1.0 / shape, size=events.shape))
    # The CV of a sum of c lognormal amplitudes shrinks like 1/sqrt(c).
    event_log_var = np.log1p(amplitude_cv**2)  # lognormal σ² of one event's amplitude
    var = np.log1p(np.expm1(event_log_var) / np.maximum(counts, 1))
    jitter = np.exp(rng.standard_normal(counts.shape) * np.sqrt(var) - var / 2)
    return amplitude * counts * jitter


def model_rates(
    session: str | Path,
    video: np.ndarray,
    behavior: np.ndarray | None = None,
    pupil_center: np.ndarray | None = None,
) -> np.ndarray:
    """Noiseless expected response (N, T) of a session's simulated neurons to any stimulus.

    ``video`` is (36, 64, T) grey levels 0–255, time last like the files; ``behavior`` (2, T) and
    ``pupil_center`` (2, T) default to the mean behaviour and the eye at its reference position (no
    shift). For probing the ground truth, e.g. tuning curves or receptive-field recovery.
    """
    population = Population.from_dict(dict(np.load(Path(session) / GROUND_TRUTH_DIR / "neurons.npz")))
    num_frames = video.shape[-1]
    if behavior is None:
        behavior = np.stack([np.full(num_frames, population.pupil_mean), np.full(num_frames, population.running_mean)])
    if pupil_center is None:
        pupil_center = np.repeat(population.eye_reference[:, None], num_frames, axis=1)
    _, response = _Model(population).rates(
        np.moveaxis(np.asarray(video, np.float32), -1, 0), np.asarray(behavior).T, np.asarray(pupil_center).T
    )
    return response


# ------------------------------------------------------------------------------------------------------------
# Sessions


@dataclasses.dataclass
class _Trial:
    tier: str
    clip_id: int
    num_frames: int


def _trial_plan(rng: np.random.Generator, mouse: int, config: SyntheticConfig) -> list[_Trial]:
    unique_base = (mouse + 1) * _MOUSE_CLIP_ID_STRIDE
    frames = config.frames
    trials = [
        _Trial(Tier.TRAIN.value, unique_base + k, config.long_frames if k < config.long_trials else frames)
        for k in range(config.train_trials)
    ]
    trials += [
        _Trial(Tier.NONE.value, unique_base + config.train_trials + k, config.frames) for k in range(config.none_trials)
    ]
    for tier, repeats, first_id, count in _repeated_tiers(config):
        trials += [_Trial(tier, first_id + j, config.frames) for j in range(count) for _ in range(repeats)]
    # Real sessions interleave the tiers in presentation order; a reader must not rely on blocks.
    return [trials[i] for i in rng.permutation(len(trials))]


def _repeated_tiers(config: SyntheticConfig) -> list[tuple[str, int, int, int]]:
    """(tier, repeats, first clip id, number of clips) of the tiers that show shared, repeated clips."""
    return [
        (Tier.ORACLE.value, config.oracle_repeats, 0, config.oracle_videos),
        (Tier.LIVE_TEST_MAIN.value, config.test_repeats, config.oracle_videos, config.test_videos),
        (
            Tier.FINAL_TEST_MAIN.value,
            config.test_repeats,
            config.oracle_videos + config.test_videos,
            config.test_videos,
        ),
    ]


def _repeated_clip_library(config: SyntheticConfig) -> dict[int, np.ndarray]:
    rng = stage_rng(config, _TAG_LIBRARY)
    count = config.oracle_videos + 2 * config.test_videos
    return {clip_id: _natural_clip(rng, config.frames, config) for clip_id in range(count)}


def _padded(array: np.ndarray, padded_frames: int) -> np.ndarray:
    """Time-last float32 copy NaN-padded to ``padded_frames``."""
    out = np.full((*array.shape[:-1], padded_frames), np.nan, np.float32)
    out[..., : array.shape[-1]] = array
    return out


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _write_statistics(session: Path, key: str, samples: np.ndarray, padded_frames: int) -> None:
    """Robust per-pixel/neuron/channel statistics over samples (S, ...), tiled along the padded time axis.

    The real 2023 files carry the time axis; per-frame statistics from few train trials give tiny stds that
    blow up the normalised data (sensorium.md §6), so the same value is repeated at every frame instead.
    """
    values = {
        "mean": samples.mean(axis=0),
        "std": samples.std(axis=0),
        "min": samples.min(axis=0),
        "max": samples.max(axis=0),
        "median": np.median(samples, axis=0),
    }
    for stat, value in values.items():
        tiled = np.repeat(value.astype(np.float32)[..., None], padded_frames, axis=-1)
        for source in STATISTICS_SOURCES:
            _save(layout.statistics_path(session, key, stat, source), tiled)


def _write_session(
    session: Path, mouse: int, config: SyntheticConfig, library: dict[int, np.ndarray]
) -> dict[str, Any]:
    """Simulate one mouse and write its folder; returns a short summary for the log."""
    started = time.perf_counter()
    num_neurons = config.neurons_per_mouse[mouse]
    population, cortex = _make_population(stage_rng(config, _TAG_NEURONS, mouse), num_neurons, config)
    plan = _trial_plan(stage_rng(config, _TAG_PLAN, mouse), mouse, config)
    is_train = np.array([trial.tier == Tier.TRAIN.value for trial in plan])

    clip_rng = stage_rng(config, _TAG_CLIPS, mouse)
    clips = dict(library)
    for trial in plan:
        if trial.clip_id not in clips:
            clips[trial.clip_id] = _natural_clip(clip_rng, trial.num_frames, config)

    behaviour_rng = stage_rng(config, _TAG_BEHAVIOUR, mouse)
    speed, dilation, eye = _simulate_behaviour(behaviour_rng, len(plan), config.long_frames)
    lengths = [trial.num_frames for trial in plan]
    train_speed = np.concatenate([speed[i, : lengths[i]] for i in np.flatnonzero(is_train)])
    train_dilation = np.concatenate([dilation[i, : lengths[i]] for i in np.flatnonzero(is_train)])
    train_eye = np.concatenate([eye[i, :, : lengths[i]] for i in np.flatnonzero(is_train)], axis=1)
    population.eye_reference = train_eye.mean(axis=1)
    population.running_mean, population.running_std = train_speed.mean(), train_speed.std() + 1e-6
    population.pupil_mean, population.pupil_std = train_dilation.mean(), train_dilation.std() + 1e-6

    # Calibrate on the train tier, in stages, so that every constant is fixed before the rates are drawn:
    # drive → standardised → rectified (mean 1) → with behaviour gain → scaled to the target event rate.
    model = _Model(population)
    drives = model.drives(
        [clips[trial.clip_id] for trial in plan],
        [eye[i, :, : trial.num_frames].T for i, trial in enumerate(plan)],
    )
    train_drive = np.concatenate([drives[i] for i in np.flatnonzero(is_train)])
    population.drive_mean = train_drive.mean(axis=0)
    population.drive_std = train_drive.std(axis=0) + 1e-6
    population.response_mean = model.stimulus_response(train_drive).mean(axis=0) + 1e-6
    train_events = model.event_rate(train_drive, train_speed, train_dilation)
    population.rate_scale = population.event_rate / train_events.mean(axis=0)

    noise_rng = stage_rng(config, _TAG_NOISE, mouse)
    padded = config.padded_frames
    samples: dict[str, list[np.ndarray]] = {key: [] for key in DATA_KEYS}
    truth = session / GROUND_TRUTH_DIR
    for i, trial in enumerate(plan):
        n = trial.num_frames
        events = (model.event_rate(drives[i], speed[i, :n], dilation[i, :n]) * population.rate_scale).T  # (N, T)
        expected = events * population.amplitude[:, None]
        response = sample_responses(
            noise_rng, events, population.amplitude[:, None], config.overdispersion_shape, config.event_amplitude_cv
        )
        arrays = {
            "videos": np.moveaxis(clips[trial.clip_id], 0, -1),
            "responses": response,
            "behavior": np.stack([dilation[i, :n], speed[i, :n]]),
            "pupil_center": eye[i, :, :n],
        }
        for key, array in arrays.items():
            _save(layout.trial_path(session, key, i), _padded(array, padded))
            if is_train[i]:
                samples[key].append(np.moveaxis(array, -1, 0).astype(np.float32))
        _save(truth / "rates" / f"{i}.npy", expected.astype(np.float32))

    for key in DATA_KEYS:
        _write_statistics(session, key, np.concatenate(samples[key]), padded)
    _save(layout.tiers_path(session), np.array([trial.tier for trial in plan], dtype="<U16"))
    # Unique, sorted, not 0..N-1, like the real unit ids (a reader must not treat them as indices).
    id_pool = np.arange(1, 20 * num_neurons + 1)
    unit_ids = np.sort(stage_rng(config, _TAG_IDS, mouse).choice(id_pool, num_neurons, replace=False))
    _save(layout.unit_ids_path(session), unit_ids.astype(np.int64))
    _save(layout.coordinates_path(session), cortex.astype(np.float64))

    even, odd = population.spatial_filters()
    fast, slow = population.temporal_kernels()
    truth.mkdir(parents=True, exist_ok=True)
    np.savez(
        truth / "neurons.npz",
        **population.to_dict(),
        filter_even=even,
        filter_odd=odd,
        temporal_fast=fast,
        temporal_slow=slow,
    )
    _save(truth / "video_ids.npy", np.array([trial.clip_id for trial in plan], dtype=np.int64))
    (truth / "synthetic_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    return {
        "neurons": num_neurons,
        "trials": len(plan),
        "mean_response": float(np.concatenate(samples["responses"]).mean()),
        "seconds": time.perf_counter() - started,
    }


def generate(root: str | Path, config: SyntheticConfig = SyntheticConfig()) -> list[Path]:
    """Write one session folder per mouse under ``root``; return the session paths (sorted).

    Also writes ``root/ceilings.json`` with the noise ceilings of every mouse on the oracle and test tiers.
    Raises FileExistsError instead of mixing into an existing session folder.
    """
    config = SyntheticConfig() if config is None else config
    root = Path(root)
    sessions = [root / name for name in session_names(config)]
    for session in sessions:
        if session.exists():
            raise FileExistsError(f"{session} already exists; generate into an empty root")
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    library = _repeated_clip_library(config)
    for mouse, session in enumerate(sessions):
        summary = _write_session(session, mouse, config, library)
        logging.info("synthetic mouse %d/%d written to %s: %s", mouse + 1, config.num_mice, session, summary)
    ceilings = _ceiling_report(sessions)
    ceilings["config_hash"] = config_hash(config)
    (root / "ceilings.json").write_text(json.dumps(ceilings, indent=1) + "\n")
    logging.info(
        "synthetic dataset generated in %.1f s; mean ceilings %s",
        time.perf_counter() - started,
        ceilings["mean"],
    )
    return sorted(sessions)


def _ceiling_report(sessions: Sequence[Path]) -> dict[str, Any]:
    per_session: dict[str, Any] = {}
    pooled: dict[str, dict[str, list[np.ndarray]]] = {}
    for session in sessions:
        tiers_present = set(np.load(layout.tiers_path(session)).tolist())
        entry: dict[str, Any] = {}
        for tier in CEILING_TIERS:
            if tier not in tiers_present:
                continue
            result = ceiling_correlations(session, (tier,))
            entry[tier] = {
                "single_trial": _json_float(result["single_trial"]),
                "correlation_to_average": _json_float(result["correlation_to_average"]),
            }
            pool = pooled.setdefault(tier, {"single_trial": [], "correlation_to_average": []})
            pool["single_trial"].append(result["single_trial_per_neuron"])
            pool["correlation_to_average"].append(result["correlation_to_average_per_neuron"])
        per_session[session.name] = entry
    # The benchmark averages over all neurons of all mice, so the pooled value weights mice by neuron count.
    mean = {
        tier: {metric: _json_float(np.mean(np.concatenate(values))) for metric, values in pool.items()}
        for tier, pool in pooled.items()
    }
    return {"sessions": per_session, "mean": mean}


def _json_float(value: float) -> float | None:
    """NaN (no repeated clip, e.g. a single repeat) as JSON null: strict JSON has no NaN."""
    return None if np.isnan(value) else float(value)


# ------------------------------------------------------------------------------------------------------------
# Cache


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only probes whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(cache_dir: Path, name: str, host: str) -> None:
    """Delete temp folders that a killed generation on this host left behind (their pid no longer runs)."""
    for stale in cache_dir.glob(f".{name}.tmp-{host}-*"):
        try:
            pid = int(stale.name.split(f".tmp-{host}-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            logging.info("removing %s left by an interrupted generation", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _complete(root: Path, names: Sequence[str]) -> bool:
    return (root / "ceilings.json").is_file() and all((root / n).is_dir() for n in names)


def ensure_dataset(cache_dir: str | Path, config: SyntheticConfig = SyntheticConfig()) -> list[Path]:
    """Session paths of the dataset for ``config`` under ``cache_dir``, generating it on first use.

    The dataset lives in ``cache_dir/<dataset_name(config)>``; see :func:`ensure_generated`.
    """
    config = SyntheticConfig() if config is None else config
    return ensure_generated(
        cache_dir, dataset_name(config), session_names(config), lambda root: generate(root, config), str(config)
    )


def ensure_generated(
    cache_dir: str | Path,
    name: str,
    names: Sequence[str],
    generate_into: Callable[[Path], Any],
    description: str = "",
) -> list[Path]:
    """``cache_dir/name/<names>``, written by ``generate_into(root)`` on first use (also ``root/ceilings.json``).

    The dataset is generated into a temporary folder that is renamed into place only when complete, so an
    interrupted generation never leaves a half dataset under the final name (concurrent callers each generate;
    the first rename wins and the others reuse it). Shared by the video and the static synthetic datasets.
    """
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / name
    if final.exists():
        if not _complete(final, names):
            raise DataFormatError(final, "incomplete synthetic dataset; delete it to regenerate")
        logging.info("reusing synthetic dataset %s", final)
        return sorted(final / n for n in names)

    cache_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().replace("-", "_")
    _remove_stale_temporaries(cache_dir, name, host)
    temporary = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{host}-{os.getpid()}-", dir=cache_dir))
    logging.info("generating synthetic dataset %s (config %s) in %s", name, description, temporary)
    try:
        generate_into(temporary)
        temporary.chmod(0o755)  # mkdtemp makes it private; the dataset should be readable like any folder
        try:
            temporary.rename(final)
        except OSError:
            # Another process finished first: keep its copy, drop ours.
            if not _complete(final, names):
                raise
            logging.info("another process created %s first; using it", final)
            shutil.rmtree(temporary, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return sorted(final / n for n in names)


# ------------------------------------------------------------------------------------------------------------
# Ground truth


def _valid_length(array: np.ndarray) -> int:
    """Index of the first frame with a NaN anywhere (the NaN pad), or the full length."""
    nan_frames = np.isnan(array.reshape(-1, array.shape[-1])).any(axis=0)
    return int(np.argmax(nan_frames)) if nan_frames.any() else array.shape[-1]


def load_ground_truth(session: str | Path) -> dict[str, Any]:
    """Noiseless rates and neuron parameters of a synthetic session.

    Returns a dict with ``rates`` (list over trials of (N, T_valid) expected responses, raw units),
    ``video_ids`` (n_trials,) clip ids (repeated clips share one id across repeats and mice), ``tiers``,
    ``config`` (the generating :class:`SyntheticConfig` as a dict), and every entry of ``neurons.npz``: per
    neuron ``centre_x``, ``centre_y`` (pixels; column, row), ``orientation_deg`` (wave-vector angle),
    ``spatial_period_px``, ``sigma_px``, ``phase``, ``is_complex``, ``direction_selective``,
    ``preferred_direction_deg`` (NaN when not selective), ``gain_running``, ``gain_pupil``, the filters
    ``filter_even``/``filter_odd`` (N, 36, 64) and ``temporal_fast``/``temporal_slow`` (N, taps), the
    remaining model constants (see :class:`Population`), and the eye-shift mapping ``eye_shift_px_per_unit``
    (x, y) and ``eye_reference`` (the pupil centre meaning no shift).
    """
    session = Path(session)
    truth = session / GROUND_TRUTH_DIR
    neurons_file = truth / "neurons.npz"
    if not neurons_file.is_file():
        raise DataFormatError(neurons_file, "file is missing: not a synthetic session")
    video_ids = np.load(truth / "video_ids.npy")
    result: dict[str, Any] = dict(np.load(neurons_file))
    result["rates"] = [np.load(truth / "rates" / f"{i}.npy") for i in range(len(video_ids))]
    result["video_ids"] = video_ids
    result["tiers"] = np.load(layout.tiers_path(session))
    result["config"] = json.loads((truth / "synthetic_config.json").read_text())
    return result


def ceiling_correlations(session: str | Path, tiers: Sequence[str] = (Tier.ORACLE.value,)) -> dict[str, Any]:
    """Benchmark correlations of the noiseless rates (prediction) with the recorded responses (target).

    Uses the benchmark functions on at most the first 300 frames of each trial of the given tiers, first 50
    frames dropped. Correlation to average groups repeats by :func:`video_hash` of the frames, as the
    benchmark must (NaN when no clip repeats in these tiers).
    """
    session = Path(session)
    if isinstance(tiers, str):
        tiers = (tiers,)
    all_tiers = np.load(layout.tiers_path(session))
    trials = np.flatnonzero(np.isin(all_tiers, list(tiers)))
    if trials.size == 0:
        raise ValueError(f"{session} has no trials in tiers {tuple(tiers)}")
    responses, predictions, hashes = [], [], []
    for i in trials:
        response = np.load(layout.trial_path(session, "responses", int(i)))
        length = min(_valid_length(response), SCORED_FRAMES)
        rate = np.load(session / GROUND_TRUTH_DIR / "rates" / f"{i}.npy")
        video = np.load(layout.trial_path(session, "videos", int(i)))
        responses.append(response[:, :length])
        predictions.append(rate[:, :length])
        hashes.append(video_hash(video[..., :length]))
    single = single_trial_correlation_np(responses, predictions)
    try:
        average = correlation_to_average_np(responses, predictions, hashes)
    except ValueError:  # no repeated clip among these trials
        average = np.full_like(single, np.nan)
    return {
        "single_trial": float(single.mean()),
        "single_trial_per_neuron": single,
        "correlation_to_average": float(average.mean()),
        "correlation_to_average_per_neuron": average,
        "num_trials": int(trials.size),
        "num_repeated_videos": len({h for h in hashes if hashes.count(h) >= 2}),
        "tiers": tuple(tiers),
    }
