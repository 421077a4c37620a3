"""Dynamic-V1FM's hierarchical Gaussian readout (HGRM; ``winning_models.md`` §2), for all mice at once.

**Base level:** the ``FullGaussian2d`` of :mod:`sensorium_jax.models.readouts.gaussian` (cortex-coordinate grid MLP,
full covariance, one sampled position per sample in training, shift added, bilinear sampling, feature weights +
bias) — inherited, parameters and all.

**Extra levels** ``k ∈ levels`` (the reference: 2, 4, 8, 16). The shifted grid of the base level is downsampled
along the *neuron axis* to ``N // k`` positions (nearest, torch ``F.interpolate``: position ``j`` takes neuron
``⌊j · N / (N // k)⌋``); each level reads the map there with its own ``C × N // k`` weights, a per-level scalar MLP
(``Conv1d(1 → 16k)`` → ELU → ``Conv1d(16k → 1)``, kernel 1: the same function for every value) refines the
values, and they are upsampled back to ``N`` by nearest repetition (neuron ``i`` takes position
``⌊i · (N // k) / N⌋``, i.e. each value ``k`` times). The MLP acts value by value, so it runs before the
upsampling (``k``× cheaper, identical result). The level positions are a subset of the base positions, so the
level features are gathered from the base's samples instead of bilinearly sampled again.

**Fusion** of the base and level outputs, per neuron:

* ``"mean"``: their average;
* ``"adaptive"``: squeeze-and-excitation gates over the clip's time tokens (why the reference hard-codes 15):
  for each branch, the outputs averaged over the mouse's real neurons give a ``(time_tokens,)`` descriptor per
  clip; ``Linear → ReLU → Linear → sigmoid`` (per mouse and branch) turns it into a gate per time token, and the
  gated branches are summed. The reference documents only "SE-style sigmoid gates, then sum" and the 15 time
  tokens; the descriptor and the hidden width (``gate_hidden``) are this port's choice.

Mice have different neuron counts: level ``k`` holds ``max_m(N_m // k)`` slots per mouse, the index tables are
per-mouse constants, and padded slots are never read by a real neuron.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sensorium_jax.models.layers import Constant, torch_linear_init
from sensorium_jax.models.readouts.gaussian import GaussianReadouts, bilinear_sample, mean_positions

FUSIONS = ("mean", "adaptive")


def level_indices(num_neurons: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest down- and upsampling along the neuron axis (torch ``F.interpolate(mode="nearest")``).

    Returns ``down (N // k,)``: the neuron whose position level slot ``j`` uses, and ``up (N,)``: the level slot
    whose value neuron ``i`` receives. At least one slot, so tiny populations keep every level.
    """
    slots = max(1, num_neurons // k)
    down = np.minimum(np.floor(np.arange(slots) * (num_neurons / slots)).astype(np.int64), num_neurons - 1)
    up = np.minimum(np.floor(np.arange(num_neurons) * (slots / num_neurons)).astype(np.int64), slots - 1)
    return down, up


def _sample_grid(params: dict, samples: int, shift: jax.Array | None, key: jax.Array | None) -> jax.Array:
    """The base level's positions per sample ``(S, N, 2)``: mean or sampled (training), plus the shift — as the
    Gaussian readout's per-mouse read, which does not hand back the grid the extra levels reuse."""
    mu = mean_positions(params)
    if key is None:
        grid = jnp.broadcast_to(mu, (samples, *mu.shape))
    else:
        z = jax.random.normal(key, (samples, *mu.shape), mu.dtype)
        grid = jnp.clip(mu + jnp.einsum("ncd,snd->snc", params["sigma"], z), -1.0, 1.0)
    if shift is not None:
        grid = grid + shift[:, None, :]
    return grid


def _refine(values: jax.Array, level: dict) -> jax.Array:
    """The level's scalar MLP, value by value: ``Conv1d(1→H)`` → ELU → ``Conv1d(H→1)`` with kernel 1."""
    hidden = jax.nn.elu(values[..., None] * level["refine_w1"] + level["refine_b1"])
    return hidden @ level["refine_w2"] + level["refine_b2"]


def _gate(branches: jax.Array, mask: jax.Array, gates: dict, time_tokens: int) -> jax.Array:
    """SE fusion: ``branches (L+1, S, N)`` → ``(S, N)``; samples ``S`` are clips × ``time_tokens``."""
    n_branches, samples, n = branches.shape
    clips = branches.reshape(n_branches, samples // time_tokens, time_tokens, n)
    weights = mask / jnp.maximum(mask.sum(), 1.0)
    squeeze = jnp.einsum("lctn,n->lct", clips, weights)  # mean over the mouse's real neurons
    hidden = jax.nn.relu(jnp.einsum("lct,lth->lch", squeeze, gates["w1"]) + gates["b1"][:, None])
    gate = jax.nn.sigmoid(jnp.einsum("lch,lht->lct", hidden, gates["w2"]) + gates["b2"][:, None])
    return jnp.einsum("lct,lctn->ctn", gate, clips).reshape(samples, n)


def read_hierarchical(
    params: dict,
    levels: Sequence[dict],
    gates: dict | None,
    mask: jax.Array,
    features: jax.Array,
    shift: jax.Array | None,
    key: jax.Array | None,
    time_tokens: int,
) -> jax.Array:
    """One mouse: ``features (S, H, W, C)``, ``shift (S, 2)`` → responses before the nonlinearity ``(S, N)``."""
    grid = _sample_grid(params, features.shape[0], shift, key)
    sampled = jax.vmap(bilinear_sample)(features, grid.astype(features.dtype)).astype(jnp.float32)  # (S, N, C)
    base = jnp.einsum("snc,cn->sn", sampled, params["features"]) + params["bias"]
    branches = [base]
    for level in levels:
        values = jnp.einsum("snc,cn->sn", sampled[:, level["down"]], level["features"])  # (S, N // k)
        branches.append(_refine(values, level)[:, level["up"]])
    stacked = jnp.stack(branches)
    if gates is None:
        return stacked.mean(0)
    return _gate(stacked, mask, gates, time_tokens)


@functools.partial(jax.jit, static_argnums=range(1, 5))
def _initial_level(key: jax.Array, mice: int, in_channels: int, slots: int, hidden: int) -> dict[str, jax.Array]:
    """One level's initial parameters in one compiled program (eager draws compile one by one). Feature weights
    ``1 / C`` as the base level's; the scalar MLP with torch's default ``Conv1d`` init (fan-in 1, then ``hidden``)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "features": jnp.full((mice, in_channels, slots), 1.0 / in_channels, jnp.float32),
        "refine_w1": torch_linear_init(k1, (mice, hidden), 1),
        "refine_b1": torch_linear_init(k2, (mice, hidden), 1),
        "refine_w2": torch_linear_init(k3, (mice, hidden), hidden),
        "refine_b2": torch_linear_init(k4, (mice,), hidden),
    }


class ReadoutLevel(nnx.Module):
    """One extra level for every mouse: ``C × slots`` feature weights, the scalar MLP, the index tables."""

    def __init__(
        self, counts: Sequence[int], in_channels: int, k: int, width: int, max_neurons: int, *, rngs: nnx.Rngs
    ):
        m = len(counts)
        tables = [level_indices(n, k) for n in counts]
        slots = max(len(down) for down, _ in tables)
        down = np.zeros((m, slots), np.int32)
        up = np.zeros((m, max_neurons), np.int32)
        for i, (d, u) in enumerate(tables):
            down[i, : len(d)] = d
            up[i, : len(u)] = u
        self.k = k
        self.slots_per_mouse = tuple(len(d) for d, _ in tables)
        self.down = Constant(jnp.asarray(down))
        self.up = Constant(jnp.asarray(up))
        for name, value in _initial_level(rngs.params(), m, in_channels, slots, width * k).items():
            setattr(self, name, nnx.Param(value))

    def arrays(self) -> dict:
        names = ("down", "up", "features", "refine_w1", "refine_b1", "refine_w2", "refine_b2")
        return {name: getattr(self, name)[...] for name in names}

    def padding_parameters(self) -> int:
        """Feature weights in slots beyond a mouse's own ``N // k`` (allocated, never used)."""
        m, c, slots = self.features.shape
        return c * (m * slots - sum(self.slots_per_mouse))


class HierarchicalGaussianReadouts(GaussianReadouts):
    """Base ``FullGaussian2d`` + extra levels + fusion, stacked over mice (neurons padded to ``N_max``)."""

    def __init__(
        self,
        coordinates: Sequence[np.ndarray],
        in_channels: int,
        levels: Sequence[int] = (2, 4, 8, 16),
        fusion: str = "mean",
        refine_width: int = 16,
        time_tokens: int = 15,
        gate_hidden: int = 0,
        *,
        rngs: nnx.Rngs,
        **base,
    ):
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; one of {FUSIONS}")
        super().__init__(coordinates, in_channels, rngs=rngs, **base)
        m, n = len(self.num_neurons), max(self.num_neurons)
        self.fusion = fusion
        self.time_tokens = int(time_tokens)
        self.levels = nnx.List(
            [ReadoutLevel(self.num_neurons, in_channels, int(k), refine_width, n, rngs=rngs) for k in levels]
        )
        if fusion == "adaptive":
            branches, hidden = len(levels) + 1, gate_hidden or self.time_tokens
            t = self.time_tokens
            self.gate_w1 = nnx.Param(torch_linear_init(rngs.params(), (m, branches, t, hidden), t))
            self.gate_b1 = nnx.Param(torch_linear_init(rngs.params(), (m, branches, hidden), t))
            self.gate_w2 = nnx.Param(torch_linear_init(rngs.params(), (m, branches, hidden, t), hidden))
            self.gate_b2 = nnx.Param(torch_linear_init(rngs.params(), (m, branches, t), hidden))

    def _all(self) -> tuple[dict, list[dict], dict | None, jax.Array]:
        gates = None
        if self.fusion == "adaptive":
            gates = {name: getattr(self, f"gate_{name}")[...] for name in ("w1", "b1", "w2", "b2")}
        return self._params(), [level.arrays() for level in self.levels], gates, self.neuron_mask[...]

    def __call__(self, features: jax.Array, shift: jax.Array | None, key: jax.Array | None) -> jax.Array:
        """All mice: ``features (M, S, H, W, C)``, ``shift (M, S, 2)`` → ``(M, S, N_max)`` (padding is garbage).

        ``S`` must be a whole number of clips of ``time_tokens`` samples (adaptive fusion gates per clip).
        """
        keys = None if key is None else jax.random.split(key, features.shape[0])
        read = lambda p, lv, g, mask, f, s, k: read_hierarchical(p, lv, g, mask, f, s, k, self.time_tokens)
        return jax.vmap(read, in_axes=(0, 0, 0, 0, 0, None if shift is None else 0, None if key is None else 0))(
            *self._all(), features, shift, keys
        )

    def one_mouse(self, mouse: jax.Array, features: jax.Array, shift: jax.Array | None) -> jax.Array:
        """One mouse by a traced index, at the mean positions: ``features (S, H, W, C)`` → ``(S, N_max)``."""
        params, levels, gates, mask = jax.tree.map(lambda p: p[mouse], self._all())
        return read_hierarchical(params, levels, gates, mask, features, shift, None, self.time_tokens)

    def padding_parameters(self) -> int:
        """Level feature weights allocated beyond each mouse's own slots; the shared
        :func:`~sensorium_jax.models.model.count_parameters` leaves them out."""
        return sum(level.padding_parameters() for level in self.levels)
