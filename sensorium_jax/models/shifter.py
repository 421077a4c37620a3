"""Per-mouse MLP shifter (neuralpredictors ``MLPShifter``): pupil centre → shift of the readout grid.

Linear 2→5 → tanh → Linear 5→5 → tanh → Linear 5→2 → tanh, applied per frame to the z-scored pupil centre;
parameters stacked over mice like the readouts.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sensorium_jax.models.layers import torch_linear_init


class MLPShifters(nnx.Module):
    def __init__(self, num_mice: int, hidden: Sequence[int] = (5, 5), *, rngs: nnx.Rngs):
        sizes = [2, *hidden, 2]
        self.weights = nnx.List(
            [nnx.Param(torch_linear_init(rngs.params(), (num_mice, i, o), i)) for i, o in itertools.pairwise(sizes)]
        )
        self.biases = nnx.List(
            [nnx.Param(torch_linear_init(rngs.params(), (num_mice, o), i)) for i, o in itertools.pairwise(sizes)]
        )

    def __call__(self, pupil_center: jax.Array, mouse: jax.Array | None = None) -> jax.Array:
        """``pupil_center (M, S, 2)`` → shift ``(M, S, 2)``; with a traced ``mouse`` index ``(S, 2)`` → ``(S, 2)``."""
        x = pupil_center
        for w, b in zip(self.weights, self.biases):
            w, b = w[...], b[...]
            if mouse is not None:
                x = jnp.tanh(x @ w[mouse] + b[mouse])
            else:
                x = jnp.tanh(jnp.einsum("msi,mio->mso", x, w) + b[:, None, :])
        return x
