"""SENSORIUM 2022 CSV submission files: round trip, the benchmark's ordering and checks, end to end from a model."""

import numpy as np
import pytest
from flax import nnx

from sensorium_jax.data.static_reader import StaticSession
from sensorium_jax.evaluation import metrics, static_submission
from sensorium_jax.evaluation.static_evaluate import evaluate_static
from sensorium_jax.models.model import MiceInfo
from sensorium_jax.models.static_model import StaticModel
from sensorium_jax.training import step as steps
from tests.static_fake_data import write_static_session
from tests.test_static_model import tiny_static_config


@pytest.mark.parametrize("trial_ids", [np.array([12, 3, 40]), np.array(["a9f3", "0c21", "77be"])])
def test_csv_round_trip_is_exact(tmp_path, trial_ids):
    predictions = np.random.default_rng(0).gamma(1.0, 1.0, (3, 4)).astype(np.float32)
    predictions[0, 0] = 1e-7  # tiny and long values survive the text form exactly
    path = static_submission.write_csv(tmp_path / "s.csv", trial_ids, [5, 5, 9], predictions, [31, 7, 8, 2])
    trials, images, neurons, values = static_submission.read_csv(path)
    assert trials.tolist() == trial_ids.tolist()
    assert images.tolist() == [5, 5, 9] and neurons.tolist() == [31, 7, 8, 2]
    np.testing.assert_array_equal(values.astype(np.float32), predictions)
    header = path.read_text().splitlines()[0]
    assert header == "trial_indices,image_ids,prediction,neuron_ids"


def test_csv_rejects_bad_predictions(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        static_submission.write_csv(tmp_path / "s.csv", [1], [1], np.array([[np.nan]]), [0])
    with pytest.raises(ValueError, match="shape"):
        static_submission.write_csv(tmp_path / "s.csv", [1, 2], [1, 1], np.zeros((2, 3)), [0, 1])
    assert not (tmp_path / "s.csv").exists()


def test_scoring_orders_rows_and_neurons_like_the_benchmark():
    rng = np.random.default_rng(1)
    responses = rng.gamma(1.0, 1.0, (6, 3))
    predictions = responses + rng.normal(0, 0.3, responses.shape)
    trials, images, neurons = np.array([4, 0, 5, 1, 3, 2]), np.array([1, 1, 2, 2, 3, 3]), np.array([10, 30, 20])
    truth = static_submission.score_submission(predictions, trials, neurons, responses, trials, images, neurons)
    rows, cols = rng.permutation(6), np.array([2, 0, 1])  # the submission in another order
    shuffled = static_submission.score_submission(
        predictions[rows][:, cols], trials[rows], neurons[cols], responses, trials, images, neurons
    )
    assert shuffled == pytest.approx(truth, abs=1e-12)
    feve, _ = metrics.static_feve_np(responses, predictions, images)
    assert truth["feve"] == pytest.approx(feve.mean())
    with pytest.raises(ValueError, match="neuron ids"):
        static_submission.score_submission(predictions, trials, neurons + 1, responses, trials, images, neurons)
    with pytest.raises(ValueError, match="trial indices"):
        static_submission.score_submission(predictions, trials + 1, neurons, responses, trials, images, neurons)


def test_submission_files_from_a_model_score_like_the_evaluation(tmp_path):
    session = StaticSession(write_static_session(tmp_path / "mouse", num_neurons=5), scale=0.5)
    config = tiny_static_config()
    model = StaticModel(config.model, MiceInfo.from_sessions([session]), rngs=nnx.Rngs(0))
    tx = steps.make_optimizer(config.optim, nnx.state(model, nnx.Param))
    graphdef, state = steps.create_train_state(model, tx, seed=0)
    predict = steps.make_predict(graphdef)
    written = static_submission.write_submission(predict, state, session, 0, tmp_path / "out", 8, 5)
    assert [p.name for p in written] == ["submission_file_live_test.csv", "submission_file_final_test.csv"]

    trials, _, neurons, predictions = static_submission.read_csv(written[0])
    test = session.trials("test")
    assert trials.tolist() == session.trial_idx[test].tolist()  # the (hashed) presentation ids, not file indices
    assert neurons.tolist() == session.unit_ids.tolist()
    truth_file = static_submission.write_ground_truth_csv(session, "test", tmp_path / "gt.csv")
    true_trials, true_images, true_neurons, responses = static_submission.read_csv(truth_file, "responses")
    scores = static_submission.score_submission(
        predictions, trials, neurons, responses, true_trials, true_images, true_neurons
    )
    expected = evaluate_static(predict, state, [session], ["test"], 8, 5)["overall"]["test"]
    assert scores["single_trial_correlation"] == pytest.approx(expected["single_trial_correlation"], abs=1e-5)
    assert scores["correlation_to_average"] == pytest.approx(expected["correlation_to_average"], abs=1e-5)
    assert scores["feve"] == pytest.approx(expected["feve"], abs=1e-4)
