"""``train_and_evaluate(config, workdir)``: the whole training run, resumable, with early stopping.

Epoch = ``steps_per_epoch`` optimiser steps, each on one sub-batch of every mouse. After each epoch the oracle
tier is scored on full-length trials (single-trial correlation, all neurons pooled) and the plateau schedule
decides: improved → save as best; ``patience`` evaluations without improvement → restore the best state and
multiply the learning rate by ``factor`` (not below ``min_lr``); the ``lr_decay_steps``-th time → stop. This joins
neuralpredictors' ``early_stopping`` (restore best, ``lr_decay_steps``) and ``ReduceLROnPlateau``, which the
reference runs side by side with the same patience.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import ml_collections
from absl import logging
from flax import nnx

from sensorium_jax import parallel
from sensorium_jax.data import layout, pipeline
from sensorium_jax.data.reader import Session, open_sessions
from sensorium_jax.evaluation import evaluate as evaluation
from sensorium_jax.models.model import MiceInfo, VideoModel, count_parameters
from sensorium_jax.training import step as steps
from sensorium_jax.training.checkpoint import Checkpoints
from sensorium_jax.training.logger import MetricWriter


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


class PlateauSchedule:
    """Reduce-on-plateau with restore-best and a stop rule; its state is a JSON-able dict (checkpointed)."""

    def __init__(self, config: ml_collections.ConfigDict, base_lr: float):
        self.patience = config.patience
        self.factor = config.factor
        self.tolerance = config.tolerance
        self.decay_steps = config.lr_decay_steps
        self.min_scale = config.min_lr / base_lr

    @staticmethod
    def initial() -> dict:
        return {"best": -math.inf, "best_epoch": -1, "bad_evaluations": 0, "decays": 0, "stopped": False}

    def update(self, loop: dict, objective: float, epoch: int, lr_scale: float) -> tuple[str, float]:
        """Returns the action ('improved', 'wait', 'decay', 'stop') and the new lr scale."""
        if objective > loop["best"] + self.tolerance:
            loop.update(best=objective, best_epoch=epoch, bad_evaluations=0)
            return "improved", lr_scale
        loop["bad_evaluations"] += 1
        if loop["bad_evaluations"] < self.patience:
            return "wait", lr_scale
        loop["bad_evaluations"] = 0
        loop["decays"] += 1
        if loop["decays"] >= self.decay_steps:
            loop["stopped"] = True
            return "stop", lr_scale
        return "decay", max(lr_scale * self.factor, self.min_scale)


def _json_ready(tree):
    if isinstance(tree, dict):
        return {k: _json_ready(v) for k, v in tree.items() if not str(k).startswith("per_neuron")}
    return tree


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    sessions, synthetic_root = load_sessions(config.data)
    for session in sessions:
        logging.info("%r", session)

    mesh = parallel.make_mesh(config.num_devices)
    batch_size = config.data.batch_size
    pipeline.check_divisibility(batch_size, jax.process_count(), mesh.size)
    mice = MiceInfo.from_sessions(sessions)
    model = VideoModel(config.model, mice, rngs=nnx.Rngs(config.seed))
    logging.info(
        "model: %s core, %d parameters (%d mice, %d neurons), burn-in %d frames",
        config.model.core.name,
        count_parameters(model),
        len(sessions),
        sum(mice.num_neurons),
        model.burn_in,
    )
    if config.data.clip_frames <= model.burn_in:
        raise ValueError(f"clip_frames {config.data.clip_frames} must exceed the core's burn-in {model.burn_in}")

    tx = steps.make_optimizer(config.optim, nnx.state(model, nnx.Param))
    graphdef, state = steps.create_train_state(model, tx, config.seed)
    replicated = parallel.replicated(mesh)
    state = jax.device_put(state, replicated)

    train_counts = [s.trials(layout.Tier.TRAIN.value).size for s in sessions]
    steps_per_epoch = config.train.steps_per_epoch or math.ceil(max(train_counts) / batch_size)
    spec = pipeline.ClipSpec(
        batch_size=batch_size,
        clip_frames=config.data.clip_frames,
        max_neurons=mice.max_neurons,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    iterator = pipeline.train_iterator(
        sessions,
        spec,
        steps_per_epoch * config.train.max_epochs,
        config.data.num_workers,
        config.data.prefetch,
    )

    checkpoints = Checkpoints(workdir)
    schedule = PlateauSchedule(config.schedule, config.optim.lr)
    loop = {"epoch": 0, **PlateauSchedule.initial()}
    if checkpoints.latest_step() is not None:
        state, loop = checkpoints.restore_latest(state, iterator)
        logging.info("resumed from %s at step %d (epoch %d)", workdir / "checkpoints", int(state.step), loop["epoch"])

    # The loss scale of the reference: sqrt(number of trials in the session / batch size), per mouse.
    loss_scale = [math.sqrt(s.num_trials / batch_size) for s in sessions]
    batch_sharding = parallel.mouse_batch_sharding(mesh)
    train_step = steps.jit_train_step(
        steps.make_train_step(graphdef, tx, loss_scale, config.train.correlation_weight, config.train.loss_last_frames),
        replicated,
        batch_sharding,
        replicated,
    )
    predict = steps.make_predict(graphdef)
    clips_per_step = batch_size * len(sessions)
    writer = MetricWriter(workdir, enabled=is_main)
    eval_kwargs = dict(burn_in=model.burn_in, batch_size=config.eval.batch_size, max_neurons=mice.max_neurons)

    timer = {"t": time.perf_counter(), "steps": 0, "compiled": False}
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
            record = {**metrics, "lr": lr}
            if not timer["compiled"]:
                logging.info("step %d: first step (compilation included) took %.1f s", step, elapsed)
                timer["compiled"] = True
            else:
                record["clips_per_second"] = timer["steps"] * clips_per_step / elapsed
                logging.info(
                    "epoch %d step %d: loss %.4g (poisson/element %.4f) | %.1f clips/s, %.2f s/step | lr %.3g",
                    loop["epoch"] + 1,
                    step,
                    metrics["loss"],
                    metrics["poisson"],
                    record["clips_per_second"],
                    elapsed / timer["steps"],
                    lr,
                )
            writer.write(step, record)
            timer.update(t=time.perf_counter(), steps=0)

        loop["epoch"] += 1
        step = int(state.step)
        objective = evaluation.validation_correlation(predict, state, sessions, **eval_kwargs)
        action, lr_scale = schedule.update(loop, objective, loop["epoch"], float(state.lr_scale))
        logging.info(
            "epoch %d: validation (oracle) single-trial correlation %.4f (best %.4f at epoch %d) → %s",
            loop["epoch"],
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
        checkpoints.save_latest(step, state, iterator, loop)
        timer.update(t=time.perf_counter(), steps=0)

    if checkpoints.has_best():
        state = jax.device_put(checkpoints.restore_best(state), replicated)
    tiers = [t for t in layout.EVALUATION_TIERS if any(s.trials(t).size for s in sessions)]
    results = evaluation.evaluate(predict, state, sessions, tiers, **eval_kwargs)
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


def _fraction_of_ceiling(results: dict) -> dict:
    """Model correlation / noise-ceiling correlation per tier (all neurons of all mice pooled, like the scores)."""
    fractions = {}
    for tier, scores in results["overall"].items():
        ceiling = results["ceilings"].get("mean", {}).get(tier)
        if not ceiling:
            continue
        fractions[tier] = {}
        for metric in ("single_trial", "correlation_to_average"):
            value, bound = (
                scores.get(f"{metric}_correlation" if metric == "single_trial" else metric),
                ceiling.get(metric),
            )
            if value is not None and bound:
                fractions[tier][metric] = {"ceiling": bound, "fraction": value / bound}
    return fractions


def _log_table(results: dict) -> None:
    width = max(len("ALL (neurons pooled)"), *(len(mouse) for mouse in results["mice"]))

    def row(name: str, tier: str, scores: dict) -> str:
        average = scores.get("correlation_to_average")
        average = "" if average is None else f"{average:.4f}"
        return f"{name:<{width}} {tier:<18} {scores['single_trial_correlation']:>12.4f} {average:>11}"

    lines = [f"{'mouse':<{width}} {'tier':<18} {'single-trial':>12} {'to-average':>11}"]
    for mouse, tiers in results["mice"].items():
        lines.extend(row(mouse, tier, scores) for tier, scores in tiers.items())
    lines.extend(row("ALL (neurons pooled)", tier, scores) for tier, scores in results["overall"].items())
    for tier, metrics in results.get("fraction_of_ceiling", {}).items():
        for metric, f in metrics.items():
            lines.append(f"{tier} {metric}: {f['fraction']:.1%} of the synthetic noise ceiling ({f['ceiling']:.4f})")
    logging.info("final scores (best checkpoint):\n%s", "\n".join(lines))
