"""The on-disk SENSORIUM 2023 video format: folder names, array shapes and the errors bad files raise.

One folder per recording session (mouse)::

    <session>/data/videos/{i}.npy         (H=36, W=64, T_pad)  grey levels 0-255, NaN-padded in time
    <session>/data/responses/{i}.npy      (N, T_pad)           deconvolved calcium
    <session>/data/behavior/{i}.npy       (2, T_pad)           [pupil dilation, running speed]
    <session>/data/pupil_center/{i}.npy   (2, T_pad)           [horizontal, vertical] eye position
    <session>/meta/trials/tiers.npy       (n_trials,)          train | oracle | live_test_* | final_test_* | none
    <session>/meta/neurons/unit_ids.npy   (N,)
    <session>/meta/neurons/cell_motor_coordinates.npy  (N, 3) µm
    <session>/meta/statistics/<key>/all/{mean,std}.npy

Arrays are time-last. Trial ``i`` is row ``i`` of every ``meta/trials`` array.
"""

from __future__ import annotations

import enum
from pathlib import Path

VIDEO_HEIGHT = 36
VIDEO_WIDTH = 64
FRAME_RATE_HZ = 30
#: The benchmark scores at most the first 300 frames of a trial and skips the first 50 of them.
SCORED_FRAMES = 300
BURN_IN_FRAMES = 50

#: Per-trial arrays, in the order the reference loader lists them.
DATA_KEYS = ("videos", "responses", "behavior", "pupil_center")
BEHAVIOR_CHANNELS = 2  # pupil dilation, running speed
PUPIL_CENTER_CHANNELS = 2  # horizontal, vertical


class Tier(enum.StrEnum):
    TRAIN = "train"
    ORACLE = "oracle"
    LIVE_TEST_MAIN = "live_test_main"
    LIVE_TEST_BONUS = "live_test_bonus"
    FINAL_TEST_MAIN = "final_test_main"
    FINAL_TEST_BONUS = "final_test_bonus"
    NONE = "none"  # excluded trials: the reference loader skips them


KNOWN_TIERS = frozenset(t.value for t in Tier)
EVALUATION_TIERS = (
    Tier.ORACLE.value,
    Tier.LIVE_TEST_MAIN.value,
    Tier.FINAL_TEST_MAIN.value,
    Tier.LIVE_TEST_BONUS.value,
    Tier.FINAL_TEST_BONUS.value,
)


class DataFormatError(ValueError):
    """A file of a dataset is missing, unreadable or does not match the SENSORIUM format.

    The message always names the offending file and what is wrong with it.
    """

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def trial_path(session: Path, key: str, trial: int) -> Path:
    return session / "data" / key / f"{trial}.npy"


def statistics_path(session: Path, key: str, stat: str, source: str = "all") -> Path:
    return session / "meta" / "statistics" / key / source / f"{stat}.npy"


def tiers_path(session: Path) -> Path:
    return session / "meta" / "trials" / "tiers.npy"


def unit_ids_path(session: Path) -> Path:
    return session / "meta" / "neurons" / "unit_ids.npy"


def coordinates_path(session: Path) -> Path:
    return session / "meta" / "neurons" / "cell_motor_coordinates.npy"


def expected_leading_shape(key: str, num_neurons: int) -> tuple[int, ...]:
    """Shape of a per-trial array without its (last) time axis."""
    return {
        "videos": (VIDEO_HEIGHT, VIDEO_WIDTH),
        "responses": (num_neurons,),
        "behavior": (BEHAVIOR_CHANNELS,),
        "pupil_center": (PUPIL_CENTER_CHANNELS,),
    }[key]
