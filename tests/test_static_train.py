"""``train_and_evaluate`` with ``config.task = "static"`` on the synthetic static dataset, end to end."""

import dataclasses
import json

import numpy as np
import pytest

from experiments import train as train_cli
from sensorium_jax.training.loop import is_static, train_and_evaluate
from tests.test_static_model import tiny_static_config
from tests.test_static_synthetic import TINY


def test_static_training_reports_every_2022_score_and_its_ceiling(tmp_path):
    config = tiny_static_config()
    config.data.image_scale = 0.25
    config.data.cache_dir = str(tmp_path / "cache")
    config.data.synthetic.update({k: v for k, v in dataclasses.asdict(TINY).items() if k != "physiology"})
    assert is_static(config)
    results = train_and_evaluate(config, tmp_path / "run")

    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["epochs"] == 2 and saved["best_epoch"] >= 1
    overall = saved["overall"]
    assert set(overall) == {"validation", "test", "final_test"}
    assert set(overall["test"]) == {"single_trial_correlation", "correlation_to_average", "feve"}
    assert "correlation_to_average" not in overall["validation"]  # unique images only
    assert np.isfinite(overall["test"]["single_trial_correlation"])
    fractions = saved["fraction_of_ceiling"]["test"]
    assert set(fractions) == {"single_trial", "correlation_to_average", "feve"}
    ceiling = saved["ceilings"]["mean"]["test"]["single_trial"]
    assert fractions["single_trial"]["fraction"] == pytest.approx(overall["test"]["single_trial_correlation"] / ceiling)
    assert results["parameters"] > 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("validation_correlation" in r for r in records) and any("loss" in r for r in records)

    # the CLI's run info for a static config names the static session folders (generated above, reused)
    run_config = train_cli._static_run_config(config)
    assert all("GrayImageNet" in p for p in run_config.data.paths.split(","))
