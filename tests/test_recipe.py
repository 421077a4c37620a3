"""Training-recipe switches of the SENSORIUM 2023 winners: lr schedules, EMA, CutMix, gradient accumulation,
one mouse per step, and the plateau rule — each against hand-computed values.

Most tests run the shared train step on a toy model that follows the model interface (a gain "core" with
optional batch norm, per-mouse linear readouts), so values can be computed by hand and the tests stay fast; the
last test runs the whole loop on the real model with every switch on.
"""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from sensorium_jax.data import pipeline
from sensorium_jax.data.reader import open_sessions
from sensorium_jax.evaluation import loading
from sensorium_jax.models.layers import Constant
from sensorium_jax.training import augment, ema, schedules
from sensorium_jax.training import step as steps
from sensorium_jax.training.loop import train_and_evaluate
from tests.test_train import tiny_config

# ----------------------------------------------------------------------------------------------------------------
# A toy model with the interface the train step uses


class ToyCore(nnx.Module):
    def __init__(self, batch_norm: bool, rngs: nnx.Rngs):
        self.gain = nnx.Param(jnp.asarray(0.7, jnp.float32))  # strongly typed: no retrace
        self.norm = nnx.BatchNorm(1, momentum=0.9, rngs=rngs) if batch_norm else None

    def __call__(self, videos: jax.Array, train: bool) -> jax.Array:
        x = videos.mean(axis=(-2, -1)) * self.gain[...]  # (..., T)
        if self.norm is not None:
            x = self.norm(x[..., None], use_running_average=not train)[..., 0]
        return x


class ToyReadouts(nnx.Module):
    def __init__(self, num_neurons: tuple[int, ...], rngs: nnx.Rngs):
        m, n = len(num_neurons), max(num_neurons)
        mask = np.zeros((m, n), bool)
        for i, count in enumerate(num_neurons):
            mask[i, :count] = True
        self.num_neurons = tuple(num_neurons)
        self.neuron_mask = Constant(jnp.asarray(mask))
        self.weight = nnx.Param(1.0 + 0.5 * jax.random.normal(rngs.params(), (m, n)))
        self.bias = nnx.Param(0.1 * jax.random.normal(rngs.params(), (m, n)))


class ToyModel(nnx.Module):
    """rates = softplus(w_n · (core(video) + 0.1 · behaviour) + b_n), burn-in 1 frame."""

    burn_in = 1

    def __init__(self, num_neurons: tuple[int, ...], batch_norm: bool = True, seed: int = 0):
        rngs = nnx.Rngs(seed)
        self.core = ToyCore(batch_norm, rngs)
        self.readouts = ToyReadouts(num_neurons, rngs)

    def _rates(self, x: jax.Array, weight: jax.Array, bias: jax.Array) -> jax.Array:
        return jax.nn.softplus(x[..., None] * weight + bias)

    def __call__(self, videos, behavior, pupil_center, *, train: bool, key=None):
        x = self.core(videos, train)[:, :, self.burn_in :] + 0.1 * behavior[:, :, self.burn_in :, 0]
        return self._rates(x, self.readouts.weight[...][:, None, None], self.readouts.bias[...][:, None, None])

    def predict_mouse(self, mouse, videos, behavior, pupil_center, lengths=None):
        x = self.core(videos, False)[:, self.burn_in :] + 0.1 * behavior[:, self.burn_in :, 0]
        return self._rates(x, self.readouts.weight[...][mouse], self.readouts.bias[...][mouse])

    def regularizer(self) -> jax.Array:
        mask = self.readouts.neuron_mask[...]
        return 0.01 * self.core.gain[...] ** 2 + 0.02 * jnp.sum(self.readouts.weight[...] ** 2 * mask, axis=-1)


def toy_batch(seed: int, mice: int = 2, clips: int = 4, frames: int = 5, neurons: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "videos": rng.normal(size=(mice, clips, frames, 3, 4)).astype(np.float32),
        "behavior": rng.normal(size=(mice, clips, frames, 2)).astype(np.float32),
        "pupil_center": rng.normal(size=(mice, clips, frames, 2)).astype(np.float32),
        "responses": rng.poisson(1.0, size=(mice, clips, frames, neurons)).astype(np.float32),
    }


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def jitted(step):
    return jax.jit(steps.assert_max_traces(step, 1))  # a second trace (a recompile) raises


# ----------------------------------------------------------------------------------------------------------------
# Learning-rate schedules


def test_warmup_cosine_values_at_hand_computed_steps():
    # warm-up 4 steps from 0.2, hold 2, cosine over the remaining 10 steps to 0.1
    factor = schedules.warmup_cosine(total_steps=16, warmup_steps=4, hold_steps=2, warmup_start=0.2, final_fraction=0.1)
    expected = {0: 0.2, 2: 0.6, 3: 0.8, 4: 1.0, 5: 1.0, 6: 1.0, 11: 0.55, 16: 0.1, 40: 0.1}
    for step, value in expected.items():
        assert float(factor(step)) == pytest.approx(value, abs=1e-6), step
    # quarter of the cosine: 0.1 + 0.9 · ½(1 + cos(π/4))
    assert float(factor(6 + 2.5)) == pytest.approx(0.1 + 0.45 * (1 + np.cos(np.pi / 4)), abs=1e-6)

    config = ml_collections.ConfigDict(
        dict(kind="warmup_cosine", warmup_epochs=1.0, hold_epochs=0.5, warmup_start=0.2, final_lr_fraction=0.1)
    )
    from_config = schedules.make_lr_schedule(config, steps_per_epoch=4, max_epochs=4)
    for step in range(20):
        assert float(from_config(step)) == pytest.approx(float(factor(step)), abs=1e-7)
    assert schedules.make_lr_schedule(ml_collections.ConfigDict(dict(kind="plateau")), 4, 4) is None
    with pytest.raises(ValueError, match="kind"):
        schedules.make_lr_schedule(ml_collections.ConfigDict(dict(kind="cosine")), 4, 4)


def test_schedule_scales_the_update_inside_one_compiled_step():
    model = ToyModel((4, 4), batch_norm=False)
    tx = optax.sgd(0.1)
    graphdef, state = steps.create_train_state(model, tx, seed=0)
    factor = schedules.warmup_cosine(total_steps=10, warmup_steps=4, warmup_start=0.25)
    plain = jax.jit(steps.make_train_step(graphdef, tx, [1.0, 1.0]))
    scheduled = jitted(steps.make_train_step(graphdef, tx, [1.0, 1.0], lr_schedule=factor))
    batch = toy_batch(0)
    before = host(state.params)
    full_step = jax.tree.map(lambda a, b: a - b, host(plain(state, batch)[0].params), before)
    after, _ = scheduled(state, batch)
    jax.tree.map(  # step 0 applies 0.25 of the plain SGD update
        lambda d, a, b: np.testing.assert_allclose(a - b, 0.25 * d, rtol=1e-5, atol=1e-8),
        full_step,
        host(after.params),
        before,
    )
    for _ in range(5):  # later steps: other factors, same compiled step (a recompile would raise)
        after, _ = scheduled(after, batch)
    assert int(after.step) == 6


def test_plateau_schedule_reset_rule():
    config = ml_collections.ConfigDict(
        dict(patience=2, factor=0.5, tolerance=1e-6, min_lr=1e-4, lr_decay_steps=2, reset_decays_on_improvement=False)
    )
    objectives = [1.0, 0.5, 0.5, 2.0, 0.5, 0.5]

    def run(reset: bool) -> list[tuple[str, float]]:
        config.reset_decays_on_improvement = reset
        schedule, loop, scale, actions = schedules.PlateauSchedule(config, base_lr=0.01), {}, 1.0, []
        loop.update(schedules.PlateauSchedule.initial())
        for epoch, objective in enumerate(objectives, 1):
            action, scale = schedule.update(loop, objective, epoch, scale)
            actions.append((action, scale))
        return actions

    # neuralpredictors: plateaus count over the whole run → the second plateau stops, although the run improved
    assert run(False) == [
        ("improved", 1.0),
        ("wait", 1.0),
        ("decay", 0.5),
        ("improved", 0.5),
        ("wait", 0.5),
        ("stop", 0.5),
    ]
    # ViV1T: an improvement resets the count (num_reduce = 0) → the second plateau decays again
    assert run(True)[-1] == ("decay", 0.25)
    tracking = schedules.PlateauSchedule(config, base_lr=0.01, decay=False)  # warm-up + cosine owns the lr
    loop = schedules.PlateauSchedule.initial()
    assert [tracking.update(loop, o, e, 1.0)[0] for e, o in enumerate(objectives)] == [
        "improved",
        "wait",
        "wait",
        "improved",
        "wait",
        "wait",
    ]


# ----------------------------------------------------------------------------------------------------------------
# EMA


def test_ema_of_params_and_batch_stats_follows_the_recurrence():
    model = ToyModel((3, 4), batch_norm=True)
    tx = optax.adamw(0.05, weight_decay=0.01)
    graphdef, state = steps.create_train_state(model, tx, seed=0, ema=True)
    assert isinstance(state, steps.EmaTrainState)
    step = jitted(steps.make_train_step(graphdef, tx, [1.0, 2.0], ema_decay=0.5))
    expected = host(ema.EmaWeights(state.params, state.batch_stats))
    for i in range(3):
        state, _ = step(state, toy_batch(i))
        params, stats = host(state.params), host(state.batch_stats)
        expected = jax.tree.map(lambda e, v: 0.5 * e + 0.5 * v, expected, ema.EmaWeights(params, stats))
    got = host(state.ema)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, expected)
    # the batch statistics did move, and the EMA differs from the raw weights
    assert not np.allclose(got.batch_stats["core"]["norm"]["mean"], 0.0)
    assert not np.allclose(got.params["core"]["gain"], host(state.params)["core"]["gain"])

    # prediction uses the EMA weights and EMA statistics
    predict = steps.make_predict(graphdef)
    videos, behavior = toy_batch(9)["videos"][0], toy_batch(9)["behavior"][0]
    out = predict(state, jnp.int32(1), videos, behavior, behavior)
    averaged = nnx.merge(graphdef, state.ema.params, state.ema.batch_stats, state.constants)
    np.testing.assert_allclose(out, averaged.predict_mouse(1, videos, behavior, behavior), rtol=1e-6)
    raw = nnx.merge(graphdef, state.params, state.batch_stats, state.constants)
    assert not np.allclose(out, raw.predict_mouse(1, videos, behavior, behavior))


def test_ema_needs_an_ema_state():
    model = ToyModel((3, 4))
    graphdef, state = steps.create_train_state(model, optax.sgd(0.1), seed=0)
    with pytest.raises(TypeError, match="ema=True"):
        steps.make_train_step(graphdef, optax.sgd(0.1), [1.0, 1.0], ema_decay=0.9)(state, toy_batch(0))


# ----------------------------------------------------------------------------------------------------------------
# CutMix


def test_cutmix_hand_case_mixes_by_the_exact_box_area():
    videos = np.ones((1, 2, 3, 4, 6), np.float32)
    videos[0, 1] = 2.0
    batch = {
        "videos": videos,
        "responses": np.stack([np.full((3, 5), 10.0), np.full((3, 5), 30.0)])[None].astype(np.float32),
        "behavior": np.stack([np.full((3, 2), 1.0), np.full((3, 2), 5.0)])[None].astype(np.float32),
        "pupil_center": np.zeros((1, 2, 3, 2), np.float32),
    }
    # clip 0: rows [1, 3) × columns [2, 5) of its partner (clip 1) = 6 of 24 pixels; clip 1: no box
    boxes = augment.Boxes(
        y0=jnp.array([[1, 0]]), y1=jnp.array([[3, 0]]), x0=jnp.array([[2, 0]]), x1=jnp.array([[5, 0]])
    )
    out = host(augment.paste(batch, boxes, behavior="mix"))
    expected = np.ones((3, 4, 6), np.float32)
    expected[:, 1:3, 2:5] = 2.0  # every frame
    np.testing.assert_array_equal(out["videos"][0, 0], expected)
    np.testing.assert_array_equal(out["videos"][0, 1], videos[0, 1])
    np.testing.assert_allclose(out["responses"][0, 0], 0.75 * 10 + 0.25 * 30)  # 15
    np.testing.assert_array_equal(out["responses"][0, 1], 30.0)
    np.testing.assert_allclose(out["behavior"][0, 0], 0.75 * 1 + 0.25 * 5)  # 2
    kept = host(augment.paste(batch, boxes, behavior="keep"))
    np.testing.assert_array_equal(kept["behavior"], batch["behavior"])
    np.testing.assert_allclose(kept["responses"][0, 0], 15.0)


def test_cutmix_draws_boxes_and_leaves_the_rest_untouched():
    m, b, t, h, w = 2, 6, 3, 8, 10
    rng = np.random.default_rng(0)
    clip_value = np.arange(m * b, dtype=np.float32).reshape(m, b)
    batch = {
        "videos": np.broadcast_to(clip_value[:, :, None, None, None], (m, b, t, h, w)).copy(),
        "responses": rng.uniform(1, 2, (m, b, t, 3)).astype(np.float32) + 10 * clip_value[:, :, None, None],
        "behavior": rng.normal(size=(m, b, t, 2)).astype(np.float32),
        "pupil_center": rng.normal(size=(m, b, t, 2)).astype(np.float32),
    }
    out = host(jax.jit(lambda x, k: augment.cutmix(x, k, prob=1.0, alpha=1.0))(batch, jax.random.key(3)))
    partner_value = np.roll(clip_value, -1, axis=1)  # the next clip of the same mouse
    mixed = 0
    for i in range(m):
        for j in range(b):
            video = out["videos"][i, j]
            pasted = video != clip_value[i, j]
            assert (video[pasted] == partner_value[i, j]).all()  # pasted pixels are the partner's …
            assert (pasted == pasted[0]).all()  # … in the same box on every frame
            rows, cols = np.nonzero(pasted[0])
            area = pasted[0].sum()
            if area:  # a solid rectangle
                assert area == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
                mixed += 1
            fraction = area / (h * w)
            own, other = batch["responses"][i, j], batch["responses"][i, (j + 1) % b]
            np.testing.assert_allclose(out["responses"][i, j], (1 - fraction) * own + fraction * other, rtol=1e-6)
    assert mixed >= m * b // 2  # with p = 1 only boxes of zero width (λ ≈ 0) stay empty
    none = host(augment.cutmix(batch, jax.random.key(3), prob=0.0))
    for key in batch:
        np.testing.assert_array_equal(none[key], batch[key])


def test_cutmix_in_the_step_uses_the_step_key():
    model = ToyModel((4, 4), batch_norm=False)
    tx = optax.sgd(0.1)
    graphdef, state = steps.create_train_state(model, tx, seed=0)
    mixing = jitted(steps.make_train_step(graphdef, tx, [1.0, 1.0], cutmix=augment.CutMix(prob=1.0)))
    plain = jax.jit(steps.make_train_step(graphdef, tx, [1.0, 1.0]))
    batch = toy_batch(0)
    first, metrics = mixing(state, batch)
    _, same = mixing(state, batch)  # same state → same key → same boxes
    assert float(metrics["loss"]) == float(same["loss"])
    assert float(metrics["loss"]) != pytest.approx(float(plain(state, batch)[1]["loss"]), rel=1e-6)
    _, later = mixing(first, batch)  # next step, other boxes, no recompile
    assert np.isfinite(float(later["loss"]))


# ----------------------------------------------------------------------------------------------------------------
# Gradient accumulation


@pytest.mark.parametrize("last_frames", [0, 2])
def test_accumulated_micro_batches_equal_one_step_on_the_whole_batch(last_frames):
    model = ToyModel((3, 4), batch_norm=False)  # batch norm would normalise each micro-batch on its own
    tx = optax.sgd(0.05)
    graphdef, state = steps.create_train_state(model, tx, seed=0)
    batch = toy_batch(1, clips=8)
    whole = jax.jit(steps.make_train_step(graphdef, tx, [1.5, 0.5], last_frames=last_frames))
    want, want_metrics = whole(state, batch)
    for k in (2, 4):
        accumulated = jitted(
            steps.make_train_step(graphdef, tx, [1.5, 0.5], last_frames=last_frames, accumulate_steps=k)
        )
        got, got_metrics = accumulated(state, batch)
        for name in ("loss", "poisson", "grad_norm"):
            assert float(got_metrics[name]) == pytest.approx(float(want_metrics[name]), rel=1e-5), name
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), host(got.params), host(want.params)
        )
    # the loop (accelerators) and the unrolled form (CPU, the step's default here) give the same gradients
    whole_grads = jax.jit(steps.make_gradient_fn(graphdef, [1.5, 0.5], last_frames=last_frames))
    want_grads = host(whole_grads(state, batch, jax.random.key(0))[0])
    for unroll in (False, True):
        fn = steps.make_gradient_fn(graphdef, [1.5, 0.5], 0.0, last_frames, 4, unroll_micro_batches=unroll)
        got_grads = host(jax.jit(fn)(state, batch, jax.random.key(0))[0])
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got_grads, want_grads)
    micro = steps.split_micro_batches(jnp.arange(8)[None], 4)  # strided: micro-batch j holds clips j, j + 4
    np.testing.assert_array_equal(micro[:, 0], [[0, 4], [1, 5], [2, 6], [3, 7]])


# ----------------------------------------------------------------------------------------------------------------
# One mouse per step


def one_mouse_setup():
    counts = (3, 4, 5)
    model = ToyModel(counts)
    leaves = steps.per_mouse_leaves(model, nnx.eval_shape(lambda: ToyModel((*counts, 5))), num_mice=3)
    return model, leaves


def one_mouse_batch(mouse: int, seed: int) -> dict:
    batch = toy_batch(seed, mice=1, neurons=5)
    batch["mouse"] = np.full((1, 4), mouse, np.int32)
    return batch


def test_per_mouse_leaves_are_found_by_shape():
    _, leaves = one_mouse_setup()
    assert {collection for collection, _ in leaves} == {"params", "constants"}
    assert all("readouts" in path for _, path in leaves) and len(leaves) == 3  # weight, bias, neuron_mask


def test_one_mouse_only_that_mouse_gets_gradients_and_no_recompile():
    model, leaves = one_mouse_setup()
    tx = optax.adamw(0.05, weight_decay=0.1)  # weight decay and momentum must not move the other mice
    graphdef, state = steps.create_train_state(model, tx, seed=0)
    gradients = jax.jit(steps.make_gradient_fn(graphdef, [1.0, 2.0, 3.0], mouse_leaves=leaves))
    for mouse in range(3):
        grads, _, sums = host(gradients(state, one_mouse_batch(mouse, mouse), jax.random.key(0)))
        for name in ("weight", "bias"):
            rows = np.abs(grads["readouts"][name]).sum(axis=1)
            assert rows[mouse] > 0 and np.all(np.delete(rows, mouse) == 0), (name, rows)
        assert grads["core"]["gain"] != 0
        assert sums["elements"] == (3, 4, 5)[mouse] * 4 * 4  # that mouse's real neurons × clips × frames

    step = jitted(steps.make_train_step(graphdef, tx, [1.0, 2.0, 3.0], mouse_leaves=leaves))

    def readout_moments(s):  # Adam's first and second moments of the readouts
        adam = s.opt_state[0]
        return host(adam.mu["readouts"]), host(adam.nu["readouts"])

    for i, mouse in enumerate((0, 1, 2, 1, 0)):  # every mouse, one compiled step (a recompile raises)
        before, (before_mu, before_nu) = host(state.params), readout_moments(state)
        state, metrics = step(state, one_mouse_batch(mouse, 10 + i))
        after, (after_mu, after_nu) = host(state.params), readout_moments(state)
        for name in ("weight", "bias"):
            for tree_before, tree_after in ((before["readouts"], after["readouts"]), (before_mu, after_mu)):
                others = [m for m in range(3) if m != mouse]
                np.testing.assert_array_equal(tree_after[name][others], tree_before[name][others])
                assert not np.array_equal(tree_after[name][mouse], tree_before[name][mouse])
            np.testing.assert_array_equal(np.delete(after_nu[name], mouse, 0), np.delete(before_nu[name], mouse, 0))
        assert after["core"]["gain"] != before["core"]["gain"]
        assert np.isfinite(float(metrics["loss"]))


def test_one_mouse_rounds_cycle_mice_through_the_same_per_mouse_stream(tiny_sessions):
    sessions = open_sessions(tiny_sessions)
    spec = dict(batch_size=4, clip_frames=12, max_neurons=9, seed=5)
    every = pipeline.TrainRound(sessions, pipeline.ClipSpec(**spec))
    one = pipeline.TrainRound(sessions, pipeline.ClipSpec(**spec, mouse_sampling="one"))
    for round_index in range(4):
        visit, mouse = divmod(round_index, 2)
        batch, reference = one(round_index), every(visit)
        assert batch["videos"].shape == (1, 4, 12, 36, 64) and batch["responses"].shape == (1, 4, 12, 9)
        np.testing.assert_array_equal(batch["mouse"], np.full((1, 4), mouse))
        for key in reference:
            np.testing.assert_array_equal(batch[key][0], reference[key][mouse])
    with pytest.raises(ValueError, match="mouse_sampling"):
        pipeline.ClipSpec(**spec, mouse_sampling="random")


# ----------------------------------------------------------------------------------------------------------------
# The whole loop with every switch on, then the run restored for evaluation


def test_loop_with_every_switch_and_ema_checkpoint_restores(tiny_sessions, tmp_path):
    config = tiny_config(",".join(str(p) for p in tiny_sessions))
    config.train.max_epochs = 1
    config.train.steps_per_epoch = 2
    config.data.mouse_sampling = "one"
    config.optim.accumulate_steps = 2
    config.train.ema_decay = 0.9
    config.train.cutmix_prob = 0.5
    config.train.loss_last_frames = 6
    config.schedule.kind = "warmup_cosine"
    config.schedule.warmup_steps = 1
    config.schedule.hold_epochs = 0.0  # (factorized:cpu holds for 7 of its 36 epochs)
    workdir = tmp_path / "run"
    loading.write_run_info(config, workdir)
    results = train_and_evaluate(config, workdir)
    assert results["epochs"] == 1 and set(results["mice"]) == {"mouse-a", "mouse-b"}
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs == [pytest.approx(0.0), pytest.approx(0.01)]  # one warm-up step from 0, then the cosine's start

    restored = loading.load_model(workdir)
    assert isinstance(restored.state, steps.EmaTrainState)
    session = open_sessions(tiny_sessions)[1]
    data = session.load(int(session.trials("oracle")[0]), 0, 20)
    videos, behavior, pupil = data["videos"][None], data["behavior"][None], data["pupil_center"][None]
    ema_model = nnx.merge(
        restored.graphdef, restored.state.ema.params, restored.state.ema.batch_stats, restored.state.constants
    )
    want = np.asarray(ema_model.predict_mouse(1, videos, behavior, pupil))[..., : session.num_neurons]
    np.testing.assert_allclose(restored.predict("mouse-b", videos, behavior, pupil), want, rtol=1e-6)


def test_factorized_cpu_variants_scale_the_schedule_and_widen_the_core():
    from experiments.configs import factorized

    demo = factorized.get_config("cpu")
    assert demo.train.max_epochs == 36 and demo.schedule.hold_epochs == 7.0
    wide = factorized.get_config("cpu,channels=32,epochs=18")
    assert tuple(wide.model.core.hidden_channels) == (32, 32, 32)
    assert wide.train.max_epochs == 18 and wide.schedule.hold_epochs == 3.5  # the flat phase keeps its share
