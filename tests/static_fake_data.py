"""A minimal, independent writer of the SENSORIUM 2022 static folder format for tests.

Deliberately different from ``sensorium_jax.data.synthetic_static``: small float64 images, object-dtype tiers,
hashed (string) trial indices, scalar image statistics, behaviour stored as ``(1, 3)`` like the dataset README's
"1 x 3" — the variations a reader meets in the wild. Responses follow a simple known rule of the image (each
neuron reads a brightness at one place), so a model can learn them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STATIC_TIERS = ("train",) * 16 + ("validation",) * 4 + ("test",) * 6 + ("final_test",) * 4
# test: 3 images × 2 repeats; final_test: 2 images × 2 repeats
IMAGE_IDS = (*range(100, 120), 1, 1, 2, 2, 3, 3, 7, 7, 8, 8)


def write_static_session(
    root: Path,
    num_neurons: int = 5,
    image_shape: tuple[int, int, int] = (1, 48, 64),
    seed: int = 0,
    tiers: tuple[str, ...] = STATIC_TIERS,
    image_ids: tuple[int, ...] = IMAGE_IDS,
    behavior_shape: tuple[int, ...] = (1, 3),
    noise: float = 0.1,
) -> Path:
    rng = np.random.default_rng(seed)
    root = Path(root)
    for key in ("images", "responses", "behavior", "pupil_center"):
        (root / "data" / key).mkdir(parents=True, exist_ok=True)
    library = {image: rng.uniform(0, 255, image_shape) for image in sorted(set(image_ids))}
    # neuron n reads the mean brightness of a 4 × 4 patch around (py, px), through exp, plus noise
    h, w = image_shape[1:]
    py = rng.integers(h // 4, 3 * h // 4, num_neurons)
    px = rng.integers(w // 4, 3 * w // 4, num_neurons)
    for i, image in enumerate(image_ids):
        pixels = library[image]
        patch = np.array([pixels[0, y - 2 : y + 2, x - 2 : x + 2].mean() for y, x in zip(py, px, strict=True)])
        rate = np.exp((patch - 127.5) / 60.0)
        arrays = {
            "images": pixels,
            "responses": rate * np.exp(noise * rng.standard_normal(num_neurons)),
            "behavior": np.abs(rng.normal(1.0, 0.5, behavior_shape)),
            "pupil_center": rng.normal(100.0, 3.0, (*behavior_shape[:-1], 2)),
        }
        for key, array in arrays.items():
            np.save(root / "data" / key / f"{i}.npy", array.astype(np.float64))
    trials = root / "meta" / "trials"
    trials.mkdir(parents=True)
    np.save(trials / "tiers.npy", np.array(tiers, dtype=object), allow_pickle=True)
    np.save(trials / "frame_image_id.npy", np.array(image_ids, np.int64))
    hashed = np.array([f"h{(i * 7919) % 1000:03d}x{i}" for i in range(len(tiers))])  # like the hashed competition ids
    np.save(trials / "trial_idx.npy", hashed)
    neurons = root / "meta" / "neurons"
    neurons.mkdir(parents=True)
    np.save(neurons / "unit_ids.npy", np.arange(num_neurons) * 3 + 11)
    np.save(neurons / "cell_motor_coordinates.npy", rng.uniform(-300, 300, (num_neurons, 3)))
    responses = np.stack([np.load(root / "data" / "responses" / f"{i}.npy") for i in range(len(tiers))])
    stats = {
        "images": (np.array(127.0), np.array(70.0)),  # scalar, as NeuroNormalizer's [()] allows
        "responses": (responses.mean(0), responses.std(0)),
        "behavior": (np.ones(3), np.array([0.5, 2.0, 1.0])),
        "pupil_center": (np.full(2, 100.0), np.full(2, 3.0)),
    }
    for key, (mean, std) in stats.items():
        folder = root / "meta" / "statistics" / key / "all"
        folder.mkdir(parents=True)
        np.save(folder / "mean.npy", mean)
        np.save(folder / "std.npy", std)
    return root
