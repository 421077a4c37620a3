"""SENSORIUM 2023 submission files: brotli-compressed parquet, validated after writing, zipped as the server takes.

One file per test tier, one row per trial, four columns (sensorium_2023 ``submission.py`` and README):

* ``mouse`` — the session folder name;
* ``trial_indices`` — the trial's index in the session (its ``{i}.npy`` file), int64;
* ``prediction`` — list of N lists (one per neuron, in ``unit_ids`` order) of ``T − 50`` float32 values: the
  predicted responses to the trial's frames after the first 50 (``T`` = valid frames, at most 300);
* ``neuron_ids`` — the session's ``meta/neurons/unit_ids`` as uint32, the same list in every row of a mouse.

Files: ``predictions_live_main.parquet.brotli`` and ``predictions_final_main.parquet.brotli`` zipped together
at the zip's root (main track); ``predictions_live_test_bonus_ood.parquet.brotli`` and
``predictions_final_test_bonus_ood.parquet.brotli`` each zipped on its own (bonus track: live and final are
uploaded separately because of the server's size limit).

Each file is built with pyarrow from flat numpy buffers (a Python list per value would need ~30 bytes a float),
one row group per mouse, written to a temporary name, read back and checked against the data — columns and
types, every trial of every mouse present exactly once, shapes, neuron ids, finite values, brotli — and only then
renamed into place: an invalid file is never left under a submission name.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from absl import logging

from sensorium_jax.data import layout
from sensorium_jax.data.reader import Session
from sensorium_jax.evaluation.evaluate import predict_trials

COLUMNS = ("mouse", "trial_indices", "prediction", "neuron_ids")
SCHEMA = pa.schema(
    [
        ("mouse", pa.string()),
        ("trial_indices", pa.int64()),
        ("prediction", pa.list_(pa.list_(pa.float32()))),
        ("neuron_ids", pa.list_(pa.uint32())),
    ]
)
FILES = {
    layout.Tier.LIVE_TEST_MAIN.value: "predictions_live_main.parquet.brotli",
    layout.Tier.FINAL_TEST_MAIN.value: "predictions_final_main.parquet.brotli",
    layout.Tier.LIVE_TEST_BONUS.value: "predictions_live_test_bonus_ood.parquet.brotli",
    layout.Tier.FINAL_TEST_BONUS.value: "predictions_final_test_bonus_ood.parquet.brotli",
}
MAIN_TIERS = (layout.Tier.LIVE_TEST_MAIN.value, layout.Tier.FINAL_TEST_MAIN.value)
BONUS_TIERS = (layout.Tier.LIVE_TEST_BONUS.value, layout.Tier.FINAL_TEST_BONUS.value)
#: zip name → tiers inside it
ZIPS = {
    "submission_main.zip": MAIN_TIERS,
    "submission_bonus_live.zip": (layout.Tier.LIVE_TEST_BONUS.value,),
    "submission_bonus_final.zip": (layout.Tier.FINAL_TEST_BONUS.value,),
}


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


# What the server accepts (it reads with pandas and converts every prediction with np.asarray), so files written
# by pandas (large_string, float64 lists) validate too; this module itself writes SCHEMA.
_COLUMN_KINDS = {
    "mouse": ("a string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    "trial_indices": ("an integer", pa.types.is_integer),
    "prediction": (
        "a list of lists of floats",
        lambda t: _is_list(t) and _is_list(t.value_type) and pa.types.is_floating(t.value_type.value_type),
    ),
    "neuron_ids": ("a list of integers", lambda t: _is_list(t) and pa.types.is_integer(t.value_type)),
}


class SubmissionError(ValueError):
    """A submission file (or the predictions for one) is not what the benchmark server accepts."""


@dataclasses.dataclass
class MouseRows:
    """One mouse's rows of one submission file."""

    mouse: str
    trial_indices: np.ndarray  # (n,) int
    predictions: list[np.ndarray]  # n × (N, T_i − 50) float32, neuron-major
    neuron_ids: np.ndarray  # (N,) uint32


@dataclasses.dataclass(frozen=True)
class Expected:
    """What one mouse's rows must hold: every trial of the tier, its scored length, the neuron ids."""

    frames: dict[int, int]  # trial index → T − 50
    neuron_ids: np.ndarray  # (N,) uint32

    @classmethod
    def from_session(cls, session: Session, tier: str, max_frames: int = layout.SCORED_FRAMES) -> Expected:
        frames = {
            int(t): min(int(session.valid_lengths[t]), max_frames) - layout.BURN_IN_FRAMES for t in session.trials(tier)
        }
        return cls(frames, neuron_ids(session))


def neuron_ids(session: Session) -> np.ndarray:
    """``unit_ids`` as the uint32 the server expects; ids that do not fit are an error, not a wrap-around."""
    ids = np.asarray(session.unit_ids)
    if ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() > np.iinfo(np.uint32).max:
        raise SubmissionError(
            f"{layout.unit_ids_path(session.path)}: neuron ids must be integers in the uint32 range "
            f"(dtype {ids.dtype}, range {ids.min()}..{ids.max()})"
        )
    return ids.astype(np.uint32)


# ----------------------------------------------------------------------------------------------------------------
# Checks


def check_rows(rows: MouseRows, expected: Expected, where: str) -> None:
    """In-memory check before anything is written; ``where`` names the file for the message."""
    trials = [int(t) for t in rows.trial_indices]
    if len(set(trials)) != len(trials):
        raise SubmissionError(f"{where}: mouse {rows.mouse}: duplicate trial indices")
    missing = sorted(set(expected.frames) - set(trials))
    extra = sorted(set(trials) - set(expected.frames))
    if missing or extra:
        raise SubmissionError(
            f"{where}: mouse {rows.mouse}: trials {missing} of the tier are missing, {extra} do not belong to it"
        )
    if not np.array_equal(np.asarray(rows.neuron_ids, np.uint32), expected.neuron_ids):
        raise SubmissionError(f"{where}: mouse {rows.mouse}: neuron ids differ from the session's unit_ids")
    n = len(expected.neuron_ids)
    for trial, prediction in zip(trials, rows.predictions, strict=True):
        shape = (n, expected.frames[trial])
        if prediction.shape != shape:
            raise SubmissionError(
                f"{where}: mouse {rows.mouse} trial {trial}: prediction shape {prediction.shape}, expected {shape} "
                "(neurons × frames after the first 50)"
            )
        if not np.isfinite(prediction).all():
            raise SubmissionError(f"{where}: mouse {rows.mouse} trial {trial}: prediction holds NaN or inf")


def validate_file(path: str | Path, expected: dict[str, Expected]) -> dict[str, Any]:
    """Read a written file back and check it against ``expected`` (mouse → :class:`Expected`).

    Returns a summary (rows, mice, shapes). Raises :class:`SubmissionError` naming the file and the problem.
    """
    path = Path(path)
    try:
        parquet = pq.ParquetFile(path)
        table = parquet.read()
    except Exception as error:
        raise SubmissionError(f"{path}: not a readable parquet file ({error})") from error
    if tuple(table.column_names) != COLUMNS:
        raise SubmissionError(f"{path}: columns {table.column_names}, expected exactly {list(COLUMNS)}")
    for name, (kind, accepts) in _COLUMN_KINDS.items():
        field_type = table.schema.field(name).type
        if not accepts(field_type):
            raise SubmissionError(f"{path}: column {name!r} has type {field_type}, expected {kind}")
    codecs = {
        parquet.metadata.row_group(g).column(c).compression
        for g in range(parquet.metadata.num_row_groups)
        for c in range(parquet.metadata.num_columns)
    }
    if codecs and codecs != {"BROTLI"}:
        raise SubmissionError(f"{path}: compression {sorted(codecs)}, expected BROTLI")
    for name in COLUMNS:
        if table.column(name).null_count:
            raise SubmissionError(f"{path}: column {name!r} holds nulls")

    mice = table.column("mouse").to_numpy(zero_copy_only=False).astype(str)
    trials = table.column("trial_indices").to_numpy()
    prediction = table.column("prediction").combine_chunks()
    ids = table.column("neuron_ids").combine_chunks()
    neurons_per_row = prediction.value_lengths().to_numpy()
    inner = prediction.flatten()  # one list per (row, neuron)
    frames_per_list = inner.value_lengths().to_numpy()
    if inner.null_count or inner.flatten().null_count or ids.flatten().null_count:
        raise SubmissionError(f"{path}: predictions or neuron ids hold nulls")
    values = inner.flatten().to_numpy(zero_copy_only=False)
    if not np.isfinite(values).all():
        raise SubmissionError(f"{path}: {int((~np.isfinite(values)).sum())} predicted values are NaN or inf")

    unknown = sorted(set(mice) - set(expected))
    if unknown:
        raise SubmissionError(f"{path}: rows for mice {unknown} that are not part of this submission")
    absent = sorted(m for m in expected if m not in set(mice) and expected[m].frames)
    if absent:
        raise SubmissionError(f"{path}: no rows for mice {absent}")
    row_starts = np.concatenate([[0], np.cumsum(neurons_per_row)])
    id_lists = ids.to_numpy(zero_copy_only=False)
    seen: dict[str, set[int]] = {m: set() for m in expected}
    for row, (mouse, trial) in enumerate(zip(mice, trials)):
        exp = expected[mouse]
        trial = int(trial)
        if trial not in exp.frames:
            raise SubmissionError(f"{path}: row {row}: trial {trial} is not in this tier for mouse {mouse}")
        if trial in seen[mouse]:
            raise SubmissionError(f"{path}: row {row}: trial {trial} of mouse {mouse} appears twice")
        seen[mouse].add(trial)
        if not np.array_equal(np.asarray(id_lists[row], np.uint32), exp.neuron_ids):
            raise SubmissionError(f"{path}: row {row} (mouse {mouse}): neuron_ids differ from the session's unit_ids")
        if neurons_per_row[row] != len(exp.neuron_ids):
            raise SubmissionError(
                f"{path}: row {row} (mouse {mouse}, trial {trial}): {neurons_per_row[row]} neurons, "
                f"expected {len(exp.neuron_ids)}"
            )
        lengths = frames_per_list[row_starts[row] : row_starts[row + 1]]
        if np.any(lengths != exp.frames[trial]):
            raise SubmissionError(
                f"{path}: row {row} (mouse {mouse}, trial {trial}): {sorted(set(lengths.tolist()))} frames per "
                f"neuron, expected {exp.frames[trial]} (the trial's frames after the first 50)"
            )
    for mouse, exp in expected.items():
        missing = sorted(set(exp.frames) - seen[mouse])
        if missing:
            raise SubmissionError(f"{path}: mouse {mouse}: trials {missing} have no row (truncated submission)")
    return {
        "rows": int(table.num_rows),
        "mice": {m: len(seen[m]) for m in expected},
        "frames": sorted({int(f) for exp in expected.values() for f in exp.frames.values()}),
    }


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _table(rows: MouseRows) -> pa.Table:
    """One mouse's rows as an Arrow table, built from flat buffers."""
    n = len(rows.neuron_ids)
    frames = np.array([p.shape[1] for p in rows.predictions], np.int64)
    flat = np.concatenate([np.ascontiguousarray(p, np.float32).reshape(-1) for p in rows.predictions])
    if flat.size >= 2**31:
        raise SubmissionError(f"mouse {rows.mouse}: {flat.size} values exceed one Arrow list's 32-bit offsets")
    inner_offsets = np.concatenate([[0], np.cumsum(np.repeat(frames, n))]).astype(np.int32)
    outer_offsets = (np.arange(len(rows.predictions) + 1) * n).astype(np.int32)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(flat, pa.float32()))
    prediction = pa.ListArray.from_arrays(pa.array(outer_offsets), inner)
    ids = np.asarray(rows.neuron_ids, np.uint32)
    id_offsets = (np.arange(len(rows.predictions) + 1) * n).astype(np.int32)
    id_lists = pa.ListArray.from_arrays(pa.array(id_offsets), pa.array(np.tile(ids, len(rows.predictions))))
    return pa.Table.from_arrays(
        [
            pa.array([rows.mouse] * len(rows.predictions), pa.string()),
            pa.array(np.asarray(rows.trial_indices, np.int64)),
            prediction,
            id_lists,
        ],
        schema=SCHEMA,
    )


def write_file(path: str | Path, mice: Sequence[MouseRows], expected: dict[str, Expected]) -> dict[str, Any]:
    """Check, write (brotli parquet, one row group per mouse), read back and validate, then move into place."""
    path = Path(path)
    if sorted(r.mouse for r in mice) != sorted(expected):
        raise SubmissionError(
            f"{path}: predictions for mice {sorted(r.mouse for r in mice)} but expected {sorted(expected)}"
        )
    for rows in mice:
        check_rows(rows, expected[rows.mouse], str(path))
    temporary = path.with_name(path.name + ".tmp")
    try:
        with pq.ParquetWriter(temporary, SCHEMA, compression="brotli") as writer:
            for rows in mice:
                writer.write_table(_table(rows))
        summary = validate_file(temporary, expected)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.replace(path)
    return summary


def write_zip(path: str | Path, files: Sequence[str | Path]) -> None:
    """Files at the zip's root (no folders in between, as the server requires); parquet is already compressed."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as archive:
        for file in files:
            archive.write(file, arcname=Path(file).name)
    temporary.replace(path)


# ----------------------------------------------------------------------------------------------------------------
# From a model


def tier_is_labelled(session: Session, tier: str) -> bool:
    """False when every response of the tier is zero (withheld test labels of the competition mice)."""
    for trial in session.trials(tier):
        responses = session.load(int(trial), normalize=False)["responses"]
        if np.any(responses != 0):
            return True
    return False


def select_mice(sessions: Sequence[Session], mice: str = "competition") -> list[Session]:
    """``competition``: the mice whose main test labels are withheld, or every mouse with test trials when none
    are (synthetic data, public mice); ``all``; or comma-separated session names."""
    with_tests = [s for s in sessions if any(s.trials(t).size for t in FILES)]
    if mice == "all":
        return with_tests
    if mice == "competition":
        withheld = [s for s in with_tests if any(s.trials(t).size and not tier_is_labelled(s, t) for t in MAIN_TIERS)]
        if withheld:
            return withheld
        logging.info("no mouse has withheld test labels: submitting every mouse with test trials")
        return with_tests
    names = [n.strip() for n in mice.split(",") if n.strip()]
    by_name = {s.name: s for s in sessions}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SubmissionError(f"mice {missing} are not among the data's sessions {sorted(by_name)}")
    return [by_name[n] for n in names]


def write_submission(
    model,
    sessions: Sequence[Session],
    output: str | Path,
    mice: str = "competition",
    batch_size: int = 8,
    window: int = 0,
    max_frames: int = layout.SCORED_FRAMES,
) -> dict[str, Any]:
    """Predict every test trial of the selected mice and write the validated files and zips into ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    chosen = select_mice(sessions, mice)
    if not chosen:
        raise SubmissionError("no session has test trials (tiers live_test_* / final_test_*)")
    for session in chosen:
        model.check_session(session)  # a mouse unknown to the model or other neurons: fail before any work
    summary: dict[str, Any] = {
        "model": [str(m.workdir) for m in model.members],
        "mice": [s.name for s in chosen],
        "files": {},
        "zips": {},
    }
    written: dict[str, Path] = {}
    for tier, filename in FILES.items():
        having = [s for s in chosen if s.trials(tier).size]
        if not having:
            continue
        lacking = [s.name for s in chosen if not s.trials(tier).size]
        if lacking:
            logging.warning(
                "%s: mice %s have no %s trials; their rows are absent from %s", output, lacking, tier, filename
            )
        rows, expected = [], {}
        for session in having:
            tp = predict_trials(model, session, tier, batch_size, window, max_frames, keep_responses=False)
            rows.append(
                MouseRows(
                    session.name,
                    np.asarray(tp.trials, np.int64),
                    [p.T.astype(np.float32) for p in tp.predictions],  # (T − 50, N) → neuron-major
                    neuron_ids(session),
                )
            )
            expected[session.name] = Expected.from_session(session, tier, max_frames)
        path = output / filename
        summary["files"][filename] = {"tier": tier, **write_file(path, rows, expected)}
        written[tier] = path
        logging.info("wrote %s (%d rows, validated)", path, summary["files"][filename]["rows"])
    missing_tiers = [t for t in FILES if t not in written]
    if missing_tiers:
        logging.info("no %s trials in the selected mice: no file for them", ", ".join(missing_tiers))
    for zip_name, tiers in ZIPS.items():
        files = [written[t] for t in tiers if t in written]
        if not files:
            continue
        if len(files) < len(tiers):
            logging.warning("%s: only %s (the data hold no %s trials)", zip_name, [f.name for f in files], tiers)
        write_zip(output / zip_name, files)
        summary["zips"][zip_name] = [f.name for f in files]
    if not written:
        raise SubmissionError(f"the selected mice {summary['mice']} have no test trials")
    (output / "submission.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
