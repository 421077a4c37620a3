"""In-silico tools on analytic neurons whose answers are known exactly (tiny images, identity input space).

* a linear Gabor neuron with a three-tap temporal kernel: its MEI is its filter scaled to the norm budget, its
  gradient map is the filter times the kernel, its STA recovers the filter, the fits recover centre/orientation;
* a direction-selective motion-energy neuron (DSI ≈ 1) next to a non-selective energy neuron (DSI ≈ 0);
* a behaviour-gain neuron whose log-gain slope is known, and one that ignores behaviour (a clear error);
* OSI/DSI/size/AUC formulas on hand-made curves; bad neuron ids, mice, experiments.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sensorium_jax.insilico import behaviour, cli, fitting, mei, receptive_fields, stimuli, tuning, validation
from sensorium_jax.insilico.twin import (
    BehaviourNotModelled,
    InputSpace,
    InsilicoError,
    MouseNotInModel,
    UnknownNeuronError,
    twin_from_module,
    twin_from_trained,
)

H, W = 12, 16
SPACE = InputSpace.identity(H, W, natural_rms=1.0)


def gabor_filters(specs) -> np.ndarray:
    """(N, H, W) unit-norm Gabors from (cx, cy, sigma, orientation, period, phase) rows."""
    filters = np.stack([np.asarray(stimuli.gabor(*spec, H, W)) for spec in specs])
    return filters / np.linalg.norm(filters.reshape(len(filters), -1), axis=1)[:, None, None]


class LinearNeurons:
    """``r_n(t) = Σ_l k_l f_n · x(t − l)`` (plus a constant), burn-in = len(k) − 1."""

    def __init__(self, filters: np.ndarray, kernel=(1.0, 0.5, -0.25), offset: float = 0.0):
        self.filters = jnp.asarray(filters.reshape(len(filters), -1))
        self.kernel = jnp.asarray(kernel)
        self.burn_in = len(kernel) - 1
        self.offset = offset

    def predict_mouse(self, mouse, videos, behavior, pupil_center):
        e, t = videos.shape[:2]
        drive = videos.reshape(e, t, -1) @ self.filters.T  # (E, T, N)
        t_out = t - self.burn_in
        return self.offset + sum(
            self.kernel[lag] * drive[:, self.burn_in - lag : self.burn_in - lag + t_out]
            for lag in range(self.burn_in + 1)
        )


class EnergyNeurons:
    """Neuron 0: motion energy ``|Σ_l e^{iφl} (even + i·odd)(t − l)|²`` over 8 lags with φ = 2π/8 per frame: a
    grating drifting along the wave vector at 30/8 = 3.75 Hz adds up in phase, the opposite drift cancels exactly.
    Neuron 1: the plain quadrature energy ``|(even + i·odd)(t)|²``, blind to the drift direction."""

    lags = 8

    def __init__(self, orientation_deg: float, period: float, sigma: float = 3.0):
        specs = [((W - 1) / 2, (H - 1) / 2, sigma, orientation_deg, period, phase) for phase in (0.0, -np.pi / 2)]
        even, odd = gabor_filters(specs)  # cos and sin carriers
        self.even, self.odd = jnp.asarray(even.reshape(-1)), jnp.asarray(odd.reshape(-1))
        self.weights = [np.exp(2j * np.pi / self.lags * np.arange(self.lags)), np.eye(self.lags)[0]]
        self.burn_in = self.lags - 1

    def predict_mouse(self, mouse, videos, behavior, pupil_center):
        e, t = videos.shape[:2]
        flat = videos.reshape(e, t, -1)
        z = flat @ self.even + 1j * (flat @ self.odd)  # (E, T)
        t_out = t - self.burn_in
        out = []
        for weights in self.weights:
            total = sum(
                weights[lag] * z[:, self.burn_in - lag : self.burn_in - lag + t_out] for lag in range(self.lags)
            )
            out.append(jnp.abs(total) ** 2)
        return jnp.stack(out, axis=-1)


class GainNeurons:
    """``r_n = exp(g_n · running)`` × a stimulus drive; running in model units (identity space: raw = model)."""

    def __init__(self, gains, use_behaviour: bool = True):
        self.gains = jnp.asarray(gains)
        self.use_behaviour = use_behaviour
        self.burn_in = 0

    def predict_mouse(self, mouse, videos, behavior, pupil_center):
        drive = 1.0 + 0.1 * jnp.abs(videos).mean(axis=(2, 3))[..., None]  # (E, T, 1)
        if not self.use_behaviour:
            return jnp.broadcast_to(drive, (*drive.shape[:2], len(self.gains)))
        return drive * jnp.exp(self.gains * behavior[..., 1:2])


SPECS = [(6.0, 5.5, 2.2, 30.0, 5.0, 0.0), (9.5, 6.0, 2.0, 120.0, 6.0, 0.0)]


@pytest.fixture(scope="module")
def linear_twin():
    return twin_from_module(LinearNeurons(gabor_filters(SPECS)), num_neurons=2, unit_ids=[11, 42], space=SPACE)


def _cos(a, b) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_mei_of_a_linear_neuron_is_its_filter_at_the_norm_budget(linear_twin):
    config = mei.MEIConfig(
        kind="image", output_frames=2, rms_contrast=0.5, steps=100, starts=2, blur_sigma=1.0, anneal_fraction=0.3
    )
    result = mei.optimise(linear_twin, np.array([0, 1]), config, batch=4)
    budget = 0.5 * np.sqrt(H * W)
    filters = gabor_filters(SPECS)
    chex.assert_shape(result.inputs, (2, 2, H, W))
    for n in range(2):
        for s in range(2):
            image = result.inputs[n, s]
            np.testing.assert_allclose(image, budget * filters[n], atol=1e-3 * budget)  # every start converges
        # a static image through the kernel: r = (Σ k) · f · x = 1.25 · budget
        np.testing.assert_allclose(result.responses[n], 1.25 * budget, rtol=1e-4)
    np.testing.assert_allclose(result.diversity(), 0.0, atol=1e-5)
    natural = np.stack([budget * filters[0], budget * filters[1] * 0.5])[:, None].repeat(6, axis=1)  # 2 static clips
    best, clip = mei.best_natural_response(linear_twin, np.array([0, 1]), natural, output_frames=2)
    np.testing.assert_allclose(best, [1.25 * budget, 1.25 * budget * 0.5], rtol=1e-4)
    np.testing.assert_array_equal(clip, [0, 1])
    np.testing.assert_allclose(mei.summarise(result, best)["ratio_to_best_natural"], [1.0, 2.0], rtol=1e-3)


def test_video_mei_respects_the_screen_range():
    space = InputSpace.identity(H, W)
    space = InputSpace(**{**space.__dict__, "contrast_range": (-0.1, 0.1)})
    twin = twin_from_module(LinearNeurons(gabor_filters(SPECS[:1])), num_neurons=1, space=space)
    result = mei.optimise(twin, np.array([0]), mei.MEIConfig(kind="video", output_frames=1, steps=10, starts=1))
    chex.assert_shape(result.inputs, (1, 1, 3, H, W))
    assert np.abs(result.inputs).max() <= 0.1 + 1e-6
    assert np.linalg.norm(result.inputs) <= np.sqrt(3 * H * W) + 1e-3


def test_gradient_map_of_a_linear_neuron_is_kernel_times_filter(linear_twin):
    fields = receptive_fields.gradient_maps(linear_twin, np.array([1, 0]), samples=2, batch=2)
    filters = gabor_filters(SPECS)
    kernel = np.array([1.0, 0.5, -0.25])
    expected = kernel[None, :, None, None] * filters[[1, 0]][:, None]
    np.testing.assert_allclose(fields.signed, expected, atol=1e-5)
    np.testing.assert_allclose(fields.energy, expected**2, atol=1e-5)  # the same gradient at every sample
    np.testing.assert_array_equal(fields.peak_lag(), [0, 0])
    np.testing.assert_allclose(fields.temporal_profile(), np.stack([kernel, kernel]), atol=1e-5)


def test_sta_recovers_the_filter_and_the_fits_recover_centre_and_orientation(linear_twin):
    fields = receptive_fields.spike_triggered(
        linear_twin, np.array([0, 1]), frames=6000, clip_output_frames=20, batch=20
    )
    filters = gabor_filters(SPECS)
    chex.assert_shape(fields.signed, (2, 3, H, W))
    np.testing.assert_array_equal(fields.peak_lag(), [0, 0])
    for n in range(2):
        assert _cos(fields.signed[n, 0], filters[n]) > 0.97  # Bussgang: STA ∝ filter for Gaussian noise
        profile = fields.temporal_profile()[n]
        np.testing.assert_allclose(profile / profile[0], [1.0, 0.5, -0.25], atol=0.08)
    gradients = receptive_fields.gradient_maps(linear_twin, np.array([0, 1]), samples=1)
    table = receptive_fields.summarise(fields, gradients, fit_steps=150)
    np.testing.assert_allclose(table["centre_x"], [s[0] for s in SPECS], atol=0.3)
    np.testing.assert_allclose(table["centre_y"], [s[1] for s in SPECS], atol=0.3)
    assert list(table["centre_source"]) == ["gabor", "gabor"]
    error = validation.angle_difference(table["orientation_deg"], [s[3] for s in SPECS], 180.0)
    assert np.all(error < 4.0), error
    np.testing.assert_allclose(table["gabor_period_px"], [s[4] for s in SPECS], rtol=0.1)
    # the phase-invariant spectral orientation of the gradients agrees
    error = validation.angle_difference(table["spectral_orientation_deg"], [s[3] for s in SPECS], 180.0)
    assert np.all(error < 10.0), error


def test_gabor_fit_is_exact_on_noiseless_gabors():
    specs = [(5.3, 6.2, 2.0, 75.0, 5.5, 1.0), (10.0, 5.0, 2.5, 160.0, 7.0, 4.0)]
    maps = 3.0 * np.stack([np.asarray(stimuli.gabor(*s, H, W)) for s in specs])
    fit = fitting.fit_gabor(maps, steps=150)  # the compile shared with the STA test (same shapes and steps)
    np.testing.assert_allclose(fit["centre_x"], [5.3, 10.0], atol=0.05)
    np.testing.assert_allclose(fit["centre_y"], [6.2, 5.0], atol=0.05)
    np.testing.assert_allclose(fit["orientation_deg"], [75.0, 160.0], atol=0.5)
    np.testing.assert_allclose(fit["sigma"], [2.0, 2.5], atol=0.05)
    np.testing.assert_allclose(fit["amplitude"], [3.0, 3.0], rtol=0.02)
    np.testing.assert_allclose(np.cos(fit["phase"] - np.array([1.0, 4.0])), 1.0, atol=1e-3)
    assert np.all(fit["r2"] > 0.999)


def test_direction_selective_energy_neuron_has_high_dsi_the_other_none():
    twin = twin_from_module(EnergyNeurons(orientation_deg=45.0, period=5.0), num_neurons=2, space=SPACE)
    protocol = tuning.GratingProtocol(
        directions_deg=tuple(np.arange(8) * 45.0),
        periods_px=(5.0,),
        temporal_hz=(3.75,),
        radii_px=(1.0,),
        amplitude=1.0,
        output_frames=16,
    )
    result = tuning.run_tuning(twin, np.array([0, 1]), protocol, batch=16)
    np.testing.assert_allclose(result["blank"], 0.0, atol=1e-9)
    assert result["dsi"][0] > 0.95 and result["preferred_direction_deg"][0] == 45.0
    assert result["dsi"][1] < 0.02
    np.testing.assert_allclose(result["preferred_orientation_deg"], 45.0, atol=1.0)
    assert np.all(result["osi"] > 0.9)
    chex.assert_shape(result["direction_curve"], (2, 8))


def test_size_tuning_grows_then_saturates_for_a_centred_energy_neuron():
    twin = twin_from_module(EnergyNeurons(orientation_deg=45.0, period=5.0), num_neurons=2, space=SPACE)
    protocol = tuning.GratingProtocol(radii_px=(0.5, 2.0, 4.0, 8.0, float("inf")), amplitude=1.0, output_frames=16)
    centre = np.full(2, (W - 1) / 2), np.full(2, (H - 1) / 2)
    responses = tuning.size_responses(
        twin, np.array([0, 1]), *centre, np.full(2, 45.0), np.full(2, 5.0), np.full(2, 3.75), protocol
    )
    assert np.all(np.diff(responses, axis=1) >= -1e-4 * responses.max())
    assert np.all(responses[:, -1] > 20 * responses[:, 0])
    np.testing.assert_allclose(responses[:, -2], responses[:, -1], rtol=0.05)  # 8 px ≈ 2.7σ: saturated
    size = tuning.size_metrics(responses, np.asarray(protocol.radii_px))
    np.testing.assert_array_equal(size["preferred_radius_px"], [8.0, 8.0])
    np.testing.assert_allclose(size["surround_suppression"], 0.0, atol=1e-6)


def test_tuning_indices_on_hand_made_curves():
    directions = np.arange(8) * 45.0
    curve = np.array([1.0, 0, 0, 0, 0.5, 0, 0, 0])
    m = tuning.tuning_metrics(curve[None], directions)
    np.testing.assert_allclose(m["dsi"], 1 / 3)
    np.testing.assert_allclose(m["osi"], 1.0)
    np.testing.assert_allclose(m["gosi"], 1.0)
    np.testing.assert_allclose(m["gdsi"], 1 / 3)
    assert m["preferred_direction_deg"][0] == 0.0 and m["preferred_orientation_deg"][0] == 0.0
    # a blank of 0.2 is subtracted first: evoked [0.8, 0, …, 0.3, …]
    m = tuning.tuning_metrics(curve[None] + 0.2, directions, blank=np.array([0.4]))
    np.testing.assert_allclose(m["dsi"], (0.8 - 0.3) / (0.8 + 0.3))
    # orientation tuning without direction preference, preferred orientation between grid points
    curve = np.array([1.0, 1.0, 0, 0, 1.0, 1.0, 0, 0])
    m = tuning.tuning_metrics(curve[None], directions)
    np.testing.assert_allclose([m["dsi"][0], m["osi"][0]], [0.0, 1.0])
    np.testing.assert_allclose(m["preferred_orientation_deg"], 22.5)
    flat = tuning.tuning_metrics(np.ones((1, 8)), directions)
    np.testing.assert_allclose([flat["dsi"][0], flat["osi"][0], flat["gosi"][0]], 0.0, atol=1e-12)
    size = tuning.size_metrics(np.array([[0.2, 0.6, 1.0, 0.7]]), np.array([1.0, 2.0, 4.0, np.inf]))
    np.testing.assert_allclose([size["preferred_radius_px"][0], size["surround_suppression"][0]], [4.0, 0.3])
    with pytest.raises(ValueError, match="opposite"):
        tuning.GratingProtocol(directions_deg=(0.0, 90.0, 180.0))


def test_roc_auc_and_angle_differences():
    assert validation.roc_auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1]) == 0.75
    assert validation.roc_auc([1, 0], [0.3, 0.3]) == 0.5
    assert np.isnan(validation.roc_auc([1, 1], [0.1, 0.2]))
    np.testing.assert_allclose(validation.angle_difference([179.0, 10.0], [1.0, 350.0], 180.0), [2.0, 20.0])
    np.testing.assert_allclose(validation.angle_difference([350.0], [10.0], 360.0), [20.0])
    np.testing.assert_array_equal(validation.well_predicted([0.3, 0.2, 0.1], [0.5, 0.5, 0.0]), [True, False, False])


def test_validation_figures_on_exact_recovery():
    truth = {
        "centre_x": np.array([10.0, 20.0, 30.0, 40.0]),
        "centre_y": np.array([5.0, 6.0, 7.0, 8.0]),
        "orientation_deg": np.array([0.0, 45.0, 90.0, 170.0]),
        "direction_selective": np.array([True, False, True, False]),
        "preferred_direction_deg": np.array([0.0, np.nan, 270.0, np.nan]),
        "gain_running": np.array([0.1, 0.2, 0.3, 0.4]),
    }
    neurons = np.array([3, 0, 2])
    rf = {"centre_x": np.array([40.5, 13.0, 30.0]), "centre_y": np.array([8.0, 5.0, 7.0])}
    tuned = {
        "preferred_orientation_deg": np.array([5.0, 0.0, 110.0]),
        "dsi": np.array([0.1, 0.9, 0.8]),
        "preferred_direction_deg": np.array([0.0, 0.0, 270.0]),
    }
    out = validation.validate(truth, neurons, receptive_fields=rf, tuning=tuned)
    assert out["centre_within_2px"] == pytest.approx(2 / 3)
    assert out["orientation_within_15deg"] == pytest.approx(2 / 3)  # 170 vs 5: 15°; 90 vs 110: 20°
    assert out["dsi_auc"] == 1.0 and out["direction_within_22.5deg"] == 1.0
    out = validation.validate(truth, neurons, receptive_fields=rf, judged=np.array([True, False, True]))
    assert out["neurons_judged"] == 2 and out["centre_within_2px"] == 1.0


def test_behaviour_gain_slope_is_recovered_and_missing_behaviour_is_an_error():
    gains = np.array([0.3, -0.2, 0.0])
    twin = twin_from_module(GainNeurons(gains), num_neurons=3, space=SPACE)
    stimulus = np.ones((4, H, W), np.float32)
    result = behaviour.run_behaviour(twin, np.arange(3), stimulus, variables=("running",), points=5)
    np.testing.assert_allclose(result["running"]["log_gain_per_std"], gains, atol=1e-5)
    np.testing.assert_allclose(result["running"]["gain"][:, 0], np.exp(gains * -2.0), rtol=1e-5)  # low end −2
    assert twin.behaviour_dependence() == {"pupil": False, "running": True}
    with pytest.raises(BehaviourNotModelled, match=r"\['pupil'\]"):
        behaviour.run_behaviour(twin, np.arange(3), stimulus)
    blind = twin_from_module(GainNeurons(gains, use_behaviour=False), num_neurons=3, space=SPACE)
    with pytest.raises(BehaviourNotModelled, match="not trained with behaviour"):
        behaviour.sweep(blind, np.arange(3), stimulus, "running", np.array([0.0, 1.0]))


class _Readouts:
    num_neurons = (2, 3)


def test_bad_neurons_mice_and_experiments_are_clear_errors(linear_twin):
    np.testing.assert_array_equal(linear_twin.neuron_indices(unit_ids=[42, 11]), [1, 0])
    with pytest.raises(UnknownNeuronError, match=r"\[7\].*ids \[11, 42\]"):
        linear_twin.neuron_indices(unit_ids=[11, 7])
    with pytest.raises(UnknownNeuronError, match="outside 0…1"):
        linear_twin.neuron_indices(indices=[0, 2])
    with pytest.raises(InsilicoError, match="either"):
        linear_twin.neuron_indices(unit_ids=[11], indices=[0])
    model = LinearNeurons(gabor_filters(SPECS))
    model.readouts = _Readouts()
    assert twin_from_module(model, mouse=1).num_neurons == 3
    with pytest.raises(MouseNotInModel, match="mouse index 2"):
        twin_from_module(model, mouse=2)

    class Trained:  # what twin_from_trained reads before anything else
        name, members, mouse_names = "run", [], ["mouse-a"]

    with pytest.raises(MouseNotInModel, match="'mouse-b' is absent"):
        twin_from_trained(Trained(), "mouse-b")
    with pytest.raises(InsilicoError, match="unknown experiment"):
        cli.Options(experiment="psychophysics")
    assert cli.parse_indices("0-2, 7") == [0, 1, 2, 7]
    with pytest.raises(InsilicoError, match="bad neuron index"):
        cli.parse_indices("a-b")


def test_blur_grating_and_noise():
    @jax.jit  # one compile instead of one per eager primitive
    def make(key):
        image = jnp.zeros((H, W)).at[6, 8].set(1.0)
        grating = stimuli.drifting_grating(0.0, 8.0, 30.0 / 8, 1.0, 9, H, W)
        return image, stimuli.blur(image, 1.0), grating, stimuli.sparse_noise(key, (4000,), 2.0, density=0.1)

    image, blurred, grating, noise = (np.asarray(a) for a in make(jax.random.key(0)))
    np.testing.assert_allclose(blurred.sum(), 1.0, atol=1e-5)
    assert blurred.max() < 0.2
    np.testing.assert_array_equal(stimuli.blur(image, 0.0), image)
    np.testing.assert_allclose(grating[8], grating[0], atol=1e-5)  # one temporal period = 8 frames
    np.testing.assert_allclose(grating[2, :, 2:], grating[0, :, :-2], atol=1e-5)  # drifts +x by period/4 per 2 frames
    assert set(np.unique(noise)) <= {-2.0, 0.0, 2.0}
    assert abs((noise != 0).mean() - 0.1) < 0.02


@pytest.mark.parametrize("with_time", [False, True])
def test_input_space_applies_the_session_normalisation(tmp_path, with_time):
    from sensorium_jax.data.reader import Session
    from tests.fake_data import write_session

    session = Session(write_session(tmp_path / "m", num_neurons=3, stats_with_time=with_time), validate="headers")
    space = InputSpace.from_session(session)
    assert space.grey == 127.0 and space.natural_rms == pytest.approx(70.0)
    assert space.contrast_range == (-127.0, 128.0)
    raw, normalised = session.load(0, 0, 10, normalize=False), session.load(0, 0, 10)
    np.testing.assert_allclose(space.video_to_model(raw["videos"] - space.grey), normalised["videos"], atol=1e-4)
    np.testing.assert_allclose(space.behavior_to_model(raw["behavior"]), normalised["behavior"], rtol=1e-5)
    np.testing.assert_allclose(space.pupil_to_model(raw["pupil_center"]), normalised["pupil_center"], atol=1e-4)
    # no min/max statistics in these files: sweeps span mean ± 2 std (mean 1, std [0.5, 2])
    np.testing.assert_allclose([space.behavior_low, space.behavior_high], [[0.0, -3.0], [2.0, 5.0]])


def test_nnx_modules_become_twins_with_their_state_as_parameters():
    from flax import nnx

    class Linear(nnx.Module):
        burn_in = 0

        def __init__(self, filters):
            self.filters = nnx.Param(jnp.asarray(filters.reshape(len(filters), -1)))

        def predict_mouse(self, mouse, videos, behavior, pupil_center):
            return videos.reshape(*videos.shape[:2], -1) @ self.filters[...].T

    module = Linear(gabor_filters(SPECS))
    twin = twin_from_module(module, num_neurons=2, space=SPACE)
    assert isinstance(twin.params, nnx.State)
    videos = np.random.default_rng(0).normal(size=(3, 2, H, W)).astype(np.float32)
    np.testing.assert_allclose(
        twin.predict(videos, batch_size=2), module.predict_mouse(0, videos, None, None), rtol=1e-5
    )


def test_tables_are_written_as_csv_parquet_and_arrays(tmp_path):
    import pandas as pd

    columns = {"unit_id": np.array([5, 9]), "dsi": np.array([0.1, 0.7]), "curve": np.ones((2, 4))}
    written = cli.write_table(columns, tmp_path / "out" / "tuning")
    assert [p.name for p in written] == ["tuning.csv", "tuning.parquet", "tuning_arrays.npz"]
    frame = pd.read_csv(written[0])
    assert list(frame.columns) == ["unit_id", "dsi"] and frame["dsi"].tolist() == [0.1, 0.7]
    pd.testing.assert_frame_equal(pd.read_parquet(written[1]), frame)
    np.testing.assert_array_equal(np.load(written[2])["curve"], np.ones((2, 4)))
