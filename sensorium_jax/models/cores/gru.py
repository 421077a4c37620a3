"""``GRUCore`` (registered as ``"gru"``): the SENSORIUM 2023 GRU baseline's core.

sensorium_2023 ``benchmarks_training.ipynb`` ("GRU Benchmark", ``make_video_model(core_type="2D_equivariant",
use_gru=True)``): a :class:`RotationEquivariant2dCore` on every frame (frames folded into the batch; input = the
video plus the behaviour channels, constant over the image), then a :class:`ConvGRU` over time on its feature
maps. Output ``(B, T − burn_in, H', W', gru_channels)``; 28 × 56 × 64 for the reference's 36 × 64 frames.

``burn_in`` is 0 as in the reference, whose loss counts every frame: the GRU state starts at zero and every frame
has an output. A positive ``burn_in`` drops that many first outputs (the state still sees those frames), for
training on clips while leaving the state time to build up.
"""

from __future__ import annotations

import jax
from flax import nnx

from sensorium_jax.models.cores.conv_gru import ConvGRU
from sensorium_jax.models.cores.rotation_equivariant import RotationEquivariant2dCore


class GRUCore(nnx.Module):
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
        gru_channels: int = 64,
        gru_input_kernel: int = 9,
        gru_rec_kernel: int = 9,
        gamma_rec: float = 0.0,
        burn_in: int = 0,
        compute_dtype: str = "float32",
        *,
        rngs: nnx.Rngs,
    ):
        self.frame_core = RotationEquivariant2dCore(
            image_channels=image_channels,
            constant_channels=constant_channels,
            hidden_channels=hidden_channels,
            num_rotations=num_rotations,
            layers=layers,
            input_kernel=input_kernel,
            hidden_kernel=hidden_kernel,
            upsampling=upsampling,
            input_stride=input_stride,
            bn_momentum=bn_momentum,
            gamma_input=gamma_input,
            gamma_hidden=gamma_hidden,
            final_nonlinearity=final_nonlinearity,
            compute_dtype=compute_dtype,
            rngs=rngs,
        )
        self.gru = ConvGRU(
            self.frame_core.out_channels,
            gru_channels,
            gru_input_kernel,
            gru_rec_kernel,
            gamma_rec=gamma_rec,
            compute_dtype=compute_dtype,
            rngs=rngs,
        )
        self.out_channels = int(gru_channels)
        self.burn_in = int(burn_in)

    def __call__(self, video: jax.Array, constants: jax.Array | None, *, train: bool) -> jax.Array:
        """``video (B, T, H, W[, C])``, ``constants (B, T, K)`` → ``(B, T − burn_in, H', W', gru_channels)``."""
        b, t = video.shape[:2]
        frames = video.reshape(b * t, *video.shape[2:])
        flat_constants = None if constants is None else constants.reshape(b * t, constants.shape[-1])
        features = self.frame_core(frames, flat_constants, train=train)
        states = self.gru(features.reshape(b, t, *features.shape[1:]))
        return states[:, self.burn_in :]

    def regularizer(self) -> jax.Array:
        return self.frame_core.regularizer() + self.gru.regularizer()
