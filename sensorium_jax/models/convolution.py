"""The cores' convolutions, with kernel gradients that XLA's CPU backend computes fast.

XLA differentiates a convolution with respect to its kernel by another convolution whose "kernel" is the whole
output image and whose output is the small kernel. Its CPU backend (Eigen) runs that shape an order of magnitude
slower than the forward pass: for a 5 × 5, 16 → 16 layer over 480 images of 32 × 60, forward 0.12 s but kernel
gradient 1.1 s, where PyTorch (oneDNN) needs 0.2 s. The same sum is one matrix product of the output gradient with
the input's patches (im2col), ``dK = dYᵀ · patches(X)``, whose long contraction and K·K·C-wide output XLA's GEMM
runs near peak. Built for all images at once the patch matrix is K² times the input (gigabytes at the reference
size), so it is built and consumed a cache-sized chunk of images at a time in a ``lax.scan``: 0.28 s for the layer
above. Other backends keep XLA's own gradient (``lax.platform_dependent``): cuDNN and TPU convolutions are fast.

The temporal convolution (kernel ``(t, 1, 1)``) runs as a ``(t, 1)`` 2-D convolution over one ``(time, pixel)``
image per clip (or, for its kernel gradient on large clips, one ``(time, width)`` image per clip and image row), so
it reuses the same kernel gradient.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from sensorium_jax.models.layers import zero_padded_chunks

# Chunks of the patch matrix: about this many bytes, so that it stays in cache between its construction and the
# GEMM, but at most _MAX_CHUNKS scan steps, whose fixed cost dominates for large images. Measured on the 2-core
# machine (BUILD_NOTES.md): the `factorized:cpu` core is fastest with 2 MB chunks (15 % over 8 MB); for 480 images
# of 32 × 60 × 16 a 20 MB chunk (8 images) takes 0.28 s, 2.5 MB (1 image, 480 steps) 0.41 s, one 1.2 GB matrix 0.98 s.
_PATCH_CHUNK_BYTES = 2 * 2**20
_MAX_CHUNKS = 64
# CPU forward convolutions: images per call so that their patch matrix stays below this (see _chunked_conv).
_CONV_CHUNK_PATCH_BYTES = 256 * 2**20
# Temporal kernel gradient: whole clips as patch images up to this size, one image per clip and image row above.
_WHOLE_CLIP_PATCH_BYTES = 8 * 2**20
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: str = "VALID") -> jax.Array:
    """2-D convolution, NHWC input, HWIO kernel, computed in ``x``'s dtype. ``padding``: "VALID" or "SAME" (odd
    kernels, stride 1: zero padding of ``(k − 1) / 2`` on every side, as torch's ``padding=k // 2``)."""
    kernel = kernel.astype(x.dtype)
    if padding == "SAME":
        if stride != 1:
            raise ValueError(f"SAME padding needs stride 1, got stride {stride}")
        x = pad_same(x, kernel.shape)
    elif padding != "VALID":
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}")
    return _conv2d_valid(x, kernel, stride)


def pad_same(x: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    """Zero-pad NHWC ``x`` by ``(k − 1) / 2`` on every side, so that an unpadded convolution with an odd HWIO kernel of
    ``kernel_shape`` keeps the image size."""
    kh, kw = kernel_shape[:2]
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"SAME padding needs odd kernels, got {(kh, kw)}")
    return jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))


def temporal_conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Unpadded (causal) convolution along time of a ``(B, T, H, W, C)`` tensor with a ``(t, C_in, C_out)`` kernel.

    Computed as a ``(t, 1)`` 2-D convolution over one ``(T, H·W)`` image per clip; kernel gradient as in the module
    docstring.
    """
    return _temporal_conv(x, kernel.astype(x.dtype))


def _bounded_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Inference (the undifferentiated primal): on CPU over chunks of images, whose memory Eigen bounds."""
    return jax.lax.platform_dependent(
        x, kernel, cpu=partial(_chunked_conv, stride=stride), default=partial(_lax_conv, stride=stride)
    )


def _lax_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID", dimension_numbers=_DIMENSIONS)


def _chunked_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """XLA's CPU convolution over at most ``_CONV_CHUNK_PATCH_BYTES`` of patches at a time.

    Eigen's convolution materialises the patch matrix of the whole input: a 5 × 5, 64 → 128 layer over 572 images
    of 22 × 50 (0.16 GB in, 0.24 GB out) peaked at 6.5 GB, and whole-trial inference of the reference core (8
    trials × 300 frames) needed more than the 24 GB machine has. Chunks of images bound that. Training keeps the
    unchunked convolution: there the chunks cost time (reference core, 1 clip × 80 frames: 4.3 s vs 2.6 s per
    step) and saved little (1.8 vs 1.9 GB peak).
    """
    n, h, w, _ = x.shape
    kh, kw, c, _ = kernel.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    per_image = ho * wo * kh * kw * c * x.dtype.itemsize
    chunk = max(1, _CONV_CHUNK_PATCH_BYTES // per_image)
    if chunk >= n:
        return _lax_conv(x, kernel, stride)
    y = jax.lax.map(lambda block: _lax_conv(block, kernel, stride), zero_padded_chunks(x, chunk))
    return y.reshape(-1, *y.shape[2:])[:n]


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d_valid(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    return _bounded_conv(x, kernel, stride)


def _conv2d_valid_fwd(x: jax.Array, kernel: jax.Array, stride: int) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _lax_conv(x, kernel, stride), (x, kernel)


def _conv2d_valid_bwd(
    stride: int, residuals: tuple[jax.Array, jax.Array], dy: jax.Array
) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    # The input gradient is XLA's own (a transposed convolution, as fast as the forward); XLA drops it where
    # nothing consumes it, e.g. for the video entering the first layer.
    _, input_vjp = jax.vjp(lambda value: _lax_conv(value, kernel, stride), x)
    (dx,) = input_vjp(dy)
    dk = kernel_gradient(x, dy, kernel.shape, stride)
    return dx, dk


_conv2d_valid.defvjp(_conv2d_valid_fwd, _conv2d_valid_bwd)


def kernel_gradient(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], stride: int = 1) -> jax.Array:
    """``∂/∂K Σ dy · conv2d_valid(x, K)`` for NHWC ``x`` and ``dy`` and an HWIO kernel: chunked im2col on CPU,
    XLA's own convolution gradient elsewhere."""

    def by_xla(x: jax.Array, dy: jax.Array) -> jax.Array:
        kernel = jnp.zeros(kernel_shape, x.dtype)
        _, kernel_vjp = jax.vjp(lambda k: _lax_conv(x, k, stride), kernel)
        return kernel_vjp(dy)[0]

    def by_patches(x: jax.Array, dy: jax.Array) -> jax.Array:
        return _patch_kernel_gradient(x, dy, kernel_shape, stride)

    return jax.lax.platform_dependent(x, dy, cpu=by_patches, default=by_xla)


def _patch_kernel_gradient(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], stride: int) -> jax.Array:
    kh, kw, c, o = kernel_shape
    n, ho, wo = dy.shape[:3]
    columns = kh * kw * c
    chunk = max(1, _PATCH_CHUNK_BYTES // (ho * wo * columns * x.dtype.itemsize), -(-n // _MAX_CHUNKS))
    chunk = min(n, chunk)
    # zero images add nothing to the sum
    x = zero_padded_chunks(x, chunk)
    dy = zero_padded_chunks(dy, chunk).reshape(x.shape[0], chunk * ho * wo, o)
    reach_h, reach_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1

    def accumulate(total: jax.Array, block: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        images, gradient = block
        patches = jnp.concatenate(
            [images[:, i : i + reach_h : stride, j : j + reach_w : stride, :] for i in range(kh) for j in range(kw)],
            axis=-1,
        ).reshape(-1, columns)
        # (O, rows) · (rows, K·K·C): the orientation XLA's CPU GEMM runs fastest (measured, BUILD_NOTES.md).
        return total + jnp.dot(gradient.T, patches, preferred_element_type=jnp.float32), None

    total, _ = jax.lax.scan(accumulate, jnp.zeros((o, columns), jnp.float32), (x, dy))
    return total.T.reshape(kh, kw, c, o).astype(x.dtype)


def _temporal_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    # A (t, 1) convolution over (time, pixel) images, one per clip: XLA runs it 1.5–8× faster than t shifted
    # channel GEMMs (their 16–128-wide outputs use its GEMM poorly) and its input gradient 2–4× faster.
    b, t, h, w, c = x.shape
    y = _lax_conv(x.reshape(b, t, h * w, c), kernel[:, None], 1)
    return y.reshape(b, y.shape[1], h, w, kernel.shape[-1])


@jax.custom_vjp
def _temporal_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _temporal_forward(x, kernel)


def _temporal_conv_fwd(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _temporal_forward(x, kernel), (x, kernel)


def _temporal_conv_bwd(residuals: tuple[jax.Array, jax.Array], dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda value: _temporal_forward(value, kernel), x)
    (dx,) = input_vjp(dy)
    b, t, h, w, c = x.shape
    steps, o = dy.shape[1], dy.shape[-1]
    kernel_shape = (kernel.shape[0], 1, c, o)
    if steps * h * w * kernel.shape[0] * c * x.dtype.itemsize <= _WHOLE_CLIP_PATCH_BYTES:
        # Small clips: a chunk of whole (time, pixel) images.
        dk = kernel_gradient(x.reshape(b, t, h * w, c), dy.reshape(b, steps, h * w, o), kernel_shape)
    else:
        # A clip's patches exceed the chunk: one (time, width) image per clip and image row instead (measured
        # 2× faster at the reference size).
        rows_x = jnp.swapaxes(x, 1, 2).reshape(b * h, t, w, c)
        rows_dy = jnp.swapaxes(dy, 1, 2).reshape(b * h, steps, w, o)
        dk = kernel_gradient(rows_x, rows_dy, kernel_shape)
    return dx, dk[:, 0]


_temporal_conv.defvjp(_temporal_conv_fwd, _temporal_conv_bwd)
