"""Optional PyTorch peers of the JAX configs (``pip install .[bench]``): same mice, batch, clip length and
optimiser, one train step = forward over every mouse's clips, the same loss, backward, AdamW.

Which peer a config gets is decided by its core: ``factorized`` and ``viv1t`` get our plain PyTorch
transcriptions (:mod:`.torch_models`) read out by neuralpredictors' ``FullGaussian2d`` (our transcription of it
where neuralpredictors is missing); ``stacked2d`` (static images) gets neuralpredictors' ``Stacked2dCore`` with
its ``FullGaussian2d``; ``gru`` gets neuralpredictors' ``RotationEquivariant2dCore`` on every frame (frames folded
into the batch), our transcription of the reference's ConvGRU over time in a Python loop
(:class:`.torch_models.TorchGRUCore`, a 3-D core to the model: ``(B, C, T, H, W)`` in and out) and the same
readouts. Other cores have no peer yet and are measured in JAX alone.

The ``gru`` frame core is configured as our JAX ``RotationEquivariant2dCore`` (:func:`rotation_equivariant_core`):
the same Hermite coefficients ``(k(k+1)/2, in, out)`` per layer, rotation-shared batch norm with scale and bias
(torch momentum = our ``bn_momentum``), unpadded first layer and "same"-padded hidden layers, ELU on all layers but
the last unless ``final_nonlinearity``, only the last layer read out (``stack=-1``), LaplaceL2norm with padding 1
summed over filters (``use_avg_reg=False``) and group sparsity; so its parameter count equals ours. Two options
cannot be passed as such: 0.3.0 drops ``stride`` (``RotationEquivariant2dCore`` keeps it, then its base class
resets it to 1) and would otherwise apply it to every layer, while our ``input_stride`` strides the first layer
only; the peer sets each layer's ``hermite_conv.stride`` after construction. And its regulariser reads the
filters under a name its layers do not use, so :func:`.torch_models.rotation_equivariant_regularizer` computes
it with the release's formulas. Our JAX core builds the rotations that are quarter turns by ``rot90`` (bit-exact
equivariance) where neuralpredictors rotates every filter through its Hermite coefficients: the same filters up
to float rounding, and no parameter of either.

neuralpredictors 0.3.0 (the PyPI release) predates Python 3.10: it imports ``collections.Iterable`` and
``torchvision`` (for a transfer-learning core nobody here uses), so :func:`import_neuralpredictors` restores the
alias and, when torchvision is absent, puts an empty stand-in module in its place before importing it; its Hermite
basis (``RotationEquivariant2dCore``) takes ``math.factorial`` of numpy floats, which Python 3.10 refuses, so the
module's ``math`` becomes one whose factorial takes integral floats.
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import functools
import importlib
import importlib.util
import math
import statistics
import sys
import types
from typing import Any

import ml_collections
import numpy as np

from sensorium_jax.benchmarking import fake_inputs
from sensorium_jax.benchmarking.memory import PeakMemory
from sensorium_jax.benchmarking.timing import time_calls
from sensorium_jax.models.model import MiceInfo

# neuralpredictors core options every peer sets the same way: unpadded input layer, batch norm with its own scale
# and bias, the Laplace input regulariser without padding (our JAX cores' choices).
_NP_CORE_OPTIONS = dict(
    pad_input=False,
    batch_norm=True,
    batch_norm_scale=True,
    independent_bn_bias=True,
    laplace_padding=None,
    input_regularizer="LaplaceL2norm",
)

PEER_CORES = ("factorized", "viv1t", "stacked2d", "gru")


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


@functools.cache
def import_neuralpredictors() -> types.SimpleNamespace | None:
    """neuralpredictors' ``readouts`` and ``cores`` modules, or None when it is not installed (or fails to import)."""
    if importlib.util.find_spec("neuralpredictors") is None:
        return None
    for name in ("Iterable", "Mapping", "Sequence"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    try:
        hermite = importlib.import_module("neuralpredictors.layers.hermite")
        if hermite.math is math:  # 0.3.0 takes factorials of numpy floats, an error since Python 3.10
            hermite.math = types.SimpleNamespace(factorial=lambda n: math.factorial(int(n)))
        return types.SimpleNamespace(
            readouts=importlib.import_module("neuralpredictors.layers.readouts"),
            cores=importlib.import_module("neuralpredictors.layers.cores"),
        )
    except Exception:  # an incompatible release: fall back to our transcriptions
        return None


@dataclasses.dataclass
class TorchMeasurement:
    name: str  # what the peer is made of
    params: int
    num_mice: int
    num_neurons: int
    batch_clips: int
    clip_frames: int
    first_step_s: float
    step_times_s: list[float]
    peak_mem_bytes: int
    mem_kind: str
    threads: int

    @property
    def step_s(self) -> float:
        return statistics.median(self.step_times_s)

    @property
    def clips_per_s(self) -> float:
        return self.batch_clips / self.step_s


def has_peer(config: ml_collections.ConfigDict) -> bool:
    core = config.model.get("core")
    return core is not None and core.get("name") in PEER_CORES


def constant_channels(config: ml_collections.ConfigDict, static: bool) -> int:
    """Behaviour (and pupil-centre) channels the config's core takes besides the image."""
    model = config.model
    if static:
        return fake_inputs.STATIC_BEHAVIOR_CHANNELS if model.behavior_channels else 0
    return 2 * bool(model.behavior_channels) + 2 * bool(model.get("pupil_center_channels", False))


def build_core(config: ml_collections.ConfigDict, np_layers: types.SimpleNamespace | None):
    """(core module, whether it is 2-D, description) for the config's core."""
    from sensorium_jax.benchmarking import torch_models

    static = fake_inputs.is_static(config)
    core_config = dict(config.model.core)
    name = core_config.pop("name")
    in_channels = 1 + constant_channels(config, static)
    if name == "factorized":
        return torch_models.TorchFactorized3dCore(in_channels, **core_config), False, "Factorized3dCore (ours, torch)"
    if name == "viv1t":
        return torch_models.TorchViV1TCore(in_channels, **core_config), False, "ViV1T core (ours, torch)"
    if name == "stacked2d":
        if np_layers is None:
            raise RuntimeError("the stacked2d peer is neuralpredictors' Stacked2dCore; neuralpredictors is missing")
        core = np_layers.cores.Stacked2dCore(
            input_channels=in_channels,
            hidden_channels=core_config["hidden_channels"],
            input_kern=core_config["input_kernel"],
            hidden_kern=core_config["hidden_kernel"],
            layers=core_config["layers"],
            gamma_input=core_config["gamma_input"],
            stride=core_config.get("input_stride", 1),
            final_nonlinearity=core_config.get("final_nonlinearity", True),
            bias=core_config.get("bias", False),
            momentum=core_config["bn_momentum"],
            **_NP_CORE_OPTIONS,
            stack=core_config.get("stack", -1),
            depth_separable=True,
        )
        return core, True, "neuralpredictors Stacked2dCore"
    if name == "gru":
        if np_layers is None:
            raise RuntimeError(
                "the gru peer's frame core is neuralpredictors' RotationEquivariant2dCore; not installed"
            )
        frame_core = rotation_equivariant_core(np_layers, in_channels, core_config)
        core = torch_models.TorchGRUCore(
            frame_core,
            core_config["hidden_channels"] * core_config["num_rotations"],
            core_config["gru_channels"],
            core_config["gru_input_kernel"],
            core_config["gru_rec_kernel"],
            gamma_rec=core_config.get("gamma_rec", 0.0),
            burn_in=core_config.get("burn_in", 0),
        )
        return core, False, "neuralpredictors RotationEquivariant2dCore per frame + ConvGRU (ours, torch)"
    raise KeyError(f"no PyTorch peer for core {name!r}; peers exist for {PEER_CORES}")


def rotation_equivariant_core(np_layers: types.SimpleNamespace, in_channels: int, core_config: dict):
    """neuralpredictors' ``RotationEquivariant2dCore`` with our JAX core's options (the module docstring maps
    them); ``in_channels`` = image + constant channels, broadcast over the image as the reference feeds them."""
    if core_config.get("compute_dtype", "float32") != "float32":
        raise ValueError("the gru peer computes in float32 only")
    input_stride = core_config.get("input_stride", 1)
    core = np_layers.cores.RotationEquivariant2dCore(
        input_channels=in_channels,
        hidden_channels=core_config["hidden_channels"],
        input_kern=core_config["input_kernel"],
        hidden_kern=core_config["hidden_kernel"],
        layers=core_config["layers"],
        num_rotations=core_config["num_rotations"],
        upsampling=core_config.get("upsampling", 2),
        stride=input_stride,
        gamma_input=core_config["gamma_input"],
        gamma_hidden=core_config["gamma_hidden"],
        final_nonlinearity=core_config.get("final_nonlinearity", False),
        momentum=core_config["bn_momentum"],
        rot_eq_batch_norm=True,
        **_NP_CORE_OPTIONS,
        use_avg_reg=False,
        stack=-1,
    )
    for index, layer in enumerate(core.features):  # the stride on the input layer only, as ours
        layer.hermite_conv.stride = input_stride if index == 0 else 1
    return core


def _feature_shape(core, core_is_2d: bool, in_channels: int, frames: int) -> tuple[int, int, int]:
    """(C, H', W') of the core's output, from one small forward pass."""
    import torch

    core.eval()
    with torch.no_grad():
        if core_is_2d:
            out = core(torch.zeros(1, in_channels, 36, 64))
        else:
            out = core(torch.zeros(1, in_channels, frames, 36, 64))
    core.train()
    return int(out.shape[1]), int(out.shape[-2]), int(out.shape[-1])


def build_model(config: ml_collections.ConfigDict, mice: MiceInfo, np_layers: types.SimpleNamespace | None):
    """The peer model of ``config`` for ``mice`` and a description of what it is made of."""
    import torch

    from sensorium_jax.benchmarking import torch_models

    static = fake_inputs.is_static(config)
    core, core_is_2d, description = build_core(config, np_layers)
    in_channels = 1 + constant_channels(config, static)
    channels, height, width = _feature_shape(core, core_is_2d, in_channels, getattr(core, "burn_in", 0) + 1)
    readout_config = dict(config.model.readout)
    readouts = []
    for coords, mean in zip(mice.coordinates, mice.mean_responses):
        if np_layers is not None:
            readouts.append(
                np_layers.readouts.FullGaussian2d(
                    in_shape=(channels, height, width),
                    outdims=len(coords),
                    bias=True,
                    init_mu_range=readout_config["init_mu_range"],
                    init_sigma=readout_config["init_sigma"],
                    batch_sample=True,
                    align_corners=True,
                    gauss_type="full",
                    grid_mean_predictor=(
                        dict(hidden_layers=1, hidden_features=readout_config["grid_hidden"], final_tanh=True)
                        if readout_config["grid_mean_predictor"]
                        else None
                    ),
                    source_grid=np.asarray(coords)[:, :2] if readout_config["grid_mean_predictor"] else None,
                    mean_activity=torch.as_tensor(np.asarray(mean, np.float32)),
                    feature_reg_weight=readout_config["gamma_readout"],
                )
            )
        else:
            readouts.append(torch_models.TorchGaussianReadout(coords, channels, mean, **readout_config))
    shifters = None
    if config.model.use_shifter:
        shifters = [torch_models.mlp_shifter(tuple(config.model.shifter.hidden)) for _ in mice.names]
    encoder_config = dict(config.model.get("behavior_encoder") or {})
    encoders = None
    if encoder_config.get("enabled", False):
        encoders = [
            torch_models.behavior_encoder(channels, dropout=encoder_config.get("dropout", 0.0)) for _ in mice.names
        ]
    modulator_config = dict(config.model.get("modulator") or {})
    modulators = None
    if modulator_config.pop("enabled", False):
        modulators = [torch_models.gain_modulator(len(c), **modulator_config) for c in mice.coordinates]
    model = torch_models.TorchMultiMouseModel(
        core,
        readouts,
        shifters,
        encoders,
        behavior_channels=bool(config.model.behavior_channels),
        pupil_center_channels=bool(config.model.get("pupil_center_channels", False)) and not static,
        output=config.model.output,
        core_is_2d=core_is_2d,
        modulators=modulators,
    )
    readout_name = "neuralpredictors FullGaussian2d" if np_layers is not None else "FullGaussian2d (ours, torch)"
    return model, f"{description} + {readout_name}"


def _optimizer(config: ml_collections.ConfigDict, model):
    """torch AdamW with the config's per-group learning rate and weight decay (core / everything else)."""
    import torch

    optim = config.optim
    core_lr = optim.get("core_lr") or optim.lr
    core_wd = optim.weight_decay if optim.get("core_weight_decay") is None else optim.core_weight_decay
    core_params = list(model.core.parameters())
    core_ids = {id(p) for p in core_params}
    rest = [p for p in model.parameters() if id(p) not in core_ids]
    return torch.optim.AdamW(
        [
            {"params": core_params, "lr": core_lr, "weight_decay": core_wd},
            {"params": rest, "lr": optim.lr, "weight_decay": optim.weight_decay},
        ],
        betas=(0.9, 0.999),
        eps=1e-8,
    )


def measure_torch_peer(
    config: ml_collections.ConfigDict,
    mice: MiceInfo,
    *,
    batch_size: int = 0,
    clip_frames: int = 0,
    steps: int = 5,
    warmup: int = 1,
    threads: int = 0,
    seed: int = 0,
) -> TorchMeasurement:
    """Build the peer and time its train step on the same fake batch as the JAX measurement."""
    import torch

    from sensorium_jax.benchmarking import torch_models

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    static = fake_inputs.is_static(config)
    batch_size = batch_size or config.data.batch_size
    clip_frames = 1 if static else (clip_frames or config.data.clip_frames)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    np_layers = import_neuralpredictors()
    m = len(mice.names)
    with PeakMemory(gpu=False) as memory:
        model, name = build_model(config, mice, np_layers)
        model = model.to(device).train()
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        optimizer = _optimizer(config, model)
        host = fake_inputs.fake_train_batch(m, batch_size, clip_frames, mice.max_neurons, static, seed)
        batch = {k: torch.from_numpy(v).to(device) for k, v in host.items()}
        loss_scale = [float(np.sqrt(fake_inputs.COMPETITION_TRAIN_TRIALS / batch_size))] * m

        def one_step() -> float:
            optimizer.zero_grad(set_to_none=True)
            predictions = model(batch["videos"], batch["behavior"], batch["pupil_center"])
            loss = torch_models.poisson_correlation_loss(
                predictions,
                batch["responses"],
                loss_scale,
                config.train.correlation_weight,
                config.train.loss_last_frames,
            )
            loss = loss + model.regularizer()
            loss.backward()
            optimizer.step()
            return loss.item()  # .item() waits for the device, so the clock sees the whole step

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = time_calls(one_step, steps=steps, warmup=warmup, sync=_identity)
        loss = one_step()
        if not np.isfinite(loss):
            raise FloatingPointError(f"the PyTorch peer's loss is {loss}")
    peak, kind = memory.peak_bytes, memory.kind
    if device.type == "cuda":
        peak, kind = int(torch.cuda.max_memory_allocated()), "torch_cuda_peak"
    return TorchMeasurement(
        name=name,
        params=params,
        num_mice=m,
        num_neurons=sum(mice.num_neurons),
        batch_clips=m * batch_size,
        clip_frames=clip_frames,
        first_step_s=times.first_s,
        step_times_s=times.times_s,
        peak_mem_bytes=peak,
        mem_kind=kind,
        threads=torch.get_num_threads(),
    )


def _identity(x: Any) -> Any:
    return x


def versions() -> dict[str, str | None]:
    """torch and neuralpredictors versions (None where missing), for the JSON's metadata."""
    out: dict[str, str | None] = {"torch": None, "neuralpredictors": None}
    for name in out:
        if importlib.util.find_spec(name) is not None:
            try:
                from importlib.metadata import version

                out[name] = version(name)
            except Exception:
                out[name] = "unknown"
    return out
