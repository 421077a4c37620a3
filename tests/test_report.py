"""Benchmark scoring per tier / stimulus type against hand computation, the PNG report, TensorBoard logs."""

import json
import struct

import numpy as np
import pytest

from sensorium_jax.data.reader import open_sessions
from sensorium_jax.evaluation import benchmark, metrics, report
from sensorium_jax.evaluation.evaluate import predict_trials, window_starts
from sensorium_jax.training.logger import MetricWriter
from tests.eval_helpers import FakeModel, write_sessions


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    paths = write_sessions(tmp_path_factory.mktemp("data"))
    # annotate the bonus trials of mouse-0 with stimulus types, as ViV1T's integer codes (2 dots, 4 gabor)
    tiers = np.load(paths[0] / "meta" / "trials" / "tiers.npy", allow_pickle=True).astype(str)
    codes = np.zeros(len(tiers), np.int64)
    bonus = np.flatnonzero(np.char.find(tiers, "bonus") >= 0)
    codes[bonus] = [2, 4, 2, 4, 4, 2]
    np.save(paths[0] / "meta" / "trials" / "stimulus_types.npy", codes)
    return open_sessions(paths)


def test_leave_one_out_oracle_by_hand():
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=(2, 60)) for _ in range(3))
    # two repeats of one video: each is predicted by the other; a single trial (c) does not take part
    expected = [
        np.corrcoef(np.concatenate([a[n, 50:], b[n, 50:]]), np.concatenate([b[n, 50:], a[n, 50:]]))[0, 1]
        for n in range(2)
    ]
    got = metrics.leave_one_out_oracle_np([a, b, c], ["v", "v", "w"])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # three repeats: the oracle of each is the mean of the other two
    three = metrics.leave_one_out_oracle_np([a, b, c], ["v", "v", "v"])
    target = np.concatenate([x[:, 50:] for x in (a, b, c)], axis=1)
    oracle = np.concatenate([(b + c)[:, 50:] / 2, (a + c)[:, 50:] / 2, (a + b)[:, 50:] / 2], axis=1)
    np.testing.assert_allclose(three, [np.corrcoef(target[n], oracle[n])[0, 1] for n in range(2)], atol=1e-6)
    with pytest.raises(ValueError, match="repeated"):
        metrics.leave_one_out_oracle_np([a, b], ["v", "w"])


def test_window_starts_tile_the_trial():
    assert window_starts(100, 0, 10) == [0]
    assert window_starts(100, 100, 10) == [0]
    starts = window_starts(100, 30, 10)
    assert starts == [0, 20, 40, 60, 70]  # stride 20, the last window ends at the trial's end
    covered = set()
    for s in starts:
        covered |= set(range(s + 10, s + 30))
    assert covered == set(range(10, 100))
    with pytest.raises(ValueError, match="burn-in"):
        window_starts(100, 10, 10)


def test_predictions_hold_exactly_the_scored_frames(sessions):
    for burn_in in (4, 55):  # 55 > 50: the input is padded at the front with the first frame
        tp = predict_trials(FakeModel(sessions, burn_in=burn_in), sessions[0], "oracle", batch_size=2)
        assert [p.shape for p in tp.predictions] == [(20, 4)] * 3  # 70 frames − 50
        assert [r.shape for r in tp.responses] == [(70, 4)] * 3
        assert len(set(tp.video_ids)) == 1  # the oracle trials repeat one video


def test_sliding_windows_equal_the_whole_trial(sessions):
    model = FakeModel(sessions, burn_in=6)
    whole = predict_trials(model, sessions[1], "live_test_bonus", batch_size=2)
    for window in (7, 16, 31):
        windowed = predict_trials(model, sessions[1], "live_test_bonus", batch_size=2, window=window)
        for a, b in zip(whole.predictions, windowed.predictions):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_scores_per_mouse_tier_and_stimulus_type_by_hand(sessions):
    model = FakeModel(sessions)
    result = benchmark.run(model, sessions, batch_size=4)
    mice = result.results["mice"]
    assert set(mice[sessions[0].name]) == {
        "oracle",
        "live_test_main",
        "final_test_main",
        "live_test_bonus",
        "final_test_bonus",
    }
    # by hand, with the metrics module: mouse-0's live bonus trials of type "gaussian dots"
    tp = predict_trials(model, sessions[0], "live_test_bonus", batch_size=4)
    codes = np.load(sessions[0].path / "meta" / "trials" / "stimulus_types.npy")
    keep = [i for i, t in enumerate(tp.trials) if codes[t] == 2]
    by_hand = metrics.single_trial_correlation_np(
        [tp.responses[i].T for i in keep], [tp.predictions[i].T for i in keep]
    ).mean()
    per_type = mice[sessions[0].name]["live_test_bonus"]["stimulus_types"]
    assert sorted(per_type) == ["drifting gabor", "gaussian dots"]
    assert per_type["gaussian dots"]["num_trials"] == len(keep)
    np.testing.assert_allclose(per_type["gaussian dots"]["single_trial_correlation"], by_hand, rtol=1e-9)
    assert "stimulus_types" not in mice[sessions[1].name]["live_test_bonus"]  # mouse-1 has no annotation

    # overall = all neurons of all mice pooled; mean_over_mice = mean of the per-mouse values
    per_neuron = [result.scores[s.name]["oracle"]["per_neuron_single_trial"] for s in sessions]
    overall = result.results["overall"]["oracle"]
    np.testing.assert_allclose(overall["single_trial_correlation"], np.concatenate(per_neuron).mean(), rtol=1e-9)
    np.testing.assert_allclose(
        overall["single_trial_correlation_mean_over_mice"], np.mean([p.mean() for p in per_neuron]), rtol=1e-9
    )
    # repeats found by hashing frames: the oracle tier repeats one video, so correlation to average exists
    average = metrics.correlation_to_average_np(
        *zip(
            *[
                (r.T, p.T)
                for r, p in zip(
                    result.report_trials[sessions[0].name].responses, result.report_trials[sessions[0].name].predictions
                )
            ]
        ),
        result.report_trials[sessions[0].name].video_ids,
    )
    np.testing.assert_allclose(mice[sessions[0].name]["oracle"]["correlation_to_average"], average.mean(), rtol=1e-9)
    # real data: the ceiling is the repeat-based estimate
    assert overall["ceiling_kind"].startswith("repeat-based")
    json.dumps(result.results)  # JSON-ready: no arrays left
    table = benchmark.format_table(result.results)
    assert "ALL (neurons pooled)" in table and "gaussian dots" in table


def test_unlabelled_tiers_are_listed_not_scored(tmp_path):
    from tests.eval_helpers import withhold_test_labels

    paths = write_sessions(tmp_path, neurons=(3,))
    withhold_test_labels(paths[0])
    sessions = open_sessions(paths)
    result = benchmark.run(FakeModel(sessions), sessions, batch_size=4)
    assert list(result.results["mice"][sessions[0].name]) == ["oracle"]
    assert len(result.results["unlabelled"][sessions[0].name]) == 4


def test_report_pngs_are_written_and_not_empty(sessions, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with open(workdir / "metrics.jsonl", "w") as f:
        for step in range(1, 6):
            f.write(json.dumps({"step": step, "loss": 10.0 / step, "lr": 0.01}) + "\n")
        f.write(json.dumps({"step": 5, "validation_correlation": 0.1, "epoch": 1}) + "\n")
    model = FakeModel(sessions, workdir=workdir)
    result = benchmark.run(model, sessions, tiers=["oracle", "live_test_main"], batch_size=4)
    written = report.write_report(model, result, tmp_path / "report")
    assert sorted(p.name for p in written) == sorted(report.REPORT_FILES)
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000, path


def _read_event_scalars(folder):
    """Parse TFRecord event files with tensorboardX's protos (what TensorBoard itself reads)."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_training_metrics_are_tensorboard_readable(tmp_path):
    writer = MetricWriter(tmp_path)
    writer.write(1, {"loss": 2.5, "lr": 0.01})
    writer.write(2, {"loss": 1.5, "validation_correlation": 0.2})
    writer.close()
    scalars = _read_event_scalars(tmp_path / "tensorboard")
    assert scalars["loss"] == [(1, 2.5), (2, 1.5)]
    assert scalars["validation_correlation"] == [(2, pytest.approx(0.2))]
    records = report.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
