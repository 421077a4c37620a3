"""Speed benchmark: per config the jitted train step (compile s, step ms, clips/s, peak memory, parameters, whole-
trial inference), the input pipeline on its own, and optional PyTorch peers, as a table and a JSON file.

    python -m experiments.benchmark                                    # every video config and its :cpu variant
    python -m experiments.benchmark --configs=factorized:cpu,viv1t:cpu --steps=10 --out=runs/bench.json
    python -m experiments.benchmark --configs=viv1t --mice=1 --batch_size=2 --steps=2   # full config, cut down

Full configs get the ten competition mice (≈ 8,000 neurons each; ``--mice`` / ``--neurons`` change that, and
``--batch_size`` / ``--clip_frames`` change their batch); ``:cpu`` variants the synthetic dataset's three mice
(180/220/260). Each PyTorch peer (``pip install .[bench]``) runs right after its JAX config, in the same process
and with as many threads as XLA uses, so the ratio holds on a loaded machine; absolute figures on a shared machine
are noisy, ratios less so. The pipeline is measured on the cached synthetic dataset, or on one generated at a
chosen size (``--pipeline_mice`` / ``--pipeline_neurons`` / ``--pipeline_train_trials``).
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import traceback
from pathlib import Path

from absl import app, flags

from experiments.config_flags_util import CONFIG_DIR
from sensorium_jax.huge_pages import reexec_with_huge_pages

_CONFIGS = flags.DEFINE_list("configs", [], "NAME[:VARIANT] of experiments/configs; default: every video config + :cpu")
_STEPS = flags.DEFINE_integer("steps", 5, "timed train steps per config (median reported)")
_WARMUP = flags.DEFINE_integer("warmup", 1, "untimed steps after the first, before timing")
_EVAL_STEPS = flags.DEFINE_integer("eval_steps", 2, "timed whole-trial inference calls per config (0: skip)")
_EVAL_TRIALS = flags.DEFINE_integer("eval_trials", 0, "trials per inference call (0: the config's eval batch)")
_MICE = flags.DEFINE_integer("mice", 0, "full configs: number of mice (0: the competition's ten)")
_NEURONS = flags.DEFINE_integer("neurons", 0, "full configs: neurons per mouse (0: the competition's counts)")
_BATCH = flags.DEFINE_integer("batch_size", 0, "full configs: clips per mouse per step (0: the config's)")
_FRAMES = flags.DEFINE_integer("clip_frames", 0, "full configs: frames per clip (0: the config's)")
_DEVICES = flags.DEFINE_integer("num_devices", 1, "devices of the data-parallel mesh (0: all)")
_MODELS = flags.DEFINE_bool("models", True, "measure the configs' train steps (--nomodels: only the pipeline)")
_TORCH = flags.DEFINE_bool("torch", True, "run the PyTorch peers when torch is installed")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch threads (0: the CPUs XLA uses)")
_PIPELINE = flags.DEFINE_bool("pipeline", True, "measure the input pipeline on its own")
_PIPE_MICE = flags.DEFINE_integer("pipeline_mice", 0, "pipeline dataset: mice (all sizes 0: the cached default set)")
_PIPE_NEURONS = flags.DEFINE_integer("pipeline_neurons", 0, "pipeline dataset: neurons per mouse")
_PIPE_TRIALS = flags.DEFINE_integer("pipeline_train_trials", 0, "pipeline dataset: train trials per mouse")
_PIPE_BATCH = flags.DEFINE_integer("pipeline_batch_size", 8, "pipeline: clips per mouse per round")
_PIPE_FRAMES = flags.DEFINE_integer("pipeline_clip_frames", 80, "pipeline: frames per clip")
_PIPE_ROUNDS = flags.DEFINE_integer("pipeline_rounds", 20, "pipeline: timed rounds")
_PIPE_WORKERS = flags.DEFINE_integer("pipeline_workers", 0, "pipeline: Grain worker processes (0: threads)")
_PIPE_PREFETCH = flags.DEFINE_integer("pipeline_prefetch", 2, "pipeline: prefetch buffer / reader threads")
_CACHE = flags.DEFINE_string("cache_dir", "~/.cache/sensorium_jax", "where synthetic datasets are cached")
_OUT = flags.DEFINE_string("out", "runs/benchmark.json", "JSON file for the results ('' : none)")
_NOTE = flags.DEFINE_string("note", "", "free text stored in the JSON's metadata (e.g. how loaded the machine was)")


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common"))


def load_config(spec: str):
    """``NAME[:VARIANT]`` → the run config (as ``--config=`` of experiments.train would give it)."""
    name, _, variant = spec.partition(":")
    if name not in config_names():
        raise app.UsageError(f"unknown config {name!r}; available: {', '.join(config_names())}")
    return importlib.import_module(f"experiments.configs.{name}").get_config(variant or None)


def default_specs() -> list[str]:
    """Every video config, and its ``:cpu`` variant where that differs from the full config."""
    specs = []
    for name in config_names():
        try:
            module = importlib.import_module(f"experiments.configs.{name}")
            full = module.get_config(None)
        except Exception as error:  # a config whose model is not importable here: say so, measure the rest
            print(f"skipping config {name}: {error!r}")
            continue
        if full.get("task", "video") != "video":
            continue
        specs.append(name)
        if module.get_config("cpu").to_dict() != full.to_dict():
            specs.append(f"{name}:cpu")
    return specs


def is_cpu_variant(spec: str) -> bool:
    from experiments.configs.common import parse_variant

    return "cpu" in parse_variant(spec.partition(":")[2])


def xla_cpu_count() -> int:
    """CPUs XLA's CPU backend runs on (its thread pool follows the process's affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def main(argv: list[str]) -> None:
    del argv
    import jax

    from sensorium_jax.benchmarking import fake_inputs, report, timing, torch_peers

    specs = (_CONFIGS.value or default_specs()) if _MODELS.value else []
    run_torch = _TORCH.value and torch_peers.torch_available()
    threads = _TORCH_THREADS.value or xla_cpu_count()
    rows: list[dict] = []
    print(
        f"benchmark of {', '.join(specs)} on {jax.devices()[0].device_kind} ({jax.default_backend()}); "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs",
        flush=True,
    )
    if not run_torch:
        print("PyTorch peers skipped: " + ("--notorch" if not _TORCH.value else "torch is not installed"))

    for spec in specs:
        config = load_config(spec)
        cpu = is_cpu_variant(spec)
        counts = fake_inputs.neuron_counts(cpu, 0 if cpu else _MICE.value, 0 if cpu else _NEURONS.value)
        mice = fake_inputs.fake_mice(counts)
        batch = 0 if cpu else _BATCH.value
        frames = 0 if cpu else _FRAMES.value
        changed = _cut_down_note(config, counts, cpu, batch, frames)
        print(f"[{spec}] JAX: {len(counts)} mice, {sum(counts):,} neurons ...", flush=True)
        try:
            measurement = timing.measure_jax_config(
                config,
                mice,
                batch_size=batch,
                clip_frames=frames,
                steps=_STEPS.value,
                warmup=_WARMUP.value,
                num_devices=_DEVICES.value,
                eval_steps=_EVAL_STEPS.value,
                eval_trials=_EVAL_TRIALS.value,
            )
            rows.append(report.jax_row(spec, measurement, note=changed))
        except timing.StepFailedError as error:
            traceback.print_exc()
            rows.append(
                report.make_row(
                    name=spec,
                    framework="jax",
                    mice=len(counts),
                    neurons=sum(counts),
                    batch_clips=len(counts) * (batch or config.data.batch_size),
                    clip_frames=1 if fake_inputs.is_static(config) else (frames or config.data.clip_frames),
                    params=error.params,
                    compile_s=error.compile_s,
                    xla_mem_mb=None if error.xla_step_bytes is None else error.xla_step_bytes / 1e6,
                    note=f"step failed: {error}; {changed}"[:300],
                )
            )
        except Exception as error:  # one broken config must not lose the others' figures
            traceback.print_exc()
            rows.append(report.make_row(name=spec, framework="jax", note=f"failed: {error!r}"[:300]))
        if run_torch and torch_peers.has_peer(config):
            print(f"[{spec}] PyTorch peer ({threads} threads) ...", flush=True)
            try:
                peer = torch_peers.measure_torch_peer(
                    config,
                    mice,
                    batch_size=batch,
                    clip_frames=frames,
                    steps=_STEPS.value,
                    warmup=_WARMUP.value,
                    threads=threads,
                )
                rows.append(_torch_row(report, spec, peer, changed))
            except Exception as error:
                traceback.print_exc()
                rows.append(
                    report.make_row(
                        name=f"{spec} [torch]", framework="torch", peer_of=spec, note=f"failed: {error!r}"[:300]
                    )
                )
        print(report.format_table(rows[-2:] if rows[-1]["framework"] == "torch" else rows[-1:]), flush=True)

    pipeline_frames_per_s = None
    if _PIPELINE.value:
        print("input pipeline ...", flush=True)
        row = _pipeline_row(report)
        rows.append(row)
        if row["clips_per_s"]:
            pipeline_frames_per_s = row["clips_per_s"] * row["clip_frames"]
    report.add_ratios(rows, pipeline_frames_per_s)

    print()
    print(report.format_table(rows))
    print(
        f"\nload average at the end {os.getloadavg()[0]:.1f}: the machine may be shared, so absolute figures are "
        "noisy; each JAX/PyTorch pair ran back to back in one process."
    )
    if _OUT.value:
        meta = _metadata(jax, torch_peers, threads)
        path = report.write_json(_OUT.value, rows, meta)
        print(f"wrote {path}")


def _cut_down_note(config, counts, cpu: bool, batch: int, frames: int) -> str:
    """Say where a full config was measured at other sizes than its recipe's (fewer mice, smaller batch)."""
    if cpu:
        return "synthetic dataset's 3 mice"
    parts = []
    from sensorium_jax.benchmarking import fake_inputs

    if tuple(counts) != fake_inputs.COMPETITION_NEURONS:
        parts.append(f"{len(counts)} mice, {sum(counts):,} neurons (not the competition's ten)")
    if batch and batch != config.data.batch_size:
        parts.append(f"batch {batch}/mouse (config {config.data.batch_size})")
    if frames and frames != config.data.clip_frames:
        parts.append(f"{frames}-frame clips (config {config.data.clip_frames})")
    return "; ".join(parts) if parts else "competition size (10 mice, 78,853 neurons)"


def _torch_row(report, spec: str, peer, note: str) -> dict:
    return report.make_row(
        name=f"{spec} [torch]",
        framework="torch",
        peer_of=spec,
        mice=peer.num_mice,
        neurons=peer.num_neurons,
        batch_clips=peer.batch_clips,
        clip_frames=peer.clip_frames,
        params=peer.params,
        step_ms=peer.step_s * 1e3,
        timed_steps=len(peer.step_times_s),
        clips_per_s=peer.clips_per_s,
        peak_mem_mb=peer.peak_mem_bytes / 1e6,
        mem_kind=peer.mem_kind,
        note=f"{peer.name}; {peer.threads} threads; first step {peer.first_step_s:.1f} s; {note}",
        step_times_ms=[t * 1e3 for t in peer.step_times_s],
    )


def _pipeline_row(report) -> dict:
    from sensorium_jax.benchmarking import pipeline_bench

    try:
        paths = pipeline_bench.pipeline_dataset(_CACHE.value, _PIPE_MICE.value, _PIPE_NEURONS.value, _PIPE_TRIALS.value)
        sessions = pipeline_bench.open_pipeline_sessions(paths)
        measurement = pipeline_bench.measure_pipeline(
            sessions,
            _PIPE_BATCH.value,
            _PIPE_FRAMES.value,
            rounds=_PIPE_ROUNDS.value,
            num_workers=_PIPE_WORKERS.value,
            prefetch=_PIPE_PREFETCH.value,
        )
    except Exception as error:
        traceback.print_exc()
        return report.make_row(name="pipeline", framework="grain", note=f"failed: {error!r}"[:300])
    trials = int(min(len(s.trials("train")) for s in sessions))
    note = (
        f"synthetic set {Path(paths[0]).parent.name}: {measurement.num_mice} mice, ≥{trials} train trials each, "
        f"{_PIPE_WORKERS.value} workers, prefetch {_PIPE_PREFETCH.value}; headroom is in frames/s"
    )
    return report.pipeline_row("pipeline", measurement, note=note)


def _metadata(jax, torch_peers, threads: int) -> dict:
    flag_values = {h.name: h.value for h in globals().values() if isinstance(h, flags.FlagHolder)}
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "xla_cpus": xla_cpu_count(),
        "torch_threads": threads,
        "load_average_end": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        **torch_peers.versions(),
        "flags": flag_values,
        "note": _NOTE.value,
        "caveat": "shared machine: absolute figures are noisy; JAX/PyTorch pairs ran back to back in one process",
    }


if __name__ == "__main__":
    reexec_with_huge_pages()  # glibc reads its tunables only at start-up
    app.run(main)
