"""The synthetic static generator: the 2022 format, shared repeated images, ceilings, caching."""

import json
from pathlib import Path

import numpy as np
import pytest

from sensorium_jax.data import layout, synthetic_static
from sensorium_jax.data.static_reader import StaticSession, rescale
from sensorium_jax.evaluation import metrics

TINY = synthetic_static.StaticSyntheticConfig(
    num_mice=2,
    neurons_per_mouse=(6, 9),
    train_images=30,
    validation_images=4,
    test_images=3,
    final_test_images=2,
    test_repeats=3,
)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> list[Path]:
    return synthetic_static.ensure_dataset(tmp_path_factory.mktemp("static"), TINY)


def test_the_reader_reads_the_generated_format(sessions):
    for mouse, path in enumerate(sessions):
        assert path.name.startswith("static") and "-GrayImageNet-" in path.name
        session = StaticSession(path)  # validate="full"
        assert session.num_trials == 30 + 4 + (3 + 2) * 3
        assert session.num_neurons == TINY.neurons_per_mouse[mouse]
        assert session.image_shape == (36, 64) and session.raw_image_shape == (144, 256)
        image = np.load(layout.trial_path(path, "images", 0))
        assert image.shape == (1, 144, 256) and image.dtype == np.uint8
        assert np.load(layout.trial_path(path, "behavior", 0)).shape == (3,)
        assert sorted(np.unique(session.trial_idx)) == list(range(session.num_trials))  # a presentation order
        train = session.load_many(session.trials("train"))["responses"]
        np.testing.assert_allclose(train.std(axis=0), 1.0, rtol=1e-3)  # normalised by the train-tier std


def test_repeated_images_are_shared_and_identical(sessions):
    pixels = {}
    for path in sessions:
        session = StaticSession(path, validate="headers")
        for tier, count in (("test", 3), ("final_test", 2)):
            trials = session.trials(tier)
            ids, repeats = np.unique(session.frame_image_id[trials], return_counts=True)
            assert len(ids) == count and set(repeats) == {3}
            for trial in trials:
                image = np.load(layout.trial_path(path, "images", int(trial)))
                previous = pixels.setdefault(int(session.frame_image_id[trial]), image)
                np.testing.assert_array_equal(image, previous)  # every repeat, every mouse
        unique = session.frame_image_id[np.isin(session.tiers, ["train", "validation"])]
        assert len(set(unique.tolist())) == len(unique)


def test_ceilings_are_the_benchmark_scores_of_the_true_rates(sessions):
    report = json.loads((sessions[0].parent / "ceilings.json").read_text())
    path = sessions[1]
    truth = synthetic_static.load_ground_truth(path)
    session = StaticSession(path, validate="headers")
    test = session.trials("test")
    responses = session.load_many(test)["responses"]
    rates = truth["rates"][test] * session.response_precision  # in the normalised units of the responses
    entry = report["sessions"][path.name]["test"]
    assert entry["single_trial"] == pytest.approx(
        metrics.static_single_trial_correlation_np(responses, rates).mean(), abs=1e-5
    )
    ids = session.frame_image_id[test]
    assert entry["correlation_to_average"] == pytest.approx(
        metrics.static_correlation_to_average_np(responses, rates, ids).mean(), abs=1e-5
    )
    feve, _ = metrics.static_feve_np(responses, rates, ids)
    assert entry["feve"] == pytest.approx(feve.mean(), abs=1e-4)
    assert 0.2 < report["mean"]["validation"]["single_trial"] < 1.0
    assert "correlation_to_average" not in report["mean"]["validation"]  # no repeats there


def test_neurons_see_the_rescaled_image():
    image = np.random.default_rng(0).integers(0, 256, (1, 144, 256)).astype(np.uint8)
    seen = rescale(image.astype(np.float32), 0.25)[0]
    np.testing.assert_allclose(seen, image[0].reshape(36, 4, 64, 4)[:, 1:3, :, 1:3].mean(axis=(1, 3)), atol=1e-4)


def test_ensure_dataset_reuses_and_the_config_is_validated(sessions, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("ensure_dataset regenerated an existing dataset")

    monkeypatch.setattr(synthetic_static, "generate", fail)
    assert synthetic_static.ensure_dataset(sessions[0].parent.parent, TINY) == sessions
    assert synthetic_static.StaticSyntheticConfig.from_dict(
        {"neurons_per_mouse": [6, 9], "num_mice": 2, "physiology": {"sigma_px": [2.0, 3.0]}}
    ).physiology_config().sigma_px == (2.0, 3.0)
    with pytest.raises(ValueError, match="neurons_per_mouse"):
        synthetic_static.StaticSyntheticConfig(num_mice=2, neurons_per_mouse=(5,))
    with pytest.raises(ValueError, match="36"):
        synthetic_static.StaticSyntheticConfig(image_height=100)
    with pytest.raises(TypeError):
        synthetic_static.StaticSyntheticConfig(physiology={"no_such_field": 1})
