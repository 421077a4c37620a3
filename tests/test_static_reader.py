"""The SENSORIUM 2022 reader: the reference's 0.25 downscale, normalisation, and bad input naming the file."""

from pathlib import Path

import numpy as np
import pytest

from sensorium_jax.data.layout import DataFormatError
from sensorium_jax.data.static_reader import StaticSession, rescale, rescaled_size
from tests.static_fake_data import write_static_session


def test_quarter_downscale_is_the_mean_of_central_2x2_blocks():
    # skimage rescale(0.25, order=1, grid_mode): output (i, j) samples input (4i + 1.5, 4j + 1.5), halfway between
    # pixels 4i+1 and 4i+2 on both axes. x[r, c] = 8r + c, so out[0, 0] = (9 + 10 + 17 + 18) / 4 = 13.5, etc.
    x = np.arange(64.0).reshape(1, 8, 8)
    np.testing.assert_allclose(rescale(x, 0.25)[0], [[13.5, 17.5], [45.5, 49.5]], atol=1e-5)
    assert rescale(np.zeros((1, 144, 256)), 0.25).shape == (1, 36, 64)


def test_rescale_reflects_at_the_border_and_rounds_like_skimage():
    # ×2 of [0, 1]: samples at −0.25, 0.25, 0.75, 1.25; "reflect" mirrors −0.25 → 0.25 and 1.25 → 0.75.
    np.testing.assert_allclose(rescale(np.array([[[0.0, 1.0]]]), 2.0)[0, 0], [0.25, 0.25, 0.75, 0.75], atol=1e-6)
    # 5 px × 0.5 → round(2.5) = 2 px (numpy rounds half to even); zoom 2.5: samples at 0.75 and 3.25.
    assert rescaled_size(5, 0.5) == 2
    np.testing.assert_allclose(rescale(np.array([[[0.0, 10, 20, 30, 40]]]), 0.5)[0, 0], [7.5, 32.5], atol=1e-5)


def test_rescale_preserves_range_and_constants():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3.0, 200.0, (1, 30, 50))
    out = rescale(x, 0.37)
    assert out.min() >= x.min() and out.max() <= x.max()
    # a constant channel (the behaviour appended as an image channel) stays exactly that constant
    np.testing.assert_array_equal(rescale(np.full((1, 144, 256), 1.75), 0.25), 1.75)


def test_rescale_matches_scipy_zoom():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(1).normal(size=(9, 14))
    for scale in (0.25, 0.6, 1.7):
        shape = tuple(rescaled_size(s, scale) for s in x.shape)
        zoom = [o / s for o, s in zip(shape, x.shape, strict=True)]
        expected = ndimage.zoom(x, zoom, order=1, mode="mirror", grid_mode=True)
        np.testing.assert_allclose(rescale(x[None], scale)[0], expected, atol=1e-5)


def test_load_normalises_then_rescales(tmp_path):
    root = write_static_session(tmp_path / "s", num_neurons=4, image_shape=(1, 16, 24))
    session = StaticSession(root, scale=0.25)
    assert session.image_shape == (4, 6) and session.num_trials == 30
    out = session.load(3)
    raw = {k: np.load(root / "data" / k / "3.npy") for k in ("images", "responses", "behavior", "pupil_center")}
    image = (raw["images"][0] - 127.0) / 70.0
    expected = image.reshape(4, 4, 6, 4)[:, 1:3, :, 1:3].mean(axis=(1, 3))
    np.testing.assert_allclose(out["images"], expected, atol=1e-5)
    std = np.load(root / "meta/statistics/responses/all/std.npy")
    np.testing.assert_allclose(out["responses"], raw["responses"] / std, rtol=1e-5)
    np.testing.assert_allclose(out["behavior"], raw["behavior"][0] / [0.5, 2.0, 1.0], rtol=1e-5)  # no mean removed
    np.testing.assert_allclose(out["pupil_center"], (raw["pupil_center"][0] - 100.0) / 3.0, rtol=1e-5)
    assert session.tiers[26] == "final_test" and session.frame_image_id[26] == 7
    assert session.trial_idx.dtype.kind == "U"  # hashed ids stay strings
    batch = session.load_many([0, 3])
    assert batch["images"].shape == (2, 4, 6) and batch["behavior"].shape == (2, 3)


def _break(root: Path, how: str) -> Path:
    """Damage a fake session; returns the path the error must name."""
    if how == "missing":
        (root / "data/responses/2.npy").rename(root / "data/responses/99.npy")  # count intact, trial 2 missing
        return root / "data/responses/2.npy"
    if how == "truncated":
        path = root / "data/images/5.npy"
        path.write_bytes(path.read_bytes()[:-100])
        return path
    if how == "wrong_neurons":
        np.save(root / "data/responses/4.npy", np.ones(6))
        return root / "data/responses/4.npy"
    if how == "wrong_behavior":
        np.save(root / "data/behavior/1.npy", np.ones((2,)))
        return root / "data/behavior/1.npy"
    if how == "image_size":
        np.save(root / "data/images/7.npy", np.ones((1, 16, 20)))
        return root / "data/images/7.npy"
    if how == "tiers_short":
        np.save(root / "meta/trials/tiers.npy", np.array(["train"] * 29))
        return root / "data/images"
    if how == "image_ids_short":
        np.save(root / "meta/trials/frame_image_id.npy", np.arange(29))
        return root / "meta/trials/frame_image_id.npy"
    if how == "unknown_tier":
        tiers = np.load(root / "meta/trials/tiers.npy", allow_pickle=True).astype(str)
        tiers[0] = "oracle"
        np.save(root / "meta/trials/tiers.npy", tiers)
        return root / "meta/trials/tiers.npy"
    if how == "nan":
        responses = np.load(root / "data/responses/8.npy")
        responses[1] = np.nan
        np.save(root / "data/responses/8.npy", responses)
        return root / "data/responses/8.npy"
    if how == "stat_shape":
        np.save(root / "meta/statistics/pupil_center/all/std.npy", np.ones(3))
        return root / "meta/statistics/pupil_center/all/std.npy"
    if how == "zero_std":
        np.save(root / "meta/statistics/behavior/all/std.npy", np.array([1.0, 0.0, 1.0]))
        return root / "meta/statistics/behavior/all/std.npy"
    raise ValueError(how)


@pytest.mark.parametrize(
    "how",
    [
        "missing",
        "truncated",
        "wrong_neurons",
        "wrong_behavior",
        "image_size",
        "tiers_short",
        "image_ids_short",
        "unknown_tier",
        "nan",
        "stat_shape",
        "zero_std",
    ],
)
def test_bad_input_names_the_file(tmp_path, how):
    root = write_static_session(tmp_path / "s", num_neurons=4, image_shape=(1, 16, 24))
    culprit = _break(root, how)
    with pytest.raises(DataFormatError) as error:
        StaticSession(root)
    assert error.value.path == culprit, error.value
    assert str(culprit) in str(error.value)
