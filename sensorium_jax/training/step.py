"""The pure train and inference steps that get jit-compiled, and the state they carry.

The model lives as a Flax NNX graph definition (static, closed over) plus pytrees of parameters, batch statistics
and constants inside :class:`TrainState`; each step merges them, runs, and splits the updated batch statistics
back out. One step = one sub-batch from every mouse (the reference's "gradient accumulated over one batch per
mouse, then one optimiser step"), with the shared core run once over all clips — or, with one-mouse sampling,
one sub-batch of a single mouse (Dynamic-V1FM's ``LongCycler``) through the same compiled step.

The training-recipe switches of the SENSORIUM 2023 winners (warm-up + cosine lr, EMA weights, CutMix, gradient
accumulation, one mouse per step) are options of :func:`make_train_step`, so every model gets them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx, struct

from sensorium_jax.models.layers import Constant
from sensorium_jax.training import augment, losses
from sensorium_jax.training import ema as _ema


@struct.dataclass
class TrainState:
    step: jax.Array
    params: nnx.State
    batch_stats: nnx.State
    constants: nnx.State
    opt_state: optax.OptState
    lr_scale: jax.Array  # multiplies every update: the reduce-on-plateau factor, changed without recompiling
    rng: jax.Array


@struct.dataclass
class EmaTrainState(TrainState):
    """A train state that also carries the EMA of the parameters and batch statistics (``train.ema_decay > 0``).

    A subclass rather than an optional field, so that states (and checkpoints) of runs without EMA keep exactly
    their old tree.
    """

    ema: _ema.EmaWeights


def inference_weights(state: TrainState) -> tuple[nnx.State, nnx.State]:
    """The parameters and batch statistics to predict with: the EMA ones when the state keeps an EMA."""
    if isinstance(state, EmaTrainState):
        return state.ema.params, state.ema.batch_stats
    return state.params, state.batch_stats


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
    graphdef, params, batch_stats, constants = nnx.split(model, nnx.Param, nnx.BatchStat, Constant)
    return graphdef, params, batch_stats, constants


def param_labels(params: nnx.State, separate_shifter: bool = False, separate_positions: bool = False) -> nnx.State:
    """'core' for the core's parameters, 'rest' for readouts and shifters (separate lr / weight decay); with
    ``separate_shifter`` the shifters get a group of their own ('shifter'), with ``separate_positions`` the
    readout positions ('positions')."""

    def label(path, _) -> str:
        top = getattr(path[0], "key", None)
        if top == "core":
            return "core"
        if separate_positions and is_readout_position(path):
            return "positions"
        return "shifter" if separate_shifter and top == "shifters" else "rest"

    return jax.tree_util.tree_map_with_path(label, params)


#: Readout parameters that place the neurons on the feature map (free positions or the cortex → grid MLP).
POSITION_PARAMS = ("mu", "grid_w1", "grid_b1", "grid_w2", "grid_b2")


def is_readout_position(path: tuple) -> bool:
    keys = [getattr(entry, "key", None) for entry in path]
    return "readouts" in keys and any(key in POSITION_PARAMS for key in keys)


def decay_all_but_positions(params: Any) -> Any:
    """Weight-decay mask: every parameter but the readout positions."""
    return jax.tree_util.tree_map_with_path(lambda path, _: not is_readout_position(path), params)


def make_optimizer(config: ml_collections.ConfigDict, params: nnx.State) -> optax.GradientTransformation:
    """AdamW (torch semantics: decoupled weight decay scaled by the lr), optionally with its own lr / weight
    decay for the core, its own lr for the shifters, and optional global-norm clipping.

    ``shifter_lr``: the pupil-centre shifter moves every readout position of a mouse at once; at the readout lr
    of the short CPU recipes it overshoots and the positions never settle (BUILD_NOTES.md), so it may learn slower.

    ``position_lr`` (0: the readouts' lr): the readout positions' own lr. Adam moves every parameter by about its
    lr per step whatever the gradient's size, and a position far from its neuron's receptive field gets gradients
    that are mostly noise, so at the CPU recipes' readout lr of 0.05 positions random-walked across the map
    (BUILD_NOTES.md, in-silico section).

    ``decay_positions`` (default True, as the reference's AdamW decays every parameter): False exempts the readout
    positions. Decay pulls every position towards the map's centre by ``lr · weight_decay`` of itself per step; at
    the CPU recipes' readout lr of 0.05 that is a factor 0.4 over their 1,800 steps, which squeezed the positions
    into the middle of the map while the core learned displaced features to reach the outer neurons
    (BUILD_NOTES.md, in-silico section). At the reference's lr of 0.005 the same pull is ten times weaker.
    """

    def adamw(lr: float, wd: float, mask: Any = None) -> optax.GradientTransformation:
        return optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd, mask=mask)

    core_lr = config.get("core_lr") or config.lr
    core_wd = config.weight_decay if config.get("core_weight_decay") is None else config.core_weight_decay
    shifter_lr = config.get("shifter_lr") or 0.0
    position_lr = config.get("position_lr") or 0.0
    decay_positions = config.get("decay_positions", True)
    rest_mask = None if decay_positions else decay_all_but_positions
    groups = {"core": adamw(core_lr, core_wd), "rest": adamw(config.lr, config.weight_decay, rest_mask)}
    if shifter_lr:
        groups["shifter"] = adamw(shifter_lr, config.weight_decay)
    if position_lr:
        groups["positions"] = adamw(position_lr, config.weight_decay if decay_positions else 0.0)
    labels = param_labels(params, separate_shifter=bool(shifter_lr), separate_positions=bool(position_lr))
    tx = optax.multi_transform(groups, labels)
    if config.get("clip_grad_norm"):
        tx = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), tx)
    return tx


def create_train_state(
    model: nnx.Module, tx: optax.GradientTransformation, seed: int, ema: bool = False
) -> tuple[nnx.GraphDef, TrainState]:
    """The model's graph definition and its train state; ``ema=True`` gives an :class:`EmaTrainState` whose EMA
    starts as a copy of the model."""
    graphdef, params, batch_stats, constants = split_model(model)
    fields = dict(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        constants=constants,
        opt_state=tx.init(params),
        lr_scale=jnp.ones((), jnp.float32),
        rng=jax.random.key_data(jax.random.key(seed)),
    )
    if ema:
        return graphdef, EmaTrainState(**fields, ema=_ema.init_ema(params, batch_stats))
    return graphdef, TrainState(**fields)


# ----------------------------------------------------------------------------------------------------------------
# One mouse per step: a view of the model with the mouse axis cut to the chosen mouse


MouseLeaves = frozenset  # of (collection, keystr(path)): "params" / "batch_stats" / "constants"
_COLLECTIONS = ("params", "batch_stats", "constants")


def per_mouse_leaves(model: nnx.Module, model_with_one_more_mouse: nnx.Module, num_mice: int) -> MouseLeaves:
    """The state leaves that carry a leading mouse axis, found by comparing the model with the same model built
    for one more mouse (``nnx.eval_shape`` is enough): a leaf whose shape changes is per-mouse. No naming
    convention is assumed, so every model class works; a leaf that changes anywhere but a leading mouse axis is
    an error (the one-mouse view could not slice it)."""

    def shapes(module: nnx.Module) -> dict[tuple[str, str], tuple[int, ...]]:
        _, *states = split_model(module)
        return {
            (collection, jax.tree_util.keystr(path)): tuple(leaf.shape)
            for collection, state in zip(_COLLECTIONS, states)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)
        }

    mine, more = shapes(model), shapes(model_with_one_more_mouse)
    if mine.keys() != more.keys():
        raise ValueError(f"the model's state differs in structure with one more mouse: {mine.keys() ^ more.keys()}")
    leaves = set()
    for name, shape in mine.items():
        other = more[name]
        if shape == other:
            continue
        if shape[:1] != (num_mice,) or other[:1] != (num_mice + 1,) or shape[1:] != other[1:]:
            raise ValueError(
                f"{name[0]}{name[1]} changes shape {shape} → {other} with one more mouse, not only along a leading "
                "mouse axis; one-mouse sampling needs every per-mouse leaf stacked on axis 0"
            )
        leaves.add(name)
    return frozenset(leaves)


def _map_mouse_leaves(collection: str, leaves: MouseLeaves, fn: Callable, tree, *rest):
    """``fn`` on the per-mouse leaves of ``tree`` (and the matching leaves of ``rest``); others pass unchanged."""

    def apply(path, x, *others):
        return fn(x, *others) if (collection, jax.tree_util.keystr(path)) in leaves else x

    return jax.tree_util.tree_map_with_path(apply, tree, *rest)


def _take_mouse(x: jax.Array, mouse: jax.Array) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(x, mouse, 1, axis=0)


def _mouse_rows(x: jax.Array, mouse: jax.Array) -> jax.Array:
    return (jnp.arange(x.shape[0]) == mouse).reshape(-1, *([1] * (x.ndim - 1)))


def _keep_other_mice(new_opt_state, old_opt_state, params: nnx.State, leaves: MouseLeaves, mouse: jax.Array):
    """Optimiser-state leaves that mirror a per-mouse parameter (Adam's moments, found by path suffix) keep their
    old rows for every mouse but ``mouse``: like torch's optimisers, which skip parameters without a gradient."""
    mirrored = {
        jax.tree_util.keystr(path)
        for path, _ in jax.tree_util.tree_leaves_with_path(params)
        if ("params", jax.tree_util.keystr(path)) in leaves
    }

    def keep(path, new, old):
        suffixes = (jax.tree_util.keystr(path[i:]) for i in range(len(path)))
        if getattr(new, "ndim", 0) and any(s in mirrored for s in suffixes):
            return jnp.where(_mouse_rows(new, mouse), new, old)
        return new

    return jax.tree_util.tree_map_with_path(keep, new_opt_state, old_opt_state)


# ----------------------------------------------------------------------------------------------------------------
# Gradients (with micro-batch accumulation) and the train step


def split_micro_batches(x: jax.Array, count: int) -> jax.Array:
    """``(M, B, ...)`` → ``(count, M, B / count, ...)``, micro-batch ``j`` holding clips ``j, j + count, …``.

    Strided rather than contiguous: with the clip axis sharded in contiguous blocks over devices, every device
    then holds its share of every micro-batch and no data moves between them.
    """
    m, b = x.shape[:2]
    if b % count:
        raise ValueError(f"{b} clips per mouse cannot be split into {count} equal micro-batches")
    return jnp.moveaxis(x.reshape(m, b // count, count, *x.shape[2:]), 2, 0)


def make_gradient_fn(
    graphdef: nnx.GraphDef,
    loss_scale: Sequence[float],
    correlation_weight: float = 0.0,
    last_frames: int = 0,
    accumulate_steps: int = 1,
    mouse_leaves: MouseLeaves | None = None,
    unroll_micro_batches: bool | None = None,
) -> Callable[[TrainState, dict, jax.Array], tuple[nnx.State, nnx.State, dict]]:
    """``grads(state, batch, key) -> (gradients, new batch statistics, sums for the metrics)``.

    ``accumulate_steps = k > 1``: the batch is split into ``k`` micro-batches (:func:`split_micro_batches`) run
    one after another in a ``lax.scan`` and their gradients summed. The Poisson loss is a sum over clips and the
    regulariser is weighed ``1 / k`` per micro-batch, so without batch norm the sum is the gradient of the whole
    batch; batch norm normalises each micro-batch by its own statistics and updates its running statistics once
    per micro-batch (as torch's accumulation does), and the correlation loss is computed per micro-batch.
    ``unroll_micro_batches`` (default: on CPU only) unrolls the scan: XLA's CPU backend runs convolutions inside a
    loop body several times slower (``factorized:cpu``, 3 mice × 4 clips, k = 2: 14.0 s/step in a loop, 2.8 s
    unrolled, 3.3 s without accumulation, measured under load), while on accelerators the loop is what bounds
    memory to one micro-batch's activations.

    ``mouse_leaves``: one-mouse batches (``batch["mouse"]``, every clip of the step from that mouse, the batch
    ``(1, B, …)``); the model runs on a view whose per-mouse leaves are cut to that mouse by a traced index (one
    compile for every mouse), so only that mouse's readout, shifter, … receive gradients.
    """
    scale = jnp.asarray(np.asarray(loss_scale, np.float32))
    one_mouse = mouse_leaves is not None
    reg_weight = 1.0 / accumulate_steps
    if unroll_micro_batches is None:
        unroll_micro_batches = jax.default_backend() == "cpu"

    def view(collection: str, tree, mouse):
        return _map_mouse_leaves(collection, mouse_leaves, lambda x: _take_mouse(x, mouse), tree) if one_mouse else tree

    def loss_fn(params, batch_stats, constants, batch: dict, key: jax.Array, mouse):
        # Fresh Variables for this trace level: BatchNorm updates its statistics in place while being differentiated.
        batch_stats = jax.tree.map(lambda x: x, view("batch_stats", batch_stats, mouse))
        model = nnx.merge(graphdef, view("params", params, mouse), batch_stats, view("constants", constants, mouse))
        prediction = model(batch["videos"], batch["behavior"], batch["pupil_center"], train=True, key=key)
        target = batch["responses"][:, :, -prediction.shape[2] :]
        if last_frames:
            prediction, target = prediction[:, :, -last_frames:], target[:, :, -last_frames:]
        mask = model.readouts.neuron_mask[...].astype(prediction.dtype)
        mouse_scale = _take_mouse(scale, mouse) if one_mouse else scale
        poisson = losses.poisson_loss(prediction, target, mask)
        total = jnp.sum(mouse_scale * poisson)
        if correlation_weight:
            correlation = losses.correlation_loss(prediction, target, mask)
            total = total + correlation_weight * jnp.sum(mouse_scale * correlation)
        regularizer = jnp.sum(model.regularizer())
        total = total + (regularizer if accumulate_steps == 1 else reg_weight * regularizer)
        elements = mask.sum() * prediction.shape[1] * prediction.shape[2]
        sums = {"loss": total, "poisson_sum": poisson.sum(), "elements": elements}
        return total, (nnx.state(model, nnx.BatchStat), sums)

    def one_pass(state: TrainState, batch_stats, batch: dict, key: jax.Array, mouse):
        (_, (new_stats, sums)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch_stats, state.constants, batch, key, mouse
        )
        if one_mouse:  # write the mouse's own statistics (if any are per-mouse) back into the full tree
            put = lambda full, part: jax.lax.dynamic_update_slice_in_dim(full, part.astype(full.dtype), mouse, 0)
            new_stats = _map_mouse_leaves("batch_stats", mouse_leaves, put, batch_stats, new_stats)
        return grads, new_stats, sums

    def gradients(state: TrainState, batch: dict, key: jax.Array):
        mouse = batch["mouse"][0, 0] if one_mouse else None
        data = {k: v for k, v in batch.items() if k != "mouse"}
        if accumulate_steps == 1:
            return one_pass(state, state.batch_stats, data, key, mouse)

        def micro_step(carry, inputs):
            grads_sum, batch_stats, sums_total = carry
            micro, index = inputs
            grads, batch_stats, sums = one_pass(state, batch_stats, micro, jax.random.fold_in(key, index), mouse)
            sums = {k: v.astype(jnp.float32) for k, v in sums.items()}
            return (jax.tree.map(jnp.add, grads_sum, grads), batch_stats, jax.tree.map(jnp.add, sums_total, sums)), None

        micro_batches = {k: split_micro_batches(v, accumulate_steps) for k, v in data.items()}
        zeros = {k: jnp.zeros((), jnp.float32) for k in ("loss", "poisson_sum", "elements")}
        init = (jax.tree.map(jnp.zeros_like, state.params), state.batch_stats, zeros)
        (grads, batch_stats, sums), _ = jax.lax.scan(
            micro_step, init, (micro_batches, jnp.arange(accumulate_steps)), unroll=bool(unroll_micro_batches)
        )
        return grads, batch_stats, sums

    return gradients


_AUGMENT_STREAM = 0x43555431  # the CutMix key stream, apart from the model's (which folds in small integers)


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_scale: Sequence[float],
    correlation_weight: float = 0.0,
    last_frames: int = 0,
    *,
    accumulate_steps: int = 1,
    lr_schedule: Callable[[jax.Array], jax.Array] | None = None,
    ema_decay: float = 0.0,
    cutmix: augment.CutMix | None = None,
    mouse_leaves: MouseLeaves | None = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """Build ``step(state, batch) -> (state, metrics)`` (not yet jitted; see :func:`jit_train_step`).

    ``loss_scale`` (M,) weighs each mouse's Poisson loss (the reference's ``sqrt(len(dataset) / batch_size)``);
    ``correlation_weight`` adds ``w · Σ(1 − corr)`` per mouse, weighed by the same scale (ViV1T's
    ``poisson_correlation`` scales its whole per-mouse loss); ``last_frames > 0`` keeps only the last K predicted
    frames in the loss. The training-recipe switches (all off by default, each independent of the model):

    * ``accumulate_steps``: gradient accumulation over micro-batches inside the step (:func:`make_gradient_fn`);
    * ``lr_schedule``: ``factor(step)`` multiplying the updates on top of ``state.lr_scale``
      (:func:`~sensorium_jax.training.schedules.warmup_cosine`);
    * ``ema_decay``: the state (an :class:`EmaTrainState`) keeps an EMA of parameters and batch statistics,
      updated after every optimiser step (:mod:`~sensorium_jax.training.ema`);
    * ``cutmix``: CutMix of the batch on device, keyed by the step (:mod:`~sensorium_jax.training.augment`);
    * ``mouse_leaves``: one-mouse batches (:func:`per_mouse_leaves`); the other mice's per-mouse parameters and
      their optimiser moments stay exactly as they were (torch skips parameters without a gradient). Adam's step
      count is shared, so its bias correction follows the global step rather than each mouse's own visits.
    """
    gradients = make_gradient_fn(graphdef, loss_scale, correlation_weight, last_frames, accumulate_steps, mouse_leaves)
    use_cutmix = cutmix is not None and cutmix.prob > 0

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        if ema_decay and not isinstance(state, EmaTrainState):
            raise TypeError("ema_decay > 0 needs a state made by create_train_state(..., ema=True)")
        base = jax.random.wrap_key_data(state.rng)
        key = jax.random.fold_in(base, state.step)
        if use_cutmix:
            augment_key = jax.random.fold_in(jax.random.fold_in(base, _AUGMENT_STREAM), state.step)
            batch = augment.cutmix(batch, augment_key, cutmix.prob, cutmix.alpha, cutmix.behavior)
        grads, batch_stats, sums = gradients(state, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        lr_scale = state.lr_scale if lr_schedule is None else state.lr_scale * lr_schedule(state.step)
        updates = jax.tree.map(lambda u: u * lr_scale, updates)
        if mouse_leaves is not None:
            mouse = batch["mouse"][0, 0]
            only_mouse = lambda u: jnp.where(_mouse_rows(u, mouse), u, jnp.zeros_like(u))
            updates = _map_mouse_leaves("params", mouse_leaves, only_mouse, updates)
            opt_state = _keep_other_mice(opt_state, state.opt_state, state.params, mouse_leaves, mouse)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": sums["loss"], "poisson": sums["poisson_sum"] / sums["elements"]}
        metrics["grad_norm"] = optax.global_norm(grads)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        if ema_decay:
            new_state = new_state.replace(ema=_ema.update_ema(state.ema, params, batch_stats, ema_decay))
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
    """``predict(state, mouse, videos (E,T,H,W), behavior, pupil_center, lengths=None) -> (E, T − burn_in, N_max)``.

    Jitted. ``lengths (E,)``: the valid frames of each zero-padded trial, for cores that attend over the whole
    clip (ViV1T); evaluation always passes them, so a padded trial gets the numbers it would get alone.

    A state with an EMA predicts with the EMA weights (:func:`inference_weights`): validation, early stopping,
    the best checkpoint's scores, evaluation and submissions all see the averaged model.
    """

    @jax.jit
    def predict(state: TrainState, mouse: jax.Array, videos, behavior, pupil_center, lengths=None):
        params, batch_stats = inference_weights(state)
        model = nnx.merge(graphdef, params, batch_stats, state.constants)
        if lengths is None:  # e.g. static images, whose models take no lengths
            return model.predict_mouse(mouse, videos, behavior, pupil_center)
        return model.predict_mouse(mouse, videos, behavior, pupil_center, lengths=lengths)

    return predict
