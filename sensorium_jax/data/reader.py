"""Lazy, validated access to SENSORIUM 2023 session folders, with the reference normalisation.

A :class:`Session` indexes one mouse folder at start-up — it reads ``meta/`` and only the ``.npy`` *headers* (plus
one contiguous row per array to find the NaN padding) — and then memory-maps single trials on demand, so a whole
mouse is never held in memory. Every problem found is raised as :class:`DataFormatError` naming the file.

Loaded arrays are returned **time-first** and normalised exactly like neuralpredictors' ``NeuroNormalizer``
(stats source ``all``): videos ``(x − mean) / std``; responses ``x · precision`` with
``precision = 1/std`` where ``std > 0.01 · nanmean(std)`` and ``1 / (0.01 · nanmean(std))`` elsewhere; behaviour
``x / std`` (no mean subtraction); pupil centre ``(x − mean) / std``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from absl import logging

from sensorium_jax.data import layout
from sensorium_jax.data.layout import DATA_KEYS, DataFormatError

#: A response std below this fraction of the mean std is floored (neuralpredictors NeuroNormalizer).
RESPONSE_STD_FLOOR = 0.01


@dataclasses.dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # where the data start: lets trials be memory-mapped without re-parsing the header


def read_npy_header(path: Path) -> NpyHeader:
    """Shape and dtype of an ``.npy`` file without reading its data; rejects missing and truncated files."""
    if not path.is_file():
        raise DataFormatError(path, "file is missing")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError) as error:
        raise DataFormatError(path, f"not a readable .npy file ({error})") from error
    if dtype.hasobject:
        raise DataFormatError(path, f"holds Python objects (dtype {dtype}); expected a numeric array")
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise DataFormatError(path, f"file is truncated: {actual} bytes, the header announces {expected}")
    return NpyHeader(tuple(shape), dtype, fortran_order, offset)


def load_small(path: Path, what: str) -> np.ndarray:
    """Load a small metadata array (tiers, ids, statistics); strings may be stored as objects."""
    if not path.is_file():
        raise DataFormatError(path, f"file is missing ({what})")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError:
        # Older exports store string arrays with dtype=object; they are metadata of the user's own dataset.
        try:
            return np.load(path, allow_pickle=True)
        except Exception as error:
            raise DataFormatError(path, f"cannot be read as .npy ({error})") from error
    except Exception as error:
        raise DataFormatError(path, f"cannot be read as .npy ({error})") from error


def check_trial_files(session: Path, keys: Sequence[str], num_trials: int) -> None:
    """Every ``data/<key>`` folder exists and holds one file per trial of ``meta/trials/tiers.npy``.
    Shared by the 2023 and 2022 readers."""
    for key in keys:
        folder = session / "data" / key
        if not folder.is_dir():
            raise DataFormatError(folder, "folder is missing")
        count = sum(1 for _ in folder.iterdir())
        if count != num_trials:
            raise DataFormatError(
                folder,
                f"holds {count} entries but meta/trials/tiers.npy lists {num_trials} trials "
                "(the tiers array must have one entry per trial file)",
            )


def first_nan(row: np.ndarray) -> int:
    """Index of the first NaN along a 1-D time series, or its length if it has none."""
    nan = np.flatnonzero(np.isnan(row))
    return int(nan[0]) if nan.size else int(row.shape[0])


def response_precision(std: np.ndarray, path: Path) -> np.ndarray:
    """neuralpredictors ``NeuroNormalizer``'s response scale: ``1/std``, but ``1 / (0.01 · nanmean(std))`` for
    stds at or below that floor (silent neurons would otherwise blow up). Shared by the 2023 and 2022 readers."""
    mean_std = float(np.nanmean(std))
    if not np.isfinite(mean_std) or mean_std <= 0:
        raise DataFormatError(path, f"mean response std is {mean_std}; expected a positive number")
    threshold = RESPONSE_STD_FLOOR * mean_std
    floored = std <= threshold
    if floored.mean() > 0.1:
        logging.warning(
            "%s: %.0f%% of the response stds sit at the 1%%-of-mean floor; normalised responses of "
            "other tiers may become very large (statistics from too few trials?)",
            path,
            100 * floored.mean(),
        )
    return np.where(floored, 1.0 / threshold, 1.0 / np.where(floored, 1.0, std)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class KeyStatistics:
    """Normalisation of one data key: ``y = (x − offset) · scale``, both time-last like the trial arrays.

    ``has_time`` means the statistics carry the (padded) time axis and apply frame by frame.
    """

    offset: np.ndarray
    scale: np.ndarray
    has_time: bool

    def apply(self, x: np.ndarray, start: int, stop: int) -> np.ndarray:
        offset, scale = self.offset, self.scale
        if self.has_time:
            offset, scale = offset[..., start:stop], scale[..., start:stop]
        else:
            offset, scale = offset[..., None], scale[..., None]
        return ((x - offset) * scale).astype(np.float32)


class Session:
    """One SENSORIUM 2023 recording session (one mouse), indexed and validated, read lazily.

    Args:
      path: the session folder (holding ``data/`` and ``meta/``).
      validate: ``"full"`` also scans every valid frame of every trial for NaN before returning (slow on the
        full competition data, instant on small sets); ``"headers"`` checks files, shapes, sizes and padding only.
    """

    def __init__(self, path: str | os.PathLike, validate: str = "full", num_threads: int = 8):
        self.path = Path(path)
        self.name = self.path.name
        if validate not in ("full", "headers"):
            raise ValueError(f"validate must be 'full' or 'headers', got {validate!r}")
        if not (self.path / "data").is_dir() or not (self.path / "meta").is_dir():
            raise DataFormatError(self.path, "not a SENSORIUM session folder: it needs data/ and meta/")

        tiers = load_small(layout.tiers_path(self.path), "tier of every trial")
        if tiers.ndim != 1:
            raise DataFormatError(layout.tiers_path(self.path), f"expected a 1-D array, got shape {tiers.shape}")
        self.tiers = tiers.astype(str)
        unknown = sorted(set(self.tiers) - layout.KNOWN_TIERS)
        if unknown:
            raise DataFormatError(layout.tiers_path(self.path), f"unknown tier names {unknown}")
        self.num_trials = len(self.tiers)

        self.unit_ids = load_small(layout.unit_ids_path(self.path), "neuron ids")
        self.num_neurons = int(self.unit_ids.shape[0]) if self.unit_ids.ndim == 1 else -1
        if self.unit_ids.ndim != 1:
            raise DataFormatError(layout.unit_ids_path(self.path), f"expected (N,), got {self.unit_ids.shape}")
        coords = load_small(layout.coordinates_path(self.path), "neuron positions")
        if coords.ndim != 2 or coords.shape[0] != self.num_neurons or coords.shape[1] < 2:
            raise DataFormatError(
                layout.coordinates_path(self.path),
                f"expected ({self.num_neurons}, 3) cortical coordinates, got shape {coords.shape}",
            )
        self.coordinates = coords.astype(np.float32)

        check_trial_files(self.path, DATA_KEYS, self.num_trials)
        used = np.flatnonzero(self.tiers != layout.Tier.NONE.value)
        self.padded_length = self._index_headers(used)
        with ThreadPoolExecutor(num_threads) as pool:
            lengths = list(pool.map(self._valid_length, used))
        self.valid_lengths = np.zeros(self.num_trials, dtype=np.int64)
        self.valid_lengths[used] = lengths
        self.statistics = {key: self._load_statistics(key) for key in DATA_KEYS}
        if validate == "full":
            with ThreadPoolExecutor(num_threads) as pool:
                list(pool.map(self._scan_for_nan, used))

    # ----------------------------------------------------------------------------------------------------------
    # Indexing and validation (start-up only)

    def _index_headers(self, trials: np.ndarray) -> int:
        self._headers: dict[tuple[str, int], NpyHeader] = {}
        padded_length = None
        for trial in trials:
            trial_lengths = {}
            for key in DATA_KEYS:
                path = layout.trial_path(self.path, key, int(trial))
                header = read_npy_header(path)
                lead = layout.expected_leading_shape(key, self.num_neurons)
                if len(header.shape) != len(lead) + 1 or header.shape[:-1] != lead:
                    raise DataFormatError(path, f"expected shape {(*lead, 'T')} (time last), got {header.shape}")
                if header.dtype.kind not in "fiu":
                    raise DataFormatError(path, f"expected a numeric array, got dtype {header.dtype}")
                trial_lengths[key] = header.shape[-1]
                self._headers[key, int(trial)] = header
            if len(set(trial_lengths.values())) != 1:
                raise DataFormatError(
                    self.path / "data", f"trial {trial}: arrays disagree on the padded length {trial_lengths}"
                )
            length = next(iter(trial_lengths.values()))
            padded_length = length if padded_length is None else max(padded_length, length)
        if padded_length is None:
            raise DataFormatError(layout.tiers_path(self.path), "no trial outside tier 'none'")
        return padded_length

    def _open(self, key: str, trial: int) -> np.ndarray:
        """Memory-map one trial array from its indexed header.

        ``np.load`` would re-parse the header with ``ast``, which is not thread-safe on CPython 3.11 (the
        pipeline reads from several threads); ``np.memmap`` with the known offset needs no parsing.
        """
        path = layout.trial_path(self.path, key, trial)
        header = self._headers.get((key, trial))
        if header is None:
            raise ValueError(f"{path}: trial {trial} is not indexed (tier 'none'?)")
        try:
            return np.memmap(
                path,
                dtype=header.dtype,
                mode="r",
                offset=header.offset,
                shape=header.shape,
                order="F" if header.fortran_order else "C",
            )
        except Exception as error:
            raise DataFormatError(path, f"cannot be memory-mapped ({error})") from error

    def _valid_length(self, trial: int) -> int:
        """Frames before the NaN padding, the minimum over the four arrays (neuralpredictors ``CutVideos``)."""
        lengths = []
        for key in DATA_KEYS:
            array = self._open(key, int(trial))
            row = array[(0,) * (array.ndim - 1)]  # contiguous in the usual C order: one short read
            lengths.append(first_nan(np.asarray(row, dtype=np.float64)))
        length = min(lengths)
        if length == 0:
            raise DataFormatError(layout.trial_path(self.path, "videos", int(trial)), "trial has no valid frame")
        return length

    def _scan_for_nan(self, trial: int) -> None:
        length = self.valid_lengths[trial]
        for key in DATA_KEYS:
            array = np.asarray(self._open(key, int(trial))[..., :length])
            bad = np.isnan(array)
            if bad.any():
                where = np.argwhere(bad)[0]
                raise DataFormatError(
                    layout.trial_path(self.path, key, int(trial)),
                    f"NaN at index {tuple(int(i) for i in where)} inside the {length} valid frames "
                    "(NaN is only allowed as padding after the last valid frame)",
                )

    def _load_statistics(self, key: str) -> KeyStatistics:
        mean_path = layout.statistics_path(self.path, key, "mean")
        std_path = layout.statistics_path(self.path, key, "std")
        std = self._statistic(std_path, key)
        used_frames = int(self.valid_lengths.max())
        has_time = std.ndim > 0 and std.shape[-1] == self.padded_length and std.ndim == self._trial_ndim(key)
        checked = std[..., :used_frames] if has_time else std
        if key == "responses":
            if np.isnan(checked).any():
                raise DataFormatError(std_path, "NaN std within the valid frames")
            precision = response_precision(std, std_path)
            return KeyStatistics(np.zeros_like(std, dtype=np.float32), precision, has_time)
        if not np.all(np.isfinite(checked)) or np.any(checked <= 0):
            raise DataFormatError(std_path, "std must be positive and finite within the valid frames")
        scale = (1.0 / std).astype(np.float32)
        if key == "behavior":  # neuralpredictors divides behaviour by its std without subtracting the mean
            return KeyStatistics(np.zeros_like(scale), scale, has_time)
        mean = self._statistic(mean_path, key)
        if mean.shape != std.shape:
            raise DataFormatError(mean_path, f"shape {mean.shape} differs from the std's {std.shape} ({std_path})")
        return KeyStatistics(mean.astype(np.float32), scale, has_time)

    def _trial_ndim(self, key: str) -> int:
        return len(layout.expected_leading_shape(key, self.num_neurons)) + 1

    def _statistic(self, path: Path, key: str) -> np.ndarray:
        value = np.asarray(load_small(path, f"{key} normalisation"), dtype=np.float64)
        lead = layout.expected_leading_shape(key, self.num_neurons)
        # Accepted: the shape of one trial array (applied frame by frame, as the reference loader does), the
        # shape without the time axis (broadcast over time), or a scalar.
        if value.shape in ((*lead, self.padded_length), lead, (), (1,)):
            return value.reshape(()) if value.shape == (1,) else value
        raise DataFormatError(
            path,
            f"shape {value.shape} fits neither one trial {(*lead, self.padded_length)} nor the per-{key} form {lead}",
        )

    # ----------------------------------------------------------------------------------------------------------
    # Access

    def trials(self, tier: str) -> np.ndarray:
        """Indices of the trials of a tier, in file order."""
        return np.flatnonzero(self.tiers == tier)

    def load(self, trial: int, start: int = 0, stop: int | None = None, normalize: bool = True) -> dict:
        """Frames ``[start, stop)`` of a trial (default: all valid frames), time-first.

        Returns ``videos (T, 36, 64)``, ``responses (T, N)``, ``behavior (T, 2)``, ``pupil_center (T, 2)``.
        """
        length = int(self.valid_lengths[trial])
        stop = length if stop is None else stop
        if not 0 <= start < stop <= length:
            raise ValueError(f"{self.name} trial {trial}: frames [{start}, {stop}) outside its {length} valid frames")
        out = {}
        for key in DATA_KEYS:
            array = np.asarray(self._open(key, int(trial))[..., start:stop], dtype=np.float32)
            if np.isnan(array).any():
                raise DataFormatError(
                    layout.trial_path(self.path, key, int(trial)),
                    f"NaN inside the valid frames [{start}, {stop})",
                )
            if normalize:
                array = self.statistics[key].apply(array, start, stop)
            out[key] = np.moveaxis(array, -1, 0)
        return out

    def mean_response(self) -> np.ndarray:
        """Mean normalised response per neuron, from ``meta/statistics`` (initialises the readout bias).

        The reference takes the mean of the first training batch; the statistics give the same quantity over
        the whole recording without reading any trial.
        """
        mean = np.asarray(load_small(layout.statistics_path(self.path, "responses", "mean"), "response mean"))
        stats = self.statistics["responses"]
        if mean.shape != stats.scale.shape:
            raise DataFormatError(
                layout.statistics_path(self.path, "responses", "mean"),
                f"shape {mean.shape} differs from the response std's {stats.scale.shape}",
            )
        normalised = mean * stats.scale
        if stats.has_time:
            normalised = np.nanmean(normalised[..., : int(self.valid_lengths.max())], axis=-1)
        return np.broadcast_to(normalised, (self.num_neurons,)).astype(np.float32)

    def __repr__(self) -> str:
        counts = {str(t): int((self.tiers == t).sum()) for t in sorted(set(self.tiers))}
        return f"Session({self.name!r}, neurons={self.num_neurons}, trials={counts})"


def open_sessions(paths: Sequence[str | os.PathLike], validate: str = "full") -> list[Session]:
    """Open and validate several sessions (mice); their order defines the mouse index."""
    sessions = [Session(p, validate=validate) for p in paths]
    names = [s.name for s in sessions]
    if len(set(names)) != len(names):
        raise ValueError(f"two sessions share a folder name (the mouse id): {names}")
    return sessions
