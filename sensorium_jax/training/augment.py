"""CutMix on video clips, on device inside the train step (DwiseNeuro ``src/mixers.py``, ``src/datasets.py``).

The reference, per training sample with probability ``p``: take the next sample of the same mouse as partner,
draw ``λ ~ Beta(α, α)`` and a box of side ``⌊side · √λ⌋`` (rounded down to even, centred at a uniform pixel,
clipped to the frame), paste the partner's box into the sample over every frame and input channel, and mix the
targets by the pasted area fraction: ``y ← (1 − a) · y + a · y_partner``, ``a = box area / (H · W)`` after
clipping. (The reference indexes its box with x on the height axis; here x runs along the width, as meant.)

Here a sample is a clip of a mouse's sub-batch ``(M, b, …)`` and its partner is the next clip of the same
sub-batch (clip ``j`` takes from clip ``(j + 1) mod b``): the sub-batch is a random draw, as the reference's
``index + 1`` sample is.

Behaviour and pupil centre: in the reference they are constant input channels, and the box covers them, so
inside the box the network sees the partner's values. Our models take them as per-frame vectors, so
``behavior="mix"`` (default) gives each clip the area-weighted mix ``(1 − a) · b + a · b_partner`` (the spatial
mean of the reference's pasted channels) and ``behavior="keep"`` keeps the clip's own.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

BEHAVIOR_MODES = ("mix", "keep")
_MIXED_KEYS = ("behavior", "pupil_center")


@dataclasses.dataclass(frozen=True)
class CutMix:
    """CutMix settings (``config.train.cutmix_prob``, ``cutmix_alpha``, ``cutmix_behavior``); DwiseNeuro: p 0.5, α 1."""

    prob: float
    alpha: float = 1.0
    behavior: str = "mix"

    def __post_init__(self):
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"CutMix probability must lie in [0, 1], got {self.prob}")
        if self.alpha <= 0:
            raise ValueError(f"CutMix alpha must be positive, got {self.alpha}")
        if self.behavior not in BEHAVIOR_MODES:
            raise ValueError(f"CutMix behaviour mode must be one of {BEHAVIOR_MODES}, got {self.behavior!r}")


@struct.dataclass
class Boxes:
    """Pasted boxes ``[y0, y1) × [x0, x1)`` in pixels, one per clip, shape ``(M, b)`` each; empty = no CutMix."""

    y0: jax.Array
    y1: jax.Array
    x0: jax.Array
    x1: jax.Array

    def area_fraction(self, height: int, width: int) -> jax.Array:
        return ((self.y1 - self.y0) * (self.x1 - self.x0)).astype(jnp.float32) / (height * width)

    def masks(self, height: int, width: int) -> jax.Array:
        """``(M, b, H, W)`` bool, True inside each clip's box."""
        ys = jnp.arange(height)[:, None]
        xs = jnp.arange(width)[None, :]
        edge = lambda v: v[..., None, None]
        return (ys >= edge(self.y0)) & (ys < edge(self.y1)) & (xs >= edge(self.x0)) & (xs < edge(self.x1))


def draw_boxes(key: jax.Array, shape: tuple[int, int], height: int, width: int, prob: float, alpha: float) -> Boxes:
    """The reference's ``rand_bbox`` for every clip, empty for clips not chosen (probability ``1 − prob``)."""
    k_use, k_lam, k_y, k_x = jax.random.split(key, 4)
    use = jax.random.bernoulli(k_use, prob, shape)
    ratio = jnp.sqrt(jax.random.beta(k_lam, alpha, alpha, shape))
    half_h = jnp.floor(height * ratio).astype(jnp.int32) // 2
    half_w = jnp.floor(width * ratio).astype(jnp.int32) // 2
    half_h, half_w = jnp.where(use, half_h, 0), jnp.where(use, half_w, 0)
    cy = jax.random.randint(k_y, shape, 0, height)
    cx = jax.random.randint(k_x, shape, 0, width)
    return Boxes(
        y0=jnp.clip(cy - half_h, 0, height),
        y1=jnp.clip(cy + half_h, 0, height),
        x0=jnp.clip(cx - half_w, 0, width),
        x1=jnp.clip(cx + half_w, 0, width),
    )


def partner(x: jax.Array) -> jax.Array:
    """The partner clip of every clip: the next one of the same mouse's sub-batch (axis 1)."""
    return jnp.roll(x, -1, axis=1)


def paste(batch: dict, boxes: Boxes, behavior: str = "mix") -> dict:
    """Paste each clip's partner box over all frames and mix targets (and behaviour) by the exact area fraction."""
    if behavior not in BEHAVIOR_MODES:
        raise ValueError(f"CutMix behaviour mode must be one of {BEHAVIOR_MODES}, got {behavior!r}")
    videos = batch["videos"]
    height, width = videos.shape[-2:]
    inside = boxes.masks(height, width)[:, :, None]  # broadcast over frames
    out = dict(batch)
    out["videos"] = jnp.where(inside, partner(videos), videos)
    fraction = boxes.area_fraction(height, width)[:, :, None, None]  # over frames and neurons / channels

    def mix(x: jax.Array) -> jax.Array:
        return ((1.0 - fraction) * x + fraction * partner(x)).astype(x.dtype)

    out["responses"] = mix(batch["responses"])
    if behavior == "mix":
        for key in _MIXED_KEYS:
            out[key] = mix(batch[key])
    return out


def cutmix(batch: dict, key: jax.Array, prob: float, alpha: float = 1.0, behavior: str = "mix") -> dict:
    """CutMix a batch ``videos (M, b, T, H, W)`` … with boxes drawn from ``key`` (see the module docstring)."""
    videos = batch["videos"]
    boxes = draw_boxes(key, videos.shape[:2], *videos.shape[-2:], prob=prob, alpha=alpha)
    return paste(batch, boxes, behavior)
