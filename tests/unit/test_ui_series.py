"""The dashboard's chart JSON (ui/series.py) and the endpoints page's alarm matching, without a server."""

from __future__ import annotations

from moorage.metrics.store import Datapoint
from moorage.store.metadata import Resource
from moorage.ui import series
from moorage.ui.pages.endpoints import alarms_by_endpoint


def test_windows_are_aligned_buckets_ending_now() -> None:
    hour = series.window("hour", now=10_000.5)
    assert hour.period == 60 and hour.start % 60 == 0
    xs = hour.buckets()
    assert len(xs) == 60 and xs[0] == hour.start and xs[-1] <= 10_000.5 < xs[-1] + 60
    day = series.window("day", now=100_000.0)
    assert day.period == 600 and len(day.buckets()) == 144
    assert series.window("fortnight", now=10_000.5) == hour  # an unknown name: the default


def test_lines_share_the_x_axis_with_nulls_where_no_data() -> None:
    win = series.window("hour", now=7_200.0)
    first, last = win.buckets()[0], win.buckets()[-1]
    doc = series.chart(win, [series.Line("A", [Datapoint(first, 2.0, 2, "None"), Datapoint(last, 5.0, 5, "None")]),
                             series.Line("B", [Datapoint(last, 1500.0, 1, "Microseconds")], scale=0.001)], "ms")
    assert doc["x"] == win.buckets() and doc["unit"] == "ms" and doc["window"] == "hour"
    a, b = doc["series"]
    assert a["label"] == "A" and a["values"][0] == 2.0 and a["values"][-1] == 5.0 and a["values"][1] is None
    assert b["values"][-1] == 1.5 and b["values"].count(None) == 59


def test_rebucket_averages_finer_points() -> None:
    win = series.window("hour", now=7_200.0)
    start = win.buckets()[-2]
    points = [Datapoint(start + s, float(v), 1, "None") for s, v in ((0, 1), (10, 2), (20, 3), (60, 4))]
    out = series.rebucket(points, win)
    assert [(p.timestamp, p.value) for p in out] == [(start, 2.0), (start + 60, 4.0)]
    assert [p.value for p in series.rebucket(points, win, "maximum")] == [3.0, 4.0]


def test_alarms_are_matched_to_the_endpoints_they_name() -> None:
    alarms = [
        {"AlarmName": "a-5xx", "StateValue": "ALARM", "Dimensions": [{"Name": "EndpointName", "Value": "a"},
                                                                     {"Name": "VariantName", "Value": "v"}]},
        {"AlarmName": "math", "StateValue": "OK", "Metrics": [
            {"Id": "m", "MetricStat": {"Metric": {"Dimensions": [{"Name": "EndpointName", "Value": "b"}]}}}]},
        {"AlarmName": "other", "StateValue": "OK", "Dimensions": [{"Name": "Host", "Value": "a"}]},
    ]
    row = Resource("endpoint", "a", "arn", "InService", 0.0, 0.0, {"LastDeploymentConfig": {
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "a-5xx"}, {"AlarmName": "gone"}]}}})
    found = alarms_by_endpoint(alarms, [row])
    assert [(v.name, v.state, v.rollback) for v in found["a"]] == [("a-5xx", "ALARM", True), ("gone", "missing", True)]
    assert [v.name for v in found["b"]] == ["math"]
    assert "other" not in {v.name for views in found.values() for v in views}
