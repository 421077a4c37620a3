"""Dynamic-V1FM, the SENSORIUM 2023 second-place model (``winning_models.md`` §2), as ``config.model.kind =
"dynamic_v1fm"``.

A video Swin core (:mod:`sensorium_jax.models.cores.swin3d`, behaviour fed to every block), per-mouse MLP shifters
(2→16→16→2, tanh) and hierarchical Gaussian readouts
(:mod:`sensorium_jax.models.readouts.hierarchical_gaussian`), ``elu + 1`` output.

**A fixed-window model.** The core turns a ``window_frames`` clip (30) into ``window_frames / pt`` time tokens
(15), and token ``i`` predicts frame ``burn_in + i`` with ``burn_in = window_frames − tokens`` (15): a 30-frame
clip predicts its last 15 frames. Longer inputs are cut into windows whose outputs tile the trial
(:func:`window_plan`): windows start every ``tokens`` frames, aligned so that one window's output begins at
``window_anchor`` (frame 50, the first frame the benchmark scores; the reference's windows start at 35, 50, …,
260), a window at frame 0 covers the frames before, and a last window ending at the trial's end (at each trial's
own ``lengths``, when given) covers the rest — the reference's "last 9 frames from ``videos[-30:]``". Training
clips of exactly ``window_frames`` frames are one window. Attention inside a window is bidirectional in time, so
a window that ran past a trial's valid frames would see padding: with ``lengths`` such windows are replaced by the
trial's own last window.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sensorium_jax.models.cores.swin3d import Swin3dCore
from sensorium_jax.models.model import OUTPUT_NONLINEARITIES, MiceInfo
from sensorium_jax.models.readouts.hierarchical_gaussian import HierarchicalGaussianReadouts
from sensorium_jax.models.shifter import MLPShifters


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """Which window and token give each output frame ``burn_in + j`` of a ``frames``-long input."""

    frames: int
    window: int
    burn_in: int
    starts: tuple[int, ...]  # the fixed windows
    source_window: np.ndarray  # (F,) index into ``starts``; −1: only the last (tail) window covers the frame
    source_token: np.ndarray  # (F,)
    source_end: np.ndarray  # (F,) end frame (exclusive) of the source window; frames + 1 where there is none

    @property
    def needs_tail(self) -> bool:
        return bool((self.source_window < 0).any())


@functools.lru_cache(maxsize=64)
def window_plan(frames: int, window: int, burn_in: int, anchor: int) -> WindowPlan:
    """Windows of ``window`` frames for a ``frames``-long input, each predicting its last ``window − burn_in``:
    aligned so that one window's output starts at ``anchor``, one at frame 0 for the frames before, and frames
    after the last aligned window left to the tail window (see the module docstring)."""
    if frames < window:
        raise ValueError(f"{frames} frames are shorter than the model's {window}-frame window")
    stride = window - burn_in  # = time tokens per window
    first = (anchor - burn_in) % stride
    aligned = list(range(first, frames - window + 1, stride))
    starts = aligned if first == 0 or not aligned else [0, *aligned]
    if not starts:
        starts = [0]
    f = np.arange(burn_in, frames)
    source_window = np.full(f.shape, -1, np.int64)
    source_token = np.zeros(f.shape, np.int64)
    source_end = np.full(f.shape, frames + 1, np.int64)
    # Aligned windows' outputs never overlap; the front window (at 0) only fills the frames before the first one.
    for index, start in reversed(list(enumerate(starts))):
        covered = (f - burn_in >= start) & (f - burn_in < start + stride) & (source_window < 0)
        source_window[covered], source_token[covered], source_end[covered] = (
            index,
            (f - burn_in - start)[covered],
            start + window,
        )
    return WindowPlan(frames, window, burn_in, tuple(starts), source_window, source_token, source_end)


def cut_windows(x: jax.Array, plan: WindowPlan, tail_starts: jax.Array | None) -> jax.Array:
    """``x (B, T, ...)`` → ``(B, nW, window, ...)``: the plan's windows, then each row's tail window if given."""
    clips = [x[:, s : s + plan.window] for s in plan.starts]
    if tail_starts is not None:
        clips.append(jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, plan.window, axis=0))(x, tail_starts))
    return jnp.stack(clips, axis=1)


def stitch_windows(
    out: jax.Array, plan: WindowPlan, tail_starts: jax.Array | None, lengths: jax.Array | None
) -> jax.Array:
    """Window outputs ``(B, nW[+1], tokens, N)`` → per-frame outputs ``(B, T − burn_in, N)``.

    A frame comes from its fixed window unless that window ends after the row's length (or there is none), in
    which case the row's tail window (the last array on axis 1) gives it.
    """
    if tail_starts is None and plan.starts == (0,) and plan.frames == plan.window:
        return out[:, 0]
    fixed = out[:, np.maximum(plan.source_window, 0), plan.source_token]  # (B, F, N)
    if tail_starts is None:
        return fixed
    tokens = out.shape[2]
    j = jnp.arange(plan.frames - plan.burn_in)
    tail_token = jnp.clip(j[None, :] - tail_starts[:, None], 0, tokens - 1)  # output frame j = tail token j − start
    tail = jnp.take_along_axis(out[:, -1], tail_token[..., None], axis=1)
    length = jnp.full(out.shape[:1], plan.frames) if lengths is None else lengths
    use_tail = jnp.asarray(plan.source_end)[None, :] > length[:, None]
    return jnp.where(use_tail[..., None], tail, fixed)


class DynamicV1FMModel(nnx.Module):
    def __init__(self, config: ml_collections.ConfigDict, mice: MiceInfo, *, rngs: nnx.Rngs):
        core_config = dict(config.core)
        core_config.pop("name", None)
        self.core = Swin3dCore(**core_config, rngs=rngs)
        frames_per_token = self.core.patch_size[0]
        self.window_frames = int(config.window_frames)
        if self.window_frames % frames_per_token:
            raise ValueError(f"window_frames {self.window_frames} must divide into {frames_per_token}-frame tubelets")
        self.time_tokens = self.window_frames // frames_per_token
        self.burn_in = self.window_frames - self.time_tokens
        self.window_anchor = int(config.get("window_anchor", 50))
        self.windows_per_pass = int(config.get("predict_windows_per_pass", 0))
        self.readouts = HierarchicalGaussianReadouts(
            mice.coordinates,
            self.core.out_channels,
            mean_responses=mice.mean_responses,
            time_tokens=self.time_tokens,
            **dict(config.readout),
            rngs=rngs,
        )
        self.shifters = MLPShifters(len(mice.names), **dict(config.shifter), rngs=rngs) if config.use_shifter else None
        if config.output not in OUTPUT_NONLINEARITIES:
            raise ValueError(f"unknown output nonlinearity {config.output!r}; one of {sorted(OUTPUT_NONLINEARITIES)}")
        self.output = config.output

    def _plan(self, frames: int) -> WindowPlan:
        return window_plan(frames, self.window_frames, self.burn_in, self.window_anchor)

    def _tokens(self, videos: jax.Array, behavior: jax.Array, pupil_center: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Clips ``(B, window, ...)`` → core tokens ``(B, tokens, H', W', C)`` and the shifter input of each
        token's frame ``(B, tokens, 2)``."""
        features = self.core(videos, jnp.concatenate([behavior, pupil_center], axis=-1))
        return features, pupil_center[:, self.burn_in :]

    def __call__(
        self,
        videos: jax.Array,
        behavior: jax.Array,
        pupil_center: jax.Array,
        *,
        train: bool,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Every mouse's sub-batch: ``videos (M, b, T, H, W)`` … → rates ``(M, b, T − burn_in, N_max)``.

        ``key`` draws the readout positions (training); without it the mean positions are used.
        """
        del train  # no dropout or batch statistics in this model
        m, b, t = videos.shape[:3]
        plan = self._plan(t)
        tail = jnp.full((m * b,), t - self.window_frames, jnp.int32) if plan.needs_tail else None
        clips = [cut_windows(x.reshape(m * b, *x.shape[2:]), plan, tail) for x in (videos, behavior, pupil_center)]
        n_windows = clips[0].shape[1]
        features, pupil = self._tokens(*(x.reshape(-1, *x.shape[2:]) for x in clips))
        features = features.reshape(m, -1, *features.shape[2:])  # (M, b·nW·tokens, H', W', C)
        shift = None if self.shifters is None else self.shifters(pupil.reshape(m, -1, 2))
        out = self.readouts(features, shift, key)  # (M, b·nW·tokens, N_max)
        out = stitch_windows(out.reshape(m * b, n_windows, self.time_tokens, -1), plan, tail, None)
        rates = OUTPUT_NONLINEARITIES[self.output](out)
        return rates.reshape(m, b, t - self.burn_in, -1)

    def predict_mouse(
        self,
        mouse: jax.Array,
        videos: jax.Array,
        behavior: jax.Array,
        pupil_center: jax.Array,
        lengths: jax.Array | None = None,
    ) -> jax.Array:
        """One mouse (traced index), full-length trials: ``videos (E, T, H, W)`` → ``(E, T − burn_in, N_max)``.

        ``lengths (E,)``: valid frames of each zero-padded trial; each trial's last window then ends at its own
        length, so no prediction of a valid frame sees padding (trials shorter than one window excepted).
        ``predict_windows_per_pass`` > 0 runs that many windows at a time (``lax.map``) to bound memory.
        """
        e, t = videos.shape[:2]
        plan = self._plan(t)
        tail = None
        if lengths is not None:
            tail = jnp.maximum(lengths.astype(jnp.int32) - self.window_frames, 0)
        elif plan.needs_tail:
            tail = jnp.full((e,), t - self.window_frames, jnp.int32)
        clips = [cut_windows(x, plan, tail) for x in (videos, behavior, pupil_center)]  # (E, nW, window, ...)

        def run(window_clips: list[jax.Array]) -> jax.Array:
            """``(B, window, ...)`` clips → ``(B, tokens, N_max)`` (before the nonlinearity)."""
            features, pupil = self._tokens(*window_clips)
            flat = features.reshape(-1, *features.shape[2:])
            shift = None if self.shifters is None else self.shifters(pupil.reshape(-1, 2), mouse=mouse)
            return self.readouts.one_mouse(mouse, flat, shift).reshape(features.shape[0], self.time_tokens, -1)

        n_windows = clips[0].shape[1]
        if 0 < self.windows_per_pass < n_windows:
            per_window = [jnp.moveaxis(x, 1, 0) for x in clips]  # (nW, E, window, ...)
            out = jax.lax.map(run, per_window, batch_size=self.windows_per_pass)  # (nW, E, tokens, N)
            out = jnp.moveaxis(out, 0, 1)
        else:
            out = run([x.reshape(-1, *x.shape[2:]) for x in clips]).reshape(e, n_windows, self.time_tokens, -1)
        rates = OUTPUT_NONLINEARITIES[self.output](stitch_windows(out, plan, tail, lengths))
        return rates

    def regularizer(self) -> jax.Array:
        """Per-mouse penalty (M,): the readouts' L1 (0 in the reference, which has none)."""
        return self.core.regularizer() + self.readouts.regularizer()
