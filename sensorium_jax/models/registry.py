"""Which model class a config builds: ``config.model.kind`` names it (the Gaussian-readout video model by default).

Every model reads the same batches and returns the same layout (``(M, b, T − burn_in, N_max)`` rates), exposes
``predict_mouse``, ``regularizer`` and ``burn_in``, so the train step, loop, evaluation and submission code never
ask which one they hold. Adding a model is one class and one line here.
"""

from __future__ import annotations

import ml_collections
from flax import nnx

from sensorium_jax.models.dwiseneuro import DwiseNeuroModel
from sensorium_jax.models.dynamic_v1fm import DynamicV1FMModel
from sensorium_jax.models.model import MiceInfo, VideoModel
from sensorium_jax.models.static_model import StaticModel

#: ``config.model.kind`` → class. ``"gaussian"``: any core of ``models.cores.CORES`` + Gaussian readouts.
MODELS: dict[str, type[nnx.Module]] = {
    "gaussian": VideoModel,
    "static": StaticModel,
    "dwiseneuro": DwiseNeuroModel,
    "dynamic_v1fm": DynamicV1FMModel,
}


def model_kind(config: ml_collections.ConfigDict, task: str = "video") -> str:
    """The config's model kind; static-task configs without one get the static model."""
    return config.get("kind", "static" if task == "static" else "gaussian")


def build_model(config: ml_collections.ConfigDict, mice: MiceInfo, *, task: str = "video", seed: int = 0) -> nnx.Module:
    """Build ``config`` (the run config's ``model`` field) for ``mice``."""
    kind = model_kind(config, task)
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r} (config.model.kind); available: {sorted(MODELS)}")
    return MODELS[kind](config, mice, rngs=nnx.Rngs(seed))
