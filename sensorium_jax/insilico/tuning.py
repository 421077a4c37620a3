"""Tuning of a digital twin to drifting gratings: direction, spatial and temporal frequency, size.

Protocol: every neuron sees the same full-field gratings over a grid of directions × spatial periods × temporal
frequencies (one pass for all neurons); a neuron's preferred period and frequency are where its strongest
direction responds most, and its direction curve is read there. Size tuning then shows each neuron its preferred
grating through apertures of growing radius centred on its receptive field (stimuli built per neuron, vmapped).

Responses are the mean predicted rate over the output frames (a whole number of cycles for the default 1 s and
frequencies ≥ 1 Hz). Selectivity indices use the *evoked* response, ``max(r − r_blank, 0)`` with ``r_blank`` the
response to the blank screen, so a neuron's spontaneous rate does not dilute them:

* ``dsi = (R_pref − R_null) / (R_pref + R_null)``, null = preferred direction + 180°;
* ``osi = (R_pref − R_orth) / (R_pref + R_orth)`` on the orientation curve ``(r(θ) + r(θ + 180°)) / 2``;
* ``gosi = |Σ r e^{2iθ}| / Σ r`` and ``gdsi = |Σ r e^{iθ}| / Σ r`` (global, vector-sum versions, 1 − circular
  variance); the preferred orientation is the vector-sum angle ``arg(Σ r e^{2iθ}) / 2``, finer than the grid.

Orientation is the grating's wave-vector angle modulo 180° (= drift direction mod 180°), the synthetic dataset's
``orientation_deg`` convention.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sensorium_jax.insilico import stimuli
from sensorium_jax.insilico.twin import DigitalTwin, map_batches


@dataclasses.dataclass(frozen=True)
class GratingProtocol:
    directions_deg: tuple[float, ...] = tuple(np.arange(16) * 22.5)
    periods_px: tuple[float, ...] = (4.0, 6.0, 8.0, 11.0, 16.0, 24.0)
    temporal_hz: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    radii_px: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 11.0, 16.0, 24.0, float("inf"))
    amplitude: float | None = None  # grey levels; None: half the session's natural RMS contrast
    output_frames: int = 30  # 1 s at 30 Hz: whole cycles of every frequency ≥ 1 Hz

    def __post_init__(self) -> None:
        if np.any(np.diff(np.asarray(self.radii_px, float)) <= 0):
            raise ValueError(f"radii_px must be ascending, got {self.radii_px}")
        directions = np.mod(np.asarray(self.directions_deg, float), 360.0)
        for offset, what in ((180.0, "opposite"), (90.0, "orthogonal")):
            if not np.all(np.isclose(_nearest_difference(directions, directions + offset), 0.0, atol=1e-6)):
                raise ValueError(f"directions_deg must contain every direction's {what} direction (a regular grid)")


def _wrap(angle: np.ndarray, period: float) -> np.ndarray:
    """Into [0, period): a second ``mod`` folds the ``period`` that ``mod`` returns for tiny negative angles."""
    return np.mod(np.mod(angle, period), period)


def _nearest_difference(grid: np.ndarray, targets: np.ndarray) -> np.ndarray:
    delta = np.abs(np.mod(targets[:, None] - grid[None, :] + 180.0, 360.0) - 180.0)
    return delta.min(axis=1)


def _nearest_index(grid: np.ndarray, targets: np.ndarray) -> np.ndarray:
    delta = np.abs(np.mod(targets[..., None] - grid + 180.0, 360.0) - 180.0)
    return np.argmin(delta, axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# Indices from tuning curves (numpy; every function takes curves (..., D))


def tuning_metrics(curves: np.ndarray, directions_deg: np.ndarray, blank: np.ndarray | None = None) -> dict:
    """Direction/orientation selectivity of tuning curves ``(..., D)`` sampled at ``directions_deg`` (a regular
    grid containing opposite and orthogonal directions). ``blank (...)``: response to the blank screen."""
    directions = np.mod(np.asarray(directions_deg, np.float64), 360.0)
    curves = np.asarray(curves, np.float64)
    evoked = curves if blank is None else np.maximum(curves - np.asarray(blank, np.float64)[..., None], 0.0)
    opposite = _nearest_index(directions, directions + 180.0)
    orthogonal = _nearest_index(directions, directions + 90.0)
    pref = np.argmax(evoked, axis=-1)
    take = lambda a, i: np.take_along_axis(a, i[..., None], axis=-1)[..., 0]
    r_pref = take(evoked, pref)
    r_null = take(evoked, opposite[pref])
    orientation_curve = 0.5 * (evoked + evoked[..., opposite])
    r_pref_orientation = take(orientation_curve, pref)
    r_orth = take(orientation_curve, orthogonal[pref])
    radians = np.deg2rad(directions)
    total = evoked.sum(axis=-1)
    vector1 = (evoked * np.exp(1j * radians)).sum(axis=-1)
    vector2 = (evoked * np.exp(2j * radians)).sum(axis=-1)
    ratio = lambda a, b: np.divide(a, b, out=np.zeros_like(np.asarray(a, np.float64)), where=b > 0)
    return {
        "preferred_direction_deg": directions[pref],
        "vector_direction_deg": _wrap(np.rad2deg(np.angle(vector1)), 360.0),
        "preferred_orientation_deg": _wrap(np.rad2deg(np.angle(vector2)) / 2.0, 180.0),
        "dsi": ratio(r_pref - r_null, r_pref + r_null),
        "osi": ratio(r_pref_orientation - r_orth, r_pref_orientation + r_orth),
        "gdsi": ratio(np.abs(vector1), total),
        "gosi": ratio(np.abs(vector2), total),
        "peak_response": take(curves, pref),
    }


def size_metrics(responses: np.ndarray, radii_px: np.ndarray, blank: np.ndarray | None = None) -> dict:
    """From size-tuning curves ``(..., R)`` (radii ascending): ``preferred_radius_px``, the smallest radius whose
    evoked response reaches 95 % of the peak (the summation field: a response that only saturates does not
    "prefer" the largest aperture), and ``surround_suppression = (R_peak − R_largest) / R_peak``."""
    responses = np.asarray(responses, np.float64)
    evoked = responses if blank is None else np.maximum(responses - np.asarray(blank)[..., None], 0.0)
    peak = evoked.max(axis=-1)
    reached = evoked >= 0.95 * peak[..., None]
    first = np.argmax(reached, axis=-1)
    return {
        "preferred_radius_px": np.asarray(radii_px, np.float64)[first],
        "surround_suppression": np.divide(peak - evoked[..., -1], peak, out=np.zeros_like(peak), where=peak > 0),
    }


# ----------------------------------------------------------------------------------------------------------------
# Twin responses


def _frames(twin: DigitalTwin, protocol: GratingProtocol) -> int:
    return twin.clip_frames(protocol.output_frames)


def grating_responses(
    twin: DigitalTwin, neurons: np.ndarray, protocol: GratingProtocol = GratingProtocol(), batch: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Mean responses ``(N, D, P, F)`` to full-field gratings on the protocol's grid, and to the blank ``(N,)``."""
    amplitude = 0.5 * twin.space.natural_rms if protocol.amplitude is None else protocol.amplitude
    frames, output = _frames(twin, protocol), protocol.output_frames
    h, w = twin.space.height, twin.space.width
    neuron_index = jnp.asarray(neurons)
    grid = np.stack(
        np.meshgrid(protocol.directions_deg, protocol.periods_px, protocol.temporal_hz, indexing="ij"), -1
    ).reshape(-1, 3)
    rows = np.concatenate([grid, [[0.0, 8.0, 1.0]]]).astype(np.float32)  # the last row: the blank screen
    amplitudes = np.full(len(rows), amplitude, np.float32)
    amplitudes[-1] = 0.0

    @jax.jit
    def respond(params, chunk):
        make = lambda p: stimuli.drifting_grating(p[0], p[1], p[2], p[3], frames, h, w)
        videos = jax.vmap(make)(chunk)
        return twin.respond(params, videos)[:, -output:][..., neuron_index].mean(axis=1)  # (B, N)

    table = np.concatenate([rows, amplitudes[:, None]], axis=1)
    out = map_batches(lambda chunk: respond(twin.params, chunk), table, batch)  # (G + 1, N)
    shape = (len(protocol.directions_deg), len(protocol.periods_px), len(protocol.temporal_hz))
    return out[:-1].T.reshape(len(neurons), *shape), out[-1]


def size_responses(
    twin: DigitalTwin,
    neurons: np.ndarray,
    centre_x: np.ndarray,
    centre_y: np.ndarray,
    direction_deg: np.ndarray,
    period_px: np.ndarray,
    temporal_hz: np.ndarray,
    protocol: GratingProtocol = GratingProtocol(),
    batch: int = 32,
) -> np.ndarray:
    """``(N, R)``: each neuron's response to its own grating in apertures centred on its receptive field."""
    amplitude = 0.5 * twin.space.natural_rms if protocol.amplitude is None else protocol.amplitude
    frames, output = _frames(twin, protocol), protocol.output_frames
    h, w = twin.space.height, twin.space.width
    radii = np.asarray(protocol.radii_px, np.float32)
    n, r = len(neurons), len(radii)
    # one row per (neuron, radius): [neuron, direction, period, frequency, cx, cy, radius]
    per_neuron = np.stack([neurons, direction_deg, period_px, temporal_hz, centre_x, centre_y], -1).astype(np.float32)
    rows = np.concatenate([np.repeat(per_neuron, r, axis=0), np.tile(radii, n)[:, None]], axis=1)

    @jax.jit
    def respond(params, chunk):
        def make(p):
            return stimuli.drifting_grating(
                p[1], p[2], p[3], amplitude, frames, h, w, centre_x=p[4], centre_y=p[5], radius=p[6]
            )

        videos = jax.vmap(make)(chunk)
        rates = twin.respond(params, videos)[:, -output:].mean(axis=1)  # (B, N_all)
        return jnp.take_along_axis(rates, chunk[:, :1].astype(jnp.int32), axis=1)[:, 0]

    return map_batches(lambda chunk: respond(twin.params, chunk), rows, batch).reshape(n, r)


def run_tuning(
    twin: DigitalTwin,
    neurons: np.ndarray,
    protocol: GratingProtocol = GratingProtocol(),
    centre_x: np.ndarray | None = None,
    centre_y: np.ndarray | None = None,
    batch: int = 32,
) -> dict[str, np.ndarray]:
    """The whole protocol; size tuning only when receptive-field centres are given.

    Returns per-neuron columns (preferences, OSI, DSI, …) plus the curves ``direction_curve (N, D)``,
    ``period_curve (N, P)``, ``frequency_curve (N, F)``, ``size_curve (N, R)`` and ``blank (N,)``.
    """
    neurons = np.asarray(neurons)
    responses, blank = grating_responses(twin, neurons, protocol, batch)
    evoked = np.maximum(responses - blank[:, None, None, None], 0.0)
    n = len(neurons)
    best_pf = np.argmax(evoked.max(axis=1).reshape(n, -1), axis=1)
    p_idx, f_idx = np.unravel_index(best_pf, responses.shape[2:])
    rows = np.arange(n)
    direction_curve = responses[rows, :, p_idx, f_idx]  # (N, D)
    metrics = tuning_metrics(direction_curve, np.asarray(protocol.directions_deg), blank)
    d_idx = _nearest_index(np.asarray(protocol.directions_deg, float), metrics["preferred_direction_deg"])
    out = {
        **metrics,
        "preferred_period_px": np.asarray(protocol.periods_px)[p_idx],
        "preferred_temporal_hz": np.asarray(protocol.temporal_hz)[f_idx],
        "blank": blank,
        "direction_curve": direction_curve,
        "period_curve": responses[rows, d_idx, :, f_idx],
        "frequency_curve": responses[rows, d_idx, p_idx, :],
    }
    if centre_x is not None and centre_y is not None:
        size_curve = size_responses(
            twin,
            neurons,
            np.asarray(centre_x),
            np.asarray(centre_y),
            out["preferred_direction_deg"],
            out["preferred_period_px"],
            out["preferred_temporal_hz"],
            protocol,
            batch,
        )
        out.update(size_metrics(size_curve, np.asarray(protocol.radii_px), blank))
        out["size_curve"] = size_curve
    return out
