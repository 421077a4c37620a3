"""The SENSORIUM 2022 static-image format: validated lazy reader, reference normalisation and 0.25 downscale.

One folder per recording session (``static<animal>-<session>-<scan>-GrayImageNet-<hash>``)::

    <session>/data/images/{i}.npy         (1, 144, 256)   grey levels of the image shown in trial i
    <session>/data/responses/{i}.npy      (N,)            deconvolved calcium, integrated over the presentation
    <session>/data/behavior/{i}.npy       (3,)            [pupil dilation, its derivative, running speed]
    <session>/data/pupil_center/{i}.npy   (2,)            [horizontal, vertical] eye position
    <session>/meta/trials/tiers.npy           (n,)  train | validation | test | final_test
    <session>/meta/trials/frame_image_id.npy  (n,)  image id, the same in every repeat of an image
    <session>/meta/trials/trial_idx.npy       (n,)  presentation order (hashed strings in the competition sets)
    <session>/meta/neurons/unit_ids.npy, cell_motor_coordinates.npy
    <session>/meta/statistics/<key>/all/{mean,std}.npy

Trial ``i`` is row ``i`` of every ``meta/trials`` array. ``behavior`` and ``pupil_center`` are also accepted as
``(1, 3)`` and ``(1, 2)`` (the dataset README calls them "1 x 3").

Loading follows the reference loader (sensorium ``static_loader``: ``NeuroNormalizer`` → ``AddBehaviorAsChannels``
→ ``ScaleInputs(0.25)``): images ``(x − mean) / std``, responses ``x · precision`` (the 1 %-of-mean std floor of
:func:`~sensorium_jax.data.reader.response_precision`), behaviour ``x / std`` without mean subtraction, pupil
centre ``(x − mean) / std``; then the image is rescaled by :func:`rescale` (skimage ``rescale`` with linear
interpolation, ``reflect`` borders, no anti-aliasing, range preserved) to 36 × 64. The behaviour channels that
Sensorium+ models append are constant over the image, and a linear rescale of a constant channel is the same
constant, so :class:`StaticSession` returns the behaviour vector and the model adds it as constant channels.
"""

from __future__ import annotations

import enum
import functools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sensorium_jax.data import layout
from sensorium_jax.data.layout import DataFormatError
from sensorium_jax.data.reader import NpyHeader, check_trial_files, load_small, read_npy_header, response_precision

STATIC_DATA_KEYS = ("images", "responses", "behavior", "pupil_center")
IMAGE_HEIGHT = 144
IMAGE_WIDTH = 256
#: The reference trains on images rescaled by this factor: 144 × 256 → 36 × 64.
IMAGE_SCALE = 0.25
STATIC_BEHAVIOR_CHANNELS = 3  # pupil dilation, its derivative, running speed
STATIC_PUPIL_CENTER_CHANNELS = 2


class StaticTier(enum.StrEnum):
    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"  # the live test set: 100 images × ~10 repeats
    FINAL_TEST = "final_test"  # only in the two competition sessions


KNOWN_STATIC_TIERS = frozenset(t.value for t in StaticTier)
STATIC_EVALUATION_TIERS = (StaticTier.VALIDATION.value, StaticTier.TEST.value, StaticTier.FINAL_TEST.value)


def frame_image_id_path(session: Path) -> Path:
    return session / "meta" / "trials" / "frame_image_id.npy"


def trial_idx_path(session: Path) -> Path:
    return session / "meta" / "trials" / "trial_idx.npy"


# ----------------------------------------------------------------------------------------------------------------
# Rescaling (skimage.transform.rescale, order 1, mode "reflect", anti_aliasing False, preserve_range, clip)


def rescaled_size(size: int, scale: float) -> int:
    """skimage's output size: ``max(round(scale · size), 1)`` (numpy rounding, half to even)."""
    return max(int(np.round(scale * size)), 1)


@functools.lru_cache(maxsize=32)
def interpolation_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation of one axis as skimage's ``resize`` samples it: output ``o`` is
    ``(1 − frac[o]) · x[lower[o]] + frac[o] · x[upper[o]]``.

    skimage calls ``scipy.ndimage.zoom(grid_mode=True)``: output pixel ``o`` covers the same fraction of the axis
    as its input pixels, so its centre sits at input coordinate ``(o + 0.5) · size_in / size_out − 0.5``.
    skimage's ``reflect`` (ndimage ``mirror``) reflects about the centre of the edge pixel without repeating it:
    coordinate ``−c`` reads ``c``, ``(n − 1) + c`` reads ``(n − 1) − c``. For the 0.25 downscale every sample
    falls halfway between input pixels ``4o + 1`` and ``4o + 2`` — the mean of a 2 × 2 block; borders are
    never reached.
    """
    if size_in == 1:
        zeros = np.zeros(size_out, np.int64)
        return zeros, zeros, np.zeros(size_out)
    coords = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    period = 2 * (size_in - 1)
    coords = np.mod(coords, period)
    coords = np.where(coords > size_in - 1, period - coords, coords)
    lower = np.minimum(np.floor(coords).astype(np.int64), size_in - 1)
    upper = np.minimum(lower + 1, size_in - 1)
    return lower, upper, coords - lower


def rescale(image: np.ndarray, scale: float = IMAGE_SCALE) -> np.ndarray:
    """Rescale the last two axes of ``image`` (``(..., H, W)``; leading axes are channels or images) like the
    reference: linear interpolation, reflect borders, no anti-aliasing; values stay in the input's range
    (``preserve_range`` and ``clip``: the output is clipped to the input's min and max — per leading index here,
    the reference clips each call's whole array — which linear interpolation never leaves anyway).
    """
    image = np.asarray(image, np.float64)
    height, width = image.shape[-2:]
    lower, upper, frac = interpolation_taps(height, rescaled_size(height, scale))
    rows = image[..., lower, :] * (1.0 - frac)[:, None] + image[..., upper, :] * frac[:, None]
    lower, upper, frac = interpolation_taps(width, rescaled_size(width, scale))
    out = rows[..., lower] * (1.0 - frac) + rows[..., upper] * frac
    low = image.min(axis=(-2, -1), keepdims=True)
    high = image.max(axis=(-2, -1), keepdims=True)
    return np.clip(out, low, high).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Reader


def _read(path: Path, header: NpyHeader) -> np.ndarray:
    """The array of an indexed ``.npy`` file: a plain read at the known offset (no header parsing, thread-safe)."""
    count = int(np.prod(header.shape))
    try:
        flat = np.fromfile(path, dtype=header.dtype, count=count, offset=header.offset)
    except Exception as error:
        raise DataFormatError(path, f"cannot be read ({error})") from error
    if flat.size != count:
        raise DataFormatError(path, f"file is truncated: {flat.size} of {count} values")
    return flat.reshape(header.shape, order="F" if header.fortran_order else "C")


class StaticSession:
    """One SENSORIUM 2022 recording session (one mouse), indexed and validated at start-up, read lazily.

    Args:
      path: the session folder (holding ``data/`` and ``meta/``).
      validate: ``"full"`` also reads every trial once and rejects NaN or infinite values; ``"headers"`` checks
        files, shapes, dtypes and sizes only.
      scale: the image rescale factor (the reference's 0.25 gives 36 × 64 model inputs).
      cache: keep every loaded (normalised, rescaled) trial in memory — ~10 KB an image at 36 × 64, so even a
        full session of ~6000 trials costs tens of MB and later epochs read no file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        validate: str = "full",
        scale: float = IMAGE_SCALE,
        cache: bool = True,
        num_threads: int = 8,
    ):
        self.path = Path(path)
        self.name = self.path.name
        self.scale = scale
        if validate not in ("full", "headers"):
            raise ValueError(f"validate must be 'full' or 'headers', got {validate!r}")
        if not (self.path / "data").is_dir() or not (self.path / "meta").is_dir():
            raise DataFormatError(self.path, "not a SENSORIUM session folder: it needs data/ and meta/")

        tiers_file = layout.tiers_path(self.path)
        tiers = load_small(tiers_file, "tier of every trial")
        if tiers.ndim != 1:
            raise DataFormatError(tiers_file, f"expected a 1-D array, got shape {tiers.shape}")
        self.tiers = tiers.astype(str)
        unknown = sorted(set(self.tiers) - KNOWN_STATIC_TIERS)
        if unknown:
            raise DataFormatError(tiers_file, f"unknown tier names {unknown}; expected {sorted(KNOWN_STATIC_TIERS)}")
        self.num_trials = len(self.tiers)
        check_trial_files(self.path, STATIC_DATA_KEYS, self.num_trials)
        self.frame_image_id = self._trial_info(frame_image_id_path(self.path), "image id of every trial")
        self.trial_idx = self._trial_info(trial_idx_path(self.path), "presentation index of every trial")

        unit_ids = load_small(layout.unit_ids_path(self.path), "neuron ids")
        if unit_ids.ndim != 1:
            raise DataFormatError(layout.unit_ids_path(self.path), f"expected (N,), got {unit_ids.shape}")
        self.unit_ids = unit_ids
        self.num_neurons = int(unit_ids.shape[0])
        coords = load_small(layout.coordinates_path(self.path), "neuron positions")
        if coords.ndim != 2 or coords.shape[0] != self.num_neurons or coords.shape[1] < 2:
            raise DataFormatError(
                layout.coordinates_path(self.path),
                f"expected ({self.num_neurons}, 3) cortical coordinates, got shape {coords.shape}",
            )
        self.coordinates = coords.astype(np.float32)

        self._headers: dict[tuple[str, int], NpyHeader] = {}
        with ThreadPoolExecutor(num_threads) as pool:
            image_sizes = list(pool.map(self._index_trial, range(self.num_trials)))
        if not image_sizes:
            raise DataFormatError(layout.tiers_path(self.path), "the session has no trial")
        sizes, counts = np.unique(np.array(image_sizes), axis=0, return_counts=True)
        self.raw_image_shape: tuple[int, int] = tuple(int(v) for v in sizes[np.argmax(counts)])
        for trial, size in enumerate(image_sizes):
            if tuple(size) != self.raw_image_shape:
                raise DataFormatError(
                    layout.trial_path(self.path, "images", trial),
                    f"image of shape {(1, *size)}; the session's images are {(1, *self.raw_image_shape)}",
                )
        height, width = self.raw_image_shape
        self.image_shape = (rescaled_size(height, scale), rescaled_size(width, scale))
        self._load_statistics()
        self._cache: dict[int, dict[str, np.ndarray]] | None = {} if cache else None
        if validate == "full":
            with ThreadPoolExecutor(num_threads) as pool:
                list(pool.map(self._check_finite, range(self.num_trials)))

    # ------------------------------------------------------------------------------------------------------------
    # Indexing and validation (start-up only)

    def _trial_info(self, path: Path, what: str) -> np.ndarray:
        values = load_small(path, what)
        if values.ndim != 1 or len(values) != self.num_trials:
            raise DataFormatError(
                path,
                f"has shape {values.shape} but meta/trials/tiers.npy lists {self.num_trials} trials "
                "(every meta/trials array needs one entry per trial)",
            )
        return values

    def _expected(self, key: str) -> tuple[tuple[int, ...], ...]:
        """Accepted shapes of one trial array (images: any ``(1, H, W)``, checked for agreement afterwards)."""
        return {
            "responses": ((self.num_neurons,),),
            "behavior": ((STATIC_BEHAVIOR_CHANNELS,), (1, STATIC_BEHAVIOR_CHANNELS)),
            "pupil_center": ((STATIC_PUPIL_CENTER_CHANNELS,), (1, STATIC_PUPIL_CENTER_CHANNELS)),
        }[key]

    def _index_trial(self, trial: int) -> tuple[int, int]:
        """Read and check the four headers of a trial; returns its raw image size (H, W)."""
        image_size = None
        for key in STATIC_DATA_KEYS:
            path = layout.trial_path(self.path, key, trial)
            header = read_npy_header(path)
            if header.dtype.kind not in "fiu":
                raise DataFormatError(path, f"expected a numeric array, got dtype {header.dtype}")
            if key == "images":
                if len(header.shape) != 3 or header.shape[0] != 1 or min(header.shape) < 1:
                    raise DataFormatError(
                        path, f"expected a (1, H, W) grey image, e.g. (1, 144, 256); got {header.shape}"
                    )
                image_size = header.shape[1:]
            elif header.shape not in self._expected(key):
                raise DataFormatError(path, f"expected shape {self._expected(key)[0]}, got {header.shape}")
            self._headers[key, trial] = header
        return image_size

    def _check_finite(self, trial: int) -> None:
        raw = self.load_raw(trial)
        for key, array in raw.items():
            if not np.all(np.isfinite(array)):
                where = np.argwhere(~np.isfinite(array))[0]
                raise DataFormatError(
                    layout.trial_path(self.path, key, trial),
                    f"non-finite value at index {tuple(int(i) for i in where)}",
                )
        if self._cache is not None:  # the trial is read anyway: keep it for training
            self._cache[trial] = self._process(raw)

    def _statistic(self, key: str, stat: str, shape: tuple[int, ...]) -> np.ndarray:
        """A statistic broadcast to ``shape`` (one trial array); leading singleton axes are dropped first."""
        path = layout.statistics_path(self.path, key, stat)
        value = np.asarray(load_small(path, f"{key} normalisation"), dtype=np.float64)
        while value.ndim > len(shape) and value.shape[0] == 1:
            value = value[0]
        try:
            return np.broadcast_to(value, shape)
        except ValueError:
            raise DataFormatError(path, f"shape {value.shape} does not broadcast to one trial's {shape}") from None

    def _positive(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        std = self._statistic(key, "std", shape)
        if not np.all(np.isfinite(std)) or np.any(std <= 0):
            raise DataFormatError(layout.statistics_path(self.path, key, "std"), "std must be positive and finite")
        return std

    def _load_statistics(self) -> None:
        image = (1, *self.raw_image_shape)
        self._image_mean = self._statistic("images", "mean", image).astype(np.float32)
        self._image_scale = (1.0 / self._positive("images", image)).astype(np.float32)
        response_std = self._statistic("responses", "std", (self.num_neurons,))
        std_path = layout.statistics_path(self.path, "responses", "std")
        if np.isnan(response_std).any():
            raise DataFormatError(std_path, "NaN std")
        self.response_precision = response_precision(response_std, std_path)
        # neuralpredictors divides behaviour by its std without subtracting the mean
        self._behavior_scale = (1.0 / self._positive("behavior", (STATIC_BEHAVIOR_CHANNELS,))).astype(np.float32)
        pupil = (STATIC_PUPIL_CENTER_CHANNELS,)
        self._pupil_mean = self._statistic("pupil_center", "mean", pupil).astype(np.float32)
        self._pupil_scale = (1.0 / self._positive("pupil_center", pupil)).astype(np.float32)

    # ------------------------------------------------------------------------------------------------------------
    # Access

    def trials(self, tier: str) -> np.ndarray:
        """Indices of the trials of a tier, in file order."""
        return np.flatnonzero(self.tiers == tier)

    def load_raw(self, trial: int) -> dict[str, np.ndarray]:
        """One trial as stored: ``images (1, H, W)``, ``responses (N,)``, ``behavior (3,)``, ``pupil_center (2,)``."""
        out = {}
        for key in STATIC_DATA_KEYS:
            header = self._headers.get((key, int(trial)))
            if header is None:
                raise IndexError(f"{self.name}: no trial {trial} (the session has {self.num_trials})")
            array = _read(layout.trial_path(self.path, key, int(trial)), header).astype(np.float32)
            out[key] = array.reshape(-1) if key in ("behavior", "pupil_center") else array
        return out

    def load(self, trial: int) -> dict[str, np.ndarray]:
        """One trial, normalised and rescaled: ``images (h, w)`` (36 × 64 for the real data), ``responses (N,)``,
        ``behavior (3,)``, ``pupil_center (2,)``, all float32."""
        trial = int(trial)
        if self._cache is not None and trial in self._cache:
            return self._cache[trial]
        out = self._process(self.load_raw(trial))
        if self._cache is not None:
            self._cache[trial] = out
        return out

    def _process(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The reference's order: normalise the full-size image, then rescale it."""
        return {
            "images": rescale((raw["images"] - self._image_mean) * self._image_scale, self.scale)[0],
            "responses": raw["responses"] * self.response_precision,
            "behavior": raw["behavior"] * self._behavior_scale,
            "pupil_center": (raw["pupil_center"] - self._pupil_mean) * self._pupil_scale,
        }

    def load_many(self, trials: Sequence[int]) -> dict[str, np.ndarray]:
        """Several trials stacked: ``images (n, h, w)``, ``responses (n, N)``, ``behavior (n, 3)``, …"""
        loaded = [self.load(t) for t in trials]
        return {key: np.stack([x[key] for x in loaded]) for key in STATIC_DATA_KEYS}

    def mean_response(self) -> np.ndarray:
        """Mean normalised response per neuron from ``meta/statistics`` (initialises the readout bias; the
        reference takes the mean of the first training batch, an estimate of the same quantity)."""
        mean = self._statistic("responses", "mean", (self.num_neurons,))
        return (mean * self.response_precision).astype(np.float32)

    def __repr__(self) -> str:
        counts = {str(t): int((self.tiers == t).sum()) for t in sorted(set(self.tiers))}
        return f"StaticSession({self.name!r}, neurons={self.num_neurons}, trials={counts}, images={self.image_shape})"


def open_static_sessions(
    paths: Sequence[str | os.PathLike], validate: str = "full", scale: float = IMAGE_SCALE
) -> list[StaticSession]:
    """Open and validate several static sessions (mice); their order defines the mouse index."""
    sessions = [StaticSession(p, validate=validate, scale=scale) for p in paths]
    names = [s.name for s in sessions]
    if len(set(names)) != len(names):
        raise ValueError(f"two sessions share a folder name (the mouse id): {names}")
    return sessions
