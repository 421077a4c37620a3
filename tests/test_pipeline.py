"""Grain pipeline: clip contents, determinism, checkpointable state, per-process sharding, evaluation batches."""

import numpy as np
import pytest

from sensorium_jax.data import pipeline
from sensorium_jax.data.reader import open_sessions


@pytest.fixture
def sessions(tiny_sessions):
    return open_sessions(tiny_sessions)


def spec(**kwargs):
    base = dict(batch_size=4, clip_frames=20, max_neurons=9, seed=3)
    return pipeline.ClipSpec(**{**base, **kwargs})


def test_clips_are_the_readers_frames(sessions):
    rounds = pipeline.TrainRound(sessions, spec())
    batch = rounds(5)
    assert batch["videos"].shape == (2, 4, 20, 36, 64)
    assert batch["responses"].shape == (2, 4, 20, 9)
    for mouse, session in enumerate(sessions):
        for slot in range(4):
            trial, start = rounds.clip(mouse, 5 * 4 + slot)
            assert session.tiers[trial] == "train"
            expected = session.load(trial, start, start + 20)
            np.testing.assert_array_equal(batch["videos"][mouse, slot], expected["videos"])
            np.testing.assert_array_equal(
                batch["responses"][mouse, slot, :, : session.num_neurons], expected["responses"]
            )
            assert not batch["responses"][mouse, slot, :, session.num_neurons :].any()  # padded neurons are zero


def test_every_train_trial_once_per_epoch(sessions):
    rounds = pipeline.TrainRound(sessions, spec())
    trials = [rounds.clip(0, i)[0] for i in range(6)]  # 6 train trials per mouse
    assert sorted(trials) == sorted(sessions[0].trials("train").tolist())
    assert [rounds.clip(0, i)[0] for i in range(6, 12)] != trials  # a fresh permutation next epoch


def test_deterministic_for_a_seed(sessions):
    a = pipeline.train_iterator(sessions, spec(), 10)
    b = pipeline.train_iterator(sessions, spec(), 10)
    c = pipeline.train_iterator(sessions, spec(seed=4), 10)
    first_a, first_b, first_c = next(a), next(b), next(c)
    np.testing.assert_array_equal(first_a["videos"], first_b["videos"])
    assert not np.array_equal(first_a["videos"], first_c["videos"])


def test_iterator_state_resumes_exactly(sessions):
    iterator = pipeline.train_iterator(sessions, spec(), 10)
    next(iterator), next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]
    resumed = pipeline.train_iterator(sessions, spec(), 10)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_process_slices_make_up_the_global_batch(sessions):
    whole = pipeline.TrainRound(sessions, spec())(2)
    parts = [pipeline.TrainRound(sessions, spec(process_index=p, process_count=2))(2) for p in range(2)]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts], axis=1), whole[key])


def test_divisibility_is_checked_up_front():
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        pipeline.check_divisibility(batch_size=6, process_count=1, device_count=8)
    with pytest.raises(ValueError, match="processes"):
        pipeline.check_divisibility(batch_size=6, process_count=4, device_count=2)


def test_clip_longer_than_every_trial_is_an_error(sessions):
    with pytest.raises(ValueError, match="no train trial has the 500 valid frames"):
        pipeline.TrainRound(sessions, spec(clip_frames=500))


def test_eval_batches_cover_every_trial_whole(sessions):
    session = sessions[1]
    batches = list(pipeline.eval_batches(session, 1, "oracle", batch_size=3, frames=80, max_neurons=9))
    assert len(batches) == 2 and all(b.videos.shape == (3, 80, 36, 64) for b in batches)
    trials = np.concatenate([b.trials for b in batches])
    np.testing.assert_array_equal(trials[trials >= 0], session.trials("oracle"))
    last = batches[-1]
    assert (last.trials[1:] == -1).all() and (last.lengths[1:] == 0).all()
    full = session.load(int(last.trials[0]))
    np.testing.assert_array_equal(last.responses[0, : last.lengths[0]], full["responses"])
    assert not last.videos[0, last.lengths[0] :].any()  # zero-padded after the valid frames
