"""The SENSORIUM 2023 reader: lazy access, NaN-pad cutting, the reference normalisation, and bad input."""

import numpy as np
import pytest

from sensorium_jax.data.layout import DataFormatError
from sensorium_jax.data.reader import Session, open_sessions
from tests.fake_data import write_session


def test_index_and_lengths(tmp_path):
    session = Session(write_session(tmp_path / "m", num_neurons=5, valid=70, pad=3))
    assert session.num_trials == 13 and session.num_neurons == 5
    assert session.padded_length == 73
    np.testing.assert_array_equal(session.valid_lengths[:3], [72, 70, 70])  # trial 0 is 2 frames longer
    assert session.valid_lengths[12] == 0  # tier 'none' is not indexed
    np.testing.assert_array_equal(session.trials("oracle"), [6, 7, 8, 9])
    np.testing.assert_array_equal(session.unit_ids, np.arange(5) * 3 + 7)


@pytest.mark.parametrize("stats_with_time", [False, True])
def test_normalisation_matches_hand_computed(tmp_path, stats_with_time):
    root = write_session(tmp_path / "m", num_neurons=4, stats_with_time=stats_with_time)
    session = Session(root)
    raw = {k: np.load(root / "data" / k / "3.npy") for k in ("videos", "responses", "behavior", "pupil_center")}
    out = session.load(3, 5, 15)
    assert out["videos"].shape == (10, 36, 64) and out["responses"].shape == (10, 4)
    np.testing.assert_allclose(
        out["videos"], np.moveaxis((raw["videos"][..., 5:15] - 127.0) / 70.0, -1, 0), rtol=1e-5, atol=1e-6
    )
    std = np.load(root / "meta/statistics/responses/all/std.npy")
    std = std[:, 0] if stats_with_time else std
    np.testing.assert_allclose(out["responses"], (raw["responses"][:, 5:15] / std[:, None]).T, rtol=1e-5, atol=1e-6)
    # behaviour: divided by its std, no mean subtraction (mean is 1.0 in the fake data)
    np.testing.assert_allclose(
        out["behavior"], (raw["behavior"][:, 5:15] / np.array([[0.5], [2.0]])).T, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        out["pupil_center"], ((raw["pupil_center"][:, 5:15] - 100.0) / 3.0).T, rtol=1e-5, atol=1e-6
    )


def test_response_std_floor(tmp_path):
    root = write_session(tmp_path / "m", num_neurons=4)
    std = np.array([1.0, 1.0, 1.0, 0.001])  # the last is below 1 % of the mean std (0.01 · 0.75025)
    np.save(root / "meta/statistics/responses/all/std.npy", std)
    session = Session(root)
    raw = np.load(root / "data/responses/0.npy")[:, :10]
    out = session.load(0, 0, 10)["responses"].T
    threshold = 0.01 * std.mean()
    np.testing.assert_allclose(out[:3], raw[:3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[3], raw[3] / threshold, rtol=1e-5, atol=1e-6)


def test_arrays_without_nan_padding(tmp_path):
    session = Session(write_session(tmp_path / "m", valid=70, pad=3, nan_padding=False))
    assert (session.valid_lengths[:12] == 73).all()
    assert session.load(1)["videos"].shape == (73, 36, 64)


def test_memory_mapped_not_loaded(tmp_path):
    session = Session(write_session(tmp_path / "m"))
    array = session._open("responses", 0)
    assert isinstance(array, np.memmap)


def _expect(root, match, **kwargs):
    with pytest.raises(DataFormatError, match=match) as info:
        Session(root, **kwargs)
    return info.value


def test_missing_file(tmp_path):
    root = write_session(tmp_path / "m")
    (root / "data/responses/4.npy").unlink()
    error = _expect(root, "holds 12 entries")
    assert "responses" in str(error.path)


def test_renamed_file_is_reported_missing(tmp_path):
    root = write_session(tmp_path / "m")
    (root / "data/videos/4.npy").rename(root / "data/videos/x.npy")
    error = _expect(root, "missing")
    assert error.path == root / "data/videos/4.npy"


def test_truncated_file(tmp_path):
    root = write_session(tmp_path / "m")
    path = root / "data/videos/2.npy"
    path.write_bytes(path.read_bytes()[:-100])
    error = _expect(root, "truncated")
    assert error.path == path


def test_not_an_npy_file(tmp_path):
    root = write_session(tmp_path / "m")
    path = root / "data/behavior/1.npy"
    path.write_bytes(b"garbage")
    assert _expect(root, "not a readable .npy").path == path


def test_wrong_shape(tmp_path):
    root = write_session(tmp_path / "m", num_neurons=5)
    path = root / "data/responses/3.npy"
    np.save(path, np.zeros((6, 73)))
    error = _expect(root, r"expected shape \(5, 'T'\)")
    assert error.path == path


def test_time_not_last(tmp_path):
    root = write_session(tmp_path / "m")
    path = root / "data/videos/0.npy"
    np.save(path, np.zeros((73, 36, 64)))
    assert _expect(root, "time last").path == path


def test_tiers_length_mismatch(tmp_path):
    root = write_session(tmp_path / "m")
    np.save(root / "meta/trials/tiers.npy", np.array(["train"] * 10))
    _expect(root, "tiers.npy lists 10 trials")


def test_unknown_tier(tmp_path):
    root = write_session(tmp_path / "m")
    tiers = np.load(root / "meta/trials/tiers.npy", allow_pickle=True)
    tiers[0] = "trian"
    np.save(root / "meta/trials/tiers.npy", tiers.astype(str))
    _expect(root, "unknown tier names")


def test_nan_inside_valid_frames(tmp_path):
    root = write_session(tmp_path / "m", valid=70)
    path = root / "data/responses/5.npy"
    array = np.load(path)
    array[2, 30] = np.nan
    np.save(path, array)
    error = _expect(root, "NaN at index")
    assert error.path == path
    # Without the full scan the same file is caught the moment a clip touches it, never as a silent NaN loss.
    session = Session(root, validate="headers")
    with pytest.raises(DataFormatError, match="NaN inside the valid frames") as info:
        session.load(5, 20, 40)
    assert info.value.path == path


def test_statistics_with_bad_shape(tmp_path):
    root = write_session(tmp_path / "m")
    path = root / "meta/statistics/videos/all/std.npy"
    np.save(path, np.ones((36, 63)))
    assert _expect(root, "fits neither").path == path


def test_zero_std_is_an_error(tmp_path):
    root = write_session(tmp_path / "m")
    path = root / "meta/statistics/pupil_center/all/std.npy"
    np.save(path, np.array([3.0, 0.0]))
    assert _expect(root, "positive and finite").path == path


def test_not_a_session(tmp_path):
    (tmp_path / "empty").mkdir()
    _expect(tmp_path / "empty", "needs data/ and meta/")


def test_neuron_metadata_mismatch(tmp_path):
    root = write_session(tmp_path / "m", num_neurons=5)
    np.save(root / "meta/neurons/cell_motor_coordinates.npy", np.zeros((4, 3)))
    _expect(root, r"expected \(5, 3\) cortical coordinates")


def test_open_sessions_each_with_own_neuron_count(tiny_sessions):
    sessions = open_sessions(tiny_sessions)
    assert [s.num_neurons for s in sessions] == [6, 9]
    assert [s.name for s in sessions] == ["mouse-a", "mouse-b"]
