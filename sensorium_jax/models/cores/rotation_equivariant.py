"""``RotationEquivariant2dCore``: neuralpredictors' rotation-equivariant 2-D core (Ecker et al. 2019), per frame.

The SENSORIUM 2023 GRU baseline runs it on every frame (frames folded into the batch): 4 layers of 8 feature
channels × 8 rotations = 64 channels, an unpadded 9 × 9 first layer and "same"-padded 7 × 7 hidden layers, batch
norm shared across rotations, ELU on every layer but the last, only the last layer read out.

**Filters.** Each learned filter is a vector of coefficients on a 2-D Hermite basis (``k(k+1)/2`` functions for a
``k × k`` filter), sampled at ``upsampling`` × the filter resolution and summed back over ``upsampling²`` blocks.
A Hermite function of angular order ``m`` rotates by mixing its (real, imaginary) pair with ``cos mθ, sin mθ``,
so the filter rotated by ``θ_r = 2π r / R`` is the same coefficients rotated — no pixel interpolation. Rotation
``r`` is counter-clockwise in array display (the ``np.rot90`` direction), as in neuralpredictors.
When ``R`` is a multiple of 4, the filters of rotations ``r + q R/4`` are built from those of ``r`` by
``jnp.rot90`` (``q`` quarter turns) instead: the same filters mathematically (tested), but bit-exact quarter-turn
copies, so the core is exactly equivariant under ``np.rot90`` of its input.

**Channels.** Output channel ``r · F + f`` is feature ``f`` at rotation ``r``. A hidden layer's filter for output
rotation ``r`` is its base filter rotated by ``θ_r`` *and* with its input rotation blocks cyclically shifted by
``r`` (input block ``b`` uses base block ``b − r``): rotating the input image by ``θ_1`` then rotates every
feature map and moves rotation block ``r`` to ``r + 1``.

**Regularisers** as the reference: ``gamma_input`` × LaplaceL2norm of the first layer's (rotated) filters and
``gamma_hidden`` × group sparsity of the hidden layers' filters (mean over (output, input) channel pairs of the
filter's L2 norm, averaged over hidden layers).

Constant input channels (behaviour) are added after a 1-channel convolution: through an unpadded first layer a
constant channel contributes its value times the sum of its filter at every output pixel.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from numpy.polynomial.polynomial import polyval

from sensorium_jax.models.convolution import conv2d
from sensorium_jax.models.layers import laplace_l2_norm

# ----------------------------------------------------------------------------------------- Hermite basis (numpy)


def _radial_coefficients(mu: int, nu: int) -> np.ndarray:
    """Polynomial coefficients (in r²) of the 2-D Hermite function of angular order ``mu`` and radial order ``nu``."""
    g = math.gamma
    return np.array(
        [
            g(mu + nu + 1) * g(nu + 1) * (-2.0) ** (nu - j) / (g(mu + 1 + j) * g(1 + j) * g(nu + 1 - j))
            for j in range(nu + 1)
        ]
    )


@functools.cache
def hermite_basis(rank: int, points: int) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """The ``rank (rank + 1) / 2`` 2-D Hermite functions of ranks ``0 … rank − 1`` on a ``points × points`` grid.

    Returns ``(basis (n, points, points), kinds, orders)``: ``kinds[i]`` is ``"z"`` (rotation invariant, order 0)
    or ``"r"``/``"i"`` (real/imaginary part of an order-``orders[i]`` pair, always adjacent). Extent
    ``±2√rank · (1 − 1/points)`` and unit-norm functions, as neuralpredictors' ``hermite_2d``.
    """
    extent = 2.0 * math.sqrt(rank) * (1.0 - 1.0 / points)
    x = np.linspace(-extent, extent, points)[:, None]
    envelope = np.exp(-(x**2) / 4.0) @ np.exp(-(x**2) / 4.0).T
    theta = np.arctan2(x, x.T)
    r2 = x**2 + x.T**2
    orders, radial, kinds = [], [], []
    for r in range(rank):
        m = np.sort(np.abs(np.arange(-r, r + 0.1, 2))).astype(int)
        orders += list(m)
        radial += [(r - mi) // 2 for mi in m]
        kinds += (["z"] if r % 2 == 0 else []) + ["r", "i"] * ((r + 1) // 2)
    functions = []
    for m, n, kind in zip(orders, radial, kinds, strict=True):
        value = envelope * r2 ** (m / 2) * polyval(r2, _radial_coefficients(m, n)) * np.exp(1j * m * theta)
        value = value / math.sqrt(2 ** (m + 2 * n) * math.pi * math.factorial(m + n) * math.factorial(n))
        functions.append({"z": value.real / math.sqrt(2.0), "r": value.real, "i": value.imag}[kind])
    basis = np.stack(functions)
    basis = basis / np.sqrt(np.sum(basis**2, axis=(1, 2), keepdims=True))
    return basis, tuple(kinds), np.asarray(orders)


def coefficient_rotation(kinds: tuple[str, ...], orders: np.ndarray, angle: float) -> np.ndarray:
    """``(n, n)`` matrix rotating Hermite coefficients by ``angle`` (neuralpredictors ``rotation_matrix``)."""
    rotation = np.zeros((len(kinds), len(kinds)))
    for i, (kind, m) in enumerate(zip(kinds, orders, strict=True)):
        if kind == "z":
            rotation[i, i] = 1.0
        elif kind == "r":
            c, s = math.cos(m * angle), math.sin(m * angle)
            rotation[i : i + 2, i : i + 2] = [[c, s], [-s, c]]
    return rotation


@functools.cache
def rotated_basis(filter_size: int, upsampling: int, num_rotations: int, count: int) -> np.ndarray:
    """Filter-resolution basis of the first ``count`` rotations: ``(count, n, k, k)`` float32.

    ``filter(rotation r) = Σ_j coefficient_j · basis[r, j]``; the basis is sampled at ``upsampling × k`` points and
    summed over ``upsampling × upsampling`` blocks (neuralpredictors ``downsample_weights``).
    """
    fine, kinds, orders = hermite_basis(filter_size, filter_size * upsampling)
    n, u, k = fine.shape[0], upsampling, filter_size
    coarse = fine.reshape(n, k, u, k, u).sum(axis=(2, 4))
    out = [
        np.einsum("jhw,jc->chw", coarse, coefficient_rotation(kinds, orders, 2.0 * math.pi * r / num_rotations))
        for r in range(count)
    ]
    return np.stack(out).astype(np.float32)


# ------------------------------------------------------------------------------------------------- layers


class HermiteConv2d(nnx.Module):
    """Learned Hermite coefficients ``(n, in, out)`` → the filter bank of every rotation, HWIO ``(k, k, in, R·out)``.

    ``first_layer``: the input has no rotation structure (image and constant channels), so no cyclic shift.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        filter_size: int,
        num_rotations: int,
        upsampling: int,
        first_layer: bool,
        exact_quarter_turns: bool = True,
        *,
        rngs: nnx.Rngs,
    ):
        if not first_layer and in_features % num_rotations:
            raise ValueError(f"{in_features} input channels do not split into {num_rotations} rotations")
        self.filter_size = filter_size
        self.num_rotations = num_rotations
        self.upsampling = upsampling
        self.first_layer = first_layer
        self.exact_quarter_turns = exact_quarter_turns
        n = filter_size * (filter_size + 1) // 2
        self.coeffs = nnx.Param(0.1 * jax.random.normal(rngs.params(), (n, in_features, out_features), jnp.float32))

    def _shifted(self, coeffs: jax.Array, r: int) -> jax.Array:
        """Input rotation block ``b`` of rotation ``r``'s filter is base block ``b − r`` (cyclic)."""
        if self.first_layer or r == 0:
            return coeffs
        n, i, o = coeffs.shape
        blocks = coeffs.reshape(n, self.num_rotations, i // self.num_rotations, o)
        return jnp.roll(blocks, r, axis=1).reshape(n, i, o)

    def kernel(self) -> jax.Array:
        """HWIO ``(k, k, in, R · out)``, output channels rotation-major (``r · out + f``)."""
        rotations = self.num_rotations
        quarter = rotations // 4 if self.exact_quarter_turns and rotations % 4 == 0 else rotations
        basis = jnp.asarray(rotated_basis(self.filter_size, self.upsampling, rotations, quarter))
        coeffs = self.coeffs[...]
        filters = [jnp.einsum("jhw,jio->hwio", basis[r], self._shifted(coeffs, r)) for r in range(quarter)]
        for r in range(quarter, rotations):  # r = q · R/4 + s: q quarter turns of filter s, input blocks moved q · R/4
            q, s = divmod(r, quarter)
            turned = jnp.rot90(filters[s], q, axes=(0, 1))
            if not self.first_layer:
                h, w, i, o = turned.shape
                turned = jnp.roll(turned.reshape(h, w, rotations, i // rotations, o), q * quarter, axis=2)
                turned = turned.reshape(h, w, i, o)
            filters.append(turned)
        return jnp.stack(filters, axis=3).reshape(*filters[0].shape[:3], -1)


class RotationEquivariantBatchNorm(nnx.Module):
    """Batch norm with statistics and affine parameters per feature, shared by its ``R`` rotations."""

    def __init__(self, features: int, num_rotations: int, bn_momentum: float, *, rngs: nnx.Rngs):
        self.num_rotations = num_rotations
        # torch BatchNorm momentum m updates running = (1 − m)·running + m·batch, i.e. Flax momentum 1 − m.
        self.norm = nnx.BatchNorm(features, momentum=1.0 - bn_momentum, epsilon=1e-5, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        shape = x.shape
        y = x.reshape(*shape[:-1], self.num_rotations, shape[-1] // self.num_rotations)
        y = self.norm(y.astype(jnp.float32), use_running_average=not train)
        return y.reshape(shape).astype(x.dtype)


class RotationEquivariant2dCore(nnx.Module):
    """Per-image core; ``out_channels = hidden_channels × num_rotations`` (only the last layer is read out)."""

    def __init__(
        self,
        image_channels: int = 1,
        constant_channels: int = 2,
        hidden_channels: int = 8,
        num_rotations: int = 8,
        layers: int = 4,
        input_kernel: int = 9,
        hidden_kernel: int = 7,
        upsampling: int = 2,
        input_stride: int = 1,
        bn_momentum: float = 0.9,
        gamma_input: float = 500.0,
        gamma_hidden: float = 500_000.0,
        final_nonlinearity: bool = False,
        exact_quarter_turns: bool = True,
        compute_dtype: str = "float32",
        *,
        rngs: nnx.Rngs,
    ):
        if layers < 1:
            raise ValueError(f"layers={layers} must be at least 1")
        if hidden_kernel % 2 == 0:
            raise ValueError(f"hidden_kernel={hidden_kernel} must be odd for 'same' padding")
        self.image_channels = image_channels
        self.constant_channels = constant_channels
        self.num_rotations = num_rotations
        self.input_stride = input_stride
        self.gamma_input = gamma_input
        self.gamma_hidden = gamma_hidden
        self.final_nonlinearity = final_nonlinearity
        self.compute_dtype = jnp.dtype(compute_dtype)
        f, r = hidden_channels, num_rotations
        conv = functools.partial(
            HermiteConv2d,
            num_rotations=r,
            upsampling=upsampling,
            exact_quarter_turns=exact_quarter_turns,
            rngs=rngs,
        )
        self.convs = nnx.List(
            [conv(image_channels + constant_channels, f, input_kernel, first_layer=True)]
            + [conv(f * r, f, hidden_kernel, first_layer=False) for _ in range(layers - 1)]
        )
        self.norms = nnx.List([RotationEquivariantBatchNorm(f, r, bn_momentum, rngs=rngs) for _ in range(layers)])
        self.out_channels = f * r

    def __call__(self, images: jax.Array, constants: jax.Array | None, *, train: bool) -> jax.Array:
        """``images (N, H, W[, C])``, ``constants (N, K)`` → ``(N, H', W', F·R)``, ``H' = (H − k_in) // stride + 1``."""
        x = images[..., None] if images.ndim == 3 else images
        x = x.astype(self.compute_dtype)
        c = x.shape[-1]
        kernel = self.convs[0].kernel()
        y = conv2d(x, kernel[:, :, :c], self.input_stride)
        if self.constant_channels:
            if constants is None:
                raise ValueError(f"the core was built for {self.constant_channels} constant channels; none given")
            per_channel = kernel[:, :, c:].sum((0, 1))  # (K, F·R): a constant channel's whole contribution
            y = y + (constants.astype(y.dtype) @ per_channel.astype(y.dtype))[:, None, None, :]
        last = len(self.norms) - 1
        for index, norm in enumerate(self.norms):
            if index > 0:
                y = conv2d(y, self.convs[index].kernel(), 1, "SAME")
            y = norm(y, train)
            if index < last or self.final_nonlinearity:
                y = jax.nn.elu(y)
        return y

    def laplace(self) -> jax.Array:
        """LaplaceL2norm (padding 1, summed) of the first layer's filters at every rotation and input channel."""
        return laplace_l2_norm(self.convs[0].kernel())

    def group_sparsity(self) -> jax.Array:
        """Mean L2 norm of the hidden filters per (output, input) channel pair, averaged over hidden layers."""
        hidden = self.convs[1:]
        if not len(hidden):
            return jnp.zeros(())
        total = sum(jnp.mean(jnp.sqrt(jnp.sum(conv.kernel() ** 2, axis=(0, 1)))) for conv in hidden)
        return total / len(hidden)

    def regularizer(self) -> jax.Array:
        return self.gamma_hidden * self.group_sparsity() + self.gamma_input * self.laplace()
