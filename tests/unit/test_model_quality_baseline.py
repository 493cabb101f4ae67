"""Model-quality baselines from a validation set: the SDK's ModelQualityMonitor and the command line
write statistics, constraints and (for a binary classifier with probabilities) the CBPE calibration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from moorage.sdk.monitor import DatasetFormat, ModelQualityMonitor


@pytest.fixture
def validation(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    probability = np.round(rng.random(600), 4)
    label = (rng.random(600) < probability).astype(int)
    path = tmp_path / "validation.csv"
    path.write_text("label,prediction,probability\n" + "\n".join(
        f"{y},{int(p >= 0.5)},{p}" for y, p in zip(label, probability, strict=True)))
    return path, label, probability


def test_the_sdk_writes_a_binary_baseline(validation: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    path, label, probability = validation
    monitor = ModelQualityMonitor(role="any", instance_count=1, instance_type="ml.m5.xlarge")
    job = monitor.suggest_baseline(baseline_dataset=str(path), dataset_format=DatasetFormat.csv(header=True),
                                   problem_type="BinaryClassification", inference_attribute="prediction",
                                   probability_attribute="probability", ground_truth_attribute="label",
                                   output_s3_uri=str(tmp_path / "baseline"), wait=True)
    assert sorted(p.name for p in (tmp_path / "baseline").iterdir()) == ["cbpe.json", "constraints.json",
                                                                         "statistics.json"]
    assert job.outputs == str(tmp_path / "baseline")
    metrics = monitor.baseline_statistics().body_dict["binary_classification_metrics"]
    assert metrics["accuracy"]["value"] == pytest.approx(skm.accuracy_score(label, probability >= 0.5))
    assert metrics["auc"]["value"] == pytest.approx(skm.roc_auc_score(label, probability))
    constraints = monitor.suggested_constraints().body_dict["binary_classification_constraints"]
    assert constraints["accuracy"] == {"threshold": metrics["accuracy"]["value"],
                                       "comparison_operator": "LessThanThreshold"}
    with pytest.raises(ValueError, match="problem_type"):
        monitor.suggest_baseline(baseline_dataset=str(path), ground_truth_attribute="label")


def test_the_command_line_writes_a_regression_baseline(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    truth = rng.normal(size=300)
    predicted = truth + rng.normal(0, 0.2, 300)
    path = tmp_path / "regression.csv"
    path.write_text("y,yhat\n" + "\n".join(f"{a:.5f},{b:.5f}" for a, b in zip(truth, predicted, strict=True)))
    env = {k: v for k, v in os.environ.items() if k != "MOORAGE_HOME"}
    done = subprocess.run([sys.executable, "-m", "moorage", "monitor", "baseline", "--dataset", str(path),
                           "--output", str(tmp_path / "out"), "--problem-type", "Regression",
                           "--inference-attribute", "yhat", "--ground-truth-attribute", "y"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    statistics = json.loads((tmp_path / "out" / "statistics.json").read_text())
    assert statistics["regression_metrics"]["mae"]["value"] == pytest.approx(
        skm.mean_absolute_error(np.round(truth, 5), np.round(predicted, 5)))
    assert "rmse" in done.stdout and not (tmp_path / "out" / "cbpe.json").exists()
    missing = subprocess.run([sys.executable, "-m", "moorage", "monitor", "baseline", "--dataset", str(path),
                              "--output", str(tmp_path / "out2"), "--problem-type", "Regression",
                              "--inference-attribute", "nope", "--ground-truth-attribute", "y"],
                             capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode != 0 and "nope" in missing.stderr
