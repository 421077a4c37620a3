"""``Swin3dCore``: the video Swin core of Dynamic-V1FM (SENSORIUM 2023, 2nd place; ``winning_models.md`` §2).

Stages:

1. **Tubelet embedding.** Non-overlapping ``patch_size`` tubelets (2×2×2 in the reference; the image is zero-padded
   at the far edges to a multiple of the patch) are projected to ``dim`` channels (torch ``Conv3d`` with
   kernel = stride, written as one matmul over the flattened tubelet), then LayerNorm.
2. **Blocks** (four in the reference), each, in order, with plain residuals and no LayerNorm inside:

   * behaviour MLP: the 4 per-frame values (behaviour, pupil centre) → ``dim / pt`` → ``dim / pt`` (tanh after
     each); the ``pt`` frames of a tubelet are concatenated to ``dim`` channels and added to every token of that
     time step;
   * 3-D shifted-window attention: the token grid is zero-padded to a multiple of the window, cyclically shifted
     by ``−shift``, cut into windows of ``L = wt·wh·ww`` tokens, attended within each window with a learned
     relative position bias and the shift mask (−100 between tokens that were not neighbours before the shift),
     merged and shifted back. The reference shifts in *every* block;
   * feed-forward: Linear → SwiGLU (half the width) → depthwise 3-D convolution (zero "same" padding, bias) →
     GELU → Linear.

3. The tokens ``(B, T/pt, H/ph, W/pw, dim)`` are the feature map the readouts sample; the model decides which
   frame each time token predicts (the reference: token ``i`` of a 30-frame clip → frame ``15 + i``).

Windows ride on the *head* axis of ``jax.nn.dot_product_attention``: queries are laid out ``(B, L, nW·heads, d)``
so the bias — relative position bias (heads, L, L) plus shift mask (nW, L, L) — is one ``(1, nW·heads, L, L)``
array broadcast over the batch, never tiled ``B`` times.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sensorium_jax.models.layers import torch_linear_init

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default
MASK_VALUE = -100.0  # the reference's (video Swin's) additive value between tokens of different shift regions
Triple = tuple[int, int, int]


# ------------------------------------------------------------------ window geometry (numpy, static shapes)


def effective_window(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> tuple[Triple, Triple]:
    """Video Swin's ``get_window_size``: along an axis no longer than the window, the window is the whole axis
    and there is no shift (a cyclic shift inside one window would only scramble positions)."""
    use_window, use_shift = list(window), list(shift)
    for axis, size in enumerate(grid):
        if size <= window[axis]:
            use_window[axis], use_shift[axis] = size, 0
    return tuple(use_window), tuple(use_shift)


def padded_grid(grid: Sequence[int], window: Sequence[int]) -> Triple:
    return tuple(math.ceil(g / w) * w for g, w in zip(grid, window))


def partition_windows(volume: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """``(T, H, W, ...)`` → ``(nW, L, ...)``: windows ordered (t, h, w), tokens inside a window ordered (t, h, w)
    (torch ``window_partition``). Works for numpy and jax arrays alike."""
    t, h, w = volume.shape[:3]
    wt, wh, ww = window
    rest = volume.shape[3:]
    x = volume.reshape(t // wt, wt, h // wh, wh, w // ww, ww, *rest)
    x = x.transpose(0, 2, 4, 1, 3, 5, *range(6, 6 + len(rest)))
    return x.reshape((t // wt) * (h // wh) * (w // ww), wt * wh * ww, *rest)


@functools.lru_cache(maxsize=64)
def shift_mask(grid: Triple, window: Triple, shift: Triple) -> np.ndarray:
    """Additive attention mask ``(nW, L, L)`` of the shifted windows over a ``grid`` already padded to the window.

    After the cyclic shift, a window at the far edge of an axis holds tokens from both ends of that axis. Each
    axis is cut into the regions ``[0, −w)``, ``[−w, −s)``, ``[−s, end)`` of the shifted grid (video Swin's
    ``compute_mask``); tokens may attend each other only inside one region label, else they get −100.
    """
    label = np.zeros(grid, np.int64)
    count = 0
    regions = [((0, g - w), (g - w, g - s), (g - s, g)) if s else ((0, g),) for g, w, s in zip(grid, window, shift)]
    for t0, t1 in regions[0]:
        for h0, h1 in regions[1]:
            for w0, w1 in regions[2]:
                label[t0:t1, h0:h1, w0:w1] = count
                count += 1
    windows = partition_windows(label, window)  # (nW, L)
    return np.where(windows[:, :, None] != windows[:, None, :], MASK_VALUE, 0.0).astype(np.float32)


@functools.lru_cache(maxsize=64)
def relative_position_index(window: Triple, table_window: Triple) -> np.ndarray:
    """``(L, L)`` index into the ``(2·Wt−1)(2·Wh−1)(2·Ww−1)`` bias table for every query/key pair of a window.

    ``table_window``: the window the table was built for; ``window`` may be smaller (short axes, see
    :func:`effective_window`) and then indexes the same table by true relative offsets.
    """
    coords = np.stack(np.meshgrid(*[np.arange(w) for w in window], indexing="ij")).reshape(3, -1)  # (3, L)
    relative = coords[:, :, None] - coords[:, None, :]  # (3, L_query, L_key): query − key
    _, th, tw = table_window
    offset = np.asarray(table_window)[:, None, None] - 1
    relative = relative + offset  # ≥ 0
    return relative[0] * (2 * th - 1) * (2 * tw - 1) + relative[1] * (2 * tw - 1) + relative[2]


# ------------------------------------------------------------------ the pieces, as pure functions


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * scale + bias


def tubelet_embed(video: jax.Array, kernel: jax.Array, bias: jax.Array, patch: Triple) -> jax.Array:
    """``video (B, T, H, W)`` → ``(B, T/pt, ⌈H/ph⌉, ⌈W/pw⌉, D)``; ``kernel (pt·ph·pw, D)`` flattened (t, h, w)."""
    b, t, h, w = video.shape
    pt, ph, pw = patch
    if t % pt:
        raise ValueError(f"clips of {t} frames do not split into tubelets of {pt} frames")
    video = jnp.pad(video, ((0, 0), (0, 0), (0, -h % ph), (0, -w % pw)))
    h, w = video.shape[2:]
    x = video.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw).transpose(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(b, t // pt, h // ph, w // pw, pt * ph * pw) @ kernel + bias


def behavior_tokens(behavior: jax.Array, params: dict, frames_per_token: int) -> jax.Array:
    """``behavior (B, T, K)`` → ``(B, T/pt, D)``: a per-frame MLP (tanh after both layers), frames of one tubelet
    concatenated."""
    h = jnp.tanh(behavior @ params["behavior_w1"] + params["behavior_b1"])
    h = jnp.tanh(h @ params["behavior_w2"] + params["behavior_b2"])
    b, t, d = h.shape
    return h.reshape(b, t // frames_per_token, frames_per_token * d)


def window_attention(
    x: jax.Array, params: dict, *, num_heads: int, window: Triple, shift: Triple, table_window: Triple
) -> jax.Array:
    """Shifted-window multi-head self-attention over ``x (B, T, H, W, C)`` (window/shift already effective)."""
    b, t, h, w, c = x.shape
    grid = padded_grid((t, h, w), window)
    x = jnp.pad(x, ((0, 0), (0, grid[0] - t), (0, grid[1] - h), (0, grid[2] - w), (0, 0)))
    if any(shift):
        x = jnp.roll(x, tuple(-s for s in shift), axis=(1, 2, 3))
    # (B, T, H, W, C) → (B, L, nW, C): tokens of a window on axis 1, windows on axis 2
    windows = jax.vmap(lambda v: partition_windows(v, window))(x).transpose(0, 2, 1, 3)
    n_windows, length = windows.shape[2], windows.shape[1]
    head_dim = c // num_heads
    qkv = (windows @ params["qkv_w"] + params["qkv_b"]).reshape(b, length, n_windows, 3, num_heads, head_dim)
    q, k, v = (qkv[:, :, :, i].reshape(b, length, n_windows * num_heads, head_dim) for i in range(3))

    index = relative_position_index(window, table_window)
    position_bias = params["relative_bias"][index].transpose(2, 0, 1)  # (heads, L, L)
    bias = jnp.broadcast_to(position_bias[None], (n_windows, num_heads, length, length))
    if any(shift):
        bias = bias + jnp.asarray(shift_mask(grid, window, shift))[:, None]
    bias = bias.reshape(1, n_windows * num_heads, length, length)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias.astype(q.dtype), implementation="xla")
    out = out.reshape(b, length, n_windows, c) @ params["proj_w"] + params["proj_b"]

    # back to the grid: (B, L, nW, C) → (B, T, H, W, C)
    wt, wh, ww = window
    nt, nh, nw = grid[0] // wt, grid[1] // wh, grid[2] // ww
    out = out.reshape(b, wt, wh, ww, nt, nh, nw, c).transpose(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, *grid, c)
    if any(shift):
        out = jnp.roll(out, shift, axis=(1, 2, 3))
    return out[:, :t, :h, :w]


def depthwise_conv3d_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """torch ``Conv3d(C, C, k, padding=k // 2, groups=C)`` (odd ``k``, no bias) on ``x (B, T, H, W, C)``;
    ``kernel (kt, kh, kw, C)``.

    Written as ``k³`` shifted multiply-adds, which XLA fuses into one elementwise loop; its CPU depthwise
    ``conv_general_dilated`` (``feature_group_count = C``) is several times slower, forward and backward.
    """
    kt, kh, kw = kernel.shape[:3]
    t, h, w = x.shape[1:4]
    padded = jnp.pad(x, ((0, 0), (kt // 2, kt // 2), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = None
    for dt in range(kt):
        for dy in range(kh):
            for dx in range(kw):
                term = padded[:, dt : dt + t, dy : dy + h, dx : dx + w] * kernel[dt, dy, dx]
                out = term if out is None else out + term
    return out


def feed_forward(x: jax.Array, params: dict) -> jax.Array:
    """Linear → SwiGLU → depthwise 3-D conv (+ bias) → GELU → Linear over ``x (B, T, H, W, C)``."""
    h = x @ params["fc1_w"] + params["fc1_b"]
    gate, value = jnp.split(h, 2, axis=-1)
    h = jax.nn.silu(gate) * value
    h = depthwise_conv3d_same(h, params["dw_kernel"]) + params["dw_bias"]
    h = jax.nn.gelu(h, approximate=False)  # torch nn.GELU(): the erf form
    return h @ params["fc2_w"] + params["fc2_b"]


def swin_block(
    x: jax.Array,
    behavior: jax.Array,
    params: dict,
    *,
    frames_per_token: int,
    num_heads: int,
    window: Triple,
    shift: Triple,
    table_window: Triple,
) -> jax.Array:
    """One block on ``x (B, T', H', W', C)`` with the clip's per-frame behaviour ``(B, T, K)``."""
    x = x + behavior_tokens(behavior, params, frames_per_token)[:, :, None, None, :]
    x = x + window_attention(x, params, num_heads=num_heads, window=window, shift=shift, table_window=table_window)
    return x + feed_forward(x, params)


# ------------------------------------------------------------------ modules


def _trunc_normal(key: jax.Array, shape: tuple[int, ...], std: float = 0.02) -> jax.Array:
    """timm ``trunc_normal_(std=0.02)`` as video Swin initialises Linear layers and the bias table: it truncates
    at ±2 in absolute units (±100 σ), in effect a plain normal."""
    return std * jax.random.normal(key, shape, jnp.float32)


@functools.partial(jax.jit, static_argnums=range(1, 8))
def _initial_block(
    key: jax.Array,
    dim: int,
    num_heads: int,
    window: Triple,
    mlp_hidden: int,
    behavior_channels: int,
    per_frame: int,
    conv_kernel: int,
) -> dict[str, jax.Array]:
    """A block's initial parameters in one compiled program (eagerly, every draw would compile on its own: tens of
    seconds on a loaded 2-core machine). Linear layers and the bias table as video Swin, the depthwise
    convolution with torch's default ``Conv3d`` init."""
    glu = mlp_hidden // 2
    table = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    keys = iter(jax.random.split(key, 9))
    fan_in = conv_kernel**3  # one input channel per group
    return {
        "behavior_w1": _trunc_normal(next(keys), (behavior_channels, per_frame)),
        "behavior_b1": jnp.zeros((per_frame,)),
        "behavior_w2": _trunc_normal(next(keys), (per_frame, per_frame)),
        "behavior_b2": jnp.zeros((per_frame,)),
        "qkv_w": _trunc_normal(next(keys), (dim, 3 * dim)),
        "qkv_b": jnp.zeros((3 * dim,)),
        "proj_w": _trunc_normal(next(keys), (dim, dim)),
        "proj_b": jnp.zeros((dim,)),
        "relative_bias": _trunc_normal(next(keys), (table, num_heads)),
        "fc1_w": _trunc_normal(next(keys), (dim, mlp_hidden)),
        "fc1_b": jnp.zeros((mlp_hidden,)),
        "dw_kernel": torch_linear_init(next(keys), (conv_kernel,) * 3 + (glu,), fan_in),
        "dw_bias": torch_linear_init(next(keys), (glu,), fan_in),
        "fc2_w": _trunc_normal(next(keys), (glu, dim)),
        "fc2_b": jnp.zeros((dim,)),
    }


class SwinBlock(nnx.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Triple,
        mlp_hidden: int,
        behavior_channels: int,
        frames_per_token: int,
        conv_kernel: int,
        *,
        rngs: nnx.Rngs,
    ):
        if dim % num_heads or dim % frames_per_token or mlp_hidden % 2:
            raise ValueError(
                f"dim {dim} must divide by num_heads {num_heads} and the tubelet's {frames_per_token} frames, "
                f"mlp_hidden {mlp_hidden} must be even (SwiGLU halves it)"
            )
        arrays = _initial_block(
            rngs.params(),
            dim,
            num_heads,
            tuple(window),
            mlp_hidden,
            behavior_channels,
            dim // frames_per_token,
            conv_kernel,
        )
        for name, value in arrays.items():
            setattr(self, name, nnx.Param(value))

    def params(self) -> dict:
        return {name: value[...] for name, value in vars(self).items() if isinstance(value, nnx.Param)}


class Swin3dCore(nnx.Module):
    """Defaults are the reference's: 2×2×2 tubelets → 224 channels, 4 blocks of 4 heads, window (8, 7, 7) shifted
    by (4, 3, 3), feed-forward 976 (SwiGLU → 488), 4 behaviour values per frame. 2,273,488 parameters."""

    def __init__(
        self,
        patch_size: Sequence[int] = (2, 2, 2),
        dim: int = 224,
        depth: int = 4,
        num_heads: int = 4,
        window_size: Sequence[int] = (8, 7, 7),
        shift_size: Sequence[int] = (4, 3, 3),
        mlp_hidden: int = 976,
        behavior_channels: int = 4,
        conv_kernel: int = 3,
        *,
        rngs: nnx.Rngs,
    ):
        self.patch_size: Triple = tuple(int(p) for p in patch_size)
        self.window_size: Triple = tuple(int(w) for w in window_size)
        self.shift_size: Triple = tuple(int(s) for s in shift_size)
        if any(s >= w for s, w in zip(self.shift_size, self.window_size)):
            raise ValueError(f"shift {self.shift_size} must be smaller than the window {self.window_size}")
        self.num_heads = num_heads
        self.behavior_channels = behavior_channels
        patch_volume = math.prod(self.patch_size)
        self.embed_kernel = nnx.Param(torch_linear_init(rngs.params(), (patch_volume, dim), patch_volume))
        self.embed_bias = nnx.Param(torch_linear_init(rngs.params(), (dim,), patch_volume))
        self.embed_norm_scale = nnx.Param(jnp.ones((dim,)))
        self.embed_norm_bias = nnx.Param(jnp.zeros((dim,)))
        self.blocks = nnx.List(
            [
                SwinBlock(
                    dim,
                    num_heads,
                    self.window_size,
                    mlp_hidden,
                    behavior_channels,
                    self.patch_size[0],
                    conv_kernel,
                    rngs=rngs,
                )
                for _ in range(depth)
            ]
        )
        self.out_channels = int(dim)

    def token_grid(self, frames: int, height: int, width: int) -> Triple:
        pt, ph, pw = self.patch_size
        return frames // pt, math.ceil(height / ph), math.ceil(width / pw)

    def __call__(self, video: jax.Array, behavior: jax.Array) -> jax.Array:
        """``video (B, T, H, W)``, ``behavior (B, T, K)`` (behaviour and pupil centre) → ``(B, T/pt, H', W', C)``."""
        if behavior.shape[-1] != self.behavior_channels:
            raise ValueError(
                f"the core expects {self.behavior_channels} behaviour values per frame, got {behavior.shape}"
            )
        video, behavior = video.astype(jnp.float32), behavior.astype(jnp.float32)
        x = tubelet_embed(video, self.embed_kernel[...], self.embed_bias[...], self.patch_size)
        x = layer_norm(x, self.embed_norm_scale[...], self.embed_norm_bias[...])
        window, shift = effective_window(x.shape[1:4], self.window_size, self.shift_size)
        for block in self.blocks:
            x = swin_block(
                x,
                behavior,
                block.params(),
                frames_per_token=self.patch_size[0],
                num_heads=self.num_heads,
                window=window,
                shift=shift,
                table_window=self.window_size,
            )
        return x

    def regularizer(self) -> jax.Array:
        """No core penalty in the reference (weight decay only)."""
        return jnp.zeros(())
