"""Mice and batches of the competition's sizes, made up: speed depends on shapes, not on values.

Neuron counts default to the ten SENSORIUM 2023 mice (``sensorium.md`` §1, 78,853 neurons); the synthetic
dataset's three mice (180/220/260) are what the ``:cpu`` configs train on.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
import numpy as np

from sensorium_jax.data import layout
from sensorium_jax.models.model import MiceInfo

#: Neurons of the ten SENSORIUM 2023 mice A–J, in folder order.
COMPETITION_NEURONS = (7440, 7928, 8285, 7671, 7495, 7863, 7908, 8202, 7939, 8122)
#: The built-in synthetic dataset's mice (``SyntheticConfig`` defaults).
SYNTHETIC_NEURONS = (180, 220, 260)
#: Train trials per competition mouse (≈ 350), for the reference's loss scale sqrt(trials / batch).
COMPETITION_TRAIN_TRIALS = 350
#: Frames of a scored trial: evaluation runs whole trials of this length.
EVAL_FRAMES = layout.SCORED_FRAMES
#: Behaviour channels of a static (SENSORIUM 2022) sample: pupil, its derivative, running speed.
STATIC_BEHAVIOR_CHANNELS = 3


def is_static(config: ml_collections.ConfigDict) -> bool:
    return config.get("task", "video") == "static"


def neuron_counts(cpu_variant: bool, mice: int = 0, neurons: int = 0) -> tuple[int, ...]:
    """Neurons per mouse: the competition's ten (or the synthetic set's three for ``:cpu`` variants), the first
    ``mice`` of them when ``mice > 0``, and ``neurons`` each when ``neurons > 0``."""
    base = SYNTHETIC_NEURONS if cpu_variant else COMPETITION_NEURONS
    count = mice or len(base)
    counts = [base[i % len(base)] for i in range(count)]
    return tuple(neurons for _ in counts) if neurons else tuple(counts)


def fake_mice(counts: Sequence[int], seed: int = 0) -> MiceInfo:
    """Mice with random cortical coordinates (µm, like ``cell_motor_coordinates``) and mean responses."""
    rng = np.random.default_rng(seed)
    return MiceInfo(
        names=tuple(f"fake-mouse-{i}" for i in range(len(counts))),
        coordinates=tuple(rng.uniform(-300.0, 300.0, (n, 3)) for n in counts),
        mean_responses=tuple(rng.uniform(0.2, 1.0, n).astype(np.float32) for n in counts),
    )


def fake_train_batch(
    num_mice: int, batch_size: int, frames: int, max_neurons: int, static: bool = False, seed: int = 0
) -> dict[str, np.ndarray]:
    """A training round as the pipeline yields it: ``(M, b, T, ...)`` arrays (``T = 1`` for static images)."""
    rng = np.random.default_rng(seed)
    m, b, t = num_mice, batch_size, 1 if static else frames
    behavior = STATIC_BEHAVIOR_CHANNELS if static else layout.BEHAVIOR_CHANNELS
    return {
        "videos": rng.standard_normal((m, b, t, layout.VIDEO_HEIGHT, layout.VIDEO_WIDTH), np.float32),
        "responses": rng.gamma(1.0, 0.5, (m, b, t, max_neurons)).astype(np.float32),
        "behavior": rng.standard_normal((m, b, t, behavior), np.float32),
        "pupil_center": rng.standard_normal((m, b, t, layout.PUPIL_CENTER_CHANNELS), np.float32),
    }


def fake_eval_inputs(trials: int, frames: int, static: bool = False, seed: int = 1) -> dict[str, np.ndarray]:
    """Whole trials of one mouse for inference: ``videos (E, T, H, W)``, ``behavior``, ``pupil_center``."""
    rng = np.random.default_rng(seed)
    t = 1 if static else frames
    behavior = STATIC_BEHAVIOR_CHANNELS if static else layout.BEHAVIOR_CHANNELS
    return {
        "videos": rng.standard_normal((trials, t, layout.VIDEO_HEIGHT, layout.VIDEO_WIDTH), np.float32),
        "behavior": rng.standard_normal((trials, t, behavior), np.float32),
        "pupil_center": rng.standard_normal((trials, t, layout.PUPIL_CENTER_CHANNELS), np.float32),
    }
