"""Helpers for the evaluation, submission and report tests: sessions with every test tier, and a numpy model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from sensorium_jax.evaluation.loading import ModelDataMismatch
from tests.fake_data import write_session

# 70 valid frames → 20 scored frames per trial; oracle trials repeat one video (see fake_data.write_session)
ALL_TIERS = (
    ("train",) * 4
    + ("oracle",) * 3
    + ("live_test_main",) * 2
    + ("final_test_main",) * 2
    + ("live_test_bonus",) * 3
    + ("final_test_bonus",) * 3
    + ("none",)
)


def write_sessions(root: Path, neurons: tuple[int, ...] = (4, 6)) -> list[Path]:
    return [
        write_session(Path(root) / f"mouse-{i}", num_neurons=n, tiers=ALL_TIERS, seed=10 + i)
        for i, n in enumerate(neurons)
    ]


def withhold_test_labels(session: Path) -> None:
    """Zero the responses of the test tiers, like the competition mice's files."""
    tiers = np.load(session / "meta" / "trials" / "tiers.npy", allow_pickle=True).astype(str)
    for trial in np.flatnonzero(np.char.find(tiers, "test") >= 0):
        path = session / "data" / "responses" / f"{trial}.npy"
        array = np.load(path)
        np.save(path, np.where(np.isnan(array), np.nan, 0.0))


class FakeModel:
    """A causal numpy "model" with the interface of a restored one (``loading.TrainedModel``).

    Output frame t depends on frames t − burn_in … t only (a weighted sum of mean pixel values plus running
    speed), so sliding windows must reproduce the whole-trial pass exactly.
    """

    def __init__(self, sessions, burn_in: int = 4, gain: float = 1.0, workdir: str | Path = "fake-run"):
        self.burn_in = burn_in
        self.gain = gain
        self.counts = {s.name: s.num_neurons for s in sessions}
        self.workdir = Path(workdir)
        self.checkpoint = self.workdir / "best" / "0"
        self.calls = 0

    @property
    def members(self):
        return [self]

    @property
    def name(self) -> str:
        return self.workdir.name

    def check_session(self, session) -> None:
        if session.name not in self.counts:
            raise ModelDataMismatch(f"mouse {session.name!r} is absent from the model")

    def predict(self, mouse, videos, behavior, pupil_center) -> np.ndarray:
        self.calls += 1
        frame = videos.mean(axis=(2, 3))  # (E, T)
        kernel = np.linspace(1.0, 2.0, self.burn_in + 1)
        drive = sliding_window_view(frame, self.burn_in + 1, axis=1) @ kernel + behavior[:, self.burn_in :, 1]
        weights = np.linspace(0.5, 1.5, self.counts[mouse])
        return (np.exp(0.1 * self.gain * drive[..., None] * weights)).astype(np.float32)

    def predict_members(self, mouse, videos, behavior, pupil_center) -> list[np.ndarray]:
        return [self.predict(mouse, videos, behavior, pupil_center)]

    def readout_positions(self, mouse) -> np.ndarray:
        rng = np.random.default_rng(len(mouse))
        return rng.uniform(-0.8, 0.8, (self.counts[mouse], 2))
