"""A simulated mouse V1 population responding to static images, written in the SENSORIUM 2022 folder format.

The static counterpart of :mod:`sensorium_jax.data.synthetic`, built from the same machinery: the same neurons
(:class:`~sensorium_jax.data.synthetic.Population`: retinotopic Gabor receptive fields, simple and complex cells,
threshold nonlinearity, behaviour gain), the same behaviour simulation and eye-movement shift, the same
gamma-Poisson response noise (:func:`~sensorium_jax.data.synthetic.sample_responses`). What differs is the
stimulus and the time course: each trial shows one 1/f^α grey image (144 × 256, uint8, like the real files) and
records one response, integrated over the presentation — no temporal filtering, so direction selectivity plays no
part. The neurons see the image as the model does, rescaled to 36 × 64 by :func:`~sensorium_jax.data.static_reader
.rescale`, shifted by the eye position.

Per session (format: :mod:`sensorium_jax.data.static_reader`), plus ``ground_truth/`` that readers ignore::

    <session>/ground_truth/rates.npy                (n_trials, N) noiseless expected response of every trial
    <session>/ground_truth/neurons.npz              receptive-field parameters and every model constant
    <session>/ground_truth/synthetic_config.json    the generating :class:`StaticSyntheticConfig`

Tiers: ``train`` and ``validation`` show unique images; ``test`` and ``final_test`` show images shared by all mice,
each ``test_repeats`` times (as in the competition, where 100 test images were shown ~10 times). Behaviour is one
continuous simulation over the session in presentation order (a trial every ``trial_frames`` frames), so repeats of
an image see different behaviour; the files are written in a random order, ``trial_idx`` holds the presentation
order. ``root/ceilings.json`` holds the benchmark scores of the noiseless rates (the best possible prediction).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from sensorium_jax.data import layout, synthetic
from sensorium_jax.data.static_reader import (
    IMAGE_HEIGHT,
    IMAGE_SCALE,
    IMAGE_WIDTH,
    STATIC_DATA_KEYS,
    StaticTier,
    frame_image_id_path,
    rescale,
    rescaled_size,
    trial_idx_path,
)
from sensorium_jax.data.synthetic import STATISTICS_SOURCES, SyntheticConfig, sample_responses, stage_rng
from sensorium_jax.evaluation import metrics

#: Bump when the simulation changes, so cached datasets of an older generator are not reused.
GENERATOR_VERSION = 1
GROUND_TRUTH_DIR = synthetic.GROUND_TRUTH_DIR
CEILING_TIERS = (StaticTier.VALIDATION.value, StaticTier.TEST.value, StaticTier.FINAL_TEST.value)
_MOUSE_IMAGE_ID_STRIDE = 100_000  # unique images of mouse m get ids from (m + 1) · stride; shared ones from 0
_TRIALS_PER_BLOCK = 100  # behaviour is simulated in blocks of consecutive trials (vectorised over blocks)
_TAG_SHARED, _TAG_NEURONS, _TAG_PLAN, _TAG_IMAGES, _TAG_BEHAVIOUR, _TAG_NOISE, _TAG_IDS = range(101, 108)


@dataclasses.dataclass(frozen=True)
class StaticSyntheticConfig:
    """Size and physiology of a simulated static dataset. Every field enters the dataset name hash."""

    num_mice: int = 3
    neurons_per_mouse: tuple[int, ...] = (150, 200, 250)
    train_images: int = 1500
    validation_images: int = 200
    test_images: int = 40  # shared by all mice, each shown test_repeats times
    final_test_images: int = 40
    test_repeats: int = 8
    image_height: int = IMAGE_HEIGHT
    image_width: int = IMAGE_WIDTH
    scale: float = IMAGE_SCALE  # what the neurons see: the image rescaled like the model input
    trial_frames: int = 15  # one image every 0.5 s at 30 Hz: the behaviour's sampling interval
    # Events per trial: a static response integrates the activity over the whole presentation (~0.5 s), so
    # neurons fire more events per trial than per 33-ms video frame (the video default is 0.1–0.3).
    event_rate_range: tuple[float, float] = (1.0, 3.0)
    seed: int = 0
    # Overrides of the neuron and behaviour fields of the video SyntheticConfig (receptive fields, gains, noise).
    physiology: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_mice < 1 or len(self.neurons_per_mouse) != self.num_mice:
            raise ValueError(
                f"neurons_per_mouse has {len(self.neurons_per_mouse)} entries for num_mice={self.num_mice}"
            )
        if self.train_images < 2:
            raise ValueError("train_images must be >= 2 (the statistics are computed on the train tier)")
        if min(self.validation_images, self.test_images, self.final_test_images) < 0 or self.test_repeats < 1:
            raise ValueError("tier sizes must be non-negative and test_repeats >= 1")
        seen = (rescaled_size(self.image_height, self.scale), rescaled_size(self.image_width, self.scale))
        if seen != (layout.VIDEO_HEIGHT, layout.VIDEO_WIDTH):
            # The simulated receptive fields are defined on the 36 × 64 grid of the video generator.
            raise ValueError(
                f"images of {self.image_height} × {self.image_width} rescaled by {self.scale} give {seen}; "
                f"the simulated receptive fields need {layout.VIDEO_HEIGHT} × {layout.VIDEO_WIDTH}"
            )
        self.physiology_config()  # rejects unknown or invalid physiology fields now, not during generation

    def physiology_config(self) -> SyntheticConfig:
        """The video generator's config that :func:`~sensorium_jax.data.synthetic._make_population` reads."""
        return SyntheticConfig(
            num_mice=self.num_mice,
            neurons_per_mouse=tuple(self.neurons_per_mouse),
            event_rate_range=tuple(self.event_rate_range),
            seed=self.seed,
            **self.physiology,
        )

    @property
    def trials_per_mouse(self) -> int:
        repeated = (self.test_images + self.final_test_images) * self.test_repeats
        return self.train_images + self.validation_images + repeated

    @classmethod
    def from_dict(cls, values: dict) -> StaticSyntheticConfig:
        """From config overrides, where JSON and ml_collections turn tuples into lists."""
        values = dict(values)
        for key in ("neurons_per_mouse", "event_rate_range"):
            if key in values:
                values[key] = tuple(values[key])
        if "physiology" in values:
            values["physiology"] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in dict(values["physiology"]).items()
            }
        return cls(**values)


def config_hash(config: StaticSyntheticConfig) -> str:
    return synthetic.config_hash(config, GENERATOR_VERSION)


def session_names(config: StaticSyntheticConfig) -> list[str]:
    """Named like the real sessions (``static<animal>-<session>-<scan>-GrayImageNet-<hash>``)."""
    digest = config_hash(config)
    return [f"static-synthetic-{m}-GrayImageNet-{digest}" for m in range(config.num_mice)]


def dataset_name(config: StaticSyntheticConfig) -> str:
    return f"sensorium-static-synthetic-{config_hash(config)[:16]}"


# ------------------------------------------------------------------------------------------------------------
# Stimuli and behaviour


def natural_images(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """``(count, height, width)`` uint8 grey images: 1/f^α noise with random mean luminance and RMS contrast."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0  # avoid 0 ** -α; the DC term is zeroed below
    images = np.empty((count, height, width), np.uint8)
    for first in range(0, count, 256):  # chunks bound the memory of the complex spectra
        n = min(256, count - first)
        alpha = rng.uniform(0.9, 1.5, size=(n, 1, 1))  # amplitude-spectrum exponent; natural images sit near 1
        spectrum = (rng.standard_normal((n, *radius.shape)) + 1j * rng.standard_normal((n, *radius.shape))) * (
            radius[None] ** -alpha
        )
        spectrum[:, 0, 0] = 0.0
        field = np.fft.irfft2(spectrum, s=(height, width))
        field /= field.std(axis=(1, 2), keepdims=True) + 1e-12
        luminance = rng.uniform(90.0, 165.0, size=(n, 1, 1))
        rms = rng.uniform(20.0, 55.0, size=(n, 1, 1))
        images[first : first + n] = np.clip(np.round(luminance + rms * field), 0, 255).astype(np.uint8)
    return images


def _behaviour(rng: np.random.Generator, num_trials: int, trial_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Behaviour ``(n, 3)`` = [pupil dilation, its derivative per second, running speed] and pupil centre
    ``(n, 2)`` of consecutive trials, sampled every ``trial_frames`` frames of the video generator's simulation."""
    blocks = -(-num_trials // _TRIALS_PER_BLOCK)
    frames = _TRIALS_PER_BLOCK * trial_frames
    speed, dilation, eye = synthetic._simulate_behaviour(rng, blocks, frames)
    derivative = np.gradient(dilation, axis=1) * layout.FRAME_RATE_HZ
    sample = np.arange(_TRIALS_PER_BLOCK) * trial_frames
    behavior = np.stack([dilation[:, sample], derivative[:, sample], speed[:, sample]], axis=-1)
    pupil_center = np.moveaxis(eye[:, :, sample], 1, -1)
    return behavior.reshape(-1, 3)[:num_trials], pupil_center.reshape(-1, 2)[:num_trials]


class _StaticModel(synthetic._Model):
    """The video generator's forward model for one static image per trial: the spatial filters (simple: the
    even filter; complex: quadrature energy) without temporal filtering; threshold, saturation, behaviour gain
    and calibration are inherited unchanged."""

    def drives(self, images: np.ndarray, pupil_center: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """Raw drive ``(n, N)`` of rescaled images ``(n, 36, 64)`` (grey levels) seen at eye positions ``(n, 2)``."""
        n = self.population.num_neurons
        out = np.empty((len(images), n), np.float32)
        for first in range(0, len(images), 4096):
            chunk = slice(first, first + 4096)
            retinal = self._retinal(images[chunk], pupil_center[chunk])
            spatial = retinal.reshape(len(retinal), -1) @ self.weights
            even, odd = spatial[:, :n], spatial[:, n:]
            out[chunk] = np.where(self.population.is_complex, even**2 + odd**2, even)
        return out


@dataclasses.dataclass
class _Plan:
    """The trials of one mouse in presentation order."""

    tiers: np.ndarray  # (n,) str
    image_ids: np.ndarray  # (n,) int64
    images: dict[int, np.ndarray]  # image id → (H, W) uint8


def _plan(config: StaticSyntheticConfig, mouse: int, shared: dict[int, np.ndarray]) -> _Plan:
    rng = stage_rng(config, _TAG_PLAN, mouse)
    unique_base = (mouse + 1) * _MOUSE_IMAGE_ID_STRIDE
    count = config.train_images + config.validation_images
    unique = natural_images(stage_rng(config, _TAG_IMAGES, mouse), count, config.image_height, config.image_width)
    images = {unique_base + k: unique[k] for k in range(count)}
    images.update(shared)
    tiers = [StaticTier.TRAIN.value] * config.train_images + [StaticTier.VALIDATION.value] * config.validation_images
    ids = list(range(unique_base, unique_base + count))
    for tier, first, num in (
        (StaticTier.TEST.value, 0, config.test_images),
        (StaticTier.FINAL_TEST.value, config.test_images, config.final_test_images),
    ):
        for image in range(first, first + num):
            tiers += [tier] * config.test_repeats
            ids += [image] * config.test_repeats
    order = rng.permutation(len(tiers))  # presentation order interleaves the tiers
    return _Plan(np.array(tiers, dtype="<U10")[order], np.array(ids, np.int64)[order], images)


def _shared_images(config: StaticSyntheticConfig) -> dict[int, np.ndarray]:
    count = config.test_images + config.final_test_images
    images = natural_images(stage_rng(config, _TAG_SHARED), count, config.image_height, config.image_width)
    return dict(enumerate(images))


# ------------------------------------------------------------------------------------------------------------
# Sessions


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _write_statistics(session: Path, key: str, samples: np.ndarray, per_sample_axes: tuple[int, ...]) -> None:
    """Statistics over the train trials (``per_sample_axes``: the axes reduced besides the trial axis)."""
    axes = (0, *per_sample_axes)
    values = {
        "mean": samples.mean(axis=axes),
        "std": samples.std(axis=axes),
        "min": samples.min(axis=axes),
        "max": samples.max(axis=axes),
        "median": np.median(samples, axis=axes),
    }
    for stat, value in values.items():
        for source in STATISTICS_SOURCES:
            _save(layout.statistics_path(session, key, stat, source), np.asarray(value, np.float32))


def _write_session(
    session: Path, mouse: int, config: StaticSyntheticConfig, shared: dict[int, np.ndarray]
) -> dict[str, Any]:
    started = time.perf_counter()
    physiology = config.physiology_config()
    num_neurons = config.neurons_per_mouse[mouse]
    population, cortex = synthetic._make_population(stage_rng(config, _TAG_NEURONS, mouse), num_neurons, physiology)
    plan = _plan(config, mouse, shared)
    n = len(plan.tiers)
    is_train = plan.tiers == StaticTier.TRAIN.value
    behavior, pupil_center = _behaviour(stage_rng(config, _TAG_BEHAVIOUR, mouse), n, config.trial_frames)

    population.eye_reference = pupil_center[is_train].mean(axis=0)
    population.pupil_mean, population.pupil_std = behavior[is_train, 0].mean(), behavior[is_train, 0].std() + 1e-6
    population.running_mean, population.running_std = behavior[is_train, 2].mean(), behavior[is_train, 2].std() + 1e-6
    # What the neurons see: the stored image rescaled like the model input (the mean of 2 × 2 blocks for 0.25).
    image_ids = list(plan.images)
    rescaled = rescale(np.stack([plan.images[i] for i in image_ids]), config.scale)
    seen = dict(zip(image_ids, rescaled, strict=True))
    model = _StaticModel(population)
    drive = model.drives(np.stack([seen[i] for i in plan.image_ids]), pupil_center)
    # Calibrate on the train tier, as the video generator: standardised drive → rectified response with mean 1
    # → behaviour gain → scaled to the target event rate.
    population.drive_mean = drive[is_train].mean(axis=0)
    population.drive_std = drive[is_train].std(axis=0) + 1e-6
    population.response_mean = model.stimulus_response(drive[is_train]).mean(axis=0) + 1e-6
    events = model.event_rate(drive, behavior[:, 2], behavior[:, 0])
    population.rate_scale = population.event_rate / events[is_train].mean(axis=0)
    events = events * population.rate_scale
    expected = (events * population.amplitude).astype(np.float32)
    responses = sample_responses(
        stage_rng(config, _TAG_NOISE, mouse),
        events,
        population.amplitude,
        physiology.overdispersion_shape,
        physiology.event_amplitude_cv,
    ).astype(np.float32)

    # Files in a random order (as in the real data); trial_idx gives each file's presentation index.
    file_order = stage_rng(config, _TAG_PLAN, mouse, 1).permutation(n)  # file i holds presentation file_order[i]
    arrays = {
        "images": np.stack([plan.images[i] for i in plan.image_ids])[:, None],  # (n, 1, H, W) uint8
        "responses": responses,
        "behavior": behavior.astype(np.float32),
        "pupil_center": pupil_center.astype(np.float32),
    }
    for key in STATIC_DATA_KEYS:
        for i, presentation in enumerate(file_order):
            _save(layout.trial_path(session, key, i), arrays[key][presentation])
    train = is_train[file_order]
    _write_statistics(session, "images", arrays["images"][file_order][train].astype(np.float32), (1, 2, 3))
    for key in ("responses", "behavior", "pupil_center"):
        _write_statistics(session, key, arrays[key][file_order][train], ())

    _save(layout.tiers_path(session), plan.tiers[file_order])
    _save(frame_image_id_path(session), plan.image_ids[file_order])
    _save(trial_idx_path(session), file_order.astype(np.int64))
    # The reference loader also reads an image class per trial.
    _save(session / "meta" / "trials" / "frame_image_class.npy", np.full(n, "imagenet", dtype="<U8"))
    id_pool = np.arange(1, 20 * num_neurons + 1)
    unit_ids = np.sort(stage_rng(config, _TAG_IDS, mouse).choice(id_pool, num_neurons, replace=False))
    neurons = session / "meta" / "neurons"
    _save(layout.unit_ids_path(session), unit_ids.astype(np.int64))
    _save(layout.coordinates_path(session), cortex.astype(np.float64))
    _save(neurons / "area.npy", np.full(num_neurons, "V1", dtype="<U2"))
    _save(neurons / "layer.npy", np.full(num_neurons, "L2/3", dtype="<U4"))
    for name, value in (("animal_ids", 90000 + mouse), ("sessions", 1), ("scan_idx", 1)):
        _save(neurons / f"{name}.npy", np.full(num_neurons, value, np.int64))

    truth = session / GROUND_TRUTH_DIR
    _save(truth / "rates.npy", expected[file_order])
    even, odd = population.spatial_filters()
    np.savez(truth / "neurons.npz", **population.to_dict(), filter_even=even, filter_odd=odd)
    (truth / "synthetic_config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    return {
        "neurons": num_neurons,
        "trials": n,
        "mean_response": float(responses[is_train].mean()),
        "seconds": time.perf_counter() - started,
    }


def generate(root: str | Path, config: StaticSyntheticConfig = StaticSyntheticConfig()) -> list[Path]:
    """Write one session folder per mouse under ``root`` and ``root/ceilings.json``; return the session paths.

    Raises FileExistsError instead of mixing into an existing session folder.
    """
    root = Path(root)
    sessions = [root / name for name in session_names(config)]
    for session in sessions:
        if session.exists():
            raise FileExistsError(f"{session} already exists; generate into an empty root")
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    shared = _shared_images(config)
    for mouse, session in enumerate(sessions):
        summary = _write_session(session, mouse, config, shared)
        logging.info("synthetic static mouse %d/%d written to %s: %s", mouse + 1, config.num_mice, session, summary)
    ceilings = ceiling_report(sessions)
    ceilings["config_hash"] = config_hash(config)
    (root / "ceilings.json").write_text(json.dumps(ceilings, indent=1) + "\n")
    logging.info("static synthetic dataset generated in %.1f s; ceilings %s", time.perf_counter() - started, ceilings)
    return sorted(sessions)


def ensure_dataset(cache_dir: str | Path, config: StaticSyntheticConfig = StaticSyntheticConfig()) -> list[Path]:
    """Session paths of the dataset for ``config`` under ``cache_dir``, generated on first use and then reused
    (atomically, see :func:`sensorium_jax.data.synthetic.ensure_generated`)."""
    return synthetic.ensure_generated(
        cache_dir, dataset_name(config), session_names(config), lambda root: generate(root, config), str(config)
    )


# ------------------------------------------------------------------------------------------------------------
# Ground truth and ceilings


def load_ground_truth(session: str | Path) -> dict[str, Any]:
    """``rates`` (n_trials, N) noiseless expected responses (raw units, file order), the neuron parameters of
    ``neurons.npz`` (see :class:`~sensorium_jax.data.synthetic.Population`), ``image_ids``, ``tiers``, ``config``."""
    session = Path(session)
    truth = session / GROUND_TRUTH_DIR
    if not (truth / "neurons.npz").is_file():
        raise layout.DataFormatError(truth / "neurons.npz", "file is missing: not a synthetic static session")
    result: dict[str, Any] = dict(np.load(truth / "neurons.npz"))
    result["rates"] = np.load(truth / "rates.npy")
    result["image_ids"] = np.load(frame_image_id_path(session))
    result["tiers"] = np.load(layout.tiers_path(session))
    result["config"] = json.loads((truth / "synthetic_config.json").read_text())
    return result


def ceiling_scores(session: str | Path, tier: str) -> dict[str, Any]:
    """Benchmark scores of the noiseless rates (prediction) against the recorded responses of one tier.

    Raw units for both: scaling responses and rates by the same per-neuron factor (the normalisation) changes
    neither the correlations nor FEVE.
    Correlation to average and FEVE are NaN for a tier without repeated images.
    """
    session = Path(session)
    tiers = np.load(layout.tiers_path(session))
    trials = np.flatnonzero(tiers == tier)
    if trials.size == 0:
        raise ValueError(f"{session} has no trials in tier {tier!r}")
    rates = np.load(session / GROUND_TRUTH_DIR / "rates.npy")[trials]
    image_ids = np.load(frame_image_id_path(session))[trials]
    responses = np.stack([np.load(layout.trial_path(session, "responses", int(i))) for i in trials])
    single = metrics.static_single_trial_correlation_np(responses, rates)
    result: dict[str, Any] = {"single_trial_per_neuron": single, "num_trials": int(trials.size)}
    if metrics.split_by_image(responses, image_ids, repeated_only=True):
        result["correlation_to_average_per_neuron"] = metrics.static_correlation_to_average_np(
            responses, rates, image_ids
        )
        feve, selected = metrics.static_feve_np(responses, rates, image_ids)
        result["feve_per_neuron"] = feve
        result["fev_selected"] = selected
    return result


def ceiling_report(sessions: Sequence[Path]) -> dict[str, Any]:
    """Ceilings per session and tier, and pooled over all neurons of all mice (as the benchmark averages)."""
    per_session: dict[str, Any] = {}
    pooled: dict[str, dict[str, list[np.ndarray]]] = {}
    for session in sessions:
        present = set(np.load(layout.tiers_path(session)).tolist())
        entry: dict[str, Any] = {}
        for tier in CEILING_TIERS:
            if tier not in present:
                continue
            scores = ceiling_scores(session, tier)
            entry[tier] = {}
            for metric in ("single_trial", "correlation_to_average", "feve"):
                values = scores.get(f"{metric}_per_neuron")
                if values is None:
                    continue
                entry[tier][metric] = synthetic._json_float(np.mean(values)) if values.size else None
                pooled.setdefault(tier, {}).setdefault(metric, []).append(values)
            if "fev_selected" in scores:
                entry[tier]["fev_selected_fraction"] = float(scores["fev_selected"].mean())
        per_session[session.name] = entry
    mean = {
        tier: {metric: synthetic._json_float(np.mean(np.concatenate(values))) for metric, values in by_metric.items()}
        for tier, by_metric in pooled.items()
    }
    return {"sessions": per_session, "mean": mean}
