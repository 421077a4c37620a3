"""``train_and_evaluate(config, workdir)``: the whole training run, resumable, with early stopping.

Epoch = ``steps_per_epoch`` optimiser steps, each on one sub-batch of every mouse. After each epoch the oracle
tier is scored on full-length trials (single-trial correlation, all neurons pooled) and the plateau schedule
decides: improved → save as best; ``patience`` evaluations without improvement → restore the best state and
multiply the learning rate by ``factor`` (not below ``min_lr``); the ``lr_decay_steps``-th time → stop. This joins
neuralpredictors' ``early_stopping`` (restore best, ``lr_decay_steps``) and ``ReduceLROnPlateau``, which the
reference runs side by side with the same patience (:class:`~sensorium_jax.training.schedules.PlateauSchedule`).

Training-recipe switches of the SENSORIUM 2023 winners, all off by default (``experiments/configs/common.py``):
``schedule.kind = "warmup_cosine"`` (per-step lr inside the jitted step; the plateau rule then only tracks the
best epoch), ``train.ema_decay`` (EMA weights are validated, saved as best and scored), ``train.cutmix_prob``,
``optim.accumulate_steps`` and ``data.mouse_sampling = "one"`` (one mouse per step, cycled; an epoch then has
M × as many steps by default).

``config.task`` selects the benchmark: ``"video"`` (SENSORIUM 2023, the default) or ``"static"`` (SENSORIUM 2022:
:class:`~sensorium_jax.data.static_reader.StaticSession` data, a
:class:`~sensorium_jax.models.static_model.StaticModel`, early stopping on the ``validation`` tier, final scores
with FEVE). Both share the train step, the loss, the optimiser, the schedule, checkpoints and the input pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from sensorium_jax import parallel
from sensorium_jax.data import layout, pipeline, rf_estimate
from sensorium_jax.data.reader import Session, open_sessions
from sensorium_jax.data.static_reader import STATIC_EVALUATION_TIERS, StaticSession, open_static_sessions
from sensorium_jax.evaluation import evaluate as evaluation
from sensorium_jax.evaluation import static_evaluate
from sensorium_jax.models.model import MiceInfo, count_parameters
from sensorium_jax.models.registry import build_model
from sensorium_jax.training import augment, schedules
from sensorium_jax.training import step as steps
from sensorium_jax.training.checkpoint import Checkpoints
from sensorium_jax.training.logger import MetricWriter
from sensorium_jax.training.schedules import PlateauSchedule

#: The run's receptive-field estimates (readout init), kept so that a resumed run need not compute them again.
RF_ESTIMATES_FILE = "rf_estimates.npz"


def load_sessions(config: ml_collections.ConfigDict) -> tuple[list[Session], Path | None]:
    """The sessions named by ``config.paths`` (comma-separated folders or globs), else the synthetic set.

    Returns the sessions and, for synthetic data, the dataset root (which holds its ceilings).
    """
    if config.paths:
        paths = []
        for pattern in str(config.paths).split(","):
            pattern = pattern.strip()
            matches = sorted(Path().glob(pattern)) if any(c in pattern for c in "*?[") else [Path(pattern)]
            if not matches:
                raise FileNotFoundError(f"no session folder matches {pattern!r}")
            paths.extend(matches)
        return open_sessions(paths, validate=config.validate), None
    from sensorium_jax.data import synthetic  # only needed without real data

    paths = synthetic.ensure_dataset(config.cache_dir, synthetic.SyntheticConfig(**config.synthetic))
    return open_sessions(paths, validate=config.validate), Path(paths[0]).parent


def is_static(config: ml_collections.ConfigDict) -> bool:
    """Whether a config trains on static images (``config.task == "static"``); configs without the field are video."""
    task = config.get("task", "video")
    if task not in ("video", "static"):
        raise ValueError(f"config.task must be 'video' or 'static', got {task!r}")
    return task == "static"


def static_session_paths(config: ml_collections.ConfigDict) -> tuple[list[Path], Path | None]:
    """The static session folders named by ``config.paths``, else the built-in synthetic static dataset
    (generated on first use); for synthetic data also the dataset root (which holds its ceilings)."""
    if config.paths:
        from sensorium_jax.evaluation.loading import parse_paths

        return parse_paths(str(config.paths)), None
    from sensorium_jax.data import synthetic_static  # only needed without real data

    synthetic_config = synthetic_static.StaticSyntheticConfig.from_dict(config.synthetic.to_dict())
    paths = synthetic_static.ensure_dataset(config.cache_dir, synthetic_config)
    return paths, Path(paths[0]).parent


def load_static_sessions(config: ml_collections.ConfigDict) -> tuple[list[StaticSession], Path | None]:
    """Like :func:`load_sessions` for static images (``config`` is ``config.data``)."""
    paths, root = static_session_paths(config)
    return open_static_sessions(paths, validate=config.validate, scale=config.get("image_scale", 0.25)), root


def one_more_mouse(mice: MiceInfo) -> MiceInfo:
    """``mice`` plus a copy of the last mouse: building the model for it shows which leaves are per-mouse."""
    return dataclasses.replace(
        mice,
        names=(*mice.names, f"{mice.names[-1]}+1"),
        coordinates=(*mice.coordinates, mice.coordinates[-1]),
        mean_responses=(*mice.mean_responses, mice.mean_responses[-1]),
        rf_centres=None if mice.rf_centres is None else (*mice.rf_centres, mice.rf_centres[-1]),
    )


def mouse_sampling(config: ml_collections.ConfigDict) -> str:
    """``config.data.mouse_sampling`` (configs without the field: every mouse in every step)."""
    return config.data.get("mouse_sampling", "all")


def build_train_step(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_scale: list[float],
    steps_per_epoch: int,
    mouse_leaves: steps.MouseLeaves | None,
):
    """The (not yet jitted) train step of ``config``: loss options and the training-recipe switches."""
    train, optim = config.train, config.optim
    cutmix = None
    if train.get("cutmix_prob", 0.0) > 0:
        cutmix = augment.CutMix(train.cutmix_prob, train.get("cutmix_alpha", 1.0), train.get("cutmix_behavior", "mix"))
    return steps.make_train_step(
        graphdef,
        tx,
        loss_scale,
        train.correlation_weight,
        train.loss_last_frames,
        accumulate_steps=optim.get("accumulate_steps", 1) or 1,
        lr_schedule=schedules.make_lr_schedule(config.schedule, steps_per_epoch, train.max_epochs),
        ema_decay=train.get("ema_decay", 0.0),
        cutmix=cutmix,
        mouse_leaves=mouse_leaves,
    )


def check_accumulation(batch_size: int, accumulate_steps: int, device_count: int) -> None:
    """Micro-batches must split every mouse's sub-batch evenly; sharded evenly they need no data movement."""
    if accumulate_steps < 1 or batch_size % accumulate_steps:
        raise ValueError(
            f"batch size {batch_size} is not divisible into optim.accumulate_steps={accumulate_steps} micro-batches"
        )
    if (batch_size // accumulate_steps) % device_count:
        logging.warning(
            "micro-batches of %d clips do not split evenly over %d devices; XLA will move data between them",
            batch_size // accumulate_steps,
            device_count,
        )


def _json_ready(tree):
    if isinstance(tree, dict):
        return {k: _json_ready(v) for k, v in tree.items() if not str(k).startswith("per_neuron")}
    return tree


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    static = is_static(config)
    sessions, synthetic_root = (load_static_sessions if static else load_sessions)(config.data)
    for session in sessions:
        logging.info("%r", session)

    mesh = parallel.make_mesh(config.num_devices)
    batch_size = config.data.batch_size
    pipeline.check_divisibility(batch_size, jax.process_count(), mesh.size)
    mice = MiceInfo.from_sessions(sessions)
    if not static and config.model.get("readout", {}).get("init_positions", "random") == "receptive_fields":
        estimates = rf_estimate.estimate_all(sessions, cache=workdir / RF_ESTIMATES_FILE, write_cache=is_main)
        mice = dataclasses.replace(
            mice, rf_centres=tuple(e.centres for e in estimates), image_size=estimates[0].image_size
        )
    model = build_model(config.model, mice, task=config.get("task", "video"), seed=config.seed)
    logging.info(
        "model: %s core, %d parameters (%d mice, %d neurons), burn-in %d frames",
        config.model.core.name,
        count_parameters(model),
        len(sessions),
        sum(mice.num_neurons),
        model.burn_in,
    )
    if not static and config.data.clip_frames <= model.burn_in:
        raise ValueError(f"clip_frames {config.data.clip_frames} must exceed the core's burn-in {model.burn_in}")

    sampling = mouse_sampling(config)
    mouse_leaves = None
    if sampling == "one":
        bigger = nnx.eval_shape(
            lambda: build_model(config.model, one_more_mouse(mice), task=config.get("task", "video"), seed=config.seed)
        )
        mouse_leaves = steps.per_mouse_leaves(model, bigger, len(sessions))
        logging.info("one mouse per step: %d per-mouse state leaves", len(mouse_leaves))
    accumulate_steps = config.optim.get("accumulate_steps", 1) or 1
    check_accumulation(batch_size, accumulate_steps, mesh.size)

    tx = steps.make_optimizer(config.optim, nnx.state(model, nnx.Param))
    use_ema = config.train.get("ema_decay", 0.0) > 0
    graphdef, state = steps.create_train_state(model, tx, config.seed, ema=use_ema)
    replicated = parallel.replicated(mesh)
    state = jax.device_put(state, replicated)

    train_counts = [s.trials(layout.Tier.TRAIN.value).size for s in sessions]
    # One pass over the largest mouse's train trials — per mouse: with one mouse per step an epoch has M × as many.
    rounds_per_pass = math.ceil(max(train_counts) / batch_size) * (len(sessions) if sampling == "one" else 1)
    steps_per_epoch = config.train.steps_per_epoch or rounds_per_pass
    spec = pipeline.ClipSpec(
        batch_size=batch_size,
        clip_frames=1 if static else config.data.clip_frames,  # a static sample is one frame
        max_neurons=mice.max_neurons,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        mouse_sampling=sampling,
    )
    iterator = pipeline.train_iterator(
        sessions,
        spec,
        steps_per_epoch * config.train.max_epochs,
        config.data.num_workers,
        config.data.prefetch,
    )

    checkpoints = Checkpoints(workdir)
    lr_schedule = schedules.make_lr_schedule(config.schedule, steps_per_epoch, config.train.max_epochs)
    # With the warm-up + cosine schedule the plateau rule only tracks the best evaluation (no decay, no stop).
    schedule = PlateauSchedule(config.schedule, config.optim.lr, decay=lr_schedule is None)
    loop = {"epoch": 0, **PlateauSchedule.initial()}
    if checkpoints.latest_step() is not None:
        state, loop = checkpoints.restore_latest(state, iterator)
        logging.info("resumed from %s at step %d (epoch %d)", workdir / "checkpoints", int(state.step), loop["epoch"])

    # The loss scale of the reference: sqrt(number of trials in the session / batch size), per mouse.
    loss_scale = [math.sqrt(s.num_trials / batch_size) for s in sessions]
    batch_sharding = parallel.mouse_batch_sharding(mesh)
    train_step = steps.jit_train_step(
        build_train_step(config, graphdef, tx, loss_scale, steps_per_epoch, mouse_leaves),
        replicated,
        batch_sharding,
        replicated,
    )
    predict = steps.make_predict(graphdef)  # predicts with the EMA weights when the state keeps them
    clips_per_step = batch_size * (1 if sampling == "one" else len(sessions))
    writer = MetricWriter(workdir, enabled=is_main)
    if static:
        eval_kwargs = dict(batch_size=config.eval.batch_size, max_neurons=mice.max_neurons)
        validate = static_evaluate.static_validation_correlation
        validation_label, unit = "validation", "images"
    else:
        eval_kwargs = dict(burn_in=model.burn_in, batch_size=config.eval.batch_size, max_neurons=mice.max_neurons)
        validate = evaluation.validation_correlation
        validation_label, unit = "validation (oracle)", "clips"

    timer = {"t": time.perf_counter(), "steps": 0, "compiled": False}
    budget = TimeBudget.from_config(config.train, loop.get("train_seconds", 0.0))
    # Validation costs about a fifth of a factorized:cpu epoch; validate_every > 1 spends that on training instead
    # (the plateau rule's patience then counts validations, not epochs). The last epoch is always validated, also
    # when the time budget ends the run early.
    validate_every = int(config.train.get("validate_every", 1))
    if validate_every < 1:
        raise ValueError(f"config.train.validate_every must be a positive number of epochs, got {validate_every}")

    def validate_epoch(state, step: int):
        """Score the epoch that just ended, let the schedule act on it, keep the best checkpoint."""
        objective = validate(predict, state, sessions, **eval_kwargs)
        action, lr_scale = schedule.update(loop, objective, loop["epoch"], float(state.lr_scale))
        logging.info(
            "epoch %d: %s single-trial correlation %.4f (best %.4f at epoch %d) → %s",
            loop["epoch"],
            validation_label,
            objective,
            loop["best"],
            loop["best_epoch"],
            action,
        )
        writer.write(step, {"validation_correlation": objective, "epoch": loop["epoch"]})
        if action == "improved":
            checkpoints.save_best(step, state, loop)
        elif action == "decay":
            state = checkpoints.restore_best(state).replace(lr_scale=jax.numpy.float32(lr_scale))
            state = jax.device_put(state, replicated)
            logging.info("plateau: restored the best state (epoch %d), lr × %.2f", loop["best_epoch"], lr_scale)
        return state

    while loop["epoch"] < config.train.max_epochs and not loop["stopped"]:
        for _ in range(steps_per_epoch):
            batch = parallel.to_global(next(iterator), batch_sharding)
            state, metrics = train_step(state, batch)
            timer["steps"] += 1
            step = int(state.step) if timer["steps"] % config.train.log_every == 0 or not timer["compiled"] else None
            if step is None:
                continue
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            elapsed = time.perf_counter() - timer["t"]
            lr = config.optim.lr * float(state.lr_scale)
            if lr_schedule is not None:  # the factor of the update this step applied
                lr *= float(lr_schedule(state.step - 1))
            record = {**metrics, "lr": lr}
            if not timer["compiled"]:
                logging.info("step %d: first step (compilation included) took %.1f s", step, elapsed)
                timer["compiled"] = True
            else:
                record["clips_per_second"] = timer["steps"] * clips_per_step / elapsed
                logging.info(
                    "epoch %d step %d: loss %.4g (poisson/element %.4f) | %.1f %s/s, %.2f s/step | lr %.3g",
                    loop["epoch"] + 1,
                    step,
                    metrics["loss"],
                    metrics["poisson"],
                    record["clips_per_second"],
                    unit,
                    elapsed / timer["steps"],
                    lr,
                )
            writer.write(step, record)
            timer.update(t=time.perf_counter(), steps=0)

        loop["epoch"] += 1
        step = int(state.step)
        validated = loop["epoch"] % validate_every == 0 or loop["epoch"] >= config.train.max_epochs
        if validated:
            state = validate_epoch(state, step)
        loop["train_seconds"] = budget.end_epoch()
        if budget.limit_s > 0:
            stop = budget.exhausted()
            loop["stopped"] = loop["stopped"] or stop
            logging.info(
                "time budget (%s): %.2f of %.2f min used, the last epoch took %.2f min%s",
                budget.clock_name,
                budget.used_s / 60,
                budget.limit_s / 60,
                budget.last_epoch_s / 60,
                " → stop" if stop else "",
            )
            if stop and not validated:  # the budget ends the run here: score the epoch it trained last
                state = validate_epoch(state, step)
                loop["train_seconds"] = budget.end_epoch()
        checkpoints.save_latest(step, state, iterator, loop)
        timer.update(t=time.perf_counter(), steps=0)

    if checkpoints.has_best():
        state = jax.device_put(checkpoints.restore_best(state), replicated)
    all_tiers = STATIC_EVALUATION_TIERS if static else layout.EVALUATION_TIERS
    tiers = [t for t in all_tiers if any(s.trials(t).size for s in sessions)]
    evaluate = static_evaluate.evaluate_static if static else evaluation.evaluate
    results = evaluate(predict, state, sessions, tiers, **eval_kwargs)
    results["best_epoch"] = loop["best_epoch"]
    results["epochs"] = loop["epoch"]
    results["parameters"] = count_parameters(model)
    if synthetic_root is not None and (synthetic_root / "ceilings.json").exists():
        results["ceilings"] = json.loads((synthetic_root / "ceilings.json").read_text())
        results["fraction_of_ceiling"] = _fraction_of_ceiling(results)
    results = _json_ready(results)
    if is_main:
        (workdir / "metrics.json").write_text(json.dumps(results, indent=2))
        _log_table(results)
    writer.close()
    checkpoints.close()
    return results


# ``train.time_budget_clock``: "wall" (elapsed time) or "cpu" (this process's CPU time over all its threads, which
# is what a run gets of a shared machine: runs that share the cores with others get the same compute, not the same
# minutes).
BUDGET_CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


class TimeBudget:
    """``train.time_budget_minutes``: stop before an epoch that would end past the budget (0: no budget).

    Counts the time of training and validation epochs (start-up and the final evaluation excluded) on ``clock``
    (a name of :data:`BUDGET_CLOCKS` or a callable), carried across restarts through the checkpointed loop state.
    Hosts measure different times, so on a pod the decision is process 0's, broadcast to every host: all stop after
    the same epoch.
    """

    def __init__(self, minutes: float, used_s: float = 0.0, clock: str | Callable[[], float] = "wall"):
        if isinstance(clock, str):
            if clock not in BUDGET_CLOCKS:
                raise ValueError(
                    f"config.train.time_budget_clock must be one of {sorted(BUDGET_CLOCKS)}, got {clock!r}"
                )
            self.clock_name, self._clock = clock, BUDGET_CLOCKS[clock]
        else:
            self.clock_name, self._clock = "custom", clock
        self.limit_s = 60.0 * float(minutes or 0.0)
        self.used_s = float(used_s)
        self.last_epoch_s = 0.0
        self._started = self._clock()

    @classmethod
    def from_config(cls, train: ml_collections.ConfigDict, used_s: float = 0.0) -> TimeBudget:
        return cls(train.get("time_budget_minutes", 0.0), used_s, train.get("time_budget_clock", "wall"))

    def end_epoch(self) -> float:
        """Book the epoch that just ended; returns the total time used so far."""
        now = self._clock()
        self.last_epoch_s = now - self._started
        self.used_s += self.last_epoch_s
        self._started = now
        return self.used_s

    def exhausted(self) -> bool:
        if self.limit_s <= 0:
            return False
        stop = self.used_s + self.last_epoch_s > self.limit_s
        if jax.process_count() > 1:
            stop = bool(multihost_utils.broadcast_one_to_all(np.int32(stop)))
        return stop


def _fraction_of_ceiling(results: dict) -> dict:
    """Model correlation / noise-ceiling correlation per tier (all neurons of all mice pooled, like the scores)."""
    fractions = {}
    for tier, scores in results["overall"].items():
        ceiling = results["ceilings"].get("mean", {}).get(tier)
        if not ceiling:
            continue
        fractions[tier] = {}
        for metric in ("single_trial", "correlation_to_average", "feve"):
            value, bound = (
                scores.get(f"{metric}_correlation" if metric == "single_trial" else metric),
                ceiling.get(metric),
            )
            if value is not None and bound:
                fractions[tier][metric] = {"ceiling": bound, "fraction": value / bound}
    return fractions


def _log_table(results: dict) -> None:
    width = max(len("ALL (neurons pooled)"), *(len(mouse) for mouse in results["mice"]))

    with_feve = any("feve" in scores for scores in results["overall"].values())  # static images only

    def row(name: str, tier: str, scores: dict) -> str:
        average, feve = scores.get("correlation_to_average"), scores.get("feve")
        average = "" if average is None else f"{average:.4f}"
        line = f"{name:<{width}} {tier:<18} {scores['single_trial_correlation']:>12.4f} {average:>11}"
        return line + (f" {'' if feve is None else f'{feve:.4f}':>8}" if with_feve else "")

    header = f"{'mouse':<{width}} {'tier':<18} {'single-trial':>12} {'to-average':>11}"
    lines = [header + (f" {'FEVE':>8}" if with_feve else "")]
    for mouse, tiers in results["mice"].items():
        lines.extend(row(mouse, tier, scores) for tier, scores in tiers.items())
    lines.extend(row("ALL (neurons pooled)", tier, scores) for tier, scores in results["overall"].items())
    for tier, metrics in results.get("fraction_of_ceiling", {}).items():
        for metric, f in metrics.items():
            lines.append(f"{tier} {metric}: {f['fraction']:.1%} of the synthetic noise ceiling ({f['ceiling']:.4f})")
    logging.info("final scores (best checkpoint):\n%s", "\n".join(lines))
