"""``FullGaussian2d`` readouts for all mice at once (neuralpredictors ``FullGaussian2d``, gauss_type ``full``).

Each neuron reads the core's feature map at one point of the image: a 2-D Gaussian position, mean ``μ`` predicted
from the neuron's cortical (x, y) position by a small per-mouse MLP (Linear 2→30 → ELU → Linear 30→2 → tanh),
full 2×2 covariance factor ``Σ``. In training one position is sampled per frame, ``clip(μ + Σ·z, −1, 1)``; in
evaluation the mean is used. The pupil-centre shift is added afterwards, the map is sampled bilinearly with
``align_corners=True`` and zero padding (``torch.nn.functional.grid_sample``), and the response is the feature
vector dotted with the neuron's weights plus a bias.

Mice have different neuron counts: every parameter carries a leading mouse axis and a padded neuron axis
(``N_max``), a constant mask marks the real neurons, and one per-mouse function is ``jax.vmap``-ed over mice.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sensorium_jax.models.layers import Constant, torch_linear_init, zero_padded_chunks


def normalise_positions(coordinates: np.ndarray) -> np.ndarray:
    """Cortical (x, y) centred and divided by the largest |value| (sensorium_2023 ``prepare_grid``)."""
    xy = np.asarray(coordinates, np.float64)[:, :2]
    xy = xy - xy.mean(axis=0, keepdims=True)
    scale = np.abs(xy).max()
    return (xy / (scale if scale > 0 else 1.0)).astype(np.float32)


def pixels_to_grid(pixels: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Image positions ``(N, 2)`` (x, y pixels) → readout grid units ``(N, 2)`` in [−1, 1] on a feature map whose
    cells are centred on pixel rows ``rows (H',)`` and columns ``cols (W',)`` (``align_corners=True``: −1 and 1 are
    the first and last cells' centres). Positions beyond the map are clipped to its edge."""
    pixels = np.asarray(pixels, np.float64)

    def axis(values: np.ndarray, centres: np.ndarray) -> np.ndarray:
        span = centres[-1] - centres[0]
        return np.zeros_like(values) if span == 0 else 2.0 * (values - centres[0]) / span - 1.0

    grid = np.stack([axis(pixels[:, 0], np.asarray(cols)), axis(pixels[:, 1], np.asarray(rows))], axis=1)
    return np.clip(grid, -1.0, 1.0).astype(np.float32)


def _corner_terms(grid: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The four bilinear corners of ``grid (..., 2)`` on an ``height × width`` map.

    Returns flat indices ``(..., 4)`` (clipped into the map), weights ``(..., 4)`` (zero for corners outside the
    map, as ``padding_mode="zeros"``) and the weights' derivatives with respect to ``grid[..., 0]`` and
    ``grid[..., 1]``. Corner order: (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1).
    """
    sx, sy = 0.5 * (width - 1), 0.5 * (height - 1)
    x = (grid[..., 0] + 1.0) * sx
    y = (grid[..., 1] + 1.0) * sy
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    indices, weights, d_x, d_y = [], [], [], []
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            inside = ((xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)).astype(grid.dtype)
            wx, wy = (fx if dx else 1.0 - fx), (fy if dy else 1.0 - fy)
            indices.append(
                jnp.clip(yi, 0, height - 1).astype(jnp.int32) * width + jnp.clip(xi, 0, width - 1).astype(jnp.int32)
            )
            weights.append(inside * wx * wy)
            d_x.append(inside * (1.0 if dx else -1.0) * wy * sx)
            d_y.append(inside * wx * (1.0 if dy else -1.0) * sy)
    return tuple(jnp.stack(v, axis=-1) for v in (indices, weights, d_x, d_y))


def bilinear_sample(features: jax.Array, grid: jax.Array) -> jax.Array:
    """``grid_sample(bilinear, zeros, align_corners=True)`` at N points per sample.

    ``features (H, W, C)``, ``grid (N, 2)`` with ``grid[:, 0]`` = x (width) and ``grid[:, 1]`` = y (height) in
    [−1, 1] → ``(N, C)``. Corners that fall outside the map contribute zero.
    """
    h, w, c = features.shape
    indices, weights, _, _ = _corner_terms(grid, h, w)
    flat = features.reshape(h * w, c)
    out = jnp.zeros((grid.shape[0], c), features.dtype)
    for k in range(4):  # one (N, C) gather at a time
        out = out + weights[:, k, None].astype(features.dtype) * flat[indices[:, k]]
    return out


def _gather_by_neuron(flat: jax.Array, indices: jax.Array) -> jax.Array:
    """``flat (S, P, C)``, ``indices (S, N)`` → ``(N, S, C)``: the pixel each neuron reads in each sample.

    Neuron-major, so the per-neuron dot products that consume it are plain batched matrix-vector products (a
    sample-major gather made XLA copy the whole tensor into that layout first).
    """
    return flat[jnp.arange(flat.shape[0])[None, :], indices.T]


@jax.custom_vjp
def sample_and_project(features: jax.Array, grid: jax.Array, weights: jax.Array) -> jax.Array:
    """``Σ_c grid_sample(features)[s, n, c] · weights[c, n]`` without materialising the ``(S, N, C)`` samples.

    ``features (S, H, W, C)``, ``grid (S, N, 2)`` (x, y in [−1, 1], bilinear, zero padding, align_corners=True),
    ``weights (C, N)`` → ``(S, N)`` float32. Equal to ``einsum("snc,cn->sn", vmap(bilinear_sample)(...), weights)``.
    The hand-written VJP keeps only the four per-corner dot products as residuals; automatic differentiation of
    the gather-and-sum form kept about ten ``(S, N, C)`` tensors (1.3 GB for 32 samples of 7,440 neurons × 128
    channels), which put the full-size configs out of memory.
    """
    return _sample_and_project_fwd(features, grid, weights)[0]


# Samples per chunk: one corner's gather holds (chunk, N, C) values, at most about this many bytes. Whole-trial
# inference of a reference-size mouse gathers 8 trials × 290 frames × 7,440 neurons × 128 channels (8.8 GB per
# corner) and ran out of the 24 GB machine's memory in one piece; the `:cpu` configs fit in one chunk.
_GATHER_CHUNK_BYTES = 64 * 2**20


def _samples_per_chunk(features: jax.Array, neurons: int) -> int:
    s, _, _, c = features.shape
    return max(1, min(s, _GATHER_CHUNK_BYTES // (neurons * c * features.dtype.itemsize)))


def _sample_and_project_fwd(features, grid, weights):
    s, h, w, c = features.shape
    indices, corner_weights, d_x, d_y = _corner_terms(grid.astype(jnp.float32), h, w)
    weights_t = weights.T.astype(features.dtype)
    chunk = _samples_per_chunk(features, weights.shape[1])

    def samples(_, block):
        flat, block_indices = block

        # A loop over the four corners (not a Python unroll) so that XLA keeps one (S, N, C) gather alive at a time.
        def corner(_, index):
            gathered = _gather_by_neuron(flat, index)
            return None, jnp.einsum("nsc,nc->sn", gathered, weights_t, preferred_element_type=jnp.float32)

        _, dots = jax.lax.scan(corner, None, jnp.moveaxis(block_indices, -1, 0))
        return None, jnp.moveaxis(dots, 0, -1)  # (chunk, N, 4)

    # zero-padded samples read pixel 0 with weight 0
    blocks = (zero_padded_chunks(features.reshape(s, h * w, c), chunk), zero_padded_chunks(indices, chunk))
    _, dots = jax.lax.scan(samples, None, blocks)
    dots = dots.reshape(-1, *dots.shape[2:])[:s]  # (S, N, 4)
    out = jnp.sum(corner_weights * dots, axis=-1)
    return out, (features, grid, weights, indices, corner_weights, d_x, d_y, dots)


def _sample_and_project_bwd(residuals, g):
    features, grid, weights, indices, corner_weights, d_x, d_y, dots = residuals
    s, h, w, c = features.shape
    g_grid = jnp.stack([jnp.sum(d_x * dots, -1), jnp.sum(d_y * dots, -1)], axis=-1) * g[..., None]
    share = (g[..., None] * corner_weights).astype(features.dtype)  # (S, N, 4): each corner's share of ∂out
    weights_t = weights.T.astype(features.dtype)
    chunk = _samples_per_chunk(features, weights.shape[1])

    def samples(g_weights, block):
        flat, block_indices, block_share = block

        def corner(carry, inputs):
            g_weights, g_flat = carry
            index, a = inputs  # (chunk, N) each
            # ∂weights[c, n] = Σ_s a[s, n] · flat[s, index[s, n], c]
            gathered = _gather_by_neuron(flat, index)
            g_weights += jnp.einsum("ns,nsc->nc", a.T, gathered, preferred_element_type=jnp.float32).T
            # ∂features: the corner's pixel receives a[s, n] · weights[:, n]
            g_flat = jax.vmap(lambda acc, i, a_s: acc.at[i].add(a_s[:, None] * weights_t))(g_flat, index, a)
            return (g_weights, g_flat), None

        corners = (jnp.moveaxis(block_indices, -1, 0), jnp.moveaxis(block_share, -1, 0))
        (g_weights, g_flat), _ = jax.lax.scan(corner, (g_weights, jnp.zeros_like(flat)), corners)
        return g_weights, g_flat

    blocks = (
        zero_padded_chunks(features.reshape(s, h * w, c), chunk),
        zero_padded_chunks(indices, chunk),
        zero_padded_chunks(share, chunk),
    )
    g_weights, g_flat = jax.lax.scan(samples, jnp.zeros(weights.shape, jnp.float32), blocks)
    g_flat = g_flat.reshape(-1, h, w, c)[:s]
    return g_flat, g_grid.astype(grid.dtype), g_weights.astype(weights.dtype)


sample_and_project.defvjp(_sample_and_project_fwd, _sample_and_project_bwd)


def mean_positions(params: dict) -> jax.Array:
    """Readout positions ``μ`` (N, 2) in [−1, 1]: from cortical coordinates through the grid MLP, or free."""
    if "mu" in params:
        return jnp.clip(params["mu"], -1.0, 1.0)
    hidden = jax.nn.elu(params["positions"] @ params["grid_w1"] + params["grid_b1"])
    return jnp.tanh(hidden @ params["grid_w2"] + params["grid_b2"])


def _read_one_mouse(params: dict, features: jax.Array, shift: jax.Array | None, key: jax.Array | None) -> jax.Array:
    """Responses of one mouse's neurons: ``features (S, H, W, C)``, ``shift (S, 2)`` → ``(S, N)``."""
    mu = mean_positions(params)
    samples = features.shape[0]
    if key is None:
        grid = jnp.broadcast_to(mu, (samples, *mu.shape))
    else:
        z = jax.random.normal(key, (samples, *mu.shape), mu.dtype)
        grid = jnp.clip(mu + jnp.einsum("ncd,snd->snc", params["sigma"], z), -1.0, 1.0)
    if shift is not None:
        grid = grid + shift[:, None, :]
    return sample_and_project(features, grid, params["features"]) + params["bias"]


class GaussianReadouts(nnx.Module):
    """One ``FullGaussian2d`` per mouse, stacked: parameters ``(M, ...)``, neurons padded to ``N_max``."""

    def __init__(
        self,
        coordinates: Sequence[np.ndarray],
        in_channels: int,
        init_sigma: float = 1.0,
        grid_hidden: int = 30,
        gamma_readout: float = 0.0,
        grid_mean_predictor: bool = True,
        init_mu_range: float = 0.3,
        mean_responses: Sequence[np.ndarray] | None = None,
        initial_positions: Sequence[np.ndarray] | None = None,
        *,
        rngs: nnx.Rngs,
    ):
        """``initial_positions``: per mouse ``(N_m, 2)`` starting positions (grid units) for the free positions,
        instead of U(−init_mu_range, init_mu_range)."""
        counts = [len(c) for c in coordinates]
        m, n = len(counts), max(counts)
        self.num_neurons = tuple(counts)
        self.gamma_readout = gamma_readout
        positions = np.zeros((m, n, 2), np.float32)
        mask = np.zeros((m, n), bool)
        bias = np.zeros((m, n), np.float32)
        for i, coords in enumerate(coordinates):
            positions[i, : counts[i]] = normalise_positions(coords)
            mask[i, : counts[i]] = True
            if mean_responses is not None:
                bias[i, : counts[i]] = mean_responses[i]
        self.positions = Constant(jnp.asarray(positions))
        self.neuron_mask = Constant(jnp.asarray(mask))
        if grid_mean_predictor and initial_positions is not None:
            raise ValueError("initial_positions sets free positions; the grid mean predictor has none")
        if grid_mean_predictor:
            self.grid_w1 = nnx.Param(torch_linear_init(rngs.params(), (m, 2, grid_hidden), 2))
            self.grid_b1 = nnx.Param(torch_linear_init(rngs.params(), (m, grid_hidden), 2))
            self.grid_w2 = nnx.Param(torch_linear_init(rngs.params(), (m, grid_hidden, 2), grid_hidden))
            self.grid_b2 = nnx.Param(torch_linear_init(rngs.params(), (m, 2), grid_hidden))
            self._position_params = ("grid_w1", "grid_b1", "grid_w2", "grid_b2", "positions")
        else:  # one free position per neuron, U(−init_mu_range, init_mu_range) (FullGaussian2d without predictor)
            mu = jax.random.uniform(rngs.params(), (m, n, 2), jnp.float32, -init_mu_range, init_mu_range)
            if initial_positions is not None:
                mu = np.array(mu)
                for i, start in enumerate(initial_positions):
                    if np.shape(start) != (counts[i], 2):
                        raise ValueError(f"mouse {i}: initial positions {np.shape(start)}, expected {(counts[i], 2)}")
                    mu[i, : counts[i]] = start
            self.mu = nnx.Param(jnp.asarray(mu))
            self._position_params = ("mu",)
        self.sigma = nnx.Param(jax.random.uniform(rngs.params(), (m, n, 2, 2), jnp.float32, -init_sigma, init_sigma))
        self.features = nnx.Param(jnp.full((m, in_channels, n), 1.0 / in_channels, jnp.float32))
        self.bias = nnx.Param(jnp.asarray(bias))

    def _params(self) -> dict:
        names = (*self._position_params, "sigma", "features", "bias")
        return {name: getattr(self, name)[...] for name in names}

    def mean_positions(self) -> jax.Array:
        """Every mouse's readout positions ``(M, N_max, 2)`` (without the shifter)."""
        return jax.vmap(mean_positions)(self._params())

    def __call__(self, features: jax.Array, shift: jax.Array | None, key: jax.Array | None) -> jax.Array:
        """All mice: ``features (M, S, H, W, C)``, ``shift (M, S, 2)`` → ``(M, S, N_max)`` (padding is garbage)."""
        keys = None if key is None else jax.random.split(key, features.shape[0])
        return jax.vmap(
            _read_one_mouse, in_axes=(0, 0, 0 if shift is not None else None, 0 if key is not None else None)
        )(self._params(), features, shift, keys)

    def one_mouse(self, mouse: jax.Array, features: jax.Array, shift: jax.Array | None) -> jax.Array:
        """One mouse, chosen by a traced index (no recompile per mouse), at the mean positions: ``(S, N_max)``."""
        params = jax.tree.map(lambda p: p[mouse], self._params())
        return _read_one_mouse(params, features, shift, None)

    def regularizer(self) -> jax.Array:
        """Per-mouse L1 on the feature weights (``gamma_readout · Σ|w|``), shape (M,)."""
        masked = jnp.abs(self.features[...]) * self.neuron_mask[...][:, None, :]
        return self.gamma_readout * masked.sum(axis=(1, 2))
