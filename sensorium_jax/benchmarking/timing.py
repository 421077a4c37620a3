"""The JAX measurements: compile time, steady-state train-step time, clips/s, memory and inference throughput of
one config, through the same code the training loop runs (registry → optimiser → train state → jitted step over
a mesh, state donated).

The batch is placed on the device once, so the step time excludes feeding it; the input pipeline is measured on
its own (:mod:`.pipeline_bench`) and the two are compared as a headroom ratio. Every timed call ends in
``jax.block_until_ready``: JAX dispatches asynchronously, and a clock read without it times only the dispatch.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from sensorium_jax import parallel
from sensorium_jax.benchmarking import fake_inputs
from sensorium_jax.benchmarking.memory import PeakMemory
from sensorium_jax.data import pipeline
from sensorium_jax.models.model import MiceInfo, count_parameters
from sensorium_jax.models.registry import build_model
from sensorium_jax.training import step as train_steps


@dataclasses.dataclass
class CallTimes:
    """Wall-clock seconds: the first call apart (it may compile), then the timed calls after the warm-up."""

    first_s: float
    times_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)


def time_calls(
    call: Callable[[], Any], steps: int, warmup: int = 1, sync: Callable[[Any], Any] = jax.block_until_ready
) -> CallTimes:
    """Time ``call()`` once (first), ``warmup`` more times untimed, then ``steps`` times; ``sync`` waits for the
    result (``jax.block_until_ready``; identity for synchronous work)."""
    if steps < 1:
        raise ValueError(f"steps={steps}: at least one timed call is needed")
    started = time.perf_counter()
    sync(call())
    first = time.perf_counter() - started
    for _ in range(warmup):
        sync(call())
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        sync(call())
        times.append(time.perf_counter() - started)
    return CallTimes(first, times)


class StepFailedError(RuntimeError):
    """The step compiled but failed to run (typically out of memory); carries the figures taken before."""

    def __init__(self, message: str, params: int, compile_s: float, xla_step_bytes: int | None):
        super().__init__(message)
        self.params = params
        self.compile_s = compile_s
        self.xla_step_bytes = xla_step_bytes


@dataclasses.dataclass
class JaxMeasurement:
    """One config's figures. ``clips_per_s`` = clips per step (mice × batch) / median step time."""

    params: int
    num_mice: int
    num_neurons: int
    batch_clips: int  # clips per optimiser step, all mice
    clip_frames: int
    compile_s: float  # trace + lower + XLA compile of the train step (ahead of time, no execution)
    step_times_s: list[float]
    peak_mem_bytes: int
    mem_kind: str
    xla_step_bytes: int | None  # XLA's own account of the step: arguments + outputs + temporaries − aliased
    eval_trials: int = 0
    eval_frames: int = 0
    eval_compile_s: float | None = None
    eval_times_s: list[float] = dataclasses.field(default_factory=list)
    devices: int = 1

    @property
    def step_s(self) -> float:
        return statistics.median(self.step_times_s)

    @property
    def clips_per_s(self) -> float:
        return self.batch_clips / self.step_s

    @property
    def eval_trials_per_s(self) -> float | None:
        return self.eval_trials / statistics.median(self.eval_times_s) if self.eval_times_s else None


def _xla_bytes(compiled) -> int | None:
    try:
        analysis = compiled.memory_analysis()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if analysis is None:
        return None
    return int(
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def measure_jax_config(
    config: ml_collections.ConfigDict,
    mice: MiceInfo,
    *,
    batch_size: int = 0,
    clip_frames: int = 0,
    steps: int = 5,
    warmup: int = 1,
    num_devices: int = 1,
    eval_steps: int = 2,
    eval_trials: int = 0,
    eval_frames: int = fake_inputs.EVAL_FRAMES,
    seed: int = 0,
) -> JaxMeasurement:
    """Build ``config`` (a run config) for ``mice``, compile its train step and time it on a fake batch.

    ``batch_size`` / ``clip_frames`` override the config's (0: keep); ``eval_steps > 0`` also times the jitted
    whole-trial inference of one mouse (``eval_trials`` trials of ``eval_frames`` frames; 0 trials: the config's
    eval batch size).
    """
    static = fake_inputs.is_static(config)
    batch_size = batch_size or config.data.batch_size
    clip_frames = 1 if static else (clip_frames or config.data.clip_frames)
    mesh = parallel.make_mesh(num_devices)
    pipeline.check_divisibility(batch_size, jax.process_count(), mesh.size)

    with PeakMemory() as memory:
        model = build_model(config.model, mice, task=config.get("task", "video"), seed=seed)
        if not static and clip_frames <= model.burn_in:
            raise ValueError(f"clip_frames {clip_frames} must exceed the core's burn-in {model.burn_in}")
        params = count_parameters(model)
        tx = steps_optimizer(config, model)
        graphdef, state = train_steps.create_train_state(model, tx, seed)
        del model
        replicated = parallel.replicated(mesh)
        state = jax.device_put(state, replicated)
        batch_sharding = parallel.mouse_batch_sharding(mesh)
        m = len(mice.names)
        host_batch = fake_inputs.fake_train_batch(m, batch_size, clip_frames, mice.max_neurons, static, seed)
        batch = jax.device_put(host_batch, batch_sharding)
        del host_batch
        loss_scale = [math.sqrt(fake_inputs.COMPETITION_TRAIN_TRIALS / batch_size)] * m
        train_step = train_steps.jit_train_step(
            train_steps.make_train_step(
                graphdef, tx, loss_scale, config.train.correlation_weight, config.train.loss_last_frames
            ),
            replicated,
            batch_sharding,
            replicated,
        )
        started = time.perf_counter()
        compiled = train_step.lower(state, batch).compile()
        compile_s = time.perf_counter() - started
        xla_bytes = _xla_bytes(compiled)

        def one_step():
            nonlocal state
            state, metrics = compiled(state, batch)
            return state, metrics["loss"]  # wait for the updated state too, not only the loss

        try:
            times = time_calls(one_step, steps=steps, warmup=warmup)
        except jax.errors.JaxRuntimeError as error:  # e.g. out of memory: keep what was measured before it
            raise StepFailedError(str(error).splitlines()[0], params, compile_s, xla_bytes) from error
        loss = float(one_step()[1])
        if not math.isfinite(loss):
            raise FloatingPointError(f"the train step's loss is {loss}: the measurement is of a broken step")

    measurement = JaxMeasurement(
        params=params,
        num_mice=m,
        num_neurons=sum(mice.num_neurons),
        batch_clips=m * batch_size,
        clip_frames=clip_frames,
        compile_s=compile_s,
        step_times_s=times.times_s,
        peak_mem_bytes=memory.peak_bytes,
        mem_kind=memory.kind,
        xla_step_bytes=xla_bytes,
        devices=mesh.size,
    )
    if eval_steps > 0:
        _measure_inference(measurement, graphdef, state, config, static, eval_steps, eval_trials, eval_frames, seed)
    return measurement


def steps_optimizer(config: ml_collections.ConfigDict, model: nnx.Module):
    """The run's optimiser (per-group AdamW), as the loop builds it."""
    return train_steps.make_optimizer(config.optim, nnx.state(model, nnx.Param))


def _measure_inference(
    measurement: JaxMeasurement,
    graphdef: nnx.GraphDef,
    state: train_steps.TrainState,
    config: ml_collections.ConfigDict,
    static: bool,
    eval_steps: int,
    eval_trials: int,
    eval_frames: int,
    seed: int,
) -> None:
    """Whole-trial inference of mouse 0 (the evaluation path: one compiled program for every mouse)."""
    trials = eval_trials or config.eval.batch_size
    frames = 1 if static else eval_frames
    predict = train_steps.make_predict(graphdef)
    inputs = {k: jnp.asarray(v) for k, v in fake_inputs.fake_eval_inputs(trials, frames, static, seed + 1).items()}
    mouse = jnp.asarray(0, jnp.int32)
    started = time.perf_counter()
    compiled = predict.lower(state, mouse, inputs["videos"], inputs["behavior"], inputs["pupil_center"]).compile()
    measurement.eval_compile_s = time.perf_counter() - started
    times = time_calls(
        lambda: compiled(state, mouse, inputs["videos"], inputs["behavior"], inputs["pupil_center"]),
        steps=eval_steps,
        warmup=0,
    )
    measurement.eval_trials = trials
    measurement.eval_frames = frames
    measurement.eval_times_s = times.times_s
