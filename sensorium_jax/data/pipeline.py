"""Grain input pipelines: random training clips (or images) grouped per mouse, and whole evaluation trials.

Training element ``i`` is one optimiser step ("round"): a sub-batch of ``batch_size`` random clips from *every*
mouse, stacked as ``(M, b, T, ...)``. Element ``i`` is a pure function of ``(seed, i)`` — mouse ``m`` walks through
its train trials in epochs of fresh permutations, and each clip start is drawn from a generator seeded by
``(seed, m, clip)`` — so the stream is deterministic, independent of the number of workers, and its Grain
iterator state (a position) checkpoints and resumes exactly.

``mouse_sampling="one"`` (Dynamic-V1FM's ``LongCycler``): round ``i`` holds ``batch_size`` clips of mouse
``i mod M`` only, laid out ``(1, b, T, ...)``, plus ``mouse (1, b)`` int32 (every entry that mouse's index, so it
shards like the clips); mouse ``m``'s ``v``-th visit takes its clips ``v·batch_size …``, the same per-mouse stream
as ``"all"``. Every batch has the same shape, so the train step compiles once for every mouse.

Multi-host: each process loads only its slice ``[p·b, (p+1)·b)`` of every mouse's sub-batch, with
``b = batch_size / process_count``; the train step assembles the global batch with
``jax.make_array_from_process_local_data``.

Static images (SENSORIUM 2022, :class:`~sensorium_jax.data.static_reader.StaticSession`) use the same layout with
one frame per sample — ``videos (M, b, 1, h, w)``, ``responses (M, b, 1, N_max)``, ``behavior (M, b, 1, 3)``,
``pupil_center (M, b, 1, 2)`` — so the train step, its sharding and the prediction function are shared. Round ``i``
takes the next ``b`` train images of every mouse from the same per-epoch permutations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from sensorium_jax.data import layout
from sensorium_jax.data.reader import Session
from sensorium_jax.data.static_reader import STATIC_BEHAVIOR_CHANNELS, STATIC_PUPIL_CENTER_CHANNELS, StaticSession


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    batch_size: int  # clips per mouse per step, over all processes
    clip_frames: int  # e.g. 80
    max_neurons: int  # responses are zero-padded to this many neurons
    seed: int = 0
    process_index: int = 0
    process_count: int = 1
    mouse_sampling: str = "all"  # "all": a sub-batch of every mouse per round; "one": one mouse per round, cycled

    def __post_init__(self):
        if self.mouse_sampling not in MOUSE_SAMPLING:
            raise ValueError(f"mouse_sampling must be one of {MOUSE_SAMPLING}, got {self.mouse_sampling!r}")

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count


MOUSE_SAMPLING = ("all", "one")


def check_divisibility(batch_size: int, process_count: int, device_count: int) -> None:
    """Fail at start-up, not deep in XLA, when the batch cannot be split over processes and devices."""
    if batch_size % device_count:
        raise ValueError(
            f"batch size {batch_size} (clips per mouse per step) is not divisible by the {device_count} devices "
            "it is sharded over; choose a multiple of the device count"
        )
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} is not divisible by the {process_count} processes")


def epoch_item(seed: int, mouse: int, items: np.ndarray, index: int) -> int:
    """The ``index``-th item of a mouse's stream that walks ``items`` in a fresh permutation every epoch."""
    epoch, position = divmod(index, len(items))
    order = np.random.default_rng([seed, mouse, epoch]).permutation(len(items))
    return int(items[order[position]])


class _Rounds:
    """Round index → batch: one sub-batch per mouse (``"all"``) or of one cycled mouse (``"one"``).

    Subclasses give ``mouse_batch(mouse, first)``: this process's ``b`` samples of one mouse, starting at the
    mouse's ``first``-th sample, as ``(b, ...)`` arrays.
    """

    sessions: list
    spec: ClipSpec

    def mouse_batch(self, mouse: int, first: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __call__(self, round_index: int) -> dict[str, np.ndarray]:
        spec, m = self.spec, len(self.sessions)
        offset = spec.process_index * spec.local_batch_size
        if spec.mouse_sampling == "one":
            visit, mouse = divmod(int(round_index), m)
            batch = {k: v[None] for k, v in self.mouse_batch(mouse, visit * spec.batch_size + offset).items()}
            batch["mouse"] = np.full((1, spec.local_batch_size), mouse, np.int32)
            return batch
        first = int(round_index) * spec.batch_size + offset
        parts = [self.mouse_batch(mouse, first) for mouse in range(m)]
        return {k: np.stack([p[k] for p in parts]) for k in parts[0]}


class TrainRound(_Rounds):
    """Maps a round index to clips of every mouse, or of one (numpy only, picklable for Grain workers)."""

    def __init__(self, sessions: Sequence[Session], spec: ClipSpec):
        self.sessions = list(sessions)
        self.spec = spec
        self.train_trials = []
        for session in self.sessions:
            trials = session.trials(layout.Tier.TRAIN.value)
            long_enough = trials[session.valid_lengths[trials] >= spec.clip_frames]
            if long_enough.size == 0:
                raise ValueError(f"{session.path}: no train trial has the {spec.clip_frames} valid frames a clip needs")
            self.train_trials.append(long_enough)

    def clip(self, mouse: int, clip_index: int) -> tuple[int, int]:
        """(trial, start frame) of the ``clip_index``-th training clip of a mouse."""
        trial = epoch_item(self.spec.seed, mouse, self.train_trials[mouse], clip_index)
        length = int(self.sessions[mouse].valid_lengths[trial])
        start = int(
            np.random.default_rng([self.spec.seed, mouse, clip_index, 1]).integers(
                0, length - self.spec.clip_frames + 1
            )
        )
        return trial, start

    def mouse_batch(self, mouse: int, first: int) -> dict[str, np.ndarray]:
        spec = self.spec
        b, frames = spec.local_batch_size, spec.clip_frames
        batch = {
            "videos": np.zeros((b, frames, layout.VIDEO_HEIGHT, layout.VIDEO_WIDTH), np.float32),
            "responses": np.zeros((b, frames, spec.max_neurons), np.float32),
            "behavior": np.zeros((b, frames, layout.BEHAVIOR_CHANNELS), np.float32),
            "pupil_center": np.zeros((b, frames, layout.PUPIL_CENTER_CHANNELS), np.float32),
        }
        session = self.sessions[mouse]
        for slot in range(b):
            trial, start = self.clip(mouse, first + slot)
            data = session.load(trial, start, start + frames)
            for key, value in data.items():
                batch[key][slot, :, ..., : value.shape[-1]] = value
        return batch


class StaticTrainRound(_Rounds):
    """Maps a round index to ``b`` train images of every mouse (or of one), as one-frame clips (numpy only)."""

    def __init__(self, sessions: Sequence[StaticSession], spec: ClipSpec):
        self.sessions = list(sessions)
        self.spec = spec
        shapes = {session.image_shape for session in self.sessions}
        if len(shapes) != 1:
            raise ValueError(f"the sessions' rescaled images differ in shape {sorted(shapes)}; the core needs one")
        self.image_shape = next(iter(shapes))
        self.train_trials = []
        for session in self.sessions:
            trials = session.trials("train")
            if trials.size == 0:
                raise ValueError(f"{session.path}: no train trial")
            self.train_trials.append(trials)

    def image(self, mouse: int, index: int) -> int:
        """The trial of the ``index``-th training image of a mouse."""
        return epoch_item(self.spec.seed, mouse, self.train_trials[mouse], index)

    def mouse_batch(self, mouse: int, first: int) -> dict[str, np.ndarray]:
        b, session = self.spec.local_batch_size, self.sessions[mouse]
        batch = {
            "videos": np.zeros((b, 1, *self.image_shape), np.float32),
            "responses": np.zeros((b, 1, self.spec.max_neurons), np.float32),
            "behavior": np.zeros((b, 1, STATIC_BEHAVIOR_CHANNELS), np.float32),
            "pupil_center": np.zeros((b, 1, STATIC_PUPIL_CENTER_CHANNELS), np.float32),
        }
        data = session.load_many([self.image(mouse, first + slot) for slot in range(b)])
        batch["videos"][:, 0] = data["images"]
        batch["responses"][:, 0, : session.num_neurons] = data["responses"]
        batch["behavior"][:, 0] = data["behavior"]
        batch["pupil_center"][:, 0] = data["pupil_center"]
        return batch


def train_dataset(
    sessions: Sequence[Session] | Sequence[StaticSession], spec: ClipSpec, num_rounds: int
) -> grain.MapDataset:
    """Rounds of clips (video sessions) or of images (static sessions)."""
    static = all(isinstance(session, StaticSession) for session in sessions)
    rounds = StaticTrainRound(sessions, spec) if static else TrainRound(sessions, spec)
    return grain.MapDataset.range(num_rounds).map(rounds)


def train_iterator(
    sessions: Sequence[Session] | Sequence[StaticSession],
    spec: ClipSpec,
    num_rounds: int,
    num_workers: int = 0,
    prefetch: int = 2,
) -> grain.DatasetIterator:
    """Checkpointable iterator over training rounds; ``num_workers > 0`` loads in worker processes."""
    dataset = train_dataset(sessions, spec, num_rounds).to_iter_dataset(
        grain.ReadOptions(num_threads=max(1, prefetch), prefetch_buffer_size=prefetch)
    )
    if num_workers > 0:
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(dataset)


@dataclasses.dataclass
class EvalBatch:
    """Full-length trials of one mouse, padded to a common length ``T`` and batch size ``E``."""

    mouse: int
    trials: np.ndarray  # (E,) trial index, -1 for padding rows
    lengths: np.ndarray  # (E,) valid frames used (0 for padding rows)
    videos: np.ndarray  # (E, T, H, W)
    behavior: np.ndarray  # (E, T, 2)
    pupil_center: np.ndarray  # (E, T, 2)
    responses: np.ndarray  # (E, T, N_max)


def eval_batches(
    session: Session,
    mouse: int,
    tier: str,
    batch_size: int,
    frames: int,
    max_neurons: int,
) -> Iterator[EvalBatch]:
    """Every trial of a tier, whole, cut to ``frames`` (the benchmark scores the first 300) and zero-padded.

    All batches share one shape, so the jitted inference compiles once.
    """
    trials = session.trials(tier)
    for first in range(0, len(trials), batch_size):
        chunk = trials[first : first + batch_size]
        e = batch_size
        batch = EvalBatch(
            mouse=mouse,
            trials=np.full(e, -1, np.int64),
            lengths=np.zeros(e, np.int64),
            videos=np.zeros((e, frames, layout.VIDEO_HEIGHT, layout.VIDEO_WIDTH), np.float32),
            behavior=np.zeros((e, frames, layout.BEHAVIOR_CHANNELS), np.float32),
            pupil_center=np.zeros((e, frames, layout.PUPIL_CENTER_CHANNELS), np.float32),
            responses=np.zeros((e, frames, max_neurons), np.float32),
        )
        for row, trial in enumerate(chunk):
            length = min(int(session.valid_lengths[trial]), frames)
            data = session.load(int(trial), 0, length)
            batch.trials[row] = trial
            batch.lengths[row] = length
            batch.videos[row, :length] = data["videos"]
            batch.behavior[row, :length] = data["behavior"]
            batch.pupil_center[row, :length] = data["pupil_center"]
            batch.responses[row, :length, : session.num_neurons] = data["responses"]
        yield batch


def static_eval_batches(
    session: StaticSession, mouse: int, tier: str, batch_size: int, max_neurons: int
) -> Iterator[EvalBatch]:
    """Every image trial of a tier as one-frame clips, zero-padded to ``batch_size`` rows (one compile)."""
    trials = session.trials(tier)
    height, width = session.image_shape
    for first in range(0, len(trials), batch_size):
        chunk = trials[first : first + batch_size]
        e = batch_size
        data = session.load_many(chunk)
        n = len(chunk)
        batch = EvalBatch(
            mouse=mouse,
            trials=np.full(e, -1, np.int64),
            lengths=np.zeros(e, np.int64),
            videos=np.zeros((e, 1, height, width), np.float32),
            behavior=np.zeros((e, 1, STATIC_BEHAVIOR_CHANNELS), np.float32),
            pupil_center=np.zeros((e, 1, STATIC_PUPIL_CENTER_CHANNELS), np.float32),
            responses=np.zeros((e, 1, max_neurons), np.float32),
        )
        batch.trials[:n] = chunk
        batch.lengths[:n] = 1
        batch.videos[:n, 0] = data["images"]
        batch.behavior[:n, 0] = data["behavior"]
        batch.pupil_center[:n, 0] = data["pupil_center"]
        batch.responses[:n, 0, : session.num_neurons] = data["responses"]
        yield batch
