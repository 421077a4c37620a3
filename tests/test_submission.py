"""SENSORIUM 2023 submission files: round trip through pyarrow/pandas, the zips, and every refusal."""

import zipfile

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from sensorium_jax.data.reader import open_sessions
from sensorium_jax.evaluation import submission
from sensorium_jax.evaluation.evaluate import predict_trials
from sensorium_jax.evaluation.loading import ModelDataMismatch
from sensorium_jax.evaluation.submission import Expected, MouseRows, SubmissionError
from tests.eval_helpers import FakeModel, withhold_test_labels, write_sessions


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    return open_sessions(write_sessions(tmp_path_factory.mktemp("data")))


def rows_and_expected(session, tier="live_test_main", seed=0):
    rng = np.random.default_rng(seed)
    expected = Expected.from_session(session, tier)
    trials = np.array(sorted(expected.frames))
    predictions = [rng.random((session.num_neurons, expected.frames[t])).astype(np.float32) for t in trials]
    return MouseRows(session.name, trials, predictions, submission.neuron_ids(session)), expected


def test_round_trip_exact_columns_shapes_and_values(sessions, tmp_path):
    rows, expected = zip(*(rows_and_expected(s, seed=i) for i, s in enumerate(sessions)))
    path = tmp_path / submission.FILES["live_test_main"]
    summary = submission.write_file(path, rows, {r.mouse: e for r, e in zip(rows, expected)})
    assert summary["rows"] == sum(len(r.trial_indices) for r in rows)
    assert summary["frames"] == [20]  # 70 valid frames − the 50-frame burn-in

    parquet = pq.ParquetFile(path)
    assert parquet.schema_arrow.names == ["mouse", "trial_indices", "prediction", "neuron_ids"]
    assert {parquet.metadata.row_group(0).column(c).compression for c in range(4)} == {"BROTLI"}

    frame = pd.read_parquet(path)  # the way the benchmark server reads it
    assert list(frame.columns) == ["mouse", "trial_indices", "prediction", "neuron_ids"]
    for r in rows:
        mine = frame[frame["mouse"] == r.mouse]
        assert mine["trial_indices"].tolist() == [int(t) for t in r.trial_indices]
        for (_, row), original in zip(mine.iterrows(), r.predictions):
            array = np.asarray(row["prediction"].tolist())
            assert array.shape == original.shape  # (neurons, T − 50)
            assert array.dtype == np.float32
            np.testing.assert_array_equal(array, original)
            assert np.asarray(row["neuron_ids"]).dtype == np.uint32
            np.testing.assert_array_equal(row["neuron_ids"], r.neuron_ids)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda r: r.predictions[0].__setitem__((0, 3), np.nan), "NaN"),
        (lambda r: r.predictions.__setitem__(0, r.predictions[0][:, :-1]), "shape"),
        (lambda r: r.predictions.__setitem__(1, r.predictions[1][:-1]), "shape"),
        (lambda r: setattr(r, "neuron_ids", r.neuron_ids[::-1].copy()), "neuron ids"),
        (lambda r: (setattr(r, "trial_indices", r.trial_indices[:1]), r.predictions.pop()), "missing"),
        (lambda r: setattr(r, "trial_indices", np.array([r.trial_indices[0]] * 2)), "duplicate"),
    ],
)
def test_refuses_invalid_predictions_and_leaves_no_file(sessions, tmp_path, corrupt, message):
    rows, expected = rows_and_expected(sessions[0])
    corrupt(rows)
    path = tmp_path / "predictions_live_main.parquet.brotli"
    with pytest.raises(SubmissionError, match=message):
        submission.write_file(path, [rows], {rows.mouse: expected})
    assert not path.exists() and not list(tmp_path.iterdir())


def test_refuses_missing_or_extra_mouse(sessions, tmp_path):
    rows, expected = rows_and_expected(sessions[0])
    other_rows, _ = rows_and_expected(sessions[1])
    with pytest.raises(SubmissionError, match="expected"):
        submission.write_file(tmp_path / "a.parquet.brotli", [rows], {rows.mouse: expected, "mouse-9": expected})
    with pytest.raises(SubmissionError, match="expected"):
        submission.write_file(tmp_path / "a.parquet.brotli", [rows, other_rows], {rows.mouse: expected})


def test_validation_of_foreign_files(sessions, tmp_path):
    rows, expected = rows_and_expected(sessions[0])
    good = pd.DataFrame(
        {
            "mouse": [rows.mouse] * len(rows.trial_indices),
            "trial_indices": rows.trial_indices,
            "prediction": [p.tolist() for p in rows.predictions],
            "neuron_ids": [rows.neuron_ids] * len(rows.trial_indices),
        }
    )
    path = tmp_path / "f.parquet.brotli"
    good.drop(columns=["neuron_ids"]).to_parquet(path, compression="brotli", index=False)
    with pytest.raises(SubmissionError, match="columns"):
        submission.validate_file(path, {rows.mouse: expected})
    # the starter kit's way (pandas, Python floats): accepted as the server accepts it
    good.to_parquet(path, compression="brotli", index=False)
    assert submission.validate_file(path, {rows.mouse: expected})["rows"] == len(rows.trial_indices)
    good.iloc[:1].to_parquet(path, compression="brotli", index=False)  # truncated: a trial has no row
    with pytest.raises(SubmissionError, match="truncated"):
        submission.validate_file(path, {rows.mouse: expected})
    good.to_parquet(path, compression="snappy", index=False)
    with pytest.raises(SubmissionError, match="BROTLI"):
        submission.validate_file(path, {rows.mouse: expected})
    path.write_bytes(b"not parquet")
    with pytest.raises(SubmissionError, match="not a readable parquet"):
        submission.validate_file(path, {rows.mouse: expected})


def test_write_submission_from_a_model(sessions, tmp_path):
    model = FakeModel(sessions)
    summary = submission.write_submission(model, sessions, tmp_path, mice="all", batch_size=3)
    assert summary["mice"] == [s.name for s in sessions]
    assert sorted(summary["zips"]) == ["submission_bonus_final.zip", "submission_bonus_live.zip", "submission_main.zip"]
    with zipfile.ZipFile(tmp_path / "submission_main.zip") as archive:
        assert sorted(archive.namelist()) == [
            "predictions_final_main.parquet.brotli",
            "predictions_live_main.parquet.brotli",
        ]  # at the zip's root, no folder in between
    with zipfile.ZipFile(tmp_path / "submission_bonus_live.zip") as archive:
        assert archive.namelist() == ["predictions_live_test_bonus_ood.parquet.brotli"]
    # the file holds exactly the model's predictions of the scored frames, neuron-major
    frame = pd.read_parquet(tmp_path / "predictions_final_test_bonus_ood.parquet.brotli")
    tp = predict_trials(model, sessions[1], "final_test_bonus", batch_size=3)
    mine = frame[frame["mouse"] == sessions[1].name].sort_values("trial_indices")
    assert mine["trial_indices"].tolist() == tp.trials
    for (_, row), prediction in zip(mine.iterrows(), tp.predictions):
        np.testing.assert_allclose(np.asarray(row["prediction"].tolist()), prediction.T, rtol=1e-6)
    assert (tmp_path / "submission.json").is_file()


def test_competition_mice_and_unknown_mouse(tmp_path):
    paths = write_sessions(tmp_path / "data")
    withhold_test_labels(paths[1])
    sessions = open_sessions(paths)
    assert [s.name for s in submission.select_mice(sessions)] == [sessions[1].name]
    with pytest.raises(SubmissionError, match="mouse-7"):
        submission.select_mice(sessions, "mouse-7")
    model = FakeModel(sessions[:1])  # knows mouse-0 only: the competition mouse mouse-1 is absent
    with pytest.raises(ModelDataMismatch, match="mouse-1"):
        submission.write_submission(model, sessions, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.brotli"))
