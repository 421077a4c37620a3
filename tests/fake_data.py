"""A minimal, independent writer of the SENSORIUM 2023 folder format for tests.

Deliberately different from ``sensorium_jax.data.synthetic``: random data, statistics *without* the time axis
by default, float64 files, object-dtype tiers — the variations a reader meets in the wild.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_TIERS = ("train",) * 6 + ("oracle",) * 4 + ("live_test_main",) * 2 + ("none",)


def write_session(
    root: Path,
    num_neurons: int = 5,
    tiers: tuple[str, ...] = DEFAULT_TIERS,
    valid: int = 70,
    pad: int = 3,
    seed: int = 0,
    stats_with_time: bool = False,
    nan_padding: bool = True,
    dtype=np.float64,
) -> Path:
    rng = np.random.default_rng(seed)
    t_pad = valid + pad
    root = Path(root)
    for key in ("videos", "responses", "behavior", "pupil_center"):
        (root / "data" / key).mkdir(parents=True, exist_ok=True)
    oracle_video = rng.uniform(0, 255, (36, 64, t_pad))
    for i, tier in enumerate(tiers):
        length = valid + (2 if i == 0 else 0)  # one longer trial, as in the real data
        length = min(length, t_pad)
        arrays = {
            "videos": oracle_video.copy() if tier == "oracle" else rng.uniform(0, 255, (36, 64, t_pad)),
            "responses": rng.gamma(1.0, 1.0, (num_neurons, t_pad)),
            "behavior": np.abs(rng.normal(1.0, 0.5, (2, t_pad))),
            "pupil_center": rng.normal(100.0, 3.0, (2, t_pad)),
        }
        for key, array in arrays.items():
            if nan_padding:
                array[..., length:] = np.nan
            np.save(root / "data" / key / f"{i}.npy", array.astype(dtype))
    (root / "meta" / "trials").mkdir(parents=True)
    np.save(root / "meta" / "trials" / "tiers.npy", np.array(tiers, dtype=object), allow_pickle=True)
    (root / "meta" / "neurons").mkdir(parents=True)
    np.save(root / "meta" / "neurons" / "unit_ids.npy", np.arange(num_neurons) * 3 + 7)
    np.save(root / "meta" / "neurons" / "cell_motor_coordinates.npy", rng.uniform(-300, 300, (num_neurons, 3)))
    stats = {
        "videos": (np.full((36, 64), 127.0), np.full((36, 64), 70.0)),
        "responses": (np.ones(num_neurons), rng.uniform(0.5, 2.0, num_neurons)),
        "behavior": (np.ones(2), np.array([0.5, 2.0])),
        "pupil_center": (np.full(2, 100.0), np.full(2, 3.0)),
    }
    for key, (mean, std) in stats.items():
        folder = root / "meta" / "statistics" / key / "all"
        folder.mkdir(parents=True)
        if stats_with_time:
            mean = np.repeat(mean[..., None], t_pad, axis=-1)
            std = np.repeat(std[..., None], t_pad, axis=-1)
        np.save(folder / "mean.npy", mean)
        np.save(folder / "std.npy", std)
    return root
