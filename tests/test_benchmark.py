"""The benchmark's measurement functions on tiny shapes: the figures are consistent with each other (clips/s is
clips per step over the median step time, the JSON is rectangular, ratios are what the definitions give)."""

from __future__ import annotations

import functools
import json
import statistics

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments import benchmark
from experiments.configs import factorized, gru
from sensorium_jax.benchmarking import fake_inputs, memory, pipeline_bench, report, timing
from sensorium_jax.data.reader import open_sessions
from sensorium_jax.models.cores.conv_gru import ConvGRU
from sensorium_jax.models.cores.rotation_equivariant import RotationEquivariant2dCore
from sensorium_jax.models.model import count_parameters
from sensorium_jax.models.registry import build_model

# programs that run once: compile time, not arithmetic, is what these tests spend
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def tiny_config() -> ml_collections.ConfigDict:
    c = factorized.get_config("cpu")
    c.model.core.update(hidden_channels=(4,), spatial_kernels=(3,), temporal_kernels=(3,), spatial_strides=(4,))
    c.model.use_shifter = False  # a smaller program: compile time dominates these tests
    c.data.batch_size = 2
    c.data.clip_frames = 6
    c.eval.batch_size = 2
    return c


def test_time_calls_counts_first_warmup_and_timed_calls():
    calls = []
    times = timing.time_calls(lambda: calls.append(1), steps=3, warmup=2, sync=lambda x: x)
    assert len(calls) == 1 + 2 + 3
    assert len(times.times_s) == 3 and min(times.times_s) >= 0.0 and times.first_s >= 0.0
    assert times.median_s == statistics.median(times.times_s)
    with pytest.raises(ValueError, match="at least one"):
        timing.time_calls(lambda: None, steps=0)


def test_neuron_counts_follow_the_competition_and_the_synthetic_set():
    assert sum(fake_inputs.neuron_counts(cpu_variant=False)) == 78_853  # sensorium.md §1
    assert fake_inputs.neuron_counts(cpu_variant=True) == (180, 220, 260)
    assert fake_inputs.neuron_counts(cpu_variant=False, mice=2) == (7440, 7928)
    assert fake_inputs.neuron_counts(cpu_variant=False, mice=3, neurons=100) == (100, 100, 100)
    batch = fake_inputs.fake_train_batch(2, 3, 5, 7, static=True)
    assert batch["videos"].shape == (2, 3, 1, 36, 64) and batch["behavior"].shape == (2, 3, 1, 3)
    assert (batch["responses"] >= 0).all()


def test_measure_jax_config_reports_consistent_figures():
    config = tiny_config()
    mice = fake_inputs.fake_mice((5, 7))
    m = timing.measure_jax_config(config, mice, steps=2, warmup=1, eval_steps=1, eval_frames=10)
    assert m.params == count_parameters(build_model(config.model, mice))
    assert (m.num_mice, m.num_neurons, m.batch_clips, m.clip_frames, m.devices) == (2, 12, 4, 6, 1)
    assert len(m.step_times_s) == 2 and min(m.step_times_s) > 0.0 and m.compile_s > 0.0
    assert m.clips_per_s == pytest.approx(4 / statistics.median(m.step_times_s))
    assert m.mem_kind in ("rss_delta", "rss_delta_lifetime", "gpu_peak") and m.peak_mem_bytes >= 0
    assert m.xla_step_bytes is None or m.xla_step_bytes > 0
    assert (m.eval_trials, m.eval_frames) == (2, 10)
    assert m.eval_trials_per_s == pytest.approx(2 / m.eval_times_s[0])

    row = report.jax_row("tiny", m)
    assert row["step_ms"] == pytest.approx(1e3 * m.step_s)
    assert row["clips_per_s"] == pytest.approx(row["batch_clips"] / (row["step_ms"] / 1e3))


def test_pipeline_measurement(tiny_sessions):
    sessions = open_sessions(tiny_sessions)
    m = pipeline_bench.measure_pipeline(sessions, batch_size=2, clip_frames=16, rounds=3)
    assert (m.num_mice, m.num_neurons, m.batch_clips, m.clip_frames) == (2, 15, 4, 16)
    assert len(m.round_times_s) == 3 and min(m.round_times_s) > 0.0
    assert m.clips_per_s == pytest.approx(4 * 3 / sum(m.round_times_s))  # clips delivered / time taken
    assert m.frames_per_s == pytest.approx(16 * m.clips_per_s)
    assert m.peak_rss_bytes >= m.rss_before_bytes > 0
    row = report.pipeline_row("pipeline", m)
    assert row["mem_kind"] == "tree_rss_delta" and row["peak_mem_mb"] >= 0


def test_ratios_table_and_json_have_every_column(tmp_path):
    rows = [
        report.make_row(
            name="a", framework="jax", mice=2, batch_clips=4, clip_frames=10, step_ms=200.0, clips_per_s=20.0
        ),
        report.make_row(
            name="a [torch]",
            framework="torch",
            peer_of="a",
            mice=2,
            batch_clips=4,
            clip_frames=10,
            step_ms=100.0,
            clips_per_s=40.0,
        ),
        report.make_row(name="pipeline", framework="grain", mice=2, batch_clips=4, clip_frames=80, clips_per_s=50.0),
    ]
    rows.append(report.make_row(name="b", framework="jax", note="step failed: out of memory"))
    rows.append(report.make_row(name="b [torch]", framework="torch", peer_of="b", step_ms=10.0))
    report.add_ratios(rows, pipeline_frames_per_s=50.0 * 80)
    assert rows[-1]["jax_torch_ratio"] is None and rows[-2]["headroom"] is None
    assert rows[1]["jax_torch_ratio"] == pytest.approx(2.0)  # JAX takes twice as long
    assert rows[0]["headroom"] == pytest.approx(4000.0 / (20.0 * 10))  # frames/s over frames/s
    assert rows[0]["jax_torch_ratio"] is None and rows[2]["headroom"] is None
    table = report.format_table(rows)
    assert all(name in table for name in ("a [torch]", "pipeline", "jax/torch", "2.00", "20.00"))
    path = report.write_json(tmp_path / "out" / "bench.json", rows, {"note": "test"})
    data = json.loads(path.read_text())
    assert data["columns"] == list(report.COLUMNS)
    assert all(set(report.COLUMNS) <= set(row) for row in data["rows"])
    with pytest.raises(KeyError, match="unknown"):
        report.make_row(name="x", step_msec=1.0)


def test_peak_memory_sees_an_allocation():
    with memory.PeakMemory() as peak:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, every page touched
        del block
    if peak.kind == "rss_delta":  # the high-water mark could be reset: the figure is this block's
        assert peak.peak_bytes >= 48 * 2**20
    assert memory.tree_rss_bytes() >= memory.rss_bytes() > 0


def test_default_specs_are_video_configs_with_their_cpu_variants():
    specs = benchmark.default_specs()
    assert {"factorized", "factorized:cpu", "viv1t", "viv1t:cpu"} <= set(specs)
    assert not any(s.startswith("static_baseline") for s in specs)  # static images, not video
    assert benchmark.is_cpu_variant("viv1t:cpu") and not benchmark.is_cpu_variant("viv1t")


def test_torch_peer_has_the_same_parameters_as_the_jax_model():
    pytest.importorskip("torch")
    from sensorium_jax.benchmarking import torch_peers

    config = tiny_config()
    mice = fake_inputs.fake_mice((5, 7))
    peer = torch_peers.measure_torch_peer(config, mice, steps=1, warmup=0, threads=1)
    assert peer.params == count_parameters(build_model(config.model, mice))
    assert peer.clips_per_s == pytest.approx(4 / peer.step_times_s[0])


# ---------------------------------------------------------------- the gru peer


def normal(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def tiny_gru_config() -> ml_collections.ConfigDict:
    c = gru.get_config("cpu")
    c.model.core.update(
        hidden_channels=2, num_rotations=4, layers=2, input_kernel=5, hidden_kernel=3, input_stride=2, gru_channels=3
    )
    c.data.batch_size = 2
    c.data.clip_frames = 4
    c.eval.batch_size = 2
    return c


def neuralpredictors_or_skip():
    pytest.importorskip("torch")
    from sensorium_jax.benchmarking import torch_peers

    np_layers = torch_peers.import_neuralpredictors()
    if np_layers is None:
        pytest.skip("neuralpredictors is not importable")
    return torch_peers, np_layers


def test_gru_peer_has_the_same_parameters_as_the_jax_model():
    torch_peers, np_layers = neuralpredictors_or_skip()
    mice = fake_inputs.fake_mice((5, 7))
    jax_count = lambda config: count_parameters(nnx.eval_shape(lambda: build_model(config.model, mice)))

    config = tiny_gru_config()
    peer = torch_peers.measure_torch_peer(config, mice, steps=1, warmup=0, threads=1)  # a whole train step runs
    assert peer.params == jax_count(config)
    assert "RotationEquivariant2dCore" in peer.name

    full = gru.get_config()  # the reference recipe (shifter, grid MLP, behaviour channels) at 12 neurons
    model, _ = torch_peers.build_model(full, mice, np_layers)
    trainable = lambda module: sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trainable(model.core.frame_core) == 44_152  # tests/test_gru.py: Hermite coefficients + batch norm
    assert trainable(model.core) == 2_035_192
    assert trainable(model) == jax_count(full)


def test_neuralpredictors_frame_core_matches_our_rotation_equivariant_core():
    """The peer's options map onto ours: same coefficients → same feature maps (stride on the first layer only,
    valid / same padding, rotation-major channels, shared batch norm, no final ELU) and the same regulariser."""
    torch_peers, np_layers = neuralpredictors_or_skip()
    import torch

    from sensorium_jax.benchmarking import torch_models

    config = dict(
        hidden_channels=2, num_rotations=4, layers=3, input_kernel=5, hidden_kernel=3, upsampling=2,
        input_stride=2, bn_momentum=0.9, gamma_input=2.0, gamma_hidden=30.0, final_nonlinearity=False,
    )  # fmt: skip
    ours = RotationEquivariant2dCore(image_channels=1, constant_channels=2, **config, rngs=nnx.Rngs(0))
    peer = torch_peers.rotation_equivariant_core(np_layers, 3, config)
    with torch.no_grad():
        for conv, layer in zip(ours.convs, peer.features, strict=True):
            layer.hermite_conv.coeffs.copy_(torch.tensor(np.asarray(conv.coeffs[...])))
    graphdef, state = nnx.split(ours)
    forward = jit(lambda s, i, c, train: nnx.merge(graphdef, s)(i, c, train=train), static_argnums=3)
    images, constants = normal(4, 15, 17), normal(4, 2, seed=1)
    x = torch.cat(
        [torch.from_numpy(images)[:, None], torch.from_numpy(constants)[:, :, None, None].expand(-1, -1, 15, 17)], 1
    )
    for train in (False, True):
        peer.train(train)
        with torch.no_grad():
            out = peer(x).permute(0, 2, 3, 1).numpy()
        expected = np.asarray(forward(state, images, constants, train))
        assert out.shape == expected.shape == (4, 6, 7, 8)
        np.testing.assert_allclose(out, expected, atol=5e-5)
    expected_penalty = float(jit(lambda s: nnx.merge(graphdef, s).regularizer())(state))
    assert float(torch_models.rotation_equivariant_regularizer(peer)) == pytest.approx(expected_penalty, rel=1e-5)


def conv_gru_as_torch(params: dict[str, np.ndarray], c: int) -> dict[str, np.ndarray]:
    """Our fused ConvGRU parameters (or their gradients) under the names of the reference's six convolutions."""
    oihw = lambda kernel: np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))  # HWIO → torch's OIHW
    out = {}
    for i, gate in enumerate(("reset", "update", "out")):
        out[f"{gate}_gate_input.weight"] = oihw(params["input_kernel"][..., i * c : (i + 1) * c])
        out[f"{gate}_gate_input.bias"] = params["input_bias"][i * c : (i + 1) * c]
    for i, gate in enumerate(("reset", "update")):
        out[f"{gate}_gate_hidden.weight"] = oihw(params["gate_kernel"][..., i * c : (i + 1) * c])
        out[f"{gate}_gate_hidden.bias"] = params["gate_bias"][i * c : (i + 1) * c]
    out["out_gate_hidden.weight"] = oihw(params["out_kernel"])
    out["out_gate_hidden.bias"] = params["out_bias"]
    return out


def test_torch_conv_gru_equals_our_conv_gru_with_shared_weights():
    """Outputs and gradients: the Python loop over the reference's cell against our scan and its hand-written VJP."""
    torch = pytest.importorskip("torch")
    from sensorium_jax.benchmarking import torch_models

    c_in, c = 3, 4
    ours = ConvGRU(c_in, c, input_kernel=3, rec_kernel=5, rngs=nnx.Rngs(0))
    for seed, name in enumerate(("input_bias", "gate_bias", "out_bias")):  # non-zero, so every bias is compared
        bias = getattr(ours, name)
        bias[...] = jax.numpy.asarray(0.3 * normal(*bias.shape, seed=seed))
    graphdef, params = nnx.split(ours, nnx.Param)
    flat = lambda state: {name: np.asarray(state[name][...]) for name in state}
    peer = torch_models.TorchConvGRU(c_in, c, input_kernel=3, rec_kernel=5)
    peer.load_state_dict({k: torch.tensor(v) for k, v in conv_gru_as_torch(flat(params), c).items()})

    x, weights = normal(2, 5, 6, 7, c_in, seed=10), normal(2, 5, 6, 7, c, seed=11)  # (B, T, H, W, C)
    loss = lambda p, x: jax.numpy.sum(nnx.merge(graphdef, p)(x) * weights)
    expected = np.asarray(jit(lambda p, x: nnx.merge(graphdef, p)(x))(params, x))
    grads, x_grad = jit(jax.grad(loss, argnums=(0, 1)))(params, x)

    x_torch = torch.from_numpy(x).permute(0, 4, 1, 2, 3).requires_grad_()  # (B, C, T, H, W)
    out = peer(x_torch)
    (out * torch.from_numpy(weights).permute(0, 4, 1, 2, 3)).sum().backward()
    out = out.permute(0, 2, 3, 4, 1).detach().numpy()
    assert np.abs(expected[:, 0]).max() > 0.05  # not a trivially zero output
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(x_torch.grad.permute(0, 2, 3, 4, 1).numpy(), np.asarray(x_grad), atol=1e-5)
    expected_grads = conv_gru_as_torch(flat(grads), c)
    for name, param in peer.named_parameters():
        np.testing.assert_allclose(param.grad.numpy(), expected_grads[name], atol=2e-5, rtol=1e-5, err_msg=name)
