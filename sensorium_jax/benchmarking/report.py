"""Rows of the benchmark (one per config, PyTorch peer or pipeline), the printed table and the JSON file.

Every row carries every column (None where a column does not apply), so the JSON is rectangular and a reader never
has to guess which keys exist. Ratios:

* ``jax_torch_ratio`` (on a PyTorch row): the JAX config's median step time / the peer's; ≤ 1 means JAX is no
  slower. Both are measured one after the other in the same process, so load on a shared machine hits both.
* ``headroom`` (on a JAX row): the pipeline's frames/s / the step's frames/s (frames, not clips, so configs with
  other clip lengths than the pipeline run are compared fairly); ≥ 1 means the pipeline keeps up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    "name",
    "framework",
    "peer_of",
    "mice",
    "neurons",
    "batch_clips",
    "clip_frames",
    "params",
    "compile_s",
    "step_ms",
    "timed_steps",
    "clips_per_s",
    "peak_mem_mb",
    "mem_kind",
    "xla_mem_mb",
    "eval_trials_per_s",
    "jax_torch_ratio",
    "headroom",
    "note",
)

_MB = 1e6


def _mb(value: int | None) -> float | None:
    return None if value is None else value / _MB


def make_row(**values: Any) -> dict[str, Any]:
    """A row with every column; unknown keys are an error (a typo would otherwise vanish from the table)."""
    unknown = set(values) - set(COLUMNS) - {"step_times_ms", "eval_times_ms"}
    if unknown:
        raise KeyError(f"unknown benchmark columns {sorted(unknown)}")
    return {column: values.get(column) for column in COLUMNS} | {
        k: values[k] for k in ("step_times_ms", "eval_times_ms") if k in values
    }


def jax_row(name: str, m, note: str = "") -> dict[str, Any]:
    """From a :class:`~sensorium_jax.benchmarking.timing.JaxMeasurement`."""
    return make_row(
        name=name,
        framework="jax",
        mice=m.num_mice,
        neurons=m.num_neurons,
        batch_clips=m.batch_clips,
        clip_frames=m.clip_frames,
        params=m.params,
        compile_s=m.compile_s,
        step_ms=m.step_s * 1e3,
        timed_steps=len(m.step_times_s),
        clips_per_s=m.clips_per_s,
        peak_mem_mb=_mb(m.peak_mem_bytes),
        mem_kind=m.mem_kind,
        xla_mem_mb=_mb(m.xla_step_bytes),
        eval_trials_per_s=m.eval_trials_per_s,
        note=note,
        step_times_ms=[t * 1e3 for t in m.step_times_s],
        eval_times_ms=[t * 1e3 for t in m.eval_times_s],
    )


def pipeline_row(name: str, m, note: str = "") -> dict[str, Any]:
    """From a :class:`~sensorium_jax.benchmarking.pipeline_bench.PipelineMeasurement`; ``compile_s`` holds the
    start-up (iterator and first round), ``peak_mem_mb`` the sampled peak RSS of the process tree (workers
    included) above the RSS before the pipeline started."""
    return make_row(
        name=name,
        framework="grain",
        mice=m.num_mice,
        neurons=m.num_neurons,
        batch_clips=m.batch_clips,
        clip_frames=m.clip_frames,
        compile_s=m.first_round_s,
        step_ms=m.round_s * 1e3,
        timed_steps=len(m.round_times_s),
        clips_per_s=m.clips_per_s,
        peak_mem_mb=_mb(max(0, m.peak_rss_bytes - m.rss_before_bytes)),
        mem_kind="tree_rss_delta",
        note=note,
        step_times_ms=[t * 1e3 for t in m.round_times_s],
    )


def add_ratios(rows: list[dict[str, Any]], pipeline_frames_per_s: float | None) -> None:
    """Fill ``jax_torch_ratio`` on peer rows and ``headroom`` on JAX rows, in place."""
    by_name = {row["name"]: row for row in rows if row["framework"] == "jax"}
    for row in rows:
        jax_ms = by_name[row["peer_of"]]["step_ms"] if row["peer_of"] in by_name else None
        if row["framework"] == "torch" and jax_ms and row["step_ms"]:  # both ran (a failed step has none)
            row["jax_torch_ratio"] = jax_ms / row["step_ms"]
        if row["framework"] == "jax" and pipeline_frames_per_s and row["clips_per_s"]:
            row["headroom"] = pipeline_frames_per_s / (row["clips_per_s"] * row["clip_frames"])


def _cell(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100 or digits == 0:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}" if abs(value) >= 1 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


_TABLE = (
    ("config / peer", "name", None),
    ("fw", "framework", None),
    ("mice×clips×T", None, None),
    ("params", "params", None),
    ("compile s", "compile_s", 1),
    ("step ms", "step_ms", 1),
    ("n", "timed_steps", None),
    ("clips/s", "clips_per_s", 2),
    ("peak MB", "peak_mem_mb", 0),
    ("mem", "mem_kind", None),
    ("XLA MB", "xla_mem_mb", 0),
    ("eval trials/s", "eval_trials_per_s", 2),
    ("jax/torch", "jax_torch_ratio", 2),
    ("headroom", "headroom", 2),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width text table, one line per row, notes listed underneath."""
    lines = []
    for row in rows:
        cells = []
        for _, key, digits in _TABLE:
            if key is None:
                cells.append(f"{row['mice'] or '-'}×{_batch_per_mouse(row)}×{row['clip_frames'] or '-'}")
            else:
                cells.append(_cell(row[key], digits if digits is not None else 1))
        lines.append(cells)
    header = [title for title, _, _ in _TABLE]
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in lines]
    notes = [f"  {row['name']}: {row['note']}" for row in rows if row.get("note")]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def _batch_per_mouse(row: dict[str, Any]) -> str:
    if not row["mice"] or not row["batch_clips"]:
        return "-"
    return str(row["batch_clips"] // row["mice"])


def write_json(path: str | Path, rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "columns": list(COLUMNS), "rows": list(rows)}, indent=1) + "\n")
    return path
