"""Per-neuron 2-D Gaussian and Gabor fits of receptive-field maps: jitted Adam steps vmapped over neurons.

Both fits use *variable projection*: only the nonlinear parameters (centre, widths, angle, period) are optimised;
the linear ones (amplitude, offset and — for the Gabor — the cosine/sine weights that encode amplitude and phase)
are solved exactly by least squares at every step. The landscape is then smooth in far fewer parameters, the
phase needs no multi-start, and the loss is the fraction of unexplained variance (1 − R²).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sensorium_jax.insilico.stimuli import blur, pixel_grid

_SIGMA_RANGE = (0.5, 40.0)
_PERIOD_RANGE = (2.0, 80.0)


def _small_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a⁻¹ b`` for a 2×2 or 3×3 ``a`` by cofactors: no LU custom call inside the vmapped, scanned fits (it
    dominated their compile time)."""
    if a.shape[0] == 2:
        det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]
        return jnp.stack([a[1, 1] * b[0] - a[0, 1] * b[1], a[0, 0] * b[1] - a[1, 0] * b[0]]) / det
    cofactor = jnp.stack(
        [
            jnp.cross(a[1], a[2]),
            jnp.cross(a[2], a[0]),
            jnp.cross(a[0], a[1]),
        ]
    )  # rows of the adjugate's transpose: a @ cofactor.T = det · I
    det = a[0] @ cofactor[0]
    return cofactor.T @ b / det


def _solve(basis: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Least-squares weights of ``basis (K, P)`` for ``target (P,)`` and the residual fraction (1 − R²)."""
    gram = basis @ basis.T + 1e-6 * jnp.eye(basis.shape[0])
    weights = _small_solve(gram, basis @ target)
    residual = target - weights @ basis
    centred = target - target.mean()
    return weights, (residual**2).sum() / jnp.maximum((centred**2).sum(), 1e-20)


def _gaussian_basis(p: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """p = [cx, cy, log σ_1, log σ_2, angle] → basis (2, P): the Gaussian and a constant."""
    cx, cy, log_s1, log_s2, angle = p
    s1 = jnp.clip(jnp.exp(log_s1), *_SIGMA_RANGE)
    s2 = jnp.clip(jnp.exp(log_s2), *_SIGMA_RANGE)
    dx, dy = x - cx, y - cy
    u = dx * jnp.cos(angle) + dy * jnp.sin(angle)
    v = -dx * jnp.sin(angle) + dy * jnp.cos(angle)
    g = jnp.exp(-0.5 * (u**2 / s1**2 + v**2 / s2**2))
    return jnp.stack([g.reshape(-1), jnp.ones(g.size)])


def _gabor_basis(p: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """p = [cx, cy, log σ, orientation (rad), log period] → basis (3, P): envelope·cos, envelope·sin, constant."""
    cx, cy, log_sigma, theta, log_period = p
    sigma = jnp.clip(jnp.exp(log_sigma), *_SIGMA_RANGE)
    period = jnp.clip(jnp.exp(log_period), *_PERIOD_RANGE)
    dx, dy = x - cx, y - cy
    envelope = jnp.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    wave = 2 * jnp.pi / period * (dx * jnp.cos(theta) + dy * jnp.sin(theta))
    return jnp.stack(
        [(envelope * jnp.cos(wave)).reshape(-1), (envelope * jnp.sin(wave)).reshape(-1), jnp.ones(envelope.size)]
    )


def _fit(
    basis_fn: Callable,
    maps: jax.Array,
    init: jax.Array,
    steps: int,
    learning_rate: float,
    patch: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Adam on the nonlinear parameters of every (map, start) pair at once.

    ``maps (N, H, W)``, ``init (N, S, K)`` (the first two parameters are the centre x, y in pixels) → best
    parameters ``(N, K)``, linear weights and loss ``(N,)``. ``patch``: fit only a ``patch × patch`` window
    around the first start's centre (receptive fields are local; the transcendental work scales with pixels).
    One flat vmap over (neuron, start) rows and a hand-written Adam in a ``fori_loop``: nested vmaps of an optax
    scan compiled twice as slowly, and compile time dominates small fits.
    """
    n, h, w = maps.shape
    starts, k = init.shape[1:]
    scale = jnp.maximum(jnp.abs(maps).max(axis=(1, 2)), 1e-20)
    maps = maps / scale[:, None, None]
    ph, pw = (h, w) if patch is None else (min(patch, h), min(patch, w))
    x0 = jnp.clip(jnp.round(init[:, 0, 0]) - pw // 2, 0, w - pw).astype(jnp.int32)
    y0 = jnp.clip(jnp.round(init[:, 0, 1]) - ph // 2, 0, h - ph).astype(jnp.int32)
    crops = jax.vmap(lambda m, y, x: jax.lax.dynamic_slice(m, (y, x), (ph, pw)))(maps, y0, x0)
    base_x, base_y = pixel_grid(ph, pw)
    repeat = lambda a: jnp.repeat(a, starts, axis=0)
    targets = repeat(crops.reshape(n, -1))
    xs = repeat(jnp.broadcast_to(base_x, (ph, pw))[None] + x0[:, None, None].astype(jnp.float32))
    ys = repeat(jnp.broadcast_to(base_y, (ph, pw))[None] + y0[:, None, None].astype(jnp.float32))

    def loss(p, target, x, y):
        return _solve(basis_fn(p, x, y), target)[1]

    grad = jax.vmap(jax.grad(loss))
    beta1, beta2 = 0.9, 0.999

    def adam_step(i, carry):
        p, m1, m2 = carry
        g = grad(p, targets, xs, ys)
        m1 = beta1 * m1 + (1 - beta1) * g
        m2 = beta2 * m2 + (1 - beta2) * g * g
        t = i + 1.0
        update = (m1 / (1 - beta1**t)) / (jnp.sqrt(m2 / (1 - beta2**t)) + 1e-8)
        return p - learning_rate * update, m1, m2

    p0 = init.reshape(n * starts, k)
    params, _, _ = jax.lax.fori_loop(0, steps, adam_step, (p0, jnp.zeros_like(p0), jnp.zeros_like(p0)))
    weights, losses = jax.vmap(lambda p, t, x, y: _solve(basis_fn(p, x, y), t))(params, targets, xs, ys)
    best = jnp.argmin(jnp.where(jnp.isfinite(losses), losses, jnp.inf).reshape(n, starts), axis=1)
    rows = jnp.arange(n) * starts + best
    return params[rows], weights[rows] * scale[:, None], losses[rows]


def _peak_centres(maps: jax.Array, smooth: float = 1.5) -> tuple[jax.Array, jax.Array]:
    """Position (x, y) of the largest value of each smoothed map ``(N, H, W)``."""
    smoothed = blur(maps, smooth)
    flat = jnp.argmax(smoothed.reshape(maps.shape[0], -1), axis=1)
    w = maps.shape[-1]
    return (flat % w).astype(jnp.float32), (flat // w).astype(jnp.float32)


def dominant_frequency(maps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Wave-vector angle (rad, [0, π)) and period (px) of the largest non-DC Fourier component of each map."""
    power = jnp.abs(jnp.fft.fft2(maps - maps.mean(axis=(1, 2), keepdims=True))) ** 2
    return _peak_frequency(power)


def _frequencies(h: int, w: int) -> tuple[jax.Array, jax.Array]:
    return jnp.broadcast_to(jnp.fft.fftfreq(w)[None, :], (h, w)), jnp.broadcast_to(jnp.fft.fftfreq(h)[:, None], (h, w))


def _peak_frequency(power: jax.Array) -> tuple[jax.Array, jax.Array]:
    n, h, w = power.shape
    kx, ky = _frequencies(h, w)
    power = power.at[:, 0, 0].set(0.0)
    flat = jnp.argmax(power.reshape(n, -1), axis=1)
    fx, fy = kx.reshape(-1)[flat], ky.reshape(-1)[flat]
    return jnp.mod(jnp.arctan2(fy, fx), jnp.pi), 1.0 / jnp.maximum(jnp.hypot(fx, fy), 1e-3)


def spectral_orientation(power: np.ndarray, fraction: float = 0.5) -> dict[str, np.ndarray]:
    """Orientation and period from power spectra ``(N, H, W)`` (``|FFT|²``, DC at [0, 0], e.g. of gradient maps).

    Phase-invariant, so it also works for complex cells. Finer than the FFT grid: the power-weighted doubled-angle
    mean (orientation) and mean frequency (period) over the bins holding at least ``fraction`` of the peak power.
    """
    power = np.asarray(power, np.float64).copy()
    n, h, w = power.shape
    kx, ky = (np.asarray(a) for a in _frequencies(h, w))
    power[:, 0, 0] = 0.0
    weights = np.where(power >= fraction * power.reshape(n, -1).max(axis=1)[:, None, None], power, 0.0)
    angle = np.arctan2(ky, kx)
    doubled = (weights * np.exp(2j * angle)).sum(axis=(1, 2))
    frequency = (weights * np.hypot(kx, ky)).sum(axis=(1, 2)) / np.maximum(weights.sum(axis=(1, 2)), 1e-30)
    return {
        "orientation_deg": np.mod(np.rad2deg(np.angle(doubled)) / 2.0, 180.0),
        "period_px": 1.0 / np.maximum(frequency, 1e-3),
        "concentration": np.abs(doubled) / np.maximum(weights.sum(axis=(1, 2)), 1e-30),
    }


@functools.partial(jax.jit, static_argnames=("steps", "patch"))
def _gaussian_fit(maps, steps, learning_rate, patch):
    cx, cy = _peak_centres(maps)
    starts = [  # two widths: small and large receptive fields
        jnp.stack([cx, cy, cx * 0 + log_sigma, cx * 0 + log_sigma, cx * 0], axis=-1)
        for log_sigma in (jnp.log(2.0), jnp.log(6.0))
    ]
    return _fit(_gaussian_basis, maps, jnp.stack(starts, axis=1), steps, learning_rate, patch)


def fit_gaussian(
    maps: np.ndarray, steps: int = 200, learning_rate: float = 0.05, patch: int | None = None
) -> dict[str, np.ndarray]:
    """2-D Gaussian fit of non-negative maps ``(N, H, W)`` (e.g. receptive-field energy), started at the peak
    of the smoothed map; ``patch``: fit only that window around the peak.

    Returns per neuron ``centre_x``, ``centre_y`` (px), ``sigma_major``, ``sigma_minor`` (px), ``angle_deg``
    (of the major axis, [0, 180)), ``amplitude``, ``offset`` and ``r2``.
    """
    params, weights, losses = _gaussian_fit(jnp.asarray(maps, jnp.float32), steps, learning_rate, patch)
    params, weights, losses = np.asarray(params), np.asarray(weights), np.asarray(losses)
    s1 = np.clip(np.exp(params[:, 2]), *_SIGMA_RANGE)
    s2 = np.clip(np.exp(params[:, 3]), *_SIGMA_RANGE)
    angle = np.rad2deg(params[:, 4]) + np.where(s2 > s1, 90.0, 0.0)
    return {
        "centre_x": params[:, 0],
        "centre_y": params[:, 1],
        "sigma_major": np.maximum(s1, s2),
        "sigma_minor": np.minimum(s1, s2),
        "angle_deg": np.mod(angle, 180.0),
        "amplitude": weights[:, 0],
        "offset": weights[:, 1],
        "r2": 1.0 - losses,
    }


@functools.partial(jax.jit, static_argnames=("steps", "patch"))
def _gabor_fit(maps, centre_x, centre_y, sigma, steps, learning_rate, patch):
    x, y = pixel_grid(*maps.shape[-2:])
    window = jnp.exp(
        -((x - centre_x[:, None, None]) ** 2 + (y - centre_y[:, None, None]) ** 2) / (8 * sigma[:, None, None] ** 2)
    )
    theta, period = dominant_frequency(maps * window)  # of the map around the starting centre
    starts = []
    for d_theta in (0.0, jnp.pi / 2):  # the FFT peak, and across it in case the coarse spectrum misleads
        for period_scale in (1.0, 1.5):
            starts.append(
                jnp.stack(
                    [
                        centre_x,
                        centre_y,
                        jnp.log(sigma),
                        theta + d_theta,
                        jnp.log(jnp.clip(period * period_scale, 3.0, 40.0)),
                    ],
                    axis=-1,
                )
            )
    return _fit(_gabor_basis, maps, jnp.stack(starts, axis=1), steps, learning_rate, patch)


def fit_gabor(
    maps: np.ndarray,
    centre_x: np.ndarray | None = None,
    centre_y: np.ndarray | None = None,
    sigma: np.ndarray | None = None,
    steps: int = 250,
    learning_rate: float = 0.05,
    patch: int | None = 24,
) -> dict[str, np.ndarray]:
    """Gabor fit of signed maps ``(N, H, W)`` (a linear receptive field: STA, mean gradient, MEI).

    The starting centre and width default to a Gaussian fit of the squared (smoothed) map; the orientation and
    period start at the spectral peak around that centre; only a ``patch × patch`` window around it is fitted
    (``None``: the whole map). Returns per neuron
    ``centre_x``, ``centre_y``, ``sigma`` (px), ``orientation_deg`` (wave-vector angle, [0, 180)),
    ``period_px``, ``phase`` (rad, of the cosine at the centre), ``amplitude`` and ``r2``.
    """
    maps = jnp.asarray(maps, jnp.float32)
    if centre_x is None or centre_y is None or sigma is None:
        envelope = fit_gaussian(np.asarray(blur(maps**2, 1.0)), steps=steps)  # same steps: one compile
        centre_x = envelope["centre_x"] if centre_x is None else centre_x
        centre_y = envelope["centre_y"] if centre_y is None else centre_y
        # the squared map's Gaussian is √2 narrower than the Gabor's envelope
        sigma = np.sqrt(envelope["sigma_major"] * envelope["sigma_minor"]) * np.sqrt(2.0) if sigma is None else sigma
    sigma = np.clip(np.asarray(sigma, np.float32), 1.0, 20.0)
    params, weights, losses = _gabor_fit(
        maps,
        jnp.asarray(centre_x, jnp.float32),
        jnp.asarray(centre_y, jnp.float32),
        jnp.asarray(sigma),
        steps,
        learning_rate,
        patch,
    )
    params, weights, losses = np.asarray(params), np.asarray(weights), np.asarray(losses)
    # weights: a·cos(wave) + b·sin(wave) = A·cos(wave + φ) with A = |(a, −b)|, φ = atan2(−b, a)
    amplitude = np.hypot(weights[:, 0], weights[:, 1])
    phase = np.arctan2(-weights[:, 1], weights[:, 0])
    theta = params[:, 3]
    # (θ + π, −phase) describes the same Gabor: fold the orientation into [0, π)
    flipped = np.mod(theta, 2 * np.pi) >= np.pi
    phase = np.where(flipped, -phase, phase)
    return {
        "centre_x": params[:, 0],
        "centre_y": params[:, 1],
        "sigma": np.clip(np.exp(params[:, 2]), *_SIGMA_RANGE),
        "orientation_deg": np.mod(np.rad2deg(theta), 180.0),
        "period_px": np.clip(np.exp(params[:, 4]), *_PERIOD_RANGE),
        "phase": np.mod(phase, 2 * np.pi),
        "amplitude": amplitude,
        "r2": 1.0 - losses,
    }
