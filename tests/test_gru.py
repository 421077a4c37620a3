"""The GRU baseline: Hermite filter rotation, rotation equivariance, the ConvGRU scan and its hand-written
gradient, the composed core, parameter counts against the reference, and a tiny model learning without recompiles.

Tiny shapes throughout; the reference-size core only abstractly (``eval_shape``). Computations are jitted without
LLVM optimisation where they run once (compilation, not arithmetic, is what a 2-core machine spends time on).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import gru as gru_config
from sensorium_jax import parallel
from sensorium_jax.data import pipeline
from sensorium_jax.data.reader import open_sessions
from sensorium_jax.models.cores import CORES
from sensorium_jax.models.cores.conv_gru import ConvGRU
from sensorium_jax.models.cores.gru import GRUCore
from sensorium_jax.models.cores.rotation_equivariant import (
    HermiteConv2d,
    RotationEquivariant2dCore,
    hermite_basis,
    rotated_basis,
)
from sensorium_jax.models.layers import laplace_l2_norm
from sensorium_jax.models.model import MiceInfo, VideoModel, count_parameters
from sensorium_jax.training import losses
from sensorium_jax.training import step as steps
from tests.fake_data import write_session

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

COMPETITION_MICE = (7863, 7908, 8202, 7939, 8122, 7440, 7928, 8285, 7671, 7495)  # 78,853 neurons


def normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def initialised(make):
    """``make()`` initialised in one jitted program (eager initialisation compiles every op on its own)."""
    graphdef, _ = nnx.split(nnx.eval_shape(make))
    return nnx.merge(graphdef, jit(lambda: nnx.split(make())[1])())


def apply(module: nnx.Module, method: str = "__call__", **static):
    """A jitted pure function of the module's state (batch statistics are not written back)."""
    graphdef, state = nnx.split(module)
    return jit(lambda s, *args: getattr(nnx.merge(graphdef, s), method)(*args, **static)), state


# ---------------------------------------------------------------- Hermite filters


def test_hermite_basis_has_the_reference_size_and_unit_norm():
    basis, kinds, orders = hermite_basis(9, 18)
    assert basis.shape == (45, 18, 18)  # 9 · 10 / 2 functions, as the reference's 45 × 45 rotation matrices
    assert kinds[:6] == ("z", "r", "i", "z", "r", "i") and list(orders[:6]) == [0, 1, 1, 0, 2, 2]
    np.testing.assert_allclose(np.sum(basis**2, axis=(1, 2)), 1.0, rtol=1e-12)
    # order-0 functions are rotation invariant; a quarter turn maps the (r, i) pair of order 1 to (i, −r) or so
    np.testing.assert_allclose(np.rot90(basis[0]), basis[0], atol=1e-12)
    assert not np.allclose(np.rot90(basis[1]), basis[1], atol=1e-3)


@pytest.mark.parametrize("rotations", [4, 8])
@pytest.mark.parametrize("first_layer", [True, False])
def test_quarter_turns_by_rot90_equal_the_hermite_rotation(rotations, first_layer):
    """The exact ``rot90`` copies are the filters neuralpredictors gets by rotating the Hermite coefficients."""
    inputs = 3 if first_layer else 2 * rotations
    make = lambda exact: HermiteConv2d(inputs, 2, 7, rotations, 2, first_layer, exact, rngs=nnx.Rngs(0))
    exact, hermite = make(True).kernel(), make(False).kernel()
    chex.assert_shape(exact, (7, 7, inputs, 2 * rotations))
    np.testing.assert_allclose(np.asarray(exact), np.asarray(hermite), atol=1e-6)
    # and rotation r + R/4 really is rotation r turned a quarter counter-clockwise (np.rot90's direction)
    basis = rotated_basis(7, 2, rotations, rotations)
    np.testing.assert_allclose(basis[rotations // 4], np.rot90(basis[0], axes=(1, 2)), atol=1e-6)


# ---------------------------------------------------------------- rotation-equivariant core


def _turned(features: np.ndarray, quarter_turns: int, rotations: int) -> np.ndarray:
    """Feature maps ``(N, H, W, R·F)`` turned ``k`` quarter turns, rotation blocks moved ``k · R/4`` on."""
    c = features.shape[-1]
    turned = np.rot90(features, quarter_turns, axes=(1, 2))
    blocks = turned.reshape(*turned.shape[:3], rotations, c // rotations)
    return np.roll(blocks, quarter_turns * rotations // 4, axis=3).reshape(turned.shape)


@pytest.mark.parametrize("rotations", [4, 8])
@pytest.mark.parametrize("train", [True, False])
def test_rotating_the_input_rotates_maps_and_permutes_rotations(rotations, train):
    core = initialised(
        lambda: RotationEquivariant2dCore(
            hidden_channels=2, num_rotations=rotations, layers=3, input_kernel=5, hidden_kernel=3, rngs=nnx.Rngs(1)
        )
    )
    forward, state = apply(core, train=train)
    images, constants = normal(3, 11, 14), normal(3, 2, seed=1)
    out = np.asarray(forward(state, images, constants))
    chex.assert_shape(out, (3, 7, 10, 2 * rotations))
    scale = np.abs(out).max()
    for k in (1, 2, 3):
        rotated = np.asarray(forward(state, np.rot90(images, k, axes=(1, 2)).copy(), constants))
        np.testing.assert_allclose(rotated, _turned(out, k, rotations), atol=1e-5 * scale)
    assert not np.allclose(np.rot90(out, 1, axes=(1, 2)), _turned(out, 1, rotations), atol=1e-2)  # blocks differ


def test_constant_channels_equal_a_full_convolution():
    """A behaviour channel added as value × Σ filter equals convolving the broadcast 3-channel frame."""
    core = RotationEquivariant2dCore(hidden_channels=2, num_rotations=4, layers=1, input_kernel=5, rngs=nnx.Rngs(2))
    images, constants = normal(2, 12, 13), normal(2, 2, seed=3)
    out = core(images, constants, train=False)
    full = jnp.concatenate([images[..., None], jnp.broadcast_to(constants[:, None, None, :], (2, 12, 13, 2))], -1)
    y = jax.lax.conv_general_dilated(
        full, core.convs[0].kernel(), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    norm = core.norms[0].norm  # eval mode: running statistics 0 / 1, scale 1, bias 0
    expected = y.reshape(2, 8, 9, 4, 2) / jnp.sqrt(norm.var[...] + 1e-5)
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected.reshape(2, 8, 9, 8)), atol=1e-5)


def test_regularizer_is_the_reference_laplace_and_group_sparsity():
    core = RotationEquivariant2dCore(
        hidden_channels=2, num_rotations=4, layers=3, input_kernel=5, hidden_kernel=3, rngs=nnx.Rngs(3)
    )
    # group sparsity in the reference's layout: weight (out, in, k, k).pow(2).sum(3).sum(2).sqrt().mean()
    torch_layout = [np.transpose(np.asarray(conv.kernel()), (3, 2, 0, 1)) for conv in core.convs[1:]]
    group = np.mean([np.sqrt((w**2).sum(3).sum(2)).mean() for w in torch_layout])
    laplace = float(laplace_l2_norm(core.convs[0].kernel()))
    np.testing.assert_allclose(float(core.group_sparsity()), group, rtol=1e-5)
    np.testing.assert_allclose(float(core.regularizer()), 5e5 * group + 500.0 * laplace, rtol=1e-5)


# ---------------------------------------------------------------- ConvGRU


def test_scan_and_its_gradient_equal_a_python_loop_over_the_cell():
    gru = initialised(lambda: ConvGRU(3, 4, input_kernel=3, rec_kernel=5, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(gru, nnx.Param)
    x, weights = normal(2, 4, 7, 9, 3), normal(2, 4, 7, 9, 4, seed=1)

    def scanned(params, x):
        return nnx.merge(graphdef, params)(x)

    def looped(params, x):
        model, h, states = nnx.merge(graphdef, params), jnp.zeros((2, 7, 9, 4)), []
        for t in range(x.shape[1]):
            h = model.cell(x[:, t], h)
            states.append(h)
        return jnp.stack(states, 1)

    np.testing.assert_allclose(np.asarray(jit(scanned)(params, x)), np.asarray(jit(looped)(params, x)), atol=1e-6)
    assert float(jnp.abs(jit(scanned)(params, x)[:, 0]).max()) > 0.05  # not a trivially zero output

    # the scan's hand-written VJP against autodiff through the loop (every parameter and the input)
    grad = lambda f: jit(jax.grad(lambda p, x: jnp.sum(f(p, x) * weights), argnums=(0, 1)))(params, x)
    chex.assert_trees_all_close(grad(scanned), grad(looped), atol=2e-5, rtol=1e-5)


def test_gru_core_is_causal_and_burn_in_drops_the_first_outputs():
    tiny = dict(
        hidden_channels=2, num_rotations=4, layers=2, input_kernel=5, hidden_kernel=3, input_stride=2,
        gru_channels=3, gru_input_kernel=3, gru_rec_kernel=3,
    )  # fmt: skip
    core = initialised(lambda: GRUCore(**tiny, rngs=nnx.Rngs(0)))
    late = nnx.merge(
        nnx.split(nnx.eval_shape(lambda: GRUCore(**tiny, burn_in=3, rngs=nnx.Rngs(0))))[0], nnx.state(core)
    )
    forward, state = apply(core, train=False)
    video, constants = normal(2, 8, 15, 17), normal(2, 8, 2, seed=1)
    out = np.asarray(forward(state, video, constants))
    chex.assert_shape(out, (2, 8, 6, 7, 3))
    edited = video.copy()
    edited[:, 5:] = 0.0
    changed = np.asarray(forward(state, edited, constants))
    np.testing.assert_array_equal(out[:, :5], changed[:, :5])  # frames ≥ 5 never reach outputs < 5
    assert late.burn_in == 3
    forward_late, state_late = apply(late, train=False)
    np.testing.assert_array_equal(np.asarray(forward_late(state_late, video, constants)), out[:, 3:])


def test_reference_core_shapes_and_parameter_count():
    assert CORES["gru"] is GRUCore
    config = {k: v for k, v in gru_config.get_config().model.core.items() if k != "name"}
    make = lambda: GRUCore(constant_channels=2, **config, rngs=nnx.Rngs(0))
    video, constants = jax.ShapeDtypeStruct((2, 10, 36, 64), jnp.float32), jax.ShapeDtypeStruct((2, 10, 2), jnp.float32)
    out = jax.eval_shape(lambda v, c: make()(v, c, train=True), video, constants)
    chex.assert_shape(out, (2, 10, 28, 56, 64))  # the reference's 64 × 28 × 56 readout input, every frame
    core = nnx.eval_shape(make)
    count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    # Hermite coefficients 45·3·8 + 3 · 28·64·8, batch norm 4 · (8 + 8): the reference's trainable parameters
    assert count(core.frame_core) == 45 * 3 * 8 + 3 * 28 * 64 * 8 + 4 * 16 == 44_152
    assert count(core.gru) == 6 * (64 * 64 * 81 + 64) == 1_991_040  # six 9 × 9 convolutions with bias
    assert count(core) == 2_035_192


def test_full_model_parameter_count_for_the_competition_mice():
    rng = np.random.default_rng(0)
    mice = MiceInfo(
        names=tuple(f"m{i}" for i in range(10)),
        coordinates=tuple(rng.normal(size=(n, 3)).astype(np.float32) for n in COMPETITION_MICE),
        mean_responses=tuple(np.ones(n, np.float32) for n in COMPETITION_MICE),
    )
    model = nnx.eval_shape(lambda: VideoModel(gru_config.get_config().model, mice, rngs=nnx.Rngs(0)))
    # per mouse: 64 features + bias + 2 × 2 σ per neuron, grid MLP 2·30+30+30·2+2, shifter 2·5+5+5·5+5+5·2+2
    per_mouse = 152 + 57
    assert count_parameters(model) == 2_035_192 + 69 * sum(COMPETITION_MICE) + 10 * per_mouse == 7_478_139


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("gru")
    return open_sessions(
        [write_session(root / "a", num_neurons=6, seed=1), write_session(root / "b", num_neurons=9, seed=2)]
    )


def test_tiny_gru_model_overfits_a_batch_without_recompiles(sessions):
    config = gru_config.get_config("cpu")
    config.model.core.update(
        hidden_channels=2, num_rotations=4, layers=2, input_kernel=5, input_stride=4, gru_channels=8
    )
    config.model.core.update(gamma_input=0.0, gamma_hidden=0.0)  # on 6–9 neurons any γ would outweigh the data
    config.optim.lr = config.optim.core_lr = 0.03
    mice = MiceInfo.from_sessions(sessions)
    model = initialised(lambda: VideoModel(config.model, mice, rngs=nnx.Rngs(0)))
    batch = pipeline.TrainRound(sessions, pipeline.ClipSpec(4, 12, 9))(0)
    tx = steps.make_optimizer(config.optim, nnx.state(model, nnx.Param))
    graphdef, state = steps.create_train_state(model, tx, seed=0)
    mesh = parallel.make_mesh(1)
    replicated, batch_sharding = parallel.replicated(mesh), parallel.mouse_batch_sharding(mesh)
    state = jax.device_put(state, replicated)
    step = jax.jit(
        steps.assert_max_traces(steps.make_train_step(graphdef, tx, (2.0, 3.0)), n=1),
        in_shardings=(replicated, batch_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
        compiler_options={"xla_backend_optimization_level": 1},
    )
    global_batch = parallel.to_global(batch, batch_sharding)
    metrics = []
    for _ in range(80):
        state, m = step(state, global_batch)
        metrics.append(m)
    poisson = [float(m["poisson"]) for m in jax.device_get(metrics)]
    assert poisson[-1] < 0.7 * poisson[0], poisson
    model = nnx.merge(graphdef, state.params, state.batch_stats, state.constants)
    prediction = jit(lambda v, b, p: model(v, b, p, train=False))(
        batch["videos"], batch["behavior"], batch["pupil_center"]
    )
    chex.assert_shape(prediction, (2, 4, 12, 9))  # burn-in 0: a prediction for every frame
    mask = model.readouts.neuron_mask[...]
    corr = 1.0 - losses.correlation_loss(prediction, jnp.asarray(batch["responses"]), mask) / mask.sum(-1)
    # the responses are noise (correlation ≈ 0 untrained): fitting them is memorising the batch (0.44 / 0.59 seen)
    assert float(corr.min()) > 0.3, corr
