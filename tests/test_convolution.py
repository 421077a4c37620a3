"""The cores' convolutions: values and gradients equal plain ``lax.conv`` + autodiff, on every code path of the
chunked-patch kernel gradient (several chunks, a padded last chunk, strides, SAME padding, both temporal layouts)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sensorium_jax.models import convolution


def reference_conv(x, kernel, stride=1, padding="VALID"):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def reference_temporal(x, kernel):
    """The definition: output frame s is Σ_k x[s + k] · kernel[k]."""
    steps = x.shape[1] - kernel.shape[0] + 1
    return sum(jnp.einsum("bthwc,cd->bthwd", x[:, k : k + steps], kernel[k]) for k in range(kernel.shape[0]))


def random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def gradients(fn, *args):
    # a nonlinear loss so that every output element carries a different cotangent
    return jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a))), argnums=tuple(range(len(args)))))(*args)


@pytest.mark.parametrize(
    "shape, kernel_shape, stride, padding",
    [
        ((7, 12, 13, 3), (5, 5, 3, 4), 1, "VALID"),
        ((9, 21, 30, 1), (9, 9, 1, 4), 2, "VALID"),
        ((5, 11, 12, 4), (3, 3, 4, 6), 1, "SAME"),
        ((3, 10, 9, 2), (5, 3, 2, 2), 1, "SAME"),
    ],
)
@pytest.mark.parametrize("chunk_bytes", [2**23, 2**12])  # one chunk / many chunks with a zero-padded last one
def test_conv2d_matches_lax_conv_and_autodiff(shape, kernel_shape, stride, padding, chunk_bytes, monkeypatch):
    # chunk_bytes bounds both the kernel gradient's patch chunks and the forward's images per call
    monkeypatch.setattr(convolution, "_PATCH_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(convolution, "_CONV_CHUNK_PATCH_BYTES", chunk_bytes)
    x, kernel = random(shape, 0), random(kernel_shape, 1)
    ours = convolution.conv2d(x, kernel, stride, padding)
    expected = reference_conv(x, kernel, stride, padding)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    got = gradients(lambda x, k: convolution.conv2d(x, k, stride, padding), x, kernel)
    want = gradients(lambda x, k: reference_conv(x, k, stride, padding), x, kernel)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5 * float(jnp.abs(w).max()))


@pytest.mark.parametrize("chunk_bytes", [2**23, 2**10])  # (time, pixel) images per clip / rows per clip and row
def test_temporal_conv_matches_definition_and_autodiff(chunk_bytes, monkeypatch):
    monkeypatch.setattr(convolution, "_PATCH_CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(convolution, "_CONV_CHUNK_PATCH_BYTES", chunk_bytes)
    x, kernel = random((3, 9, 4, 5, 3), 2), random((4, 3, 2), 3)
    out = convolution.temporal_conv_valid(x, kernel)
    chex.assert_shape(out, (3, 6, 4, 5, 2))
    np.testing.assert_allclose(out, reference_temporal(x, kernel), rtol=1e-5, atol=1e-5)
    got = gradients(convolution.temporal_conv_valid, x, kernel)
    want = gradients(reference_temporal, x, kernel)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5 * float(jnp.abs(w).max()))


def test_kernel_gradient_hand_computed():
    """One 3 × 3 image, a 2 × 2 kernel, dy = 1 at one output pixel: dK is the input patch under that pixel."""
    x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    dy = jnp.zeros((1, 2, 2, 1)).at[0, 1, 0, 0].set(1.0)
    dk = convolution.kernel_gradient(x, dy, (2, 2, 1, 1))
    np.testing.assert_array_equal(dk[..., 0, 0], [[3.0, 4.0], [6.0, 7.0]])


def test_bf16_inputs_accumulate_in_float32():
    x, kernel = random((4, 8, 8, 2), 4), random((3, 3, 2, 2), 5)
    grad = jax.grad(lambda k: jnp.sum(convolution.conv2d(x.astype(jnp.bfloat16), k).astype(jnp.float32)))(kernel)
    want = jax.grad(lambda k: jnp.sum(reference_conv(x, k)))(kernel)
    assert grad.dtype == jnp.float32
    np.testing.assert_allclose(grad, want, rtol=3e-2, atol=3e-2 * float(jnp.abs(want).max()))


def test_bad_padding_is_rejected():
    x, kernel = random((1, 5, 5, 1), 0), random((2, 2, 1, 1), 1)
    with pytest.raises(ValueError, match="odd kernels"):
        convolution.conv2d(x, kernel, padding="SAME")
    with pytest.raises(ValueError, match="'VALID' or 'SAME'"):
        convolution.conv2d(x, random((3, 3, 1, 1), 1), padding="FULL")
