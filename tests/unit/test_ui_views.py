"""The dashboard's page data (ui/views): rollout steps and the update form, experiment bands,
distributions baseline vs current with the drifted features first, report paths kept inside the
execution's output, transform-job progress and rate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moorage.control.deployment_config import DeploymentPlan
from moorage.errors import ValidationException
from moorage.monitor.data_quality.suggest import suggest_baseline
from moorage.store.metadata import Resource
from moorage.ui.views import experiments, jobs, monitoring, rollouts


def _row(name: str, status: str, body: dict, kind: str = "endpoint") -> Resource:
    return Resource(kind=kind, name=name, arn=f"arn:{name}", status=status, body=body, created_at=1.0,
                    modified_at=2.0)


CANARY_HISTORY = [{"Time": 100.0, "Phase": "Creating", "GreenShare": 0.0, "Message": "a"},
                  {"Time": 101.0, "Phase": "ActivatingTraffic", "GreenShare": 0.0, "Message": "b"},
                  {"Time": 101.5, "Phase": "Baking", "GreenShare": 0.5, "Message": "c"},
                  {"Time": 105.5, "Phase": "ActivatingTraffic", "GreenShare": 0.5, "Message": "d"},
                  {"Time": 105.6, "Phase": "Baking", "GreenShare": 1.0, "Message": "e"},
                  {"Time": 107.0, "Phase": "Completed", "GreenShare": 1.0, "Message": "f"}]


def test_traffic_series_steps_at_each_change() -> None:
    chart = rollouts.traffic_series({"History": CANARY_HISTORY})
    points = list(zip(chart["x"], chart["series"][0]["values"], strict=True))
    # a change is drawn as a step: the old share up to the moment, then the new one
    assert points == [(100.0, 0.0), (101.0, 0.0), (101.5, 0.0), (101.5, 50.0), (105.5, 50.0), (105.6, 50.0),
                      (105.6, 100.0), (107.0, 100.0)]
    running = rollouts.traffic_series({"History": CANARY_HISTORY[:3]}, now=103.0)
    assert running["x"][-1] == 103.0 and running["series"][0]["values"][-1] == 50.0
    assert rollouts.traffic_series(None) == {"x": [], "series": [{"label": "new fleet's share of the traffic",
                                                                   "values": []}]}


def test_rollout_view_shows_a_rollback_as_one() -> None:
    history = [*CANARY_HISTORY[:3],
               {"Time": 102.0, "Phase": "RollingBack", "GreenShare": 0.5, "Message": "Rolling back: alarm x"},
               {"Time": 103.0, "Phase": "RolledBack", "GreenShare": 0.0, "Message": "Update rolled back"}]
    row = _row("ep", "InService", {"EndpointConfigName": "blue", "FailureReason": "Update rolled back: alarm x",
                                   "UpdateHistory": {"EndpointConfigName": "green", "Phase": "RolledBack",
                                                     "GreenShare": 0.0, "StartTime": 99.0, "Alarms": ["x", "gone"],
                                                     "History": history}})
    view = rollouts.rollout_view(row, {"x": "ALARM"}.get)
    assert view["outcome"] == "rolled back" and view["rolled_back"] and not view["in_flight"]
    assert [s["rollback"] for s in view["steps"]] == [False, False, False, True, True]
    assert view["alarms"] == [{"name": "x", "state": "ALARM"}, {"name": "gone", "state": "missing"}]
    assert rollouts.outcome("Updating", {"Phase": "Baking"}) == "in progress"
    assert rollouts.outcome("InService", None) == "no update has run"


def test_update_form_makes_deployment_configs_the_update_accepts() -> None:
    canary = rollouts.deployment_config({"policy": "CANARY", "size": "1", "size_type": "INSTANCE_COUNT",
                                         "wait": "4"}, ["latency-alarm"])
    assert canary["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"] == {
        "Type": "CANARY", "WaitIntervalInSeconds": 4, "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1}}
    assert canary["AutoRollbackConfiguration"] == {"Alarms": [{"AlarmName": "latency-alarm"}]}
    plan = DeploymentPlan.parse(canary)
    assert [(s.share, s.bake_seconds) for s in plan.steps(2)] == [(0.5, 4.0), (1.0, 0.0)]
    linear = rollouts.deployment_config({"policy": "LINEAR", "size": "25", "wait": "1"}, [])
    assert [s.share for s in DeploymentPlan.parse(linear).steps(4)] == [0.25, 0.5, 0.75, 1.0]
    assert "AutoRollbackConfiguration" not in linear
    at_once = rollouts.deployment_config({}, [])
    assert at_once["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"] == {"Type": "ALL_AT_ONCE",
                                                                              "WaitIntervalInSeconds": 0}
    for bad in ({"policy": "BLUE"}, {"policy": "CANARY"}, {"policy": "CANARY", "size": "x"},
                {"policy": "LINEAR", "size": "101"}, {"wait": "-1"}, {"wait": "99999"}):
        with pytest.raises(ValidationException):
            rollouts.deployment_config(bad, [])


def test_report_view_puts_every_interval_on_one_scale() -> None:
    report = {"EndpointName": "ep", "Routing": {"Policy": "thompson", "Reward": "binary", "Experiment": True},
              "Variants": [{"VariantName": "A", "CurrentWeight": 0.5, "MeanReward": 0.2,
                            "MeanRewardInterval": [0.1, 0.3], "Rewards": 100,
                            "Guardrails": {"ModelLatencyP99Microseconds": 2500.0, "ErrorRate": 0.0}},
                           {"VariantName": "B", "CurrentWeight": 0.5, "MeanReward": 0.6,
                            "MeanRewardInterval": [0.5, 0.7], "Rewards": 100, "Guardrails": {}},
                           {"VariantName": "C", "MeanReward": None, "MeanRewardInterval": [None, None],
                            "Rewards": 0}],
              "Comparisons": [{"Control": "A", "Treatment": "B", "Verdict": "treatment better", "PValue": 0.001,
                               "Interval": [0.3, 0.5], "NeededPerVariant": None}]}
    view = experiments.report_view(report)
    a, b, c = view["variants"]
    assert a["band"]["left"] < a["band"]["mean"] < a["band"]["left"] + a["band"]["width"]
    assert a["band"]["left"] + a["band"]["width"] < b["band"]["left"]  # disjoint intervals stay apart
    assert a["band"]["left"] >= 0 and b["band"]["left"] + b["band"]["width"] <= 100
    assert c["band"] is None and a["p99_ms"] == 2.5
    assert view["comparisons"][0]["verdict"] == "treatment better" and view["policy"] == "thompson"


def test_distributions_baseline_vs_current_with_the_drifted_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train = rng.normal(size=(2000, 3))
    (tmp_path / "train.csv").write_text("a,b,c\n" + "\n".join(",".join(f"{v:.4f}" for v in r) for r in train))
    suggest_baseline(tmp_path / "train.csv", tmp_path / "baseline")
    drifted = rng.normal(size=(2000, 3))
    drifted[:, 1] += 3.0
    (tmp_path / "now.csv").write_text("a,b,c\n" + "\n".join(",".join(f"{v:.4f}" for v in r) for r in drifted))
    suggest_baseline(tmp_path / "now.csv", tmp_path / "now")
    baseline = json.loads((tmp_path / "baseline" / "statistics.json").read_text())
    current = json.loads((tmp_path / "now" / "statistics.json").read_text())
    features = monitoring.feature_distributions(baseline, current, {"b"})
    assert [f["name"] for f in features] == ["b", "a", "c"] and [f["drifted"] for f in features] == [True, False,
                                                                                                     False]
    b = features[0]
    assert b["kind"] == "numeric" and abs(sum(b["baseline"]) - 1) < 1e-9 and abs(sum(b["current"]) - 1) < 1e-9

    def centre(fractions: list[float]) -> float:
        return sum(f * (b["edges"][i] + b["edges"][i + 1]) / 2 for i, f in enumerate(fractions))

    assert centre(b["current"]) - centre(b["baseline"]) == pytest.approx(3.0, abs=0.4)
    assert len(b["bars"]) == 2 * monitoring.BINS and all(0 <= r["height"] <= 90 for r in b["bars"])


def test_rebin_and_categories() -> None:
    assert monitoring.rebin([(0.0, 2.0, 4.0), (2.0, 2.0, 4.0)], [0.0, 1.0, 2.0, 3.0]) == [0.25, 0.25, 0.5]
    cats = monitoring.feature_distributions(
        {"features": [{"name": "s", "inferred_type": "String", "string_statistics": {
            "distribution": {"categorical": {"buckets": [{"value": "x", "count": 3}, {"value": "y", "count": 1}]}}}}]},
        {"features": [{"name": "s", "inferred_type": "String", "string_statistics": {
            "distribution": {"categorical": {"buckets": [{"value": "y", "count": 2}, {"value": "z", "count": 2}]}}}}]},
        set())
    assert cats[0]["labels"] == ["x", "y", "z"] and cats[0]["baseline"] == [0.75, 0.25, 0.0]
    assert cats[0]["current"] == [0.0, 0.5, 0.5]
    violations = {"violations": [{"feature_name": "b", "constraint_check_type": "baseline_drift_check",
                                  "description": "d"}]}
    assert monitoring.drifted_features(violations) == {"b"}


def test_report_files_only_from_the_execution_output() -> None:
    row = _row("exec", "Completed", {"OutputLocation": "file:///out/ep/sched/2026/12/06/08"}, "monitoring-execution")
    assert monitoring.report_location(row, "report.html") == "file:///out/ep/sched/2026/12/06/08/report.html"
    assert monitoring.report_location(row, "sub/x.json").endswith("/08/sub/x.json")
    for bad in ("../../other/report.html", "/etc/passwd", "a/../../b", "", ".", "x?y", "a%2e", "..\\x"):
        with pytest.raises(ValidationException):
            monitoring.report_location(row, bad)
    with pytest.raises(ValidationException):
        monitoring.report_location(_row("e", "Failed", {}, "monitoring-execution"), "report.html")


def test_job_progress_and_rate() -> None:
    state = {"TransformJobName": "j", "TransformJobStatus": "InProgress", "Backend": "local",
             "Progress": {"FilesTotal": 4, "FilesDone": 1, "RecordsDone": 500, "BytesTotal": 1000, "BytesDone": 250,
                          "StartedAt": 100.0, "InstancesReadyAt": 110.0, "Instances": [{}, {}]}}
    view = jobs.job_view(state, now=120.0)
    assert view["percent"] == 25.0 and view["records_per_s"] == 50.0 and view["bytes_per_s"] == 25.0
    assert view["running"] and view["instances"] == 2
    done = jobs.job_view({**state, "TransformJobStatus": "Failed", "FailureReason": "boom", "TransformEndTime": 130.0},
                         now=999.0)
    assert done["records_per_s"] == 25.0 and done["failure_reason"] == "boom" and not done["running"]


def test_execution_windows_read_as_epochs_or_iso_times() -> None:
    pending = monitoring.execution_summary(_row("e", "Pending", {"WindowStart": 0.0, "WindowEnd": 3600.0},
                                                "monitoring-execution"))
    assert pending["window"] == "1970-01-01 00:00:00 to 1970-01-01 01:00:00" and not pending["finished"]
    done = monitoring.execution_summary(_row("e", "Completed", {"WindowStart": "2026-12-06T08:00:00Z",
                                                                "WindowEnd": "2026-12-06T09:00:00Z"},
                                             "monitoring-execution"))
    assert done["window"] == "2026-12-06 08:00:00 to 2026-12-06 09:00:00" and done["finished"]
