"""DwiseNeuro (SENSORIUM 2023, 1st place) as a model of the shared interface (``winning_models.md`` §1).

The network sees *windows*: ``W = 16`` frames taken every ``s = 2`` frames (spanning ``(W − 1)·s + 1 = 31``), the
video zero-padded (centred) from 36 × 64 to 64 × 64, behaviour and pupil centre as constant channels. It predicts
all ``W`` frames of a window: core (stem + inverted-residual blocks) → spatial average → cortex → per-mouse
grouped readout → Softplus(β = 0.07).

How windows map onto the shared interface (``burn_in = 0``: every frame of a clip or trial gets a prediction):

* **Training** (``__call__``): a clip of ``T = K·W·s`` frames is cut into ``K·s`` windows — in each block of
  ``W·s`` frames, one window per phase (frames ``p, p + s, …``; for ``s = 2`` the even and the odd frames) — so
  every frame is predicted exactly once, by a window that ends at most ``s − 1`` frames after it. Each window is
  an independent reference sample (16 frames at step 2 ending at some frame, loss on all 16 outputs); a 32-frame
  clip is two of them.
* **Inference** (``predict_mouse``): the reference's sliding window. A window ends at every frame
  ``t ∈ [30, T − 1]``; its 16 outputs are added into their frames and each frame is divided by the number of
  windows that cover it. ``inference.end_step = k > 1`` (CPU variants) keeps only the ends
  ``t`` with ``⌊(t − 30) / s⌋ mod k = 0`` plus the last ``s`` frames (every frame stays covered); ``k = 1`` is the
  reference. Windows run in chunks of ``inference.window_batch`` under ``lax.scan``, so memory does not grow with
  the trial length. ``lengths`` (zero-padded trials) drops windows that end beyond a trial's last valid frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sensorium_jax.models.dwiseneuro.core import DwiseCore
from sensorium_jax.models.dwiseneuro.cortex import Cortex
from sensorium_jax.models.dwiseneuro.layers import channel_dropout
from sensorium_jax.models.dwiseneuro.readout import GroupedReadouts
from sensorium_jax.models.model import MiceInfo

CONSTANT_CHANNELS = 4  # behaviour (pupil dilation, running speed) and pupil centre (x, y)


def clip_window_frames(clip_frames: int, window_frames: int, step: int) -> np.ndarray:
    """Frame indices ``(K·s, W)`` of the training windows of a clip: window ``k·s + p`` holds frames
    ``k·W·s + p + s·i``, ``i = 0 … W − 1``. Every frame appears once."""
    block = window_frames * step
    if clip_frames % block:
        raise ValueError(
            f"DwiseNeuro trains on clips of a multiple of {block} frames ({window_frames}-frame windows at step "
            f"{step}, one per phase); got {clip_frames} (config.data.clip_frames)"
        )
    k = np.arange(clip_frames // block)[:, None, None]
    phase = np.arange(step)[None, :, None]
    i = np.arange(window_frames)[None, None, :]
    return (k * block + phase + step * i).reshape(-1, window_frames)


def regular_window_ends(frames: int, window_frames: int, step: int, end_step: int) -> np.ndarray:
    """End frames of the sliding windows on a ``frames``-long trial before the tail: ``t ∈ [span − 1, frames − 1]``
    with ``⌊(t − span + 1) / s⌋ mod end_step = 0`` (every end for ``end_step = 1``)."""
    first = (window_frames - 1) * step
    ends = np.arange(first, frames)
    return ends[((ends - first) // step) % end_step == 0]


class DwiseNeuroModel(nnx.Module):
    def __init__(self, config: ml_collections.ConfigDict, mice: MiceInfo, *, rngs: nnx.Rngs):
        core_config = dict(config.core)
        core_config.pop("name", None)
        window = config.window
        self.window_frames = int(window.frames)
        self.frame_step = int(window.step)
        self.padded_size = tuple(int(s) for s in window.padded_size)
        self.pool = int(window.get("pool", 1))
        if any(size % self.pool for size in self.padded_size):
            raise ValueError(f"padded size {self.padded_size} is not divisible by the pooling factor {self.pool}")
        self.end_step = int(config.inference.end_step)
        self.window_batch = int(config.inference.window_batch)
        if not 1 <= self.end_step <= self.window_frames:
            raise ValueError(f"inference.end_step must be in [1, {self.window_frames}] to cover every frame")
        self.core = DwiseCore(constant_channels=CONSTANT_CHANNELS, **core_config, rngs=rngs)
        cortex = dict(config.cortex)
        self.cortex = Cortex(
            self.core.out_channels, **cortex, compute_dtype=core_config.get("compute_dtype", "float32"), rngs=rngs
        )
        readout = dict(config.readout)
        self.readout_dropout = float(readout.pop("dropout"))
        self.softplus_beta = float(config.softplus_beta)
        bias_init = readout.pop("bias_init", "zeros")
        if bias_init not in ("zeros", "mean_response"):
            raise ValueError(f"readout.bias_init must be 'zeros' or 'mean_response', got {bias_init!r}")
        initial_bias = None
        if bias_init == "mean_response":  # start every neuron at its mean rate: Softplus_β⁻¹(mean)
            initial_bias = [self.inverse_output(np.asarray(mean, np.float64)) for mean in mice.mean_responses]
        self.readouts = GroupedReadouts(
            mice.num_neurons, self.cortex.out_channels, **readout, initial_bias=initial_bias, rngs=rngs
        )
        self.burn_in = 0  # the sliding window predicts every frame (see the module docstring)

    @property
    def window_span(self) -> int:
        return (self.window_frames - 1) * self.frame_step + 1

    # ------------------------------------------------------------------------------------------------------------

    def pad_video(self, video: jax.Array) -> jax.Array:
        """``(…, h, w)`` → ``(…, H, W)``, zero-padded and centred (36 × 64 → 64 × 64); with ``window.pool = p > 1``
        (CPU variants only; the reference has none) then averaged over ``p × p`` pixel blocks."""
        h, w = video.shape[-2:]
        ph, pw = self.padded_size[0] - h, self.padded_size[1] - w
        if ph < 0 or pw < 0:
            raise ValueError(f"video frames {h}×{w} exceed the padded input size {self.padded_size}")
        pads = [(0, 0)] * (video.ndim - 2) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)]
        video = jnp.pad(video, pads)
        if self.pool == 1:
            return video
        p = self.pool
        hp, wp = self.padded_size[0] // p, self.padded_size[1] // p
        return video.reshape(*video.shape[:-2], hp, p, wp, p).mean(axis=(-3, -1))

    def window_features(
        self, video: jax.Array, constants: jax.Array, *, train: bool, key: jax.Array | None
    ) -> jax.Array:
        """Windows ``video (N, W, h, w)``, ``constants (N, W, 4)`` → per-frame features ``(N, W, C)`` (after the
        readout dropout in training): core → spatial average → cortex."""
        fold = lambda i: None if key is None else jax.random.fold_in(key, i)
        x = self.core(self.pad_video(video), constants, train=train, key=fold(0))
        x = x.astype(jnp.float32).mean(axis=(2, 3))
        x = self.cortex(x, train=train, key=fold(1))
        return channel_dropout(x, self.readout_dropout, fold(2) if train else None)

    def output(self, x: jax.Array) -> jax.Array:
        """``Softplus(β)``: ``log(1 + exp(β·x)) / β``."""
        return jax.nn.softplus(self.softplus_beta * x) / self.softplus_beta

    def inverse_output(self, rate: np.ndarray) -> np.ndarray:
        """The readout value whose output is ``rate`` (rates floored at 1e-3): ``log(expm1(β·rate)) / β``."""
        beta = self.softplus_beta
        return (np.log(np.expm1(beta * np.maximum(rate, 1e-3))) / beta).astype(np.float32)

    def __call__(
        self,
        videos: jax.Array,
        behavior: jax.Array,
        pupil_center: jax.Array,
        *,
        train: bool,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Training windows of every mouse's clips: ``videos (M, b, T, h, w)`` … → ``(M, b, T, N_max)``.

        ``T`` must be a multiple of ``W·s``; each frame is predicted by the one window of its phase and block
        (:func:`clip_window_frames`). ``key`` drives DropPath and the readout dropout (required when ``train``).
        """
        if train and key is None:
            raise ValueError("DwiseNeuro needs a PRNG key in training (DropPath, readout dropout)")
        m, b, t = videos.shape[:3]
        index = clip_window_frames(t, self.window_frames, self.frame_step)  # (n, W)
        n = index.shape[0]
        constants = jnp.concatenate([behavior, pupil_center], axis=-1)
        flat = lambda x: x[:, :, index].reshape(m * b * n, self.window_frames, *x.shape[3:])
        features = self.window_features(flat(videos), flat(constants), train=train, key=key if train else None)
        rates = self.output(self.readouts(features.reshape(m, b * n * self.window_frames, -1)))
        # (M, b, K, s, W, N) → frames k·W·s + s·i + p, i.e. (M, b, K, W, s, N)
        rates = rates.reshape(m, b, n // self.frame_step, self.frame_step, self.window_frames, -1)
        return jnp.swapaxes(rates, 3, 4).reshape(m, b, t, -1)

    def sliding_windows(self, frames: int, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Window ends ``(E, R + s)`` and weights (1 = used) of each trial: the regular ends and the last ``s``
        frames of the trial (weight 0 where they are regular ends already or precede the first full window)."""
        s, span = self.frame_step, self.window_span
        regular = jnp.asarray(regular_window_ends(frames, self.window_frames, s, self.end_step), jnp.int32)
        e = lengths.shape[0]
        tail = lengths[:, None] - s + jnp.arange(s, dtype=jnp.int32)[None, :]
        ends = jnp.concatenate([jnp.broadcast_to(regular, (e, regular.shape[0])), tail], axis=1)
        regular_used = regular[None, :] <= lengths[:, None] - 1
        tail_used = (tail >= span - 1) & (((tail - (span - 1)) // s) % self.end_step != 0)
        return ends, jnp.concatenate([regular_used, tail_used], axis=1).astype(jnp.float32)

    def predict_mouse(
        self,
        mouse: jax.Array,
        videos: jax.Array,
        behavior: jax.Array,
        pupil_center: jax.Array,
        lengths: jax.Array | None = None,
    ) -> jax.Array:
        """Full-length trials of one mouse (traced index): ``videos (E, T, h, w)`` → ``(E, T, N_max)``, each frame
        the mean of the window predictions that cover it (the reference's inference, see the module docstring).
        ``lengths (E,)``: valid frames of zero-padded trials; frames past them come back as 0."""
        e, t = videos.shape[:2]
        w, s = self.window_frames, self.frame_step
        if t < self.window_span:
            raise ValueError(f"trials of {t} frames are shorter than one {self.window_span}-frame window")
        lengths = jnp.full((e,), t, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
        ends, weights = self.sliding_windows(t, lengths)
        trial = jnp.broadcast_to(jnp.arange(e, dtype=jnp.int32)[:, None], ends.shape).reshape(-1)
        ends, weights = ends.reshape(-1), weights.reshape(-1)
        total = ends.shape[0]
        chunk = min(self.window_batch, total)
        padding = -total % chunk
        pad = lambda x, value: jnp.concatenate([x, jnp.full((padding,), value, x.dtype)])
        trial, ends, weights = pad(trial, 0), pad(ends, self.window_span - 1), pad(weights, 0.0)
        frame = jnp.clip(ends[:, None] - s * (w - 1 - jnp.arange(w, dtype=jnp.int32))[None, :], 0, t - 1)
        constants = jnp.concatenate([behavior, pupil_center], axis=-1)
        num_chunks = (total + padding) // chunk
        xs = (trial.reshape(num_chunks, chunk), frame.reshape(num_chunks, chunk, w), weights.reshape(num_chunks, -1))
        n_max = self.readouts.features.shape[-1]

        def accumulate(carry, chunk_windows):
            sums, counts = carry
            rows, cols, used = chunk_windows  # (c,), (c, W), (c,)
            pick = lambda x: x[rows[:, None], cols]  # (c, W, …)
            features = self.window_features(pick(videos), pick(constants), train=False, key=None)
            rates = self.output(self.readouts.one_mouse(mouse, features.reshape(-1, features.shape[-1])))
            rates = rates.reshape(chunk, w, n_max) * used[:, None, None]
            sums = sums.at[rows[:, None], cols].add(rates)
            counts = counts.at[rows[:, None], cols].add(jnp.broadcast_to(used[:, None], cols.shape))
            return (sums, counts), None

        init = (jnp.zeros((e, t, n_max), jnp.float32), jnp.zeros((e, t), jnp.float32))
        (sums, counts), _ = jax.lax.scan(accumulate, init, xs)
        return sums / jnp.maximum(counts, 1.0)[..., None]

    def regularizer(self) -> jax.Array:
        """The reference has no penalty term: zeros ``(M,)``."""
        return self.readouts.regularizer()
