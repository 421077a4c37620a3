"""The training input pipeline on its own: Grain rounds of clips per second, and the memory it holds.

Reads a synthetic dataset in the real on-disk format — the cached default one, or one generated at a chosen size
(``pipeline_dataset``) — through the same :func:`~sensorium_jax.data.pipeline.train_iterator` the loop uses, and
consumes the rounds without a model, so the figure is what the pipeline can deliver at most. Trials are
memory-mapped, so the resident set stays small however many trials a mouse has; a clip's cost depends on the
clip length and the neuron count (responses are stored ``(N, T)``, so a clip touches every row of the file),
not on the number of trials. Files read again soon come from the page cache: on data larger than memory the
first epoch is slower than measured here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from sensorium_jax.benchmarking.memory import TreeRssSampler
from sensorium_jax.data import pipeline, synthetic
from sensorium_jax.data.reader import Session, open_sessions


@dataclasses.dataclass
class PipelineMeasurement:
    num_mice: int
    num_neurons: int
    batch_clips: int  # clips per round, all mice
    clip_frames: int
    num_workers: int
    first_round_s: float  # start-up: opening the iterator and the first round
    round_times_s: list[float]
    peak_rss_bytes: int  # sampled peak of this process and its worker processes, summed
    rss_before_bytes: int

    @property
    def round_s(self) -> float:
        """Mean seconds per round. Not the median: with prefetching, rounds arrive in bursts (one wait, then
        rounds already loaded, ~0 s), so the median of alternating waits misstates the throughput."""
        return sum(self.round_times_s) / len(self.round_times_s)

    @property
    def clips_per_s(self) -> float:
        return self.batch_clips / self.round_s

    @property
    def frames_per_s(self) -> float:
        return self.clips_per_s * self.clip_frames


def pipeline_dataset(
    cache_dir: str | Path,
    num_mice: int = 0,
    neurons: int = 0,
    train_trials: int = 0,
) -> list[Path]:
    """Session folders of the synthetic dataset: the default one when every size is 0, else one with
    ``num_mice`` mice of ``neurons`` neurons and ``train_trials`` train trials each (few repeated trials: only the
    train tier is read). Generated on first use and cached under ``cache_dir`` like the default."""
    if not (num_mice or neurons or train_trials):
        return synthetic.ensure_dataset(cache_dir)
    default = synthetic.SyntheticConfig()
    mice = num_mice or default.num_mice
    counts = tuple([neurons] * mice) if neurons else tuple(default.neurons_per_mouse[i % 3] for i in range(mice))
    config = synthetic.SyntheticConfig(
        num_mice=mice,
        neurons_per_mouse=counts,
        train_trials=train_trials or default.train_trials,
        oracle_videos=1,
        oracle_repeats=2,
        test_videos=1,
        test_repeats=2,
        none_trials=0,
        long_trials=0,
    )
    return synthetic.ensure_dataset(cache_dir, config)


def measure_pipeline(
    sessions: Sequence[Session],
    batch_size: int,
    clip_frames: int,
    rounds: int = 10,
    num_workers: int = 0,
    prefetch: int = 2,
    seed: int = 0,
) -> PipelineMeasurement:
    """Time ``rounds`` rounds after the first; every round is ``batch_size`` clips from every mouse."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: at least one timed round is needed")
    if num_workers > 0 and not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags; a library caller has parsed none
    max_neurons = max(s.num_neurons for s in sessions)
    spec = pipeline.ClipSpec(batch_size=batch_size, clip_frames=clip_frames, max_neurons=max_neurons, seed=seed)
    with TreeRssSampler() as memory:
        before = memory.peak_bytes
        started = time.perf_counter()
        iterator = pipeline.train_iterator(sessions, spec, rounds + 1, num_workers, prefetch)
        first = next(iterator)
        first_s = time.perf_counter() - started
        expected = (len(sessions), batch_size, clip_frames)
        if first["videos"].shape[:3] != expected:
            raise AssertionError(f"pipeline round has shape {first['videos'].shape[:3]}, expected {expected}")
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            next(iterator)
            times.append(time.perf_counter() - started)
        del iterator
    return PipelineMeasurement(
        num_mice=len(sessions),
        num_neurons=sum(s.num_neurons for s in sessions),
        batch_clips=len(sessions) * batch_size,
        clip_frames=clip_frames,
        num_workers=num_workers,
        first_round_s=first_s,
        round_times_s=times,
        peak_rss_bytes=memory.peak_bytes,
        rss_before_bytes=before,
    )


def open_pipeline_sessions(paths: Sequence[Path]) -> list[Session]:
    """Sessions with header-only validation (the frame-by-frame NaN scan is start-up cost, not throughput)."""
    return open_sessions(paths, validate="headers")
