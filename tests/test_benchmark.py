"""The benchmark's measurement functions on tiny shapes: the figures are consistent with each other (clips/s is
clips per step over the median step time, the JSON is rectangular, ratios are what the definitions give)."""

from __future__ import annotations

import json
import statistics

import ml_collections
import numpy as np
import pytest

from experiments import benchmark
from experiments.configs import factorized
from sensorium_jax.benchmarking import fake_inputs, memory, pipeline_bench, report, timing
from sensorium_jax.data.reader import open_sessions
from sensorium_jax.models.model import count_parameters
from sensorium_jax.models.registry import build_model


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
