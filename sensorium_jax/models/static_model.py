"""The static-image model (SENSORIUM 2022): a shared 2-D core, the per-mouse Gaussian readouts and shifters of the
video model, and the same output nonlinearity.

A static batch is laid out like a video batch with one frame: ``images (M, b, 1, H, W)``, ``behavior (M, b, 1, 3)``,
``pupil_center (M, b, 1, 2)`` → rates ``(M, b, 1, N_max)``. The readout then sees ``S = b`` samples per mouse,
exactly as it sees ``S = b · T`` frames in the video model, so :class:`~sensorium_jax.models.readouts.GaussianReadouts`,
:class:`~sensorium_jax.models.shifter.MLPShifters`, the jitted train step, the loss and the prediction function are
all shared with the video path unchanged.
"""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from sensorium_jax.models.cores.stacked2d import Stacked2dCore
from sensorium_jax.models.model import OUTPUT_NONLINEARITIES, MiceInfo
from sensorium_jax.models.readouts import GaussianReadouts
from sensorium_jax.models.shifter import MLPShifters

#: 2-D cores for static images (the video registry ``models.cores.CORES`` holds spatio-temporal cores).
STATIC_CORES = {"stacked2d": Stacked2dCore}
STATIC_BEHAVIOR_CHANNELS = 3  # pupil dilation, its derivative, running speed


class StaticModel(nnx.Module):
    """Core + readouts (+ shifters) for static images.

    ``config.behavior_channels``: append the behaviour as constant image channels (Sensorium+; the reference's
    ``AddBehaviorAsChannels``); ``config.use_shifter``: shift the readout grid by an MLP of the pupil centre.
    """

    def __init__(self, config: ml_collections.ConfigDict, mice: MiceInfo, *, rngs: nnx.Rngs):
        core_config = dict(config.core)
        core_name = core_config.pop("name")
        if core_name not in STATIC_CORES:
            raise ValueError(f"unknown static core {core_name!r}; available: {sorted(STATIC_CORES)}")
        self.use_behavior = bool(config.behavior_channels)
        constant_channels = STATIC_BEHAVIOR_CHANNELS if self.use_behavior else 0
        self.core = STATIC_CORES[core_name](constant_channels=constant_channels, **core_config, rngs=rngs)
        self.readouts = GaussianReadouts(
            mice.coordinates,
            self.core.out_channels,
            mean_responses=mice.mean_responses,
            **dict(config.readout),
            rngs=rngs,
        )
        self.shifters = MLPShifters(len(mice.names), **dict(config.shifter), rngs=rngs) if config.use_shifter else None
        if config.output not in OUTPUT_NONLINEARITIES:
            raise ValueError(f"unknown output nonlinearity {config.output!r}; one of {sorted(OUTPUT_NONLINEARITIES)}")
        self.output = config.output
        self.burn_in = 0  # one frame in, one frame out (the video model's field, read by the shared code)

    def _features(self, images: jax.Array, behavior: jax.Array, train: bool) -> jax.Array:
        return self.core(images, behavior if self.use_behavior else None, train=train)

    def __call__(
        self,
        videos: jax.Array,
        behavior: jax.Array,
        pupil_center: jax.Array,
        *,
        train: bool,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Every mouse's sub-batch: ``videos (M, b, 1, H, W)`` (one image per sample) … → ``(M, b, 1, N_max)``.

        The argument names follow the video model, so the shared train step calls both alike. ``key`` draws the
        readout positions (training); without it the mean positions are used.
        """
        m, b, t = videos.shape[:3]
        if t != 1:
            raise ValueError(f"a static batch holds one frame per sample, got {t}")
        features = self._features(videos.reshape(m * b, *videos.shape[3:]), behavior.reshape(m * b, -1), train)
        features = features.reshape(m, b, *features.shape[1:])
        shift = self.shifters(pupil_center.reshape(m, b, -1)) if self.shifters is not None else None
        rates = OUTPUT_NONLINEARITIES[self.output](self.readouts(features, shift, key))
        return rates[:, :, None, :]

    def predict_mouse(
        self, mouse: jax.Array, videos: jax.Array, behavior: jax.Array, pupil_center: jax.Array
    ) -> jax.Array:
        """One mouse (traced index, one compile for all mice): ``videos (E, 1, H, W)`` → ``(E, 1, N_max)``."""
        e = videos.shape[0]
        features = self._features(videos.reshape(e, *videos.shape[2:]), behavior.reshape(e, -1), False)
        shift = self.shifters(pupil_center.reshape(e, -1), mouse=mouse) if self.shifters is not None else None
        rates = OUTPUT_NONLINEARITIES[self.output](self.readouts.one_mouse(mouse, features, shift))
        return rates[:, None, :]

    def regularizer(self) -> jax.Array:
        """Per-mouse penalty (M,): the core's, counted once per mouse batch as in the reference, plus the readout's."""
        return self.core.regularizer() + self.readouts.regularizer()
