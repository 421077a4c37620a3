"""ViV1TCore and the ViV1T model: shapes, exactness of the fused tokenizer, attention back ends, parameter count,
inference consistency, learning, recompiles and bf16.

Tiny shapes throughout (the paper-size config only abstractly, through ``eval_shape``). On a 2-core CI machine
XLA compilation, not arithmetic, is what these tests spend their time on, so every computation is jitted (eager
ops compile one by one), shared models are built once per module, and programs that run only once or twice are
compiled without LLVM optimisation (``xla_backend_optimization_level`` 0: a third of the compile time).
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import factorized, viv1t
from sensorium_jax import parallel
from sensorium_jax.data import pipeline
from sensorium_jax.data.reader import open_sessions
from sensorium_jax.evaluation import evaluate as evaluation
from sensorium_jax.models.cores.viv1t import ViV1TCore, attention, dropout_keys, keep_masks, parallel_block
from sensorium_jax.models.model import MiceInfo, VideoModel, count_parameters
from sensorium_jax.training import losses
from sensorium_jax.training import step as steps
from tests.fake_data import write_session

# Programs run once: fastest to compile unoptimised. The training loop runs 60 steps: level 1 is the best total.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
TRAIN_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}

TINY_CORE = dict(
    image_size=(20, 24),
    max_frames=30,
    embed_dim=16,
    spatial_patch=5,
    spatial_stride=3,
    temporal_patch=4,
    spatial_depth=1,
    temporal_depth=1,
    num_heads=2,
    head_dim=8,
    ff_dim=12,
)


def initialised(make):
    """``make()`` initialised in one jitted program: eager initialisation compiles every op on its own, which
    costs seconds per test on a 2-core machine."""
    graphdef, _ = nnx.split(nnx.eval_shape(make))
    return nnx.merge(graphdef, jit(lambda: nnx.split(make())[1])())


def tiny_core(**overrides) -> ViV1TCore:
    return initialised(lambda: ViV1TCore(**{**TINY_CORE, **overrides}, rngs=nnx.Rngs(0)))


def jit_core(core: ViV1TCore):
    graphdef, state = nnx.split(core)
    return state, jit(lambda s, *args, **kw: nnx.merge(graphdef, s)(*args, **kw), static_argnames="train")


def normal(*shape, seed=0, dtype=np.float32):
    """numpy, not jax.random: eager jax.random compiles a threefry kernel per shape (seconds on 2 cores)."""
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def random_inputs(b=2, t=10, h=20, w=24, k=4, seed=0):
    return normal(b, t, h, w, seed=seed), normal(b, t, k, seed=seed + 1) + 1.5


def tiny_model_config(**core):
    """``viv1t:cpu`` shrunk: 4 × 8 patches of 8 × 8 pixels, 5-frame tubelets, one block per stage."""
    config = viv1t.get_config("cpu")
    config.model.core.update(
        embed_dim=16, num_heads=2, head_dim=8, ff_dim=16, temporal_patch=5, max_frames=40, spatial_patch=8
    )
    config.model.core.update(spatial_stride=8, **core)
    config.model.output = "exp"  # the reference's (viv1t:cpu uses ELU + 1): the encoder test reads log-rates
    return config


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """Two small sessions in the real format (as conftest's ``tiny_sessions``), written once for the module."""
    root = tmp_path_factory.mktemp("viv1t")
    return open_sessions(
        [write_session(root / "a", num_neurons=6, seed=1), write_session(root / "b", num_neurons=9, seed=2)]
    )


def build(sessions, config, seed=0) -> VideoModel:
    mice = MiceInfo.from_sessions(sessions)
    return initialised(lambda: VideoModel(config.model, mice, rngs=nnx.Rngs(seed)))


class Jitted:
    """A model split once, with jitted ``predict_mouse`` and ``__call__`` (eval mode) over its state."""

    def __init__(self, model: VideoModel):
        self.model = model
        self.graphdef, self.state = nnx.split(model)
        merge = lambda s: nnx.merge(self.graphdef, s)
        self.predict = jit(lambda s, *a, **kw: merge(s).predict_mouse(*a, **kw))
        self.call = jit(lambda s, *a: merge(s)(*a, train=False))


@pytest.fixture(scope="module")
def bidirectional(sessions):
    """The reference's (bidirectional) temporal attention."""
    return Jitted(build(sessions, tiny_model_config()))


def trial(sessions, frames, index=0):
    data = sessions[0].load(index, 0, frames)
    return tuple(jnp.asarray(data[k])[None] for k in ("videos", "behavior", "pupil_center"))


# ---------------------------------------------------------------- shapes


def test_shapes_through_every_stage():
    core = tiny_core()
    video, constants = random_inputs()
    assert core.tokenizer.grid == (6, 7)  # (20 − 5) // 3 + 1, (24 − 5) // 3 + 1
    tokens = jax.eval_shape(lambda: core.tokenizer(video[..., None], constants, None))
    assert tokens.shape == (2, 10 - 3, 42, 16)  # (B, T', P, D)
    kw = dict(num_heads=2, head_dim=8, compute_dtype=jnp.float32, causal=False, implementation="xla")
    kw.update(attention_dropout=0.0, ff_dropout=0.0, drop_path_rate=0.0)
    for sequences in ((2 * 7, 42, 16), (2 * 42, 7, 16)):  # spatial stage: (B·T', P, D); temporal: (B·P, T', D)
        x = jax.ShapeDtypeStruct(sequences, jnp.float32)
        assert (
            jax.eval_shape(lambda x: parallel_block(core.spatial_blocks[0].params(), x, None, None, **kw), x).shape
            == sequences
        )
    state, forward = jit_core(core)
    out = forward(state, video, constants, train=False)
    chex.assert_shape(out, (2, 10 - core.burn_in, 6, 7, 16))  # (B, T − burn-in, H', W', D)
    assert core.burn_in == 3 and core.out_channels == 16 and out.dtype == jnp.float32
    chex.assert_tree_all_finite(out)


def test_full_config_shapes_abstractly():
    """The paper's core: 140 frames → 116 × 15 × 29 tokens of 112 channels (no compute: eval_shape)."""
    config = dict(viv1t.get_config().model.core)
    config.pop("name")
    core = nnx.eval_shape(lambda: ViV1TCore(**config, rngs=nnx.Rngs(0)))
    assert core.tokenizer.grid == (15, 29) and core.burn_in == 24 and core.tokenizer.max_tokens == 276
    graphdef, state = nnx.split(core)
    out = jax.eval_shape(
        lambda s, v, c: nnx.merge(graphdef, s)(v, c, train=False),
        state,
        jax.ShapeDtypeStruct((1, 140, 36, 64), jnp.float32),
        jax.ShapeDtypeStruct((1, 140, 4), jnp.float32),
    )
    assert out.shape == (1, 116, 15, 29, 112)


def test_wrong_image_size_or_too_many_frames_fail_clearly():
    core = tiny_core()
    with pytest.raises(ValueError, match="patch grid"):
        jax.eval_shape(lambda: core(*random_inputs(h=24), train=False))
    with pytest.raises(ValueError, match="temporal positional embedding"):
        jax.eval_shape(lambda: core(*random_inputs(t=31), train=False))


# ---------------------------------------------------------------- exactness of the pieces


@pytest.mark.parametrize(
    "image_channels, patch_norm, token_norm", [(1, True, True), (2, True, True), (2, False, True), (1, False, False)]
)
def test_fused_tokenizer_equals_explicit_tubelets(image_channels, patch_norm, token_norm):
    """[LayerNorm(tubelet)] → Linear → [LayerNorm] on explicitly unfolded tubelets of the image channels and the
    broadcast constant channels (numpy, float64)."""
    tok = tiny_core(image_channels=image_channels, patch_norm=patch_norm, token_norm=token_norm).tokenizer
    rng = np.random.default_rng(3)
    if patch_norm:  # non-trivial patch-norm parameters, so that folding them into the kernel is exercised
        tok.patch_norm_scale.value = jnp.asarray(1.0 + 0.3 * rng.normal(size=tok.patch_norm_scale.shape), jnp.float32)
        tok.patch_norm_bias.value = jnp.asarray(0.2 * rng.normal(size=tok.patch_norm_bias.shape), jnp.float32)
    else:
        assert not hasattr(tok, "patch_norm_scale")
    video = rng.normal(size=(2, 9, 20, 24, image_channels))
    constants = rng.normal(size=(2, 9, 4)) + 1.5
    p = {name: np.asarray(value, np.float64) for name, value in nnx.to_pure_dict(nnx.state(tok, nnx.Param)).items()}
    pt, ps, s = 4, 5, 3
    full = np.concatenate([video, np.broadcast_to(constants[:, :, None, None, :], (*video.shape[:4], 4))], -1)
    x = np.stack(
        [
            full[:, t : t + pt, i * s : i * s + ps, j * s : j * s + ps, :].reshape(2, -1)
            for t in range(9 - pt + 1)
            for i in range(6)
            for j in range(7)
        ],
        1,
    ).reshape(2, 6, 42, -1)  # (B, T', P, pt·ps·ps·C), ordered as the kernel
    if patch_norm:
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        x = x * p["patch_norm_scale"].reshape(-1) + p["patch_norm_bias"].reshape(-1)
    x = x @ p["kernel"].reshape(-1, 16) + p["bias"]
    if token_norm:
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        x = x * p["norm_scale"] + p["norm_bias"]
    expected = x + p["spatial_pos"][None, None] + p["temporal_pos"][:6][None, :, None]
    graphdef, state = nnx.split(tok)
    got = jit(lambda s, v, c: nnx.merge(graphdef, s)(v, c, None))(state, video.astype(np.float32), constants)
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-4, rtol=2e-4)


def test_patch_norm_makes_tokens_blind_to_contrast_and_its_absence_does_not():
    """The reference's tubelet LayerNorm divides out each tubelet's contrast, so a faint and a strong copy of a
    video give the same tokens; without it (``viv1t:cpu``) the tokens scale with the stimulus."""
    video = random_inputs()[0][..., None]
    for patch_norm in (True, False):
        tok = tiny_core(constant_channels=0, patch_norm=patch_norm, token_norm=False).tokenizer
        for offset in (tok.bias, tok.spatial_pos, tok.temporal_pos):  # tokens = projection alone
            offset.value = jnp.zeros_like(offset.value)
        graphdef, state = nnx.split(tok)
        run = jit(lambda s, v, g=graphdef: nnx.merge(g, s)(v, None, None))
        faint, strong = np.asarray(run(state, 0.1 * video)), np.asarray(run(state, video))
        np.testing.assert_allclose(faint, strong if patch_norm else 0.1 * strong, rtol=1e-3, atol=1e-4)
        assert np.abs(strong).max() > 0.1


def _reference_attention(q, k, v, causal=False, kv_lengths=None):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    lq, lk = q.shape[1], k.shape[1]
    mask = jnp.ones((q.shape[0], 1, lq, lk), bool)
    if causal:
        mask = mask & jnp.tril(jnp.ones((lq, lk), bool))
    if kv_lengths is not None:
        mask = mask & (jnp.arange(lk)[None, None, None, :] < kv_lengths[:, None, None, None])
    weights = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
def test_attention_xla_matches_einsum_softmax(causal, lengths):
    q, k, v = (normal(3, 7, 2, 8, seed=i) for i in range(3))
    kv_lengths = jnp.array([7, 3, 5], jnp.int32) if lengths else None

    @jit
    def both(q, k, v, kv_lengths):
        implementations = ("xla", None, "auto")  # "auto" is heads_major_attention on CPU
        got = [attention(q, k, v, causal=causal, kv_lengths=kv_lengths, implementation=i) for i in implementations]
        return got, _reference_attention(q, k, v, causal, kv_lengths)

    got, expected = both(q, k, v, kv_lengths)
    for g in got:
        np.testing.assert_allclose(np.asarray(g), np.asarray(expected), atol=1e-5)
    # and the gradients the CPU path trains with
    loss = lambda implementation: (
        lambda q, k, v: jnp.sum(
            jnp.sin(attention(q, k, v, causal=causal, kv_lengths=kv_lengths, implementation=implementation))
        )
    )
    for mine, theirs in zip(jax.grad(loss("auto"), (0, 1, 2))(q, k, v), jax.grad(loss("xla"), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
def test_cudnn_even_length_padding_is_exact(monkeypatch, causal, lengths):
    """cudnn_attention pads odd sequences by one masked token (cuDNN's training kernel takes only even lengths).
    With the kernel swapped for XLA's, so this runs on any machine: values and gradients equal the unpadded ones."""
    xla = jax.nn.dot_product_attention
    seen = []

    def fake_cudnn(q, k, v, *, implementation, **kwargs):
        assert implementation == "cudnn"
        seen.append((q.shape[1], k.shape[1]))
        return xla(q, k, v, implementation="xla", **kwargs)

    q, k, v = (normal(3, 7, 2, 8, seed=i) for i in range(3))
    kv_lengths = jnp.array([7, 3, 5], jnp.int32) if lengths else None
    loss = lambda implementation: (
        lambda q, k, v: jnp.sum(
            jnp.sin(attention(q, k, v, causal=causal, kv_lengths=kv_lengths, implementation=implementation))
        )
    )
    expected, expected_grads = jax.value_and_grad(loss("xla"), (0, 1, 2))(q, k, v)
    monkeypatch.setattr(jax.nn, "dot_product_attention", fake_cudnn)
    got, grads = jax.value_and_grad(loss("cudnn"), (0, 1, 2))(q, k, v)
    assert seen == [(8, 8)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    for g, ref in zip(grads, expected_grads):
        assert g.shape == ref.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref), atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN flash attention needs a GPU")
def test_attention_cudnn_matches_xla():
    """Values and gradients, under remat as the full config trains, at the paper core's temporal (116, even) and
    spatial (435, odd: padded by cudnn_attention) lengths; "auto" must compile to cuDNN's fused kernel."""
    for shape in ((4, 116, 11, 48), (8, 435, 11, 48)):
        q, k, v = (jnp.asarray(normal(*shape, seed=i), jnp.bfloat16) for i in range(3))
        kv_lengths = jnp.array([shape[1], 80, 30, 1] * (shape[0] // 4), jnp.int32)
        for causal in (False, True):

            def loss(q, k, v, implementation, causal=causal, kv_lengths=kv_lengths):
                out = attention(q, k, v, causal=causal, kv_lengths=kv_lengths, implementation=implementation)
                return jnp.sum(jnp.sin(out.astype(jnp.float32))), out

            results = {}
            for implementation in ("cudnn", "auto", "xla"):
                step = jax.jit(
                    jax.value_and_grad(
                        jax.checkpoint(functools.partial(loss, implementation=implementation)), (0, 1, 2), has_aux=True
                    )
                )
                if implementation == "auto":
                    assert "cudnn$fmha" in step.lower(q, k, v).compile().as_text()
                results[implementation] = step(q, k, v)
            (_, xla_out), xla_grads = results["xla"]
            for implementation in ("cudnn", "auto"):
                (_, out), grads = results[implementation]
                np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(xla_out, np.float32), atol=2e-2)
                for g, ref in zip(grads, xla_grads):
                    g, ref = np.asarray(g, np.float32), np.asarray(ref, np.float32)
                    assert np.linalg.norm(g - ref) <= 2e-2 * np.linalg.norm(ref), (shape, causal, implementation)


def test_parallel_block_matches_its_definition():
    kw = dict(num_heads=2, head_dim=8, compute_dtype=jnp.float32, implementation="xla")
    kw.update(causal=False, attention_dropout=0.0, ff_dropout=0.0, drop_path_rate=0.0)

    @jit
    def both(p, x):
        h = (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)
        fused = (h * p["norm_scale"] + p["norm_bias"]) @ p["fused"]  # one bias-free projection: q | k | v | ff
        q, k, v, ff = fused[..., :16], fused[..., 16:32], fused[..., 32:48], fused[..., 48:]
        heads = lambda a: a.reshape(3, 5, 2, 8)
        attn = _reference_attention(heads(q), heads(k), heads(v)).reshape(3, 5, 16)
        expected = x + attn @ p["attn_out"] + jax.nn.gelu(ff, approximate=False) @ p["ff_out"]
        return parallel_block(p, x, None, None, **kw), expected

    got, expected = both(tiny_core().temporal_blocks[0].params(), normal(3, 5, 16))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


def test_dropout_only_in_training_and_needs_a_key():
    core = tiny_core(patch_dropout=0.2, attention_dropout=0.3, ff_dropout=0.1, drop_path=0.2)
    video, constants = random_inputs()
    state, forward = jit_core(core)
    a = forward(state, video, constants, train=False)
    b = forward(state, video, constants, train=True, key=jax.random.key(1))
    c = forward(state, video, constants, train=True, key=jax.random.key(2))
    assert not np.allclose(np.asarray(a), np.asarray(b)) and not np.allclose(np.asarray(b), np.asarray(c))
    with pytest.raises(ValueError, match="PRNG key"):
        jax.eval_shape(lambda: core(video, constants, train=True))
    # one 16-bit draw serves several sites: each gets its own rate, masks of different sites differ
    masks = jit(lambda key: keep_masks(dropout_keys(key, 1)[0], [((400, 500), 0.358), ((400, 500), 0.0505)]))
    attention_mask, path_mask = masks(jax.random.key(0))
    assert abs(1 - float(attention_mask.mean()) - 0.358) < 0.005 and abs(1 - float(path_mask.mean()) - 0.0505) < 0.003


# ---------------------------------------------------------------- parameter count


def reference_parameter_count(num_neurons) -> int:
    """ViV1T as published, counted from its definition (winning_models.md §3: 'about 12.3 M')."""
    d, heads, head_dim, ff, patch_dim, grid, t_tokens = 112, 11, 48, 136, 5 * 25 * 7 * 7, 15 * 29, 300 - 24
    tokenizer = 2 * patch_dim + patch_dim * d + d + 2 * d  # LayerNorm(6125), Linear 6125→112, LayerNorm(112)
    positions = grid * d + t_tokens * d
    block = 2 * d + d * (3 * heads * head_dim + ff) + heads * head_dim * d + ff * d  # bias-free projections
    core = tokenizer + positions + (3 + 5) * block
    grid_mlp = (2 * 30 + 30) + (30 * 2 + 2)
    shifter = (2 * 5 + 5) + (5 * 5 + 5) + (5 * 2 + 2)
    encoder = (4 * d + d) + 2 * d + (d * d + d)
    per_neuron = d + 1 + 4  # feature weights, bias, full 2×2 covariance
    return core + sum(grid_mlp + shifter + encoder + per_neuron * n for n in num_neurons)


COMPETITION_MICE = (7863, 7908, 8202, 7939, 8122, 7440, 7928, 8285, 7671, 7495)  # 78,853 neurons


def test_parameter_count_matches_the_reference():
    reference = reference_parameter_count(COMPETITION_MICE)
    assert abs(reference - 12.3e6) < 0.05e6
    rng = np.random.default_rng(0)
    mice = MiceInfo(
        names=tuple(f"m{i}" for i in range(10)),
        coordinates=tuple(rng.normal(size=(n, 3)).astype(np.float32) for n in COMPETITION_MICE),
        mean_responses=tuple(np.ones(n, np.float32) for n in COMPETITION_MICE),
    )
    model = nnx.eval_shape(lambda: VideoModel(viv1t.get_config().model, mice, rngs=nnx.Rngs(0)))
    ours = count_parameters(model)
    assert abs(ours - reference) / reference < 0.02, (ours, reference)
    core = sum(x.size for x in jax.tree.leaves(nnx.state(model.core, nnx.Param)))
    assert core == 2_916_074  # the reference core's 2.92 M, exactly
    assert count_parameters(model, include_padding=True) > ours  # 10 × 8285 readout slots are allocated


# ---------------------------------------------------------------- inference consistency


def test_clip_and_full_trial_inference_agree_on_shared_frames(sessions):
    """With causal temporal attention, a clip (a prefix of the trial) through the training-path ``__call__`` gives
    the one-pass full-trial ``predict_mouse`` numbers on every frame they share."""
    jitted = Jitted(build(sessions, tiny_model_config(causal=True)))
    videos, behavior, pupil = trial(sessions, 40)
    full = jitted.predict(jitted.state, jnp.int32(0), videos, behavior, pupil)  # (1, 36, N_max)
    clip_frames = 16
    clip = lambda x: jnp.stack([x[:, :clip_frames]] * 2)  # (M, 1, 16, ...): both mice see the clip
    out = jitted.call(jitted.state, clip(videos), clip(behavior), clip(pupil))  # (M, 1, 12, N_max)
    shared, n = clip_frames - jitted.model.burn_in, sessions[0].num_neurons
    np.testing.assert_allclose(np.asarray(out[0, 0, :, :n]), np.asarray(full[0, :shared, :n]), rtol=2e-5, atol=1e-6)


def test_call_and_predict_agree_on_a_whole_trial(sessions, bidirectional):
    """Reference (bidirectional) attention: the training path and the inference path give the same numbers."""
    videos, behavior, pupil = trial(sessions, 40)
    full = bidirectional.predict(bidirectional.state, jnp.int32(1), videos, behavior, pupil)
    both = lambda x: jnp.stack([x, x])
    out = bidirectional.call(bidirectional.state, both(videos), both(behavior), both(pupil))
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(full), rtol=2e-5, atol=1e-6)


def test_padded_trials_with_lengths_equal_unpadded(sessions, bidirectional):
    """A zero-padded batch told each trial's length gives each trial's own numbers (bidirectional attention)."""
    videos, behavior, pupil = trial(sessions, 40)
    short = [x[:, :30] for x in (videos, behavior, pupil)]
    alone = bidirectional.predict(bidirectional.state, jnp.int32(1), *short)
    pad = lambda x: jnp.concatenate([x, 3.0 * jnp.ones_like(x)]).at[0, 30:].set(7.0)  # garbage after frame 30
    batch = [pad(x) for x in (videos, behavior, pupil)]
    padded = bidirectional.predict(bidirectional.state, jnp.int32(1), *batch, lengths=jnp.array([30, 40]))
    np.testing.assert_allclose(np.asarray(padded[0, :26]), np.asarray(alone[0]), rtol=2e-5, atol=1e-6)
    unmasked = bidirectional.predict(bidirectional.state, jnp.int32(1), *batch, lengths=jnp.array([40, 40]))
    assert not np.allclose(np.asarray(unmasked[0, :26]), np.asarray(alone[0]))  # why the mask is needed


def test_evaluation_gives_padded_trials_their_own_numbers(sessions):
    """Validation and evaluation batch trials of different lengths (zero-padded) and pass the lengths, so a trial
    scores the same in any batch: the fake session's first train trial is 2 frames longer than the other five."""
    session, model = sessions[0], build(sessions, tiny_model_config(max_frames=80))
    tx = steps.make_optimizer(tiny_model_config().optim, nnx.state(model, nnx.Param))
    graphdef, state = steps.create_train_state(model, tx, seed=0)
    predict = steps.make_predict(graphdef)
    frames = evaluation.eval_frames([session], ["train"])
    kwargs = dict(burn_in=model.burn_in, frames=frames, max_neurons=model.readouts.neuron_mask.shape[1])
    batched = evaluation.predict_tier(predict, state, session, 0, "train", batch_size=6, **kwargs)
    assert len({len(r) for r in batched.responses}) == 2  # the batch really mixes lengths
    for row, trial in enumerate(batched.trials):
        data = session.load(trial, 0, len(batched.responses[row]))
        alone = predict(
            state, jnp.int32(0), *(jnp.asarray(data[k])[None] for k in ("videos", "behavior", "pupil_center"))
        )
        np.testing.assert_allclose(
            batched.predictions[row], np.asarray(alone[0, :, : session.num_neurons]), rtol=2e-5, atol=1e-6
        )


# ---------------------------------------------------------------- behaviour encoder


def test_behavior_encoder_is_added_to_the_sampled_features(sessions, bidirectional):
    videos, behavior, pupil = trial(sessions, 40)
    model, state = bidirectional.model, bidirectional.state
    with_encoder = bidirectional.predict(state, jnp.int32(0), videos, behavior, pupil)
    # zero last layer: tanh(0) = 0, the encoder adds nothing — the readout as without it
    silent = jax.tree.map(lambda x: x, state)
    for name in ("w2", "b2"):
        silent["behavior_encoder"][name].value = jnp.zeros_like(silent["behavior_encoder"][name].value)
    without = bidirectional.predict(silent, jnp.int32(0), videos, behavior, pupil)
    states = jnp.concatenate([behavior, pupil], -1)[0, model.burn_in :]
    encoding = model.behavior_encoder.one_mouse(jnp.int32(0), states)  # (T', C)
    expected = jnp.log(without[0]) + encoding @ model.readouts.features[...][0]  # exp output
    np.testing.assert_allclose(np.asarray(jnp.log(with_encoder[0])), np.asarray(expected), rtol=1e-4, atol=1e-4)


def test_factorized_model_has_no_encoder_and_no_core_key(sessions):
    mice = MiceInfo.from_sessions(sessions)
    model = nnx.eval_shape(lambda: VideoModel(factorized.get_config("cpu").model, mice, rngs=nnx.Rngs(0)))
    assert model.behavior_encoder is None and not model.core_takes_key and not model.core_takes_lengths


# ---------------------------------------------------------------- training


SCALES = (2.0, 3.0)  # per-mouse loss scales, as the loop's sqrt(trials / batch size)


def _expected_first_loss(graphdef, state, batch, correlation_weight):
    """The reference's per-mouse loss, scale · (Poisson + w · Σ(1 − corr)), from the step's own key."""

    @jit
    def loss(state, batch):
        model = nnx.merge(graphdef, state.params, state.batch_stats, state.constants)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        prediction = model(batch["videos"], batch["behavior"], batch["pupil_center"], train=True, key=key)
        target = batch["responses"][:, :, model.burn_in :]
        mask = model.readouts.neuron_mask[...]
        per_mouse = losses.poisson_loss(prediction, target, mask) + correlation_weight * losses.correlation_loss(
            prediction, target, mask
        )
        return jnp.sum(jnp.asarray(SCALES) * per_mouse) + jnp.sum(model.regularizer())

    return float(loss(state, batch))


def test_tiny_viv1t_overfits_a_tiny_dataset_without_recompiles(sessions, bidirectional):
    config = tiny_model_config()  # the configuration of the `bidirectional` model, whose parameters start it
    config.optim.lr = config.optim.core_lr = 0.03
    correlation_weight = 1.0  # the Poisson + correlation loss
    batch = pipeline.TrainRound(sessions, pipeline.ClipSpec(8, 16, 9))(0)
    tx = steps.make_optimizer(config.optim, nnx.state(bidirectional.model, nnx.Param))
    graphdef, state = steps.create_train_state(bidirectional.model, tx, seed=0)
    expected_loss = _expected_first_loss(graphdef, state, batch, correlation_weight)
    mesh = parallel.make_mesh(1)
    replicated, batch_sharding = parallel.replicated(mesh), parallel.mouse_batch_sharding(mesh)
    # a copy: the step donates its state, and the fixture's model keeps serving other tests
    state = jax.device_put(jit(lambda s: jax.tree.map(jnp.copy, s))(state), replicated)
    train_step = steps.make_train_step(graphdef, tx, SCALES, correlation_weight)
    # steps.jit_train_step's jit, with the compiler options: donated state, and a recompile raises
    step = jax.jit(
        steps.assert_max_traces(train_step, n=1),
        in_shardings=(replicated, batch_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
        compiler_options=TRAIN_COMPILER_OPTIONS,
    )
    global_batch = parallel.to_global(batch, batch_sharding)
    metrics = []
    for _ in range(60):
        state, m = step(state, global_batch)
        metrics.append(m)
    metrics = jax.device_get(metrics)
    assert float(metrics[0]["loss"]) == pytest.approx(expected_loss, rel=1e-4)
    poisson = [float(m["poisson"]) for m in metrics]
    assert poisson[-1] < 0.7 * poisson[0], poisson
    model = nnx.merge(graphdef, state.params, state.batch_stats, state.constants)
    prediction = jit(lambda v, b, p: model(v, b, p, train=False))(
        batch["videos"], batch["behavior"], batch["pupil_center"]
    )
    target = jnp.asarray(batch["responses"])[:, :, model.burn_in :]
    mask = model.readouts.neuron_mask[...]
    corr = 1.0 - losses.correlation_loss(prediction, target, mask) / mask.sum(-1)  # mean over real neurons
    assert float(corr.min()) > 0.4, corr  # the responses are noise: fitting them is memorising the batch


def test_bf16_core_runs_and_stays_finite():
    video, constants = random_inputs(t=12)
    key = jax.random.key(0)  # the same dropout masks in both precisions
    core16 = tiny_core(compute_dtype="bfloat16", remat=True, patch_dropout=0.1, attention_dropout=0.1, drop_path=0.1)
    graphdef, params = nnx.split(core16, nnx.Param)

    def loss(params):
        out = nnx.merge(graphdef, params)(video, constants, train=True, key=key)
        return jnp.mean(jnp.square(out)), out

    (value, out16), grads = jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert out16.dtype == jnp.float32  # bf16 inside, float32 out (the reference casts its autocast output too)
    chex.assert_tree_all_finite((value, out16, grads))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))  # parameters and gradients: float32
    # same seed, so the same parameters in float32
    state32, forward32 = jit_core(tiny_core(patch_dropout=0.1, attention_dropout=0.1, drop_path=0.1))
    out32 = forward32(state32, video, constants, train=True, key=key)
    error = np.abs(np.asarray(out16) - np.asarray(out32)).max() / np.abs(np.asarray(out32)).max()
    assert 0 < error < 0.05, error  # bf16 really ran, and stays close


def test_optimizer_uses_separate_core_and_readout_recipes(sessions):
    config = viv1t.get_config()
    params = nnx.state(build(sessions, tiny_model_config()), nnx.Param)
    tx = steps.make_optimizer(config.optim, params)

    @jit
    def weight_decay_only(params):  # zero gradient: the update is the decoupled weight decay alone
        updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        return updates

    updates = weight_decay_only(params)
    core_w, readout_w = params["core"]["tokenizer"]["kernel"][...], params["readouts"]["sigma"][...]
    np.testing.assert_allclose(updates["core"]["tokenizer"]["kernel"][...], -0.0048 * 0.1789 * core_w, rtol=1e-5)
    np.testing.assert_allclose(updates["readouts"]["sigma"][...], -0.0036 * 0.3939 * readout_w, rtol=1e-5)
