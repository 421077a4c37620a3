"""The synthetic SENSORIUM 2023 dataset: on-disk format, ground truth, ceilings and the dataset cache."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from sensorium_jax.data import layout, synthetic
from sensorium_jax.data.layout import DATA_KEYS, VIDEO_HEIGHT, VIDEO_WIDTH
from sensorium_jax.evaluation.metrics import video_hash

TINY = synthetic.SyntheticConfig(
    num_mice=2,
    neurons_per_mouse=(12, 17),
    train_trials=4,
    oracle_videos=2,
    oracle_repeats=2,
    test_videos=1,
    test_repeats=2,
    none_trials=1,
    frames=80,
    pad_frames=3,
    long_trials=1,
    seed=0,
)
NUM_TRIALS = 4 + 2 * 2 + 2 * (1 * 2) + 1
T_PAD = 83


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synthetic.generate(tmp_path_factory.mktemp("synthetic"), TINY)


def _trials(session: Path) -> range:
    return range(len(np.load(layout.tiers_path(session))))


def _first_nan(array: np.ndarray) -> int:
    nan_frames = np.isnan(array.reshape(-1, array.shape[-1])).any(axis=0)
    return int(np.argmax(nan_frames)) if nan_frames.any() else array.shape[-1]


def test_folder_structure(sessions: list[Path]) -> None:
    assert sessions == sorted(sessions)
    assert len(sessions) == TINY.num_mice
    digest = synthetic.config_hash(TINY)
    for mouse, session in enumerate(sessions):
        assert session.name == f"dynamic-synthetic-{mouse}-Video-{digest}"
        assert re.fullmatch(r"dynamic-synthetic-\d+-Video-[0-9a-f]{32}", session.name)
        # The reference loader counts glob("*") in each data folder: exactly one file per trial, nothing else.
        for key in DATA_KEYS:
            names = sorted(p.name for p in (session / "data" / key).iterdir())
            assert names == sorted(f"{i}.npy" for i in range(NUM_TRIALS))
        assert not (session / "config.json").exists()
        assert sorted(p.name for p in session.iterdir()) == ["data", "ground_truth", "meta"]
        assert len(list((session / "ground_truth" / "rates").iterdir())) == NUM_TRIALS
    assert (sessions[0].parent / "ceilings.json").is_file()


def test_trial_arrays_have_the_format_shapes_and_values(sessions: list[Path]) -> None:
    for session, num_neurons in zip(sessions, TINY.neurons_per_mouse, strict=True):
        for i in _trials(session):
            arrays = {key: np.load(layout.trial_path(session, key, i)) for key in DATA_KEYS}
            assert arrays["videos"].shape == (VIDEO_HEIGHT, VIDEO_WIDTH, T_PAD)  # time last
            assert arrays["responses"].shape == (num_neurons, T_PAD)
            assert arrays["behavior"].shape == (2, T_PAD)
            assert arrays["pupil_center"].shape == (2, T_PAD)
            for array in arrays.values():
                assert array.dtype == np.float32
            video = arrays["videos"]
            assert np.nanmin(video) >= 0 and np.nanmax(video) <= 255
            assert np.nanstd(video) > 5  # a real stimulus, not a blank screen
            assert np.nanmin(arrays["responses"]) >= 0
            dilation, speed = arrays["behavior"]
            assert np.nanmin(dilation) > 0 and np.nanmin(speed) >= 0
            assert 100 < np.nanmin(arrays["pupil_center"]) and np.nanmax(arrays["pupil_center"]) < 200


def test_nan_padding_starts_exactly_at_the_valid_length(sessions: list[Path]) -> None:
    for session in sessions:
        tiers = np.load(layout.tiers_path(session))
        rates = synthetic.load_ground_truth(session)["rates"]
        lengths = []
        for i in _trials(session):
            arrays = [np.load(layout.trial_path(session, key, i)) for key in DATA_KEYS]
            length = _first_nan(arrays[0])
            for array in arrays:
                flat = array.reshape(-1, array.shape[-1])
                assert not np.isnan(flat[:, :length]).any()
                assert np.isnan(flat[:, length:]).all()
            assert length < T_PAD  # always at least one NaN frame
            assert rates[i].shape[1] == length
            lengths.append(length)
        lengths = np.array(lengths)
        long = lengths == TINY.long_frames
        assert long.sum() == TINY.long_trials and set(tiers[long]) == {"train"}
        assert set(lengths[~long]) == {TINY.frames}


def test_repeats_are_pixel_identical_and_train_clips_unique(sessions: list[Path]) -> None:
    hashes_by_tier: dict[str, list[str]] = defaultdict(list)
    for session in sessions:
        tiers = np.load(layout.tiers_path(session))
        video_ids = synthetic.load_ground_truth(session)["video_ids"]
        by_id: dict[int, set[str]] = defaultdict(set)
        for i in _trials(session):
            digest = video_hash(np.load(layout.trial_path(session, "videos", i)))
            by_id[int(video_ids[i])].add(digest)
            hashes_by_tier[str(tiers[i])].append(digest)
        # One clip id ↔ one exact pixel array.
        assert all(len(h) == 1 for h in by_id.values())
        counts = Counter(video_ids[tiers != "train"].tolist())
        repeated = {"oracle": TINY.oracle_repeats, "live_test_main": TINY.test_repeats}
        for tier, repeats in repeated.items():
            assert set(Counter(video_ids[tiers == tier].tolist()).values()) == {repeats}
        assert len(counts) == TINY.oracle_videos + 2 * TINY.test_videos + TINY.none_trials
    train = hashes_by_tier["train"]
    assert len(set(train)) == len(train) == TINY.train_trials * TINY.num_mice
    assert not set(train) & set(hashes_by_tier["oracle"])
    # Like the competition, every mouse sees the same oracle clips.
    assert len(set(hashes_by_tier["oracle"])) == TINY.oracle_videos


def test_tiers_load_without_pickle_and_interleave(sessions: list[Path]) -> None:
    for session in sessions:
        tiers = np.load(layout.tiers_path(session), allow_pickle=False)
        assert tiers.dtype.kind == "U"
        assert set(tiers) <= layout.KNOWN_TIERS
        assert Counter(tiers.tolist()) == {
            "train": TINY.train_trials,
            "oracle": TINY.oracle_videos * TINY.oracle_repeats,
            "live_test_main": TINY.test_videos * TINY.test_repeats,
            "final_test_main": TINY.test_videos * TINY.test_repeats,
            "none": TINY.none_trials,
        }
    big = synthetic.SyntheticConfig()
    plan = [t.tier for t in synthetic._trial_plan(np.random.default_rng(0), 0, big)]
    blocks = sum(a != b for a, b in itertools.pairwise(plan))
    assert blocks > 20  # shuffled, not one block per tier


def test_statistics_carry_time_and_are_robust(sessions: list[Path]) -> None:
    for session, num_neurons in zip(sessions, TINY.neurons_per_mouse, strict=True):
        tiers = np.load(layout.tiers_path(session))
        train = np.flatnonzero(tiers == "train")
        leading = {key: layout.expected_leading_shape(key, num_neurons) for key in DATA_KEYS}
        for key in DATA_KEYS:
            for source in ("all", "stimulus_frame"):
                for stat in synthetic.STATISTICS:
                    value = np.load(layout.statistics_path(session, key, stat, source))
                    assert value.shape == (*leading[key], T_PAD)
                    assert np.isfinite(value).all()
                    # The same value at every frame: per-frame stds of few trials would be tiny.
                    assert np.array_equal(value, np.repeat(value[..., :1], T_PAD, axis=-1))
            std = np.load(layout.statistics_path(session, key, "std"))
            assert (std > 0).all() and std.min() > 0.05 * np.median(std)
            # The statistics are those of all valid frames of the train tier.
            frames = []
            for i in train:
                array = np.load(layout.trial_path(session, key, int(i)))
                frames.append(array[..., : _first_nan(array)])
            valid = np.concatenate(frames, axis=-1)
            mean = np.load(layout.statistics_path(session, key, "mean"))[..., 0]
            np.testing.assert_allclose(mean, valid.mean(axis=-1), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(std[..., 0], valid.std(axis=-1), rtol=1e-3, atol=1e-4)


def test_neuron_metadata(sessions: list[Path]) -> None:
    for session, num_neurons in zip(sessions, TINY.neurons_per_mouse, strict=True):
        unit_ids = np.load(layout.unit_ids_path(session))
        assert unit_ids.shape == (num_neurons,) and unit_ids.dtype.kind == "i"
        assert len(np.unique(unit_ids)) == num_neurons
        assert not np.array_equal(unit_ids, np.arange(num_neurons))
        coords = np.load(layout.coordinates_path(session))
        assert coords.shape == (num_neurons, 3) and coords.dtype.kind == "f"
        assert np.abs(coords[:, :2]).max() <= 300 and 200 <= coords[:, 2].min() <= coords[:, 2].max() <= 400


def test_ground_truth(sessions: list[Path]) -> None:
    for session, num_neurons in zip(sessions, TINY.neurons_per_mouse, strict=True):
        truth = synthetic.load_ground_truth(session)
        assert len(truth["rates"]) == NUM_TRIALS == len(truth["video_ids"])
        for i, rate in enumerate(truth["rates"]):
            response = np.load(layout.trial_path(session, "responses", i))
            assert rate.shape == (num_neurons, _first_nan(response)) and rate.dtype == np.float32
            assert np.isfinite(rate).all() and (rate >= 0).all()
        for key in (
            "centre_x",
            "centre_y",
            "orientation_deg",
            "spatial_period_px",
            "sigma_px",
            "phase",
            "is_complex",
            "direction_selective",
            "preferred_direction_deg",
            "gain_running",
            "gain_pupil",
        ):
            assert truth[key].shape == (num_neurons,), key
        assert truth["filter_even"].shape == (num_neurons, VIDEO_HEIGHT, VIDEO_WIDTH)
        assert truth["eye_shift_px_per_unit"].shape == (2,) and truth["eye_reference"].shape == (2,)
        # RF centres stay where an unpadded conv core still sees them.
        assert 10 <= truth["centre_x"].min() and truth["centre_x"].max() <= VIDEO_WIDTH - 10
        assert 8 <= truth["centre_y"].min() and truth["centre_y"].max() <= VIDEO_HEIGHT - 8
        assert np.all(np.isnan(truth["preferred_direction_deg"]) == ~truth["direction_selective"])
        assert truth["config"]["seed"] == TINY.seed
        assert "rates" not in {p.name for p in (session / "data").iterdir()}


def test_model_rates_reproduce_the_saved_rates(sessions: list[Path]) -> None:
    session = sessions[1]
    truth = synthetic.load_ground_truth(session)
    for i in (0, 5):
        length = truth["rates"][i].shape[1]
        arrays = {key: np.load(layout.trial_path(session, key, i))[..., :length] for key in DATA_KEYS}
        rates = synthetic.model_rates(session, arrays["videos"], arrays["behavior"], arrays["pupil_center"])
        np.testing.assert_allclose(rates, truth["rates"][i], rtol=1e-3, atol=1e-4 * rates.max())


def test_direction_selective_cells_prefer_their_saved_direction(tmp_path: Path) -> None:
    config = synthetic.SyntheticConfig(
        num_mice=1, neurons_per_mouse=(40,), train_trials=3, oracle_videos=1, oracle_repeats=2, test_videos=0,
        none_trials=0, frames=60, pad_frames=2, long_trials=0, direction_selective_fraction=0.5,
    )  # fmt: skip
    (session,) = synthetic.generate(tmp_path, config)
    truth = synthetic.load_ground_truth(session)
    y, x = np.mgrid[0:VIDEO_HEIGHT, 0:VIDEO_WIDTH][..., None]
    t = np.arange(60)
    selective = np.flatnonzero(truth["direction_selective"])
    assert selective.size >= 5
    for n in selective:
        k = 2 * np.pi / truth["spatial_period_px"][n]
        omega = 2 * np.pi * truth["temporal_frequency_hz"][n] / layout.FRAME_RATE_HZ
        mean_rate = []
        for direction in (truth["preferred_direction_deg"][n], truth["preferred_direction_deg"][n] + 180):
            a = np.deg2rad(direction)
            # Low contrast: a full-field grating at the preferred frequency drives the saturating nonlinearity
            # of most cells to its ceiling in both directions at high contrast.
            grating = 127.5 + 10 * np.cos(k * (np.cos(a) * x + np.sin(a) * y) - omega * t)
            mean_rate.append(synthetic.model_rates(session, grating)[n, 20:].mean())
        assert mean_rate[0] > 1.2 * mean_rate[1], n


def test_eye_shift_moves_the_retinal_image() -> None:
    rng = np.random.default_rng(0)
    frames = rng.random((3, VIDEO_HEIGHT, VIDEO_WIDTH)).astype(np.float32)
    shift = np.array([[0.0, 0.0], [2.0, -1.0], [0.5, 0.0]])
    out = synthetic.shift_frames(frames, shift)
    np.testing.assert_allclose(out[0], frames[0], atol=1e-6)
    # Output pixel p shows input p + (dx, dy).
    np.testing.assert_allclose(out[1][1:, :-2], frames[1][:-1, 2:], atol=1e-6)
    np.testing.assert_allclose(out[2][:, :-1], 0.5 * (frames[2][:, :-1] + frames[2][:, 1:]), atol=1e-6)


def test_ceilings_use_the_benchmark_formula(sessions: list[Path]) -> None:
    report = json.loads((sessions[0].parent / "ceilings.json").read_text())
    for session in sessions:
        result = synthetic.ceiling_correlations(session, ("oracle",))
        assert 0 < result["single_trial"] < 1 and 0 < result["correlation_to_average"] < 1
        assert result["single_trial_per_neuron"].shape == (np.load(layout.unit_ids_path(session)).size,)
        assert result["num_repeated_videos"] == TINY.oracle_videos
        entry = report["sessions"][session.name]["oracle"]
        assert entry["single_trial"] == pytest.approx(result["single_trial"])

        # Direct computation: drop 50 frames, concatenate trials, Pearson per neuron, mean over neurons.
        tiers = np.load(layout.tiers_path(session))
        truth = synthetic.load_ground_truth(session)
        targets, predictions, groups = [], [], defaultdict(list)
        for i in np.flatnonzero(tiers == "oracle"):
            response = np.load(layout.trial_path(session, "responses", int(i)))
            length = _first_nan(response)
            targets.append(response[:, 50:length])
            predictions.append(truth["rates"][i][:, 50:length])
            groups[int(truth["video_ids"][i])].append(len(targets) - 1)
        target, prediction = np.concatenate(targets, axis=1), np.concatenate(predictions, axis=1)
        direct = [np.corrcoef(a, b)[0, 1] for a, b in zip(target, prediction, strict=True)]
        np.testing.assert_allclose(result["single_trial_per_neuron"], direct, atol=1e-5)

        average_target = np.concatenate([np.mean([targets[j] for j in g], 0) for g in groups.values()], 1)
        average_prediction = np.concatenate([np.mean([predictions[j] for j in g], 0) for g in groups.values()], 1)
        direct = [np.corrcoef(a, b)[0, 1] for a, b in zip(average_target, average_prediction, strict=True)]
        np.testing.assert_allclose(result["correlation_to_average_per_neuron"], direct, atol=1e-5)
    assert set(report["mean"]) == {"oracle", "live_test_main", "final_test_main"}


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_determinism(sessions: list[Path], tmp_path: Path) -> None:
    again = synthetic.generate(tmp_path / "again", TINY)
    assert _all_files(sessions[0].parent) == _all_files(again[0].parent)
    other = synthetic.dataclasses.replace(TINY, seed=1)
    different = synthetic.generate(tmp_path / "other", other)
    response = np.load(layout.trial_path(different[0], "responses", 0))
    assert response.shape[0] == TINY.neurons_per_mouse[0]
    assert not np.array_equal(
        np.load(layout.trial_path(sessions[0], "videos", 0)),
        np.load(layout.trial_path(different[0], "videos", 0)),
    )
    assert synthetic.config_hash(other) != synthetic.config_hash(TINY)


def test_ensure_dataset_creates_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = synthetic.ensure_dataset(tmp_path, TINY)
    assert [p.parent for p in first] == [tmp_path / synthetic.dataset_name(TINY)] * TINY.num_mice
    probe = layout.trial_path(first[0], "responses", 0)
    mtime = probe.stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("ensure_dataset regenerated an existing dataset")

    monkeypatch.setattr(synthetic, "generate", fail)
    assert synthetic.ensure_dataset(tmp_path, TINY) == first
    assert probe.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == [synthetic.dataset_name(TINY)]  # no temp folder left


def test_ensure_dataset_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = synthetic._write_session

    def crash_on_second_mouse(session: Path, mouse: int, *args: object) -> dict:
        if mouse == 1:
            raise KeyboardInterrupt("simulated kill during generation")
        return original(session, mouse, *args)

    monkeypatch.setattr(synthetic, "_write_session", crash_on_second_mouse)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_dataset(tmp_path, TINY)
    assert list(tmp_path.iterdir()) == []  # neither a half dataset nor the temporary folder

    monkeypatch.setattr(synthetic, "_write_session", original)
    # A folder left by a generation that was SIGKILLed (its pid no longer exists) is cleaned up.
    host = socket.gethostname().replace("-", "_")
    stale = tmp_path / f".{synthetic.dataset_name(TINY)}.tmp-{host}-999999999-abc"
    (stale / "half").mkdir(parents=True)
    sessions = synthetic.ensure_dataset(tmp_path, TINY)
    assert not stale.exists()
    assert all(p.is_dir() for p in sessions)
    assert sorted(os.listdir(tmp_path)) == [synthetic.dataset_name(TINY)]


def test_generate_refuses_to_mix_into_an_existing_session(sessions: list[Path]) -> None:
    with pytest.raises(FileExistsError):
        synthetic.generate(sessions[0].parent, TINY)


@pytest.mark.parametrize(
    "change",
    [
        {"neurons_per_mouse": (10,)},
        {"pad_frames": 0},
        {"frames": 50},
        {"long_trials": 5},
        {"train_trials": 0},
    ],
)
def test_invalid_configs_are_rejected(change: dict) -> None:
    with pytest.raises(ValueError):
        synthetic.dataclasses.replace(TINY, **change)


def test_reader_reads_the_synthetic_format_and_agrees_on_the_ceiling(sessions: list[Path]) -> None:
    """The generator's output goes through the same reader as real data, and the ceiling computed from the
    reader's normalised responses equals the generator's (per-neuron scaling leaves correlations unchanged)."""
    from sensorium_jax.data.reader import open_sessions
    from sensorium_jax.evaluation.metrics import single_trial_correlation_np

    opened = open_sessions(sessions)
    for path, session in zip(sessions, opened, strict=True):
        truth = synthetic.load_ground_truth(path)
        oracle = session.trials("oracle")
        responses = [session.load(int(t))["responses"].T for t in oracle]
        rates = [truth["rates"][int(t)][:, : session.valid_lengths[t]] for t in oracle]
        from_reader = single_trial_correlation_np(responses, rates).mean()
        expected = synthetic.ceiling_correlations(path, ("oracle",))["single_trial"]
        assert from_reader == pytest.approx(expected, abs=1e-4)
        assert session.load(int(oracle[0]))["videos"].std() == pytest.approx(1.0, abs=0.5)  # z-scored
