"""`moorage monitor baseline` over CSV (with and without a header, stated or detected), JSON Lines and Parquet,
and the SDK."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moorage.monitor import load_json, shape_errors
from moorage.sdk.monitor import DatasetFormat, DefaultModelMonitor

SAGEMAKER = Path(__file__).parents[1] / "data" / "sagemaker" / "data_quality"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = 3_000
    frame = pd.DataFrame({
        "amount": rng.gamma(2.0, 30.0, rows).round(2),
        "items": rng.integers(1, 9, rows),
        "delta": rng.normal(0, 1, rows),
        "channel": rng.choice(["web", "store", "phone"], rows),
    })
    frame.loc[rng.random(rows) < 0.1, "delta"] = np.nan
    return frame


def _moorage(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moorage", "monitor", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def _shape_like_sagemaker(statistics: dict, constraints: dict) -> None:
    assert shape_errors(statistics, "statistics") == []
    assert shape_errors(constraints, "constraints") == []
    theirs = load_json(SAGEMAKER / "sdk-tests_statistics-numeric-kll.json")["features"][0]
    ours = next(f for f in statistics["features"] if "numerical_statistics" in f)
    # the same keys at every level SageMaker's file has
    assert ours.keys() == theirs.keys()
    assert ours["numerical_statistics"].keys() == theirs["numerical_statistics"].keys()
    kll = ours["numerical_statistics"]["distribution"]["kll"]
    their_kll = theirs["numerical_statistics"]["distribution"]["kll"]
    assert kll.keys() == their_kll.keys() and kll["sketch"].keys() == their_kll["sketch"].keys()
    assert kll["buckets"][0].keys() == their_kll["buckets"][0].keys() and len(kll["buckets"]) == 10
    their_text = load_json(SAGEMAKER / "sdk-tests_statistics-string.json")["features"][0]
    text = next(f for f in statistics["features"] if "string_statistics" in f)
    assert text["string_statistics"].keys() == their_text["string_statistics"].keys()
    their_constraints = load_json(SAGEMAKER / "sdk-tests_constraints-numeric.json")
    assert constraints.keys() == their_constraints.keys()
    assert set(their_constraints["monitoring_config"]) <= set(constraints["monitoring_config"])


def _check_baseline(out: Path, names: list[str]) -> None:
    statistics, constraints = load_json(out / "statistics.json"), load_json(out / "constraints.json")
    _shape_like_sagemaker(statistics, constraints)
    assert statistics["dataset"]["item_count"] == 3_000
    types = {f["name"]: f["inferred_type"] for f in statistics["features"]}
    assert types == dict(zip(names, ["Fractional", "Integral", "Fractional", "String"], strict=True))
    by_name = {f["name"]: f for f in constraints["features"]}
    assert by_name[names[0]]["num_constraints"] == {"is_non_negative": True}
    assert by_name[names[2]]["num_constraints"] == {"is_non_negative": False}
    assert 0.85 < by_name[names[2]]["completeness"] < 0.95
    assert sorted(by_name[names[3]]["string_constraints"]["domains"]) == ["phone", "store", "web"]
    assert constraints["monitoring_config"]["distribution_constraints"]["comparison_method"] == "Robust"


def test_csv_with_header(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(tmp_path / "train.csv", index=False)
    result = _moorage("baseline", "--dataset", str(tmp_path / "train.csv"), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "channel" in result.stdout
    _check_baseline(tmp_path / "out", list(frame.columns))


def test_csv_without_header(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(tmp_path / "train.csv", index=False, header=False)
    result = _moorage("baseline", "--dataset", str(tmp_path / "train.csv"), "--output", f"file://{tmp_path}/out",
                      "--no-header")
    assert result.returncode == 0, result.stderr
    _check_baseline(tmp_path / "out", ["_c0", "_c1", "_c2", "_c3"])


@pytest.fixture(scope="module")
def numbers() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = 5_000
    return pd.DataFrame({"price": rng.gamma(2.0, 30.0, rows).round(2), "count": rng.integers(0, 9, rows),
                         "score": rng.normal(0, 1, rows)})


def _baseline_of(tmp_path: Path, *options: str) -> dict:
    result = _moorage("baseline", "--dataset", str(tmp_path / "train.csv"), "--output", str(tmp_path / "out"),
                      *options)
    assert result.returncode == 0, result.stderr
    return load_json(tmp_path / "out" / "statistics.json")


def _features(statistics: dict) -> list[str]:
    return [f["name"] for f in statistics["features"]]


def test_numeric_csv_without_header_is_detected(tmp_path: Path, numbers: pd.DataFrame) -> None:
    # the first line is data: all 5000 rows count, and the columns are named as SageMaker names them
    numbers.to_csv(tmp_path / "train.csv", index=False, header=False)
    statistics = _baseline_of(tmp_path)
    assert statistics["dataset"]["item_count"] == 5_000
    assert _features(statistics) == ["_c0", "_c1", "_c2"]
    assert [f["inferred_type"] for f in statistics["features"]] == ["Fractional", "Integral", "Fractional"]


def test_numeric_csv_with_header_is_detected(tmp_path: Path, numbers: pd.DataFrame) -> None:
    numbers.to_csv(tmp_path / "train.csv", index=False)
    statistics = _baseline_of(tmp_path)
    assert statistics["dataset"]["item_count"] == 5_000
    assert _features(statistics) == ["price", "count", "score"]


def test_header_options_override_the_detection(tmp_path: Path, numbers: pd.DataFrame) -> None:
    numbers.to_csv(tmp_path / "train.csv", index=False, header=False)
    first_line = (tmp_path / "train.csv").read_text().split("\n", 1)[0]
    forced = _baseline_of(tmp_path, "--header")
    assert forced["dataset"]["item_count"] == 4_999
    assert _features(forced) == first_line.split(",")
    numbers.to_csv(tmp_path / "train.csv", index=False)
    forced = _baseline_of(tmp_path, "--no-header")
    assert forced["dataset"]["item_count"] == 5_001
    assert _features(forced) == ["_c0", "_c1", "_c2"]


def test_sdk_honours_dataset_format_header(tmp_path: Path, numbers: pd.DataFrame) -> None:
    numbers.to_csv(tmp_path / "train.csv", index=False, header=False)
    monitor = DefaultModelMonitor(role="unused", instance_count=1, instance_type="ml.m5.xlarge")
    # DatasetFormat.csv() means a header, as in SageMaker, whatever the first line holds
    monitor.suggest_baseline(baseline_dataset=str(tmp_path / "train.csv"), dataset_format=DatasetFormat.csv(),
                             output_s3_uri=str(tmp_path / "said"))
    assert monitor.baseline_statistics().body_dict["dataset"]["item_count"] == 4_999
    monitor.suggest_baseline(baseline_dataset=str(tmp_path / "train.csv"),
                             dataset_format=DatasetFormat.csv(header=False), output_s3_uri=str(tmp_path / "no"))
    assert monitor.baseline_statistics().body_dict["dataset"]["item_count"] == 5_000
    # no dataset_format at all: detected from the file
    monitor.suggest_baseline(baseline_dataset=str(tmp_path / "train.csv"), output_s3_uri=str(tmp_path / "detected"))
    statistics = monitor.baseline_statistics().body_dict
    assert statistics["dataset"]["item_count"] == 5_000 and _features(statistics) == ["_c0", "_c1", "_c2"]


def test_json_lines(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_json(tmp_path / "train.data", orient="records", lines=True)
    result = _moorage("baseline", "--dataset", str(tmp_path / "train.data"), "--output", str(tmp_path / "out"),
                      "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    _check_baseline(tmp_path / "out", list(frame.columns))


def test_parquet(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(tmp_path / "train.parquet")
    result = _moorage("baseline", "--dataset", str(tmp_path / "train.parquet"), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    _check_baseline(tmp_path / "out", list(frame.columns))


def test_missing_dataset_is_an_error(tmp_path: Path) -> None:
    result = _moorage("baseline", "--dataset", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "does not exist" in result.stderr


def test_check_command_writes_violations(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(tmp_path / "train.csv", index=False)
    drifted = frame.assign(amount=frame["amount"] * 3)
    drifted.to_csv(tmp_path / "today.csv", index=False)
    made = _moorage("baseline", "--dataset", str(tmp_path / "train.csv"), "--output", str(tmp_path / "b"))
    assert made.returncode == 0, made.stderr
    result = _moorage("check", "--dataset", str(tmp_path / "today.csv"), "--baseline", str(tmp_path / "b"),
                      "--output", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    violations = load_json(tmp_path / "run" / "constraint_violations.json")
    assert shape_errors(violations, "constraint_violations") == []
    assert [(v["feature_name"], v["constraint_check_type"]) for v in violations["violations"]] == [
        ("amount", "baseline_drift_check")]
    assert shape_errors(load_json(tmp_path / "run" / "statistics.json"), "statistics") == []


def test_sdk_suggest_baseline(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(tmp_path / "train.csv", index=False)
    monitor = DefaultModelMonitor(role="unused", instance_count=1, instance_type="ml.m5.xlarge")
    job = monitor.suggest_baseline(baseline_dataset=str(tmp_path / "train.csv"),
                                   dataset_format=DatasetFormat.csv(header=True),
                                   output_s3_uri=f"file://{tmp_path}/baseline", wait=True)
    assert job.describe()["ProcessingJobStatus"] == "Completed"
    statistics = monitor.baseline_statistics().body_dict
    constraints = monitor.suggested_constraints().body_dict
    assert statistics == load_json(tmp_path / "baseline" / "statistics.json")
    assert constraints == load_json(tmp_path / "baseline" / "constraints.json")
    assert [f["name"] for f in statistics["features"]] == list(frame.columns)
    # a baseline SageMaker made loads the same way
    sagemaker_baseline = tmp_path / "from-sagemaker"
    sagemaker_baseline.mkdir()
    shutil.copy(SAGEMAKER / "sdk-tests_statistics-string.json", sagemaker_baseline / "statistics.json")
    shutil.copy(SAGEMAKER / "sdk-tests_constraints-string.json", sagemaker_baseline / "constraints.json")
    loaded_statistics, loaded_constraints = DefaultModelMonitor.load_baseline(f"file://{sagemaker_baseline}")
    assert loaded_statistics.body_dict["dataset"]["item_count"] == 418
    assert loaded_constraints.body_dict["features"][0]["string_constraints"]["domains"] == [
        "preproc-not-YET-supported-for-csv-json"]
