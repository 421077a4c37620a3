"""The pure train and inference steps that get jit-compiled, and the state they carry.

The model lives as a Flax NNX graph definition (static, closed over) plus pytrees of parameters, batch statistics
and constants inside :class:`TrainState`; each step merges them, runs, and splits the updated batch statistics
back out. One step = one sub-batch from every mouse (the reference's "gradient accumulated over one batch per
mouse, then one optimiser step"), with the shared core run once over all clips.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct

from sensorium_jax.models.layers import Constant
from sensorium_jax.training import losses


@struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    constants: nnx.State
    opt_state: optax.OptState
    lr_scale: jax.Array  # multiplies every update: the reduce-on-plateau factor, changed without recompiling
    rng: jax.Array


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
    graphdef, params, batch_stats, constants = nnx.split(model, nnx.Param, nnx.BatchStat, Constant)
    return graphdef, params, batch_stats, constants


def param_labels(params: nnx.State, separate_shifter: bool = False) -> nnx.State:
    """'core' for the core's parameters, 'rest' for readouts and shifters (separate lr / weight decay); with
    ``separate_shifter`` the shifters get a group of their own ('shifter')."""

    def label(path, _) -> str:
        top = getattr(path[0], "key", None)
        if top == "core":
            return "core"
        return "shifter" if separate_shifter and top == "shifters" else "rest"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: ml_collections.ConfigDict, params: nnx.State) -> optax.GradientTransformation:
    """AdamW (torch semantics: decoupled weight decay scaled by the lr), optionally with its own lr / weight
    decay for the core, its own lr for the shifters, and optional global-norm clipping.

    ``shifter_lr``: the pupil-centre shifter moves every readout position of a mouse at once; at the readout lr
    of the short CPU recipes it overshoots and the positions never settle (BUILD_NOTES.md), so it may learn slower.
    """

    def adamw(lr: float, wd: float) -> optax.GradientTransformation:
        return optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)

    core_lr = config.get("core_lr") or config.lr
    core_wd = config.weight_decay if config.get("core_weight_decay") is None else config.core_weight_decay
    shifter_lr = config.get("shifter_lr") or 0.0
    groups = {"core": adamw(core_lr, core_wd), "rest": adamw(config.lr, config.weight_decay)}
    if shifter_lr:
        groups["shifter"] = adamw(shifter_lr, config.weight_decay)
    tx = optax.multi_transform(groups, param_labels(params, separate_shifter=bool(shifter_lr)))
    if config.get("clip_grad_norm"):
        tx = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), tx)
    return tx


def create_train_state(
    model: nnx.Module, tx: optax.GradientTransformation, seed: int
) -> tuple[nnx.GraphDef, TrainState]:
    graphdef, params, batch_stats, constants = split_model(model)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        constants=constants,
        opt_state=tx.init(params),
        lr_scale=jnp.ones((), jnp.float32),
        rng=jax.random.key_data(jax.random.key(seed)),
    )
    return graphdef, state


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_scale: Sequence[float],
    correlation_weight: float = 0.0,
    last_frames: int = 0,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Build ``step(state, batch) -> (state, metrics)`` (not yet jitted; see :func:`jit_train_step`).

    ``loss_scale`` (M,) weighs each mouse's Poisson loss (the reference's ``sqrt(len(dataset) / batch_size)``);
    ``correlation_weight`` adds ``w · Σ(1 − corr)`` per mouse, weighed by the same scale (ViV1T's
    ``poisson_correlation`` scales its whole per-mouse loss); ``last_frames > 0`` keeps only the last K predicted
    frames in the loss.
    """
    scale = jnp.asarray(np.asarray(loss_scale, np.float32))

    def loss_fn(params, state: TrainState, batch: dict):
        # Fresh Variables for this trace level: BatchNorm updates its statistics in place while being differentiated.
        batch_stats = jax.tree.map(lambda x: x, state.batch_stats)
        model = nnx.merge(graphdef, params, batch_stats, state.constants)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        prediction = model(batch["videos"], batch["behavior"], batch["pupil_center"], train=True, key=key)
        target = batch["responses"][:, :, -prediction.shape[2] :]
        if last_frames:
            prediction, target = prediction[:, :, -last_frames:], target[:, :, -last_frames:]
        mask = model.readouts.neuron_mask[...].astype(prediction.dtype)
        poisson = losses.poisson_loss(prediction, target, mask)
        total = jnp.sum(scale * poisson)
        if correlation_weight:
            total = total + correlation_weight * jnp.sum(scale * losses.correlation_loss(prediction, target, mask))
        total = total + jnp.sum(model.regularizer())
        elements = mask.sum() * prediction.shape[1] * prediction.shape[2]
        metrics = {"loss": total, "poisson": poisson.sum() / elements}
        return total, (nnx.state(model, nnx.BatchStat), metrics)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        (_, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new_state, metrics

    return train_step


def assert_max_traces(fn: Callable, n: int) -> Callable:
    """Raise when ``fn`` is traced more than ``n`` times (a recompile: some input's shape or dtype changed).

    Like ``chex.assert_max_traces`` but counted per wrapped instance, so building several steps in one process
    (tests, ensembles) is fine.
    """
    traces = 0

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        nonlocal traces
        traces += 1
        if traces > n:
            raise AssertionError(
                f"{fn.__name__} was traced {traces} times (limit {n}): an input changed shape or dtype, "
                "which would recompile the step"
            )
        return fn(*args, **kwargs)

    return wrapped


def jit_train_step(train_step: Callable, state_sharding, batch_sharding, replicated, max_traces: int = 1) -> Callable:
    """jit with the state donated; an accidental recompile becomes an error instead of a silent slowdown."""
    return jax.jit(
        assert_max_traces(train_step, n=max_traces),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )


def make_predict(graphdef: nnx.GraphDef) -> Callable:
    """``predict(state, mouse, videos (E,T,H,W), behavior, pupil_center) -> (E, T − burn_in, N_max)``, jitted."""

    @jax.jit
    def predict(state: TrainState, mouse: jax.Array, videos, behavior, pupil_center):
        model = nnx.merge(graphdef, state.params, state.batch_stats, state.constants)
        return model.predict_mouse(mouse, videos, behavior, pupil_center)

    return predict
