"""The jitted train step and the training loop: learning, sharding, recompiles, kill-and-resume."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.configs import factorized
from sensorium_jax import parallel
from sensorium_jax.data import pipeline
from sensorium_jax.data.reader import open_sessions
from sensorium_jax.models.model import MiceInfo, VideoModel
from sensorium_jax.training import step as steps
from sensorium_jax.training.loop import TimeBudget, train_and_evaluate


def tiny_config(paths=""):
    config = factorized.get_config("cpu")
    config.model.core.hidden_channels = (3, 3)
    config.model.core.spatial_kernels = (5, 3)
    config.model.core.temporal_kernels = (3, 3)
    config.model.core.spatial_strides = (1, 1)
    config.data.paths = paths
    config.data.batch_size = 8
    config.data.clip_frames = 16
    config.train.steps_per_epoch = 2
    config.train.max_epochs = 2
    config.train.log_every = 1
    config.eval.batch_size = 4
    config.optim.lr = 0.01
    config.schedule.kind = "plateau"  # the demo's cosine holds for 4 epochs, longer than these runs
    return config


def build(sessions, config):
    mice = MiceInfo.from_sessions(sessions)
    model = VideoModel(config.model, mice, rngs=nnx.Rngs(0))
    tx = steps.make_optimizer(config.optim, nnx.state(model, nnx.Param))
    graphdef, state = steps.create_train_state(model, tx, seed=0)
    return graphdef, tx, state, mice


def run_steps(sessions, config, num_devices, batches, tx=None):
    graphdef, adamw, state, _ = build(sessions, config)
    if tx is None:
        tx = adamw
    else:
        state = state.replace(opt_state=tx.init(state.params))
    mesh = parallel.make_mesh(num_devices)
    replicated, batch_sharding = parallel.replicated(mesh), parallel.mouse_batch_sharding(mesh)
    state = jax.device_put(state, replicated)
    step = steps.jit_train_step(steps.make_train_step(graphdef, tx, [2.0, 3.0]), replicated, batch_sharding, replicated)
    losses = []
    for batch in batches:  # max_traces=1 inside: a recompile on any later step raises
        state, metrics = step(state, parallel.to_global(batch, batch_sharding))
        losses.append(float(metrics["loss"]))
    return state, losses


@pytest.fixture
def sessions(tiny_sessions):
    return open_sessions(tiny_sessions)


def test_loss_decreases_and_no_recompiles(sessions):
    config = tiny_config()
    rounds = pipeline.TrainRound(sessions, pipeline.ClipSpec(8, 16, 9))
    batch = rounds(0)
    _, losses = run_steps(sessions, config, 1, [batch] * 12)
    assert losses[-1] < 0.9 * losses[0], losses


def test_eight_device_step_matches_one_device(sessions):
    assert jax.device_count() == 8
    config = tiny_config()
    rounds = pipeline.TrainRound(sessions, pipeline.ClipSpec(8, 16, 9))
    batches = [rounds(i) for i in range(2)]
    # Plain SGD: Adam would blow float noise in the (mathematically zero) gradients of conv biases ahead of
    # batch norm up to full-size steps, and the comparison would test Adam's normalisation, not the sharding.
    single, loss_single = run_steps(sessions, config, 1, batches, optax.sgd(1e-4))
    sharded, loss_sharded = run_steps(sessions, config, 8, batches, optax.sgd(1e-4))
    np.testing.assert_allclose(loss_sharded, loss_single, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6),
        single.params,
        sharded.params,
    )


def test_optimizer_groups_core_and_rest(sessions):
    config = tiny_config()
    _, _, state, _ = build(sessions, config)
    labels = steps.param_labels(state.params)
    flat = jax.tree_util.tree_leaves_with_path(labels)
    assert {label for path, label in flat if "core" in jax.tree_util.keystr(path)} == {"core"}
    assert {label for path, label in flat if "core" not in jax.tree_util.keystr(path)} == {"rest"}


def _records(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_kill_and_resume_continues_identically(tiny_sessions, tmp_path):
    paths = ",".join(str(p) for p in tiny_sessions)
    straight = tmp_path / "straight"
    train_and_evaluate(tiny_config(paths), straight)

    resumed = tmp_path / "resumed"
    first = tiny_config(paths)
    first.train.max_epochs = 1  # the run "dies" after its first epoch's checkpoint
    train_and_evaluate(first, resumed)
    results = train_and_evaluate(tiny_config(paths), resumed)

    want = {r["step"]: r for r in _records(straight) if "loss" in r}
    got = {r["step"]: r for r in _records(resumed) if "loss" in r}
    assert 4 in got and 4 in want  # epoch 2, step 4: computed only after the restart
    for step in (3, 4):  # same batches, same parameters → identical losses
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-6)
    final = json.loads((straight / "metrics.json").read_text())
    assert results["overall"]["oracle"]["single_trial_correlation"] == pytest.approx(
        final["overall"]["oracle"]["single_trial_correlation"], abs=1e-6
    )
    assert set(results["mice"]) == {"mouse-a", "mouse-b"}
    assert results["epochs"] == 2


def test_time_budget_stops_before_an_epoch_that_would_overrun():
    clock = iter([0.0, 100.0, 250.0, 330.0])  # construction, then the end of three epochs (100 s, 150 s, 80 s)
    budget = TimeBudget(minutes=5.0, used_s=20.0, clock=lambda: next(clock))  # 20 s used before a restart
    assert budget.end_epoch() == 120.0 and not budget.exhausted()  # 120 + 100 ≤ 300
    assert budget.end_epoch() == 270.0 and budget.exhausted()  # 270 + 150 > 300: the next epoch would overrun
    assert budget.end_epoch() == 350.0 and budget.exhausted()
    assert not TimeBudget(minutes=0.0).exhausted()  # no budget
    with pytest.raises(ValueError, match="time_budget_clock"):
        TimeBudget.from_config(ml_collections.ConfigDict(dict(time_budget_minutes=1.0, time_budget_clock="gpu")))


def test_training_stops_when_the_time_budget_is_spent(tiny_sessions, tmp_path):
    config = tiny_config(",".join(str(p) for p in tiny_sessions))
    config.train.max_epochs = 3
    config.train.time_budget_minutes = 1e-4  # spent by the first epoch
    config.train.validate_every = 2  # epoch 1 would not be validated, but the budget stops the run there
    results = train_and_evaluate(config, tmp_path / "w")
    assert results["epochs"] == 1
    assert "oracle" in results["overall"]  # the final evaluation still runs
    validated = [r["epoch"] for r in _records(tmp_path / "w") if "validation_correlation" in r]
    assert validated == [1] and results["best_epoch"] == 1


def test_validate_every_skips_epochs_but_always_validates_the_last(tiny_sessions, tmp_path):
    config = tiny_config(",".join(str(p) for p in tiny_sessions))
    config.train.max_epochs = 3
    config.train.validate_every = 2
    train_and_evaluate(config, tmp_path / "w")
    validated = [r["epoch"] for r in _records(tmp_path / "w") if "validation_correlation" in r]
    assert validated == [2, 3]


def test_bad_batch_size_fails_at_start(tiny_sessions, tmp_path):
    config = tiny_config(",".join(str(p) for p in tiny_sessions))
    config.data.batch_size = 6
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        train_and_evaluate(config, tmp_path / "w")


def test_clip_shorter_than_burn_in_fails_at_start(tiny_sessions, tmp_path):
    config = tiny_config(",".join(str(p) for p in tiny_sessions))
    config.data.clip_frames = 4
    with pytest.raises(ValueError, match="burn-in"):
        train_and_evaluate(config, tmp_path / "w")


def test_predict_is_one_compile_for_every_mouse(sessions):
    config = tiny_config()
    graphdef, _, state, _ = build(sessions, config)
    predict = steps.make_predict(graphdef)
    videos = jnp.zeros((2, 30, 36, 64))
    behavior = jnp.zeros((2, 30, 2))
    out0 = predict(state, jnp.int32(0), videos, behavior, behavior)
    out1 = predict(state, jnp.int32(1), videos, behavior, behavior)
    assert out0.shape == out1.shape == (2, 30 - 4, 9)
    assert predict._cache_size() == 1
