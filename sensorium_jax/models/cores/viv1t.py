"""``ViV1TCore``: the factorised spatial-then-temporal video transformer of ViV1T (SENSORIUM 2023, 3rd place).

Stages (reference: ``winning_models.md`` §3):

1. **Tubelet tokens.** The video and the constant behaviour / pupil-centre channels are cut into overlapping
   tubelets (``temporal_patch`` frames at stride 1, ``spatial_patch``² pixels at ``spatial_stride``), each
   flattened and passed through LayerNorm → Linear → LayerNorm → dropout ("patch dropout"); learned spatial
   ``(P, D)`` and temporal ``(T_max', D)`` positional embeddings are added. Either LayerNorm can be switched off
   (``patch_norm``, ``token_norm``): the first makes each token blind to its tubelet's contrast, which costs a
   model of contrast-driven neurons dearly (BUILD_NOTES.md, ViV1T).
2. **Spatial transformer** over the ``P`` patches of each output frame, then a **temporal transformer** over the
   ``T'`` frames of each patch; no pooling, no class token, no final norm.
3. The tokens, reshaped onto the patch grid, are the feature map ``(B, T', H', W', D)`` the Gaussian readouts
   sample. Token ``t`` covers input frames ``t … t + temporal_patch − 1`` and is aligned with the last of them, so
   ``burn_in = temporal_patch − 1`` exactly like a causal convolution core.

Blocks are *parallel* (one LayerNorm, one bias-free projection into q, k, v and the feed-forward input; the
attention and feed-forward branches are added to the residual side by side, each through DropPath).

Two departures from a literal port, both exact:

* The tubelets are never materialised. LayerNorm over a patch followed by a Linear layer is
  ``rstd · (K_γ ∗ x − μ · ΣK_γ) + ΣK_β + b`` with ``K_γ = K ⊙ γ``: a strided 3-D correlation plus per-patch
  mean and mean square. With the reference's 6125-long patches materialising them costs 1.2 GB per 140-frame clip
  in float32; this way the tokenizer needs a few MB. The constant channels are equal over the image, so their
  part of the correlation is a temporal filter of the constants with the spatially summed kernel.
* The temporal attention accepts the number of valid frames per clip: the reference's temporal attention is
  bidirectional, so zero-padded frames at the end of a short trial would otherwise change the valid outputs.

``causal=True`` (not the reference) makes the temporal attention causal; then a prefix of a trial gives exactly
the outputs of the whole trial on the frames they share. Matmuls and attention run in ``compute_dtype``; the
residual stream, LayerNorm statistics, the tokenizer and the output are float32 (as under torch autocast).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sensorium_jax.models.layers import torch_linear_init, window_centres

AttentionImplementation = Literal["auto", "xla", "cudnn"] | None
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default
# Temporal taps of the tubelet projection per matmul: 1 makes thin GEMMs (K = ps²), all of them materialises
# pt·ps² values per token; 5 was fastest on CPU for both the paper's (25-frame) and the demo's tubelets.
TAPS_PER_MATMUL = 5


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float = LAYER_NORM_EPS) -> jax.Array:
    """LayerNorm over the last axis with float32 statistics; returns float32."""
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def keep_masks(key: jax.Array | None, specs: Sequence[tuple[tuple[int, ...], float]]) -> list[jax.Array | None]:
    """Bernoulli keep-masks for several dropout sites from *one* draw of random bits.

    ``specs``: ``(shape, rate)`` per site; sites with rate 0 (or no key) get None. One draw per block instead of
    one per site: every draw is expanded into a few hundred integer ops by XLA on CPU, which costs compile time.
    """
    active = [i for i, (_, rate) in enumerate(specs) if rate > 0.0]
    masks: list[jax.Array | None] = [None] * len(specs)
    if key is None or not active:
        return masks
    sizes = [math.prod(specs[i][0]) for i in active]
    # 16-bit draws: half the memory of 32-bit ones (a paper-size block's masks cover 60 clips × 50k tokens ×
    # 664 features), rates resolved to 1/65536.
    bits = jax.random.bits(key, (sum(sizes),), jnp.uint16)
    offset = 0
    for i, size in zip(active, sizes):
        shape, rate = specs[i]
        threshold = jnp.uint16(min(round((1.0 - rate) * 2**16), 2**16 - 1))
        masks[i] = (bits[offset : offset + size] < threshold).reshape(shape)
        offset += size
    return masks


def apply_dropout(x: jax.Array, keep: jax.Array | None, rate: float) -> jax.Array:
    """Inverted dropout with a precomputed keep-mask (broadcast: a per-sample mask is DropPath)."""
    if keep is None:
        return x
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def dropout_keys(key: jax.Array, count: int) -> jax.Array:
    """``count`` keys for dropout masks from the step's key, as ``unsafe_rbg`` keys.

    Threefry masks and key splits are expanded into integer arithmetic that XLA fuses into the surrounding
    computation; with one mask per dropout site the CPU compile of a small ViV1T train step took seconds longer per
    site. ``unsafe_rbg`` draws bits — and derives the ``count`` keys, in one split — with XLA's RngBitGenerator,
    one opaque op each. Its key derivation is not guaranteed statistically independent, the usual trade-off for
    dropout masks (T5X and MaxText make it too); model-level randomness (readout positions) keeps threefry.
    """
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if jax.random.key_impl(key) != "unsafe_rbg":
        data = jax.random.key_data(key).astype(jnp.uint32).reshape(-1)
        data = jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)])[:4]
        key = jax.random.wrap_key_data(data, impl="unsafe_rbg")
    return jax.random.split(key, count)


def _cudnn_supported(dtype: jnp.dtype, head_dim: int) -> bool:
    """Whether cuDNN's fused attention takes these inputs: a GPU, bf16/fp16, a head dimension that is a multiple
    of 8 and at most 128 (256 on Hopper; 128 is safe everywhere, the paper's is 48). Decided here rather than by
    catching JAX's refusal: under ``remat`` the training kernel is checked after this function has returned."""
    return (
        jax.default_backend() == "gpu"
        and dtype in (jnp.bfloat16, jnp.float16)
        and head_dim % 8 == 0
        and head_dim <= 128
    )


def cudnn_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False, kv_lengths: jax.Array | None = None
) -> jax.Array:
    """``jax.nn.dot_product_attention(implementation="cudnn")`` for any sequence length.

    JAX hands cuDNN's training kernel a (possibly empty) bias, and with a bias that kernel takes only even query
    and key lengths (jax 0.10–0.11: "Unsupported sequence length Q 435, KV 435" for the paper's 435-patch spatial
    stage). An odd sequence gets one zero token appended: as a key it is masked through the key lengths, as a query
    its output row is dropped, so values and gradients are those of the unpadded attention."""
    length, keys = q.shape[1], k.shape[1]
    pad_q, pad_k = length % 2, keys % 2
    if pad_q:
        q = jnp.pad(q, ((0, 0), (0, 1), (0, 0), (0, 0)))
    if pad_k:
        k, v = (jnp.pad(a, ((0, 0), (0, 1), (0, 0), (0, 0))) for a in (k, v))
        if kv_lengths is None:
            kv_lengths = jnp.full((k.shape[0],), keys, jnp.int32)
    out = jax.nn.dot_product_attention(
        q, k, v, implementation="cudnn", is_causal=causal, key_value_seq_lengths=kv_lengths
    )
    return out[:, :length]


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    causal: bool = False,
    kv_lengths: jax.Array | None = None,
    implementation: AttentionImplementation = "auto",
) -> jax.Array:
    """Softmax attention ``(N, L, heads, head_dim)`` → same shape, through ``jax.nn.dot_product_attention``.

    ``implementation``: ``"xla"``, ``"cudnn"`` (flash attention, :func:`cudnn_attention`; GPU, bf16/fp16 only),
    ``None`` (JAX's default, currently XLA) or ``"auto"``: cuDNN where it takes these dtypes and head sizes,
    :func:`heads_major_attention` on CPU, XLA elsewhere. ``kv_lengths (N,)`` masks keys at and beyond each
    sequence's length.
    """
    if implementation == "auto":
        if _cudnn_supported(q.dtype, q.shape[-1]):
            return cudnn_attention(q, k, v, causal=causal, kv_lengths=kv_lengths)
        if jax.default_backend() == "cpu":
            return heads_major_attention(q, k, v, causal=causal, kv_lengths=kv_lengths)
        implementation = "xla"
    if implementation == "cudnn":
        return cudnn_attention(q, k, v, causal=causal, kv_lengths=kv_lengths)
    return jax.nn.dot_product_attention(
        q, k, v, implementation=implementation, is_causal=causal, key_value_seq_lengths=kv_lengths
    )


def heads_major_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False, kv_lengths: jax.Array | None = None
) -> jax.Array:
    """The same softmax attention as two batched matmuls over ``(sequence, head)`` pairs, heads moved next to the
    batch first. XLA's CPU backend runs ``jax.nn.dot_product_attention``'s einsums, whose head axis sits inside
    the token axis, at a fraction of this speed for ViV1T's many short sequences of small heads (BUILD_NOTES.md,
    "What bounds ViV1T"). Logits and softmax in float32."""
    length, keys, head_dim = q.shape[1], k.shape[1], q.shape[-1]
    qh, kh, vh = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # (N, heads, L, head_dim)
    logits = jnp.matmul(qh, kh.swapaxes(-1, -2), preferred_element_type=jnp.float32) / math.sqrt(head_dim)
    mask = jnp.tril(jnp.ones((length, keys), bool)) if causal else None
    if kv_lengths is not None:
        valid = jnp.arange(keys)[None, None, None, :] < kv_lengths[:, None, None, None]
        mask = valid if mask is None else mask & valid
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.matmul(weights, vh).transpose(0, 2, 1, 3)


def parallel_block(
    params: dict,
    x: jax.Array,
    key: jax.Array | None,
    kv_lengths: jax.Array | None,
    *,
    num_heads: int,
    head_dim: int,
    compute_dtype: jnp.dtype,
    causal: bool,
    implementation: AttentionImplementation,
    attention_dropout: float,
    ff_dropout: float,
    drop_path_rate: float,
) -> jax.Array:
    """One parallel block on a float32 residual stream ``x (N, L, D)``; a pure function so it can be remat-ed.

    ``key``: the dropout key (attention output, feed-forward, two drop paths), or None (no dropout).
    """
    n, length, _ = x.shape
    inner = num_heads * head_dim
    ff_dim = params["ff_out"].shape[0]
    attn_keep, ff_keep, path1, path2 = keep_masks(
        key,
        [
            ((n, length, inner), attention_dropout),
            ((n, length, ff_dim), ff_dropout),
            ((n, 1, 1), drop_path_rate),  # DropPath: per sequence (one frame's patches, one patch's frames)
            ((n, 1, 1), drop_path_rate),
        ],
    )
    h = layer_norm(x, params["norm_scale"], params["norm_bias"]).astype(compute_dtype)
    fused = h @ params["fused"].astype(compute_dtype)
    q, k, v, ff = jnp.split(fused, [inner, 2 * inner, 3 * inner], axis=-1)
    heads = lambda a: a.reshape(n, length, num_heads, head_dim)
    attn = attention(heads(q), heads(k), heads(v), causal=causal, kv_lengths=kv_lengths, implementation=implementation)
    # The reference drops out the attention *output* (not the weights), before its projection.
    attn = apply_dropout(attn.reshape(n, length, inner), attn_keep, attention_dropout)
    attn = attn @ params["attn_out"].astype(compute_dtype)
    ff = apply_dropout(jax.nn.gelu(ff, approximate=False), ff_keep, ff_dropout)  # torch nn.GELU(): the erf form
    ff = ff @ params["ff_out"].astype(compute_dtype)
    attn = apply_dropout(attn.astype(jnp.float32), path1, drop_path_rate)
    ff = apply_dropout(ff.astype(jnp.float32), path2, drop_path_rate)
    return x + attn + ff


def _normal(key: jax.Array, shape: tuple[int, ...], std: float) -> jax.Array:
    return std * jax.random.normal(key, shape, jnp.float32)


class ParallelBlock(nnx.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, ff_dim: int, *, rngs: nnx.Rngs):
        inner = num_heads * head_dim
        self.norm_scale = nnx.Param(jnp.ones((dim,)))
        self.norm_bias = nnx.Param(jnp.zeros((dim,)))
        # torch trunc_normal_(std=0.02) truncates at ±2 in absolute units (±100 σ): in effect a plain normal.
        self.fused = nnx.Param(_normal(rngs.params(), (dim, 3 * inner + ff_dim), 0.02))
        self.attn_out = nnx.Param(_normal(rngs.params(), (inner, dim), 0.02))
        self.ff_out = nnx.Param(_normal(rngs.params(), (ff_dim, dim), 0.02))

    def params(self) -> dict:
        return {name: getattr(self, name)[...] for name in ("norm_scale", "norm_bias", "fused", "attn_out", "ff_out")}


def _spatial_patches(x: jax.Array, patch: int, stride: int) -> jax.Array:
    """``(N, H, W, C)`` → ``(N, H', W', C·patch·patch)``, features ordered (channel, row, column).

    One XLA op (a convolution with an identity kernel); it compiled 20× faster than 49 strided slices on CPU.
    """
    return jax.lax.conv_general_dilated_patches(
        x, (patch, patch), (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _window_sum(x: jax.Array, size: int) -> jax.Array:
    """Sum over windows of ``size`` consecutive steps along axis 1 (stride 1)."""
    steps = x.shape[1] - size + 1
    out = x[:, 0:steps]
    for k in range(1, size):
        out = out + x[:, k : k + steps]
    return out


def grid_shape(image_size: Sequence[int], patch: int, stride: int) -> tuple[int, int]:
    """Patch grid of an image (torch ``unfold``: incomplete patches at the far edges are dropped)."""
    h, w = image_size
    if h < patch or w < patch:
        raise ValueError(f"image {h}×{w} is smaller than the spatial patch {patch}")
    return (h - patch) // stride + 1, (w - patch) // stride + 1


class TubeletTokenizer(nnx.Module):
    """Overlapping tubelets → LayerNorm → Linear → LayerNorm → dropout, plus positional embeddings.

    Parameters have the shapes of the reference's (patch LayerNorm over ``pt·ps·ps·C`` values, Linear
    ``pt·ps·ps·C → D``), laid out as a ``(pt, ps, ps, C[, D])`` kernel.
    """

    def __init__(
        self,
        image_channels: int,
        constant_channels: int,
        image_size: Sequence[int],
        max_frames: int,
        dim: int,
        spatial_patch: int,
        spatial_stride: int,
        temporal_patch: int,
        patch_dropout: float,
        spatial_pos_std: float,
        temporal_pos_std: float,
        patch_norm: bool = True,
        token_norm: bool = True,
        *,
        rngs: nnx.Rngs,
    ):
        if max_frames < temporal_patch:
            raise ValueError(f"max_frames {max_frames} is shorter than the temporal patch {temporal_patch}")
        self.image_channels = image_channels
        self.constant_channels = constant_channels
        self.spatial_patch = spatial_patch
        self.spatial_stride = spatial_stride
        self.temporal_patch = temporal_patch
        self.patch_dropout = patch_dropout
        self.patch_norm = patch_norm
        self.token_norm = token_norm
        self.grid = grid_shape(image_size, spatial_patch, spatial_stride)
        self.max_tokens = max_frames - temporal_patch + 1
        channels = image_channels + constant_channels
        kernel_shape = (temporal_patch, spatial_patch, spatial_patch, channels)
        fan_in = temporal_patch * spatial_patch * spatial_patch * channels
        if patch_norm:
            self.patch_norm_scale = nnx.Param(jnp.ones(kernel_shape))
            self.patch_norm_bias = nnx.Param(jnp.zeros(kernel_shape))
        self.kernel = nnx.Param(torch_linear_init(rngs.params(), (*kernel_shape, dim), fan_in))
        self.bias = nnx.Param(torch_linear_init(rngs.params(), (dim,), fan_in))
        if token_norm:
            self.norm_scale = nnx.Param(jnp.ones((dim,)))
            self.norm_bias = nnx.Param(jnp.zeros((dim,)))
        # torch.randn in the reference (std 1); the std is configurable because positions never seen in training
        # (clips shorter than full trials) keep their initial values until weight decay shrinks them.
        self.spatial_pos = nnx.Param(_normal(rngs.params(), (self.grid[0] * self.grid[1], dim), spatial_pos_std))
        self.temporal_pos = nnx.Param(_normal(rngs.params(), (self.max_tokens, dim), temporal_pos_std))

    def __call__(self, video: jax.Array, constants: jax.Array | None, key: jax.Array | None) -> jax.Array:
        """``video (B, T, H, W, C_img)``, ``constants (B, T, K)`` → tokens ``(B, T', P, D)`` float32."""
        b, t, h, w, ci = video.shape
        pt, ps = self.temporal_patch, self.spatial_patch
        t_out = t - pt + 1
        if t_out < 1:
            raise ValueError(f"clips of {t} frames are shorter than the temporal patch {pt}")
        if t_out > self.max_tokens:
            raise ValueError(
                f"{t} frames give {t_out} temporal tokens but the temporal positional embedding has "
                f"{self.max_tokens} (max_frames {self.max_tokens + pt - 1})"
            )
        grid = ((h - ps) // self.spatial_stride + 1, (w - ps) // self.spatial_stride + 1)
        if grid != self.grid:
            raise ValueError(f"a {h}×{w} image gives a {grid} patch grid; the core was built for {self.grid}")
        kernel = self.kernel[...]
        if self.patch_norm:
            gamma, beta = self.patch_norm_scale[...], self.patch_norm_bias[...]
            k_gamma = kernel * gamma[..., None]  # LayerNorm's scale folded into the projection
            w_gamma = k_gamma.sum((0, 1, 2, 3))  # (D,): what the patch mean contributes, per unit of mean
            offset = (kernel * beta[..., None]).sum((0, 1, 2, 3)) + self.bias[...]
        else:
            k_gamma, offset = kernel, self.bias[...]

        video = video.astype(jnp.float32)
        patches = _spatial_patches(video.reshape(b * t, h, w, ci), ps, self.spatial_stride)
        patches = patches.reshape(b, t, grid[0] * grid[1], ci * ps * ps)
        # (pt, ps, ps, C, D) → (pt, C·ps·ps, D), matching the patches' (channel, row, column) order
        image_kernel = k_gamma[:, :, :, :ci].transpose(0, 3, 1, 2, 4).reshape(pt, ci * ps * ps, -1)
        # The strided 3-D correlation as a few GEMMs over B·T'·P rows, each over a group of temporal taps: no
        # 6125-wide tubelet is ever in memory.
        projection = 0.0
        for first in range(0, pt, TAPS_PER_MATMUL):
            taps = range(first, min(first + TAPS_PER_MATMUL, pt))
            window = jnp.concatenate([patches[:, dt : dt + t_out] for dt in taps], axis=-1)
            projection = projection + window @ image_kernel[first : taps[-1] + 1].reshape(-1, image_kernel.shape[-1])
        k = self.constant_channels
        if k:
            if constants is None or constants.shape[-1] != k:
                raise ValueError(
                    f"the core expects {k} constant channels, got {None if constants is None else constants.shape}"
                )
            constants = constants.astype(jnp.float32)
            windows = jnp.stack([constants[:, dt : dt + t_out] for dt in range(pt)], axis=2)  # (B, T', pt, K)
            constant_kernel = k_gamma[:, :, :, ci:].sum((1, 2))  # (pt, K, D): constant over the patch's pixels
            projection = projection + jnp.einsum("btjk,jkd->btd", windows, constant_kernel)[:, :, None]
        if self.patch_norm:
            # Σx and Σx² over each tubelet, image channels and constant channels
            sum1 = _window_sum(patches.sum(-1), pt)  # (B, T', P)
            sum2 = _window_sum(jnp.square(patches).sum(-1), pt)
            if k:
                sum1 = sum1 + ps * ps * windows.sum((2, 3))[:, :, None]
                sum2 = sum2 + ps * ps * jnp.square(windows).sum((2, 3))[:, :, None]
            count = pt * ps * ps * (ci + k)
            mean = sum1 / count
            var = jnp.maximum(sum2 / count - jnp.square(mean), 0.0)
            tokens = jax.lax.rsqrt(var + LAYER_NORM_EPS)[..., None] * (projection - mean[..., None] * w_gamma) + offset
        else:
            tokens = projection + offset
        if self.token_norm:
            tokens = layer_norm(tokens, self.norm_scale[...], self.norm_bias[...])
        (keep,) = keep_masks(key, [(tokens.shape, self.patch_dropout)])
        tokens = apply_dropout(tokens, keep, self.patch_dropout)
        return tokens + self.spatial_pos[...][None, None] + self.temporal_pos[...][:t_out][None, :, None]


class ViV1TCore(nnx.Module):
    """Defaults are the reference's (paper Table 3): D 112, 3 spatial + 5 temporal blocks, 11 heads × 48, FF 136."""

    def __init__(
        self,
        image_channels: int = 1,
        constant_channels: int = 4,
        image_size: Sequence[int] = (36, 64),
        max_frames: int = 300,
        embed_dim: int = 112,
        spatial_patch: int = 7,
        spatial_stride: int = 2,
        temporal_patch: int = 25,
        spatial_depth: int = 3,
        temporal_depth: int = 5,
        num_heads: int = 11,
        head_dim: int = 48,
        ff_dim: int = 136,
        patch_dropout: float = 0.1338,
        attention_dropout: float = 0.358,
        ff_dropout: float = 0.0592,
        drop_path: float = 0.0505,
        spatial_pos_std: float = 1.0,
        temporal_pos_std: float = 1.0,
        patch_norm: bool = True,
        token_norm: bool = True,
        causal: bool = False,
        attention_implementation: AttentionImplementation = "auto",
        compute_dtype: str = "float32",
        remat: bool = False,
        *,
        rngs: nnx.Rngs,
    ):
        if attention_implementation not in ("auto", "xla", "cudnn", None):
            raise ValueError(f"attention_implementation {attention_implementation!r}: one of auto, xla, cudnn, None")
        self.compute_dtype = jnp.dtype(compute_dtype)
        if attention_implementation == "cudnn" and self.compute_dtype not in (jnp.bfloat16, jnp.float16):
            raise ValueError("cuDNN flash attention needs compute_dtype bfloat16 or float16")
        self.image_channels = image_channels
        self.constant_channels = constant_channels
        self.tokenizer = TubeletTokenizer(
            image_channels,
            constant_channels,
            image_size,
            max_frames,
            embed_dim,
            spatial_patch,
            spatial_stride,
            temporal_patch,
            patch_dropout,
            spatial_pos_std,
            temporal_pos_std,
            patch_norm,
            token_norm,
            rngs=rngs,
        )
        self.spatial_blocks = nnx.List(
            [ParallelBlock(embed_dim, num_heads, head_dim, ff_dim, rngs=rngs) for _ in range(spatial_depth)]
        )
        self.temporal_blocks = nnx.List(
            [ParallelBlock(embed_dim, num_heads, head_dim, ff_dim, rngs=rngs) for _ in range(temporal_depth)]
        )
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attention_dropout = attention_dropout
        self.ff_dropout = ff_dropout
        self.drop_path = drop_path
        self.causal = causal
        self.attention_implementation = attention_implementation
        self.remat = remat
        self.stochastic = max(patch_dropout, attention_dropout, ff_dropout, drop_path) > 0.0
        self.out_channels = int(embed_dim)
        self.burn_in = int(temporal_patch - 1)

    def block_fn(self, causal: bool, train: bool):
        """``(params, x, key, kv_lengths) → x``: one parallel block with this core's settings (dropout only in
        training), rematerialised when ``remat``."""
        fn = functools.partial(
            parallel_block,
            num_heads=self.num_heads,
            head_dim=self.head_dim,
            compute_dtype=self.compute_dtype,
            causal=causal,
            implementation=self.attention_implementation,
            attention_dropout=self.attention_dropout if train else 0.0,
            ff_dropout=self.ff_dropout if train else 0.0,
            drop_path_rate=self.drop_path if train else 0.0,
        )
        # Rematerialise each block in the backward pass: activations of 8 blocks over B·T'·P tokens would
        # otherwise dominate memory (the reference enables gradient checkpointing on CUDA for the same reason).
        return jax.checkpoint(fn) if self.remat else fn

    def __call__(
        self,
        video: jax.Array,
        constants: jax.Array | None,
        *,
        train: bool,
        key: jax.Array | None = None,
        lengths: jax.Array | None = None,
    ) -> jax.Array:
        """``video (B, T, H, W[, C])``, ``constants (B, T, K)`` → features ``(B, T − burn_in, H', W', D)`` float32.

        ``key`` drives the dropouts (required when ``train`` and any rate is positive); ``lengths (B,)``, the
        number of valid frames of each clip, keeps zero-padded frames out of the temporal attention.
        """
        if train and self.stochastic and key is None:
            raise ValueError("ViV1TCore needs a PRNG key in training (dropout, drop path)")
        x = video[..., None] if video.ndim == 4 else video
        if self.constant_channels == 0:
            constants = None
        num_blocks = len(self.spatial_blocks) + len(self.temporal_blocks)
        keys = dropout_keys(key, 1 + num_blocks) if train and key is not None else None
        block_keys = lambda i: None if keys is None else keys[1 + i]
        tokens = self.tokenizer(x, constants, None if keys is None else keys[0])
        b, t_out, p, d = tokens.shape

        block = self.block_fn(causal=False, train=train)
        h = tokens.reshape(b * t_out, p, d)
        for i, layer in enumerate(self.spatial_blocks):
            h = block(layer.params(), h, block_keys(i), None)

        kv_lengths = None
        if lengths is not None:
            valid_tokens = jnp.clip(jnp.asarray(lengths) - self.burn_in, 1, t_out).astype(jnp.int32)
            kv_lengths = jnp.repeat(valid_tokens, p)  # one temporal sequence per (clip, patch)
        block = self.block_fn(causal=self.causal, train=train)
        h = h.reshape(b, t_out, p, d).transpose(0, 2, 1, 3).reshape(b * p, t_out, d)
        for i, layer in enumerate(self.temporal_blocks):
            h = block(layer.params(), h, block_keys(len(self.spatial_blocks) + i), kv_lengths)
        h = h.reshape(b, p, t_out, d).transpose(0, 2, 1, 3)
        return h.reshape(b, t_out, *self.tokenizer.grid, d)

    def feature_pixels(self, image_size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Pixel rows ``(H',)`` and columns ``(W',)`` on which the patch tokens of ``image_size`` frames are
        centred."""
        patch, stride = self.tokenizer.spatial_patch, self.tokenizer.spatial_stride
        return tuple(window_centres(np.arange(n, dtype=np.float64), patch, stride) for n in image_size)

    def regularizer(self) -> jax.Array:
        """No core penalty (the reference's L1 scale is 0); weight decay does the regularising."""
        return jnp.zeros((), jnp.float32)
