"""Synthetic stimuli in contrast units (grey levels relative to the blank screen), as jnp so they vmap and jit.

Conventions are the synthetic dataset's: x = column (right), y = row (down); a direction θ is the vector
(cos θ, sin θ) in (x, y). A grating *drifting in direction θ* has its wave vector along θ and moves along it, so
its stripes' wave-vector angle (this package's "orientation") is ``θ mod 180``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sensorium_jax.data import layout


def pixel_grid(height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """``x (1, W)`` column and ``y (H, 1)`` row coordinates in pixels."""
    return jnp.arange(width, dtype=jnp.float32)[None, :], jnp.arange(height, dtype=jnp.float32)[:, None]


def aperture(
    height: int, width: int, centre_x: jax.Array, centre_y: jax.Array, radius: jax.Array, edge_px: float = 0.5
) -> jax.Array:
    """``(H, W)`` circular window with a soft edge (logistic, width ``edge_px``); ``radius=inf``: full field."""
    x, y = pixel_grid(height, width)
    distance = jnp.sqrt((x - centre_x) ** 2 + (y - centre_y) ** 2)
    return jax.nn.sigmoid((radius - distance) / edge_px)


def drifting_grating(
    direction_deg: jax.Array,
    period_px: jax.Array,
    temporal_hz: jax.Array,
    amplitude: jax.Array,
    frames: int,
    height: int = layout.VIDEO_HEIGHT,
    width: int = layout.VIDEO_WIDTH,
    *,
    phase: jax.Array = 0.0,
    centre_x: jax.Array | None = None,
    centre_y: jax.Array | None = None,
    radius: jax.Array = jnp.inf,
    frame_rate: float = layout.FRAME_RATE_HZ,
) -> jax.Array:
    """``(T, H, W)`` sinusoidal grating drifting in ``direction_deg`` at ``temporal_hz`` (within an aperture of
    ``radius`` around the centre, default the screen centre and full field)."""
    x, y = pixel_grid(height, width)
    angle = jnp.deg2rad(direction_deg)
    t = jnp.arange(frames, dtype=jnp.float32)[:, None, None]
    wave = (2 * jnp.pi / period_px) * (x * jnp.cos(angle) + y * jnp.sin(angle))
    grating = amplitude * jnp.cos(wave - 2 * jnp.pi * temporal_hz / frame_rate * t + phase)
    centre_x = (width - 1) / 2 if centre_x is None else centre_x
    centre_y = (height - 1) / 2 if centre_y is None else centre_y
    return grating * aperture(height, width, centre_x, centre_y, radius)


def gabor(
    centre_x: jax.Array,
    centre_y: jax.Array,
    sigma_px: jax.Array,
    orientation_deg: jax.Array,
    period_px: jax.Array,
    phase: jax.Array,
    height: int = layout.VIDEO_HEIGHT,
    width: int = layout.VIDEO_WIDTH,
) -> jax.Array:
    """``(H, W)`` Gabor patch, wave vector at ``orientation_deg``, isotropic Gaussian envelope, peak 1."""
    x, y = pixel_grid(height, width)
    dx, dy = x - centre_x, y - centre_y
    angle = jnp.deg2rad(orientation_deg)
    envelope = jnp.exp(-(dx**2 + dy**2) / (2 * sigma_px**2))
    return envelope * jnp.cos(2 * jnp.pi / period_px * (dx * jnp.cos(angle) + dy * jnp.sin(angle)) + phase)


def white_noise(key: jax.Array, shape: tuple[int, ...], amplitude: float) -> jax.Array:
    """Gaussian white noise of std ``amplitude`` (clipped at ±3 std), independent over pixels and frames.

    Gaussian rather than binary: the spike-triggered variance map needs pixel values whose square varies.
    """
    return amplitude * jnp.clip(jax.random.normal(key, shape), -3.0, 3.0)


def sparse_noise(key: jax.Array, shape: tuple[int, ...], amplitude: float, density: float = 0.05) -> jax.Array:
    """Each pixel independently ``+amplitude`` or ``−amplitude`` with probability ``density / 2`` each, else 0."""
    draw = jax.random.uniform(key, shape)
    return amplitude * (jnp.where(draw < density / 2, 1.0, 0.0) - jnp.where(draw > 1 - density / 2, 1.0, 0.0))


def noise(key: jax.Array, shape: tuple[int, ...], amplitude: float, kind: str = "white", density: float = 0.05):
    """``kind``: ``"white"`` (:func:`white_noise`) or ``"sparse"`` (:func:`sparse_noise`)."""
    if kind == "white":
        return white_noise(key, shape, amplitude)
    if kind == "sparse":
        return sparse_noise(key, shape, amplitude, density)
    raise ValueError(f"unknown noise kind {kind!r}; 'white' or 'sparse'")


def gaussian_kernel_1d(sigma: float) -> jax.Array:
    radius = max(1, round(3 * sigma))
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    kernel = jnp.exp(-(taps**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def blur(images: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur over the last two axes (edges: reflect), for ``sigma > 0``; identity otherwise."""
    if sigma <= 0:
        return images
    kernel = gaussian_kernel_1d(sigma)
    radius = (kernel.shape[0] - 1) // 2
    lead = images.shape[:-2]
    h, w = images.shape[-2:]
    flat = images.reshape(-1, h, w)
    padded = jnp.pad(flat, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    rows = sum(kernel[i] * padded[:, i : i + h, :] for i in range(kernel.shape[0]))
    cols = sum(kernel[i] * rows[:, :, i : i + w] for i in range(kernel.shape[0]))
    return cols.reshape(*lead, h, w)
