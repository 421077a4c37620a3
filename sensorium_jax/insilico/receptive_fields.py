"""Receptive-field mapping of a digital twin: spike-triggered maps from noise, gradient maps, and per-neuron fits.

* **Spike-triggered average** (STA): ``cov(r(t), s(t − lag))`` per pixel and lag, from the twin's responses to
  white (or sparse) noise. For zero-mean Gaussian noise it is proportional to a neuron's linear filter (Bussgang),
  so it recovers simple cells — and is zero for complex (energy) cells, whose response is even in the stimulus.
* **Spike-triggered variance** (STV): ``cov(r(t), s(t − lag)²)``, the diagonal of the spike-triggered covariance.
  For an energy cell it is proportional to the squared envelope of its quadrature pair, for a rectified simple
  cell to its squared filter: a phase-invariant map of *where* a neuron looks, whatever its kind.
* **Gradient maps**: ``∂r/∂stimulus`` at noise clips (the model's own sensitivity), averaged (signed, like the
  STA) and squared (like the STV), one clip per (neuron, sample), batched over neurons.

The STV needs far more noise than the STA (a fourth-order statistic: after 20,000 frames the synthetic complex
cells' STV maps were still mostly noise), whereas every gradient of an energy cell is already a full
quadrature-phase pattern at its receptive field, so a handful of samples give a clean envelope: the **gradient
energy** is the default "where" map, the STA the default signed ("what") map.

Every neuron's maps are then fitted: a 2-D Gaussian to the energy map summed over lags (centre, size), a Gabor to
the signed map at its peak lag (centre, orientation, period, phase), the gradients' power spectrum gives a
phase-invariant orientation and period (complex cells too), and the temporal profile is the signed map at each lag
projected on the peak-lag map. A neuron's reported centre comes from the Gabor fit when the signed map is well
fitted (simple-cell-like), else from the energy map (complex-cell-like).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sensorium_jax.insilico import fitting, stimuli
from sensorium_jax.insilico.twin import DigitalTwin

#: Gabor fits explaining at least this much of the signed map's variance give the neuron's centre.
GABOR_R2_FOR_CENTRE = 0.5


@dataclasses.dataclass
class ReceptiveFields:
    """Maps of the selected neurons, ``(N, L, H, W)`` per lag (lag 0 = the frame of the response)."""

    neurons: np.ndarray  # readout indices
    signed: np.ndarray  # STA or mean gradient
    energy: np.ndarray  # STV or mean squared gradient
    method: str  # "sta" or "gradient"
    frame_rate: float
    spectrum: np.ndarray | None = None  # (N, H, W) mean |FFT|² of the gradients (gradient method only)

    @property
    def lags(self) -> int:
        return self.signed.shape[1]

    def peak_lag(self) -> np.ndarray:
        """Lag at which each neuron's signed map has the most power."""
        return np.argmax((self.signed**2).sum(axis=(2, 3)), axis=1)

    def signed_at_peak(self) -> np.ndarray:
        lag = self.peak_lag()
        return self.signed[np.arange(len(lag)), lag]

    def energy_map(self) -> np.ndarray:
        """Energy summed over lags ``(N, H, W)``."""
        return self.energy.sum(axis=1)

    def temporal_profile(self) -> np.ndarray:
        """``(N, L)``: the signed map at each lag projected on the unit-norm peak-lag map (so the peak lag is
        positive). Biphasic kernels show as a positive lobe followed by a negative one."""
        spatial = self.signed_at_peak()
        spatial = spatial / np.maximum(np.linalg.norm(spatial.reshape(len(spatial), -1), axis=1), 1e-20)[:, None, None]
        return np.einsum("nlhw,nhw->nl", self.signed, spatial)

    def energy_profile(self) -> np.ndarray:
        """``(N, L)``: total energy per lag, peak 1 (the temporal envelope, also for complex cells)."""
        profile = self.energy.sum(axis=(2, 3))
        return profile / np.maximum(np.abs(profile).max(axis=1, keepdims=True), 1e-30)


# ----------------------------------------------------------------------------------------------------------------
# Spike-triggered maps


def spike_triggered(
    twin: DigitalTwin,
    neurons: np.ndarray,
    *,
    frames: int = 20_000,
    clip_output_frames: int = 50,
    batch: int = 16,
    lags: int | None = None,
    amplitude: float | None = None,
    noise: str = "white",
    density: float = 0.05,
    seed: int = 0,
) -> ReceptiveFields:
    """STA and STV of ``neurons`` from about ``frames`` predicted frames of noise (a fresh batch of clips per
    step, drawn inside the jitted step; every selected neuron is read from the same pass).

    ``lags`` defaults to ``min(burn_in + 1, 12)``; ``amplitude`` (grey levels, noise std or sparse-dot contrast)
    to the session's natural RMS contrast.
    """
    lags = min(twin.burn_in + 1, 12) if lags is None else lags
    if not 1 <= lags <= twin.burn_in + 1:
        raise ValueError(f"lags must be within 1…burn_in + 1 = {twin.burn_in + 1}, got {lags}")
    amplitude = twin.space.natural_rms if amplitude is None else amplitude
    clip = twin.clip_frames(clip_output_frames)
    first = clip - clip_output_frames  # input frame of the first kept output
    shape = (batch, clip, twin.space.height, twin.space.width)
    neuron_index = jnp.asarray(neurons)

    @jax.jit
    def accumulate(params, totals, key):
        s = stimuli.noise(key, shape, amplitude, noise, density)
        r = twin.respond(params, s)[:, -clip_output_frames:][..., neuron_index]  # (B, J, N)
        sum_r, sum_s, sum_s2, sum_rs, sum_rs2, count = totals
        new_s, new_s2, new_rs, new_rs2 = [], [], [], []
        for lag in range(lags):
            window = jax.lax.dynamic_slice_in_dim(s, first - lag, clip_output_frames, axis=1)  # (B, J, H, W)
            new_s.append(window.sum((0, 1)))
            new_s2.append((window**2).sum((0, 1)))
            new_rs.append(jnp.einsum("bjn,bjhw->nhw", r, window))
            new_rs2.append(jnp.einsum("bjn,bjhw->nhw", r, window**2))
        return (
            sum_r + r.sum((0, 1)),
            sum_s + jnp.stack(new_s),
            sum_s2 + jnp.stack(new_s2),
            sum_rs + jnp.stack(new_rs, axis=1),
            sum_rs2 + jnp.stack(new_rs2, axis=1),
            count + r.shape[0] * r.shape[1],
        )

    n, hw = len(neurons), (twin.space.height, twin.space.width)
    totals = (
        jnp.zeros(n),
        jnp.zeros((lags, *hw)),
        jnp.zeros((lags, *hw)),
        jnp.zeros((n, lags, *hw)),
        jnp.zeros((n, lags, *hw)),
        jnp.zeros(()),
    )
    steps = max(1, -(-frames // (batch * clip_output_frames)))
    keys = jax.random.split(jax.random.key(seed), steps)
    for step in range(steps):
        totals = accumulate(twin.params, totals, keys[step])
    sum_r, sum_s, sum_s2, sum_rs, sum_rs2, count = (np.asarray(t, np.float64) for t in totals)
    mean_r = sum_r / count
    sta = sum_rs / count - mean_r[:, None, None, None] * (sum_s / count)[None]
    stv = sum_rs2 / count - mean_r[:, None, None, None] * (sum_s2 / count)[None]
    return ReceptiveFields(
        np.asarray(neurons), sta.astype(np.float32), stv.astype(np.float32), "sta", twin.space.frame_rate
    )


# ----------------------------------------------------------------------------------------------------------------
# Gradient maps


def gradient_maps(
    twin: DigitalTwin,
    neurons: np.ndarray,
    *,
    samples: int = 8,
    lags: int | None = None,
    amplitude: float | None = None,
    batch: int = 64,
    seed: int = 0,
) -> ReceptiveFields:
    """Mean and mean squared gradient of each neuron's last predicted frame with respect to noise clips.

    All neurons see the same ``samples`` noise clips (std ``amplitude``, default a quarter of the natural RMS
    contrast: the model is probed near the blank screen, where it is still driven). One clip per (neuron,
    sample), ``batch`` neurons per compiled call.
    """
    lags = min(twin.burn_in + 1, 12) if lags is None else lags
    amplitude = 0.25 * twin.space.natural_rms if amplitude is None else amplitude
    clip = max(twin.clip_frames(1), lags)
    shape = (clip, twin.space.height, twin.space.width)

    @jax.jit
    def gradients(params, clip_noise, neuron_ids):
        videos = jnp.broadcast_to(clip_noise, (neuron_ids.shape[0], *shape))

        def objective(v):
            r = twin.respond(params, v)[:, -1]  # (B, N): the last predicted frame
            return jnp.take_along_axis(r, neuron_ids[:, None], axis=1).sum()

        grad = jax.grad(objective)(videos)  # rows are independent clips: row b holds ∂r_{n_b}/∂clip_b
        return grad[:, ::-1][:, :lags]  # lag 0 = the last frame

    neurons = np.asarray(neurons)
    n = len(neurons)
    batch = max(1, min(batch, n))
    padded = np.concatenate([neurons, np.repeat(neurons[-1:], (-n) % batch)])
    total = np.zeros((len(padded), lags, *shape[1:]), np.float64)
    total_sq = np.zeros_like(total)
    spectrum = np.zeros((len(padded), *shape[1:]), np.float64)
    keys = jax.random.split(jax.random.key(seed), samples)
    for k in range(samples):
        clip_noise = stimuli.white_noise(keys[k], shape, amplitude)
        for start in range(0, len(padded), batch):
            g = np.asarray(gradients(twin.params, clip_noise, jnp.asarray(padded[start : start + batch])), np.float64)
            total[start : start + batch] += g
            total_sq[start : start + batch] += g**2
            spectrum[start : start + batch] += (np.abs(np.fft.fft2(g)) ** 2).sum(axis=1)
    mean, mean_sq = total[:n] / samples, total_sq[:n] / samples
    return ReceptiveFields(
        neurons,
        mean.astype(np.float32),
        mean_sq.astype(np.float32),
        "gradient",
        twin.space.frame_rate,
        (spectrum[:n] / samples).astype(np.float32),
    )


# ----------------------------------------------------------------------------------------------------------------
# Per-neuron summary


def summarise(
    spike_triggered_maps: ReceptiveFields | None = None,
    gradients: ReceptiveFields | None = None,
    fit_steps: int = 250,
) -> dict[str, np.ndarray]:
    """Per-neuron table columns from either or both kinds of maps (of the same neurons).

    "Where" (energy map: centre, size): the gradient energy when given, else the STV. "What" (signed map: Gabor
    orientation, period, phase; temporal profile): the STA when given, else the mean gradient. ``centre_x`` /
    ``centre_y`` are the Gabor fit's when it explains ≥ :data:`GABOR_R2_FOR_CENTRE` of the signed map
    (``centre_source`` "gabor"), else the energy map's Gaussian centre ("energy").
    """
    if spike_triggered_maps is None and gradients is None:
        raise ValueError("summarise needs spike-triggered maps, gradient maps or both")
    where = gradients if gradients is not None else spike_triggered_maps
    what = spike_triggered_maps if spike_triggered_maps is not None else gradients
    if not np.array_equal(where.neurons, what.neurons):
        raise ValueError("the two sets of maps are of different neurons")
    gaussian = fitting.fit_gaussian(where.energy_map(), steps=fit_steps)
    gabor = fitting.fit_gabor(
        what.signed_at_peak(),
        centre_x=gaussian["centre_x"],
        centre_y=gaussian["centre_y"],
        # the energy map is the squared envelope: √2 narrower than the Gabor's own
        sigma=np.sqrt(gaussian["sigma_major"] * gaussian["sigma_minor"]) * np.sqrt(2.0),
        steps=fit_steps,
    )
    use_gabor = gabor["r2"] >= GABOR_R2_FOR_CENTRE
    peak = what.peak_lag()
    out = {
        "centre_x": np.where(use_gabor, gabor["centre_x"], gaussian["centre_x"]),
        "centre_y": np.where(use_gabor, gabor["centre_y"], gaussian["centre_y"]),
        "centre_source": np.where(use_gabor, "gabor", "energy"),
        "size_px": np.sqrt(gaussian["sigma_major"] * gaussian["sigma_minor"]) * np.sqrt(2.0),
        "energy_centre_x": gaussian["centre_x"],
        "energy_centre_y": gaussian["centre_y"],
        "energy_sigma_major": gaussian["sigma_major"],
        "energy_sigma_minor": gaussian["sigma_minor"],
        "energy_angle_deg": gaussian["angle_deg"],
        "energy_r2": gaussian["r2"],
        "gabor_centre_x": gabor["centre_x"],
        "gabor_centre_y": gabor["centre_y"],
        "gabor_sigma": gabor["sigma"],
        "gabor_orientation_deg": gabor["orientation_deg"],
        "gabor_period_px": gabor["period_px"],
        "gabor_phase": gabor["phase"],
        "gabor_r2": gabor["r2"],
        "peak_lag_frames": peak,
        "peak_lag_ms": peak * 1000.0 / what.frame_rate,
        "temporal_profile": what.temporal_profile(),
        "energy_profile": where.energy_profile(),
    }
    if gradients is not None and gradients.spectrum is not None:
        spectral = fitting.spectral_orientation(gradients.spectrum)
        out["spectral_orientation_deg"] = spectral["orientation_deg"]
        out["spectral_period_px"] = spectral["period_px"]
        out["spectral_concentration"] = spectral["concentration"]
    # one orientation per neuron: the Gabor's for simple-cell-like maps, else the phase-invariant spectrum's
    out["orientation_deg"] = np.where(
        use_gabor, gabor["orientation_deg"], out.get("spectral_orientation_deg", gabor["orientation_deg"])
    )
    return out
