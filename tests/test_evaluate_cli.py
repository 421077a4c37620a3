"""Restored models and ensembles, whole-trial vs sliding-window inference, bad inputs, and the two commands."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import factorized
from sensorium_jax.data.reader import open_sessions
from sensorium_jax.evaluation import benchmark, cli, loading
from sensorium_jax.evaluation.evaluate import predict_trials
from sensorium_jax.evaluation.loading import Ensemble, ModelDataMismatch
from sensorium_jax.models.model import MiceInfo, VideoModel
from sensorium_jax.training import step as steps
from sensorium_jax.training.checkpoint import Checkpoints
from tests.eval_helpers import write_sessions
from tests.fake_data import write_session

REPO = Path(__file__).resolve().parents[1]


def tiny_config(paths: str, seed: int):
    config = factorized.get_config("cpu")
    config.seed = seed
    config.model.core.hidden_channels = (3, 3)
    config.model.core.spatial_kernels = (5, 3)
    config.model.core.temporal_kernels = (3, 3)  # burn-in 4 frames
    config.model.core.spatial_strides = (2, 1)
    config.data.paths = paths
    config.eval.batch_size = 4
    return config


def make_run(workdir: Path, paths: list[Path], seed: int) -> Path:
    """A run folder as experiments.train leaves it: config.json, mice.json and a best checkpoint."""
    config = tiny_config(",".join(str(p) for p in paths), seed)
    loading.write_run_info(config, workdir)
    sessions = open_sessions(paths)
    model = VideoModel(config.model, MiceInfo.from_sessions(sessions), rngs=nnx.Rngs(seed))
    tx = steps.make_optimizer(config.optim, nnx.state(model, nnx.Param))
    _, state = steps.create_train_state(model, tx, seed)
    checkpoints = Checkpoints(workdir)
    checkpoints.save_best(3, state, {"epoch": 1})
    checkpoints.close()
    return workdir


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    paths = write_sessions(root / "data", neurons=(4, 6))
    runs = [make_run(root / f"seed{seed}", paths, seed) for seed in (0, 1)]
    return {"root": root, "paths": paths, "runs": runs, "sessions": open_sessions(paths)}


def test_restored_model_predicts_like_the_saved_state(setup):
    model = loading.load_model(setup["runs"][0])
    assert model.step == 3 and model.burn_in == 4
    assert model.mouse_names == ["mouse-0", "mouse-1"]
    # the same parameters, rebuilt independently from the run's config
    config = loading.read_run_info(setup["runs"][0])[0]
    reference = VideoModel(config.model, MiceInfo.from_sessions(setup["sessions"]), rngs=nnx.Rngs(0))
    graphdef, params, batch_stats, constants = steps.split_model(reference)
    state = model.state.replace(params=params, batch_stats=batch_stats, constants=constants)
    videos = np.random.default_rng(0).normal(size=(4, 12, 36, 64)).astype(np.float32)
    behavior = np.ones((4, 12, 2), np.float32)
    pupil = np.zeros((4, 12, 2), np.float32)
    expected = steps.make_predict(graphdef)(state, jnp.int32(1), videos, behavior, pupil)
    np.testing.assert_allclose(model.predict("mouse-1", videos, behavior, pupil), np.asarray(expected)[..., :6])


def test_sliding_windows_equal_the_whole_trial_pass(setup):
    model = loading.load_model(setup["runs"][0])
    session = setup["sessions"][0]
    whole = predict_trials(model, session, "oracle", batch_size=4)
    windowed = predict_trials(model, session, "oracle", batch_size=4, window=24)
    for a, b in zip(whole.predictions, windowed.predictions):
        assert a.shape == (20, 4)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_ensembles(setup):
    single = loading.load_model(setup["runs"][0])
    copy = setup["root"] / "seed0-copy"
    shutil.copytree(setup["runs"][0], copy)
    same = Ensemble([single, loading.load_model(copy)])
    session = setup["sessions"][1]
    alone = predict_trials(single, session, "live_test_main", batch_size=4)
    twice = predict_trials(same, session, "live_test_main", batch_size=4)
    for a, b in zip(alone.predictions, twice.predictions):
        np.testing.assert_array_equal(a, b)  # two identical checkpoints are the single model

    other = loading.load_model(setup["runs"][1])
    pair = predict_trials(Ensemble([single, other]), session, "live_test_main", batch_size=4)
    second = predict_trials(other, session, "live_test_main", batch_size=4)
    assert not np.allclose(alone.predictions[0], second.predictions[0])
    for mean, a, b in zip(pair.predictions, alone.predictions, second.predictions):
        np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-6)
    np.testing.assert_array_equal(pair.member_predictions[1][0], second.predictions[0])


def test_bad_inputs_name_what_is_missing(setup, tmp_path):
    empty = tmp_path / "empty-run"
    shutil.copytree(setup["runs"][0], empty, ignore=shutil.ignore_patterns("best", "checkpoints"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        loading.load_model(empty)
    assert sorted(p.name for p in empty.iterdir()) == ["config.json", "mice.json"]  # nothing created there
    (empty / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        loading.load_model(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loading.load_model(tmp_path / "nowhere")

    model = loading.load_model(setup["runs"][0])
    other_neurons = open_sessions([write_session(tmp_path / "mouse-1", num_neurons=5, seed=3)])[0]
    with pytest.raises(ModelDataMismatch, match=r"unit_ids\.npy: 5 neurons.*6"):
        model.check_session(other_neurons)
    stranger = open_sessions([write_session(tmp_path / "mouse-x", num_neurons=6, seed=3)])[0]
    with pytest.raises(ModelDataMismatch, match="'mouse-x' is absent"):
        benchmark.run(model, [stranger])
    with pytest.raises(FileNotFoundError, match="matches"):
        cli.run_submit(str(setup["runs"][0]), data=str(tmp_path / "no-such-*"))


def test_submit_command_function(setup, tmp_path):
    summary, out = cli.run_submit(str(setup["runs"][0]), output=str(tmp_path / "sub"))
    assert out == tmp_path / "sub"
    assert sorted(summary["zips"]) == ["submission_bonus_final.zip", "submission_bonus_live.zip", "submission_main.zip"]


def test_evaluate_command_with_an_ensemble(setup):
    runs = ",".join(str(r) for r in setup["runs"])
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", f"--workdir={runs}", "--tiers=oracle,live_test_bonus"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ALL (neurons pooled)" in done.stdout and "member seed1" in done.stdout
    out = setup["root"] / "ensemble-seed0+seed1" / "evaluation"
    results = json.loads((out / "metrics.json").read_text())
    assert set(results["members"]) == {str(r) for r in setup["runs"]}
    assert set(results["overall"]) == {"oracle", "live_test_bonus"}
    assert {p.name for p in out.glob("*.png")} >= {"traces.png", "training_curves.png", "readout_positions.png"}
    assert jax.device_count() == 8  # the parent process is unaffected
