"""The metric store and the invocation recorder, against a real SQLite file: statistics as CloudWatch
computes them, percentiles from merged KLL sketches within their rank error, exact dimension
matching, retention, and the Prometheus exposition of the same windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moorage.metrics.prometheus import PrometheusExposition
from moorage.metrics.recorder import InvocationRecorder, statistic_sets
from moorage.metrics.store import SKETCH_K, MetricStore, StatisticSet
from moorage.metrics.vocabulary import (
    CPU_UTILIZATION,
    DROPPED_SAMPLES,
    INVOCATION_4XX,
    INVOCATION_5XX,
    INVOCATION_NAMESPACE,
    INVOCATIONS,
    INVOCATIONS_PER_INSTANCE,
    MODEL_LATENCY,
    OVERHEAD_LATENCY,
    SELF_NAMESPACE,
    parse_duration,
    percentile_of,
)
from moorage.serving.invocation_events import InvocationEvent

T0 = 1_700_000_000.0  # a multiple of 60 and of 10
DIMS = {"EndpointName": "ep", "VariantName": "AllTraffic"}


@pytest.fixture
def store(tmp_path: Path) -> MetricStore:
    return MetricStore.from_url(f"sqlite:///{tmp_path / 'metrics.db'}")


def rank_error() -> float:
    from datasketches import kll_floats_sketch

    return kll_floats_sketch(SKETCH_K).normalized_rank_error(False)


def assert_quantile_close(data: np.ndarray, quantile: float, estimate: float) -> None:
    """The estimate's rank in the data is within three times the sketch's normalised rank error."""
    rank = np.searchsorted(np.sort(data), estimate, side="right") / data.size
    assert abs(rank - quantile) <= 3 * rank_error(), (quantile, rank, estimate)


def test_statistics_per_period_match_numpy(store: MetricStore) -> None:
    rng = np.random.default_rng(7)
    periods = [rng.lognormal(6, 1, size=size) for size in (5000, 3000, 7000)]
    for i, samples in enumerate(periods):
        store.put("App", "Latency", DIMS, samples, timestamp=T0 + 10 * i, unit="Microseconds")
    for statistic, expected in (("Average", np.mean), ("Sum", np.sum), ("Minimum", np.min), ("Maximum", np.max),
                                ("SampleCount", np.size)):
        points = store.statistics("App", "Latency", DIMS, statistic, T0, T0 + 30, 10)
        assert [p.timestamp for p in points] == [T0, T0 + 10, T0 + 20]
        for point, samples in zip(points, periods, strict=True):
            assert point.value == pytest.approx(float(expected(samples)), rel=1e-6)
            assert point.sample_count == samples.size
            assert point.unit == "Microseconds"
    for quantile in (0.5, 0.9, 0.99):
        points = store.statistics("App", "Latency", DIMS, f"p{quantile * 100:g}", T0, T0 + 30, 10)
        for point, samples in zip(points, periods, strict=True):
            assert_quantile_close(samples, quantile, point.value)


def test_coarser_period_merges_rows_and_sketches(store: MetricStore) -> None:
    rng = np.random.default_rng(3)
    chunks = [rng.normal(100 + 10 * i, 5 + i, size=2000) for i in range(6)]
    for i, chunk in enumerate(chunks):
        store.put("App", "Latency", DIMS, chunk, timestamp=T0 + i)
    everything = np.concatenate(chunks)
    [point] = store.statistics("App", "Latency", DIMS, "Average", T0, T0 + 60, 60)
    assert point.value == pytest.approx(everything.mean())
    assert point.sample_count == everything.size
    [p999] = store.statistics("App", "Latency", DIMS, "p99.9", T0, T0 + 60, 60)
    assert_quantile_close(everything, 0.999, p999.value)
    halves = store.statistics("App", "Latency", DIMS, "Maximum", T0, T0 + 6, 3)
    assert [p.value for p in halves] == [pytest.approx(np.concatenate(chunks[:3]).max()),
                                         pytest.approx(np.concatenate(chunks[3:]).max())]
    # The range is half-open: the row at T0 + 5 is outside [T0, T0 + 5).
    assert store.statistics("App", "Latency", DIMS, "SampleCount", T0, T0 + 5, 60)[0].sample_count == 10000


def test_dimensions_match_exactly(store: MetricStore) -> None:
    store.put("App", "M", DIMS, [1.0], timestamp=T0)
    store.put("App", "M", {**DIMS, "InstanceId": "i-1"}, [100.0], timestamp=T0)
    store.put("App", "M", {"EndpointName": "ep"}, [1000.0], timestamp=T0)
    assert [p.value for p in store.statistics("App", "M", DIMS, "Sum", T0, T0 + 60, 60)] == [1.0]
    assert [p.value for p in store.statistics("App", "M", {"EndpointName": "ep"}, "Sum", T0, T0 + 60, 60)] == [1000]
    assert store.statistics("App", "M", {"VariantName": "AllTraffic"}, "Sum", T0, T0 + 60, 60) == []
    assert store.statistics("Other", "M", DIMS, "Sum", T0, T0 + 60, 60) == []
    listed = store.list_metrics("App", "M", {"EndpointName": "ep"})
    assert sorted(len(s.dimensions) for s in listed) == [1, 2, 3]
    assert [s.dimensions for s in store.list_metrics("App", dimensions={"InstanceId": "i-1"})] == [
        {**DIMS, "InstanceId": "i-1"}]


def test_counts_and_empty_periods(store: MetricStore) -> None:
    store.write([StatisticSet.of_counts("App", "Errors", DIMS, T0, hits=3, samples=12),
                 StatisticSet.of_counts("App", "Errors", DIMS, T0 + 60, hits=0, samples=0)])
    assert [p.value for p in store.statistics("App", "Errors", DIMS, "Sum", T0, T0 + 120, 60)] == [3, 0]
    # An empty period has a sum but no average, extremes or percentiles (it is missing for those).
    assert [p.value for p in store.statistics("App", "Errors", DIMS, "Average", T0, T0 + 120, 60)] == [0.25]
    assert [p.value for p in store.statistics("App", "Errors", DIMS, "Maximum", T0, T0 + 120, 60)] == [1.0]
    # 0/1 samples without a sketch: no percentile unless all samples are equal.
    assert store.statistics("App", "Errors", DIMS, "p50", T0, T0 + 120, 60) == []
    store.write([StatisticSet.of_counts("App", "Calls", DIMS, T0, hits=5, samples=5)])
    assert [p.value for p in store.statistics("App", "Calls", DIMS, "p99", T0, T0 + 60, 60)] == [1.0]


def test_put_validates_and_repeats_counts(store: MetricStore) -> None:
    stats = store.put("App", "Coupons", DIMS, [1.0, 2.0], timestamp=T0, counts=[3, 1], unit="Count")
    assert (stats.sample_count, stats.total) == (4, 5.0)
    with pytest.raises(ValueError, match="unit"):
        store.put("App", "Coupons", DIMS, 1.0, unit="Furlongs")
    with pytest.raises(ValueError, match="finite"):
        store.put("App", "Coupons", DIMS, [float("nan")])
    with pytest.raises(ValueError, match="statistic"):
        store.statistics("App", "Coupons", DIMS, "p101", T0, T0 + 1, 1)
    with pytest.raises(ValueError, match="statistic"):
        store.statistics("App", "Coupons", DIMS, "Median", T0, T0 + 1, 1)


def test_purge_drops_old_rows(store: MetricStore) -> None:
    store.put("App", "M", DIMS, 1.0, timestamp=T0)
    store.put("App", "M", DIMS, 2.0, timestamp=T0 + 100)
    assert store.purge(T0 + 50) == 1
    assert [p.value for p in store.statistics("App", "M", DIMS, "Sum", T0, T0 + 200, 200)] == [2.0]


def event(instance: str, status: int, model_s: float, total_s: float, variant: str = "AllTraffic") -> InvocationEvent:
    return InvocationEvent(endpoint="ep", variant=variant, instance_id=instance, status=status, arrived=T0,
                           model_seconds=model_s, total_seconds=total_s, request_body=b"", forwarded_headers=b"",
                           response_body=b"",
                           response_content_type=None)


def test_recorder_windows_become_sagemaker_series(store: MetricStore) -> None:
    rng = np.random.default_rng(11)
    recorder = InvocationRecorder()
    model = {"i-a": rng.uniform(0.001, 0.002, 400), "i-b": rng.uniform(0.003, 0.005, 600)}
    statuses = {"i-a": [200] * 390 + [404] * 10, "i-b": [200] * 590 + [500] * 10}
    for instance, latencies in model.items():
        for latency, status in zip(latencies, statuses[instance], strict=True):
            recorder.observe(event(instance, status, float(latency), float(latency) + 0.0002))
    recorder.observe(event("", 503, 0.0, 0.0001))  # no capacity: counted, no latency
    taken = recorder.take(T0 + 1)
    assert recorder.windows == {}
    sets = statistic_sets(taken, T0, {("ep", "AllTraffic"): 2}, [("ep", "AllTraffic"), ("ep", "Idle")])
    store.write(sets)

    def one(metric: str, statistic: str, dims: dict[str, str] = DIMS) -> float:
        [point] = store.statistics(INVOCATION_NAMESPACE, metric, dims, statistic, T0, T0 + 60, 60)
        return point.value

    assert one(INVOCATIONS, "Sum") == 1001
    assert one(INVOCATIONS_PER_INSTANCE, "Sum") == pytest.approx(1001 / 2)
    assert one(INVOCATION_4XX, "Sum") == 10
    assert one(INVOCATION_5XX, "Sum") == 11  # the instance's ten and the router's 503
    assert one(INVOCATION_5XX, "Average") == pytest.approx(11 / 1001)
    b_dims = {**DIMS, "InstanceId": "i-b"}
    assert one(INVOCATIONS, "Sum", b_dims) == 600
    assert one(INVOCATION_5XX, "Sum", b_dims) == 10
    assert one(MODEL_LATENCY, "Average", b_dims) == pytest.approx(model["i-b"].mean() * 1e6)
    assert one(MODEL_LATENCY, "SampleCount") == 1000
    everything = np.concatenate(list(model.values())) * 1e6
    assert_quantile_close(everything, 0.9, one(MODEL_LATENCY, "p90"))
    assert one(OVERHEAD_LATENCY, "Average") == pytest.approx(200, rel=1e-3)
    idle = {"EndpointName": "ep", "VariantName": "Idle"}
    assert one(INVOCATIONS, "Sum", idle) == 0  # in service without traffic: zero, not missing


def test_recorder_bounds_samples_and_counts_drops(store: MetricStore) -> None:
    recorder = InvocationRecorder(max_samples=50)
    for _ in range(80):
        recorder.observe(event("i-a", 200, 0.001, 0.0012))
    taken = recorder.take(T0 + 1)
    assert taken.dropped == 30 and recorder.dropped_total == 30
    store.write(statistic_sets(taken, T0, {}, []))
    [count] = store.statistics(INVOCATION_NAMESPACE, INVOCATIONS, DIMS, "Sum", T0, T0 + 60, 60)
    assert count.value == 80  # counts stay exact
    [latency] = store.statistics(INVOCATION_NAMESPACE, MODEL_LATENCY, DIMS, "SampleCount", T0, T0 + 60, 60)
    assert latency.value == 50
    [dropped] = store.statistics(SELF_NAMESPACE, DROPPED_SAMPLES, {}, "Sum", T0, T0 + 60, 60)
    assert dropped.value == 30


def test_prometheus_totals_include_the_open_window() -> None:
    recorder = InvocationRecorder()
    exposition = PrometheusExposition(lambda: recorder.windows)
    for _ in range(5):
        recorder.observe(event("i-a", 200, 0.0004, 0.0005))
    recorder.observe(event("i-a", 500, 0.02, 0.021))
    exposition.fold(recorder.take())
    for _ in range(3):
        recorder.observe(event("i-a", 200, 0.0004, 0.0005))  # still open
    exposition.set_gauges(CPU_UTILIZATION, {("ep", "AllTraffic", "i-a"): 42.0})
    exposition.add_business("Shop", "CouponsRedeemed", {"EndpointName": "ep", "Region Code": "eu"}, 7, 2)
    families = {f.name: f for f in text_string_to_metric_families(exposition.render().decode())}
    labels = {"endpoint": "ep", "variant": "AllTraffic", "instance_id": "i-a"}

    def value(family: str, sample: str, **extra: str) -> float:
        found = [s.value for s in families[family].samples if s.name == sample and s.labels == {**labels, **extra}]
        assert len(found) == 1, (family, sample, families[family].samples)
        return found[0]

    assert value("moorage_invocations", "moorage_invocations_total") == 9
    assert value("moorage_invocation_5xx_errors", "moorage_invocation_5xx_errors_total") == 1
    assert value("moorage_model_latency_seconds", "moorage_model_latency_seconds_count") == 9
    assert value("moorage_model_latency_seconds", "moorage_model_latency_seconds_bucket", le="0.0005") == 8
    assert value("moorage_model_latency_seconds", "moorage_model_latency_seconds_bucket", le="0.025") == 9
    assert value("moorage_cpu_utilization_percent", "moorage_cpu_utilization_percent") == 42.0
    coupons = families["moorage_business_coupons_redeemed"].samples
    assert {s.name: s.value for s in coupons} == {"moorage_business_coupons_redeemed_sum": 7,
                                                 "moorage_business_coupons_redeemed_count": 2}
    assert coupons[0].labels == {"namespace": "Shop", "endpoint": "ep", "region_code": "eu"}


def test_durations_and_statistics_parse() -> None:
    assert parse_duration("15m") == 900 and parse_duration("2h") == 7200 and parse_duration(90) == 90
    assert percentile_of("p99.9") == pytest.approx(0.999) and percentile_of("Sum") is None
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_runtime_builds_events_field_by_field() -> None:
    """The route builds events positionally (hot path): every field must land where its name says."""
    import time

    from invocation_support import header_block
    from moorage.serving.router import EndpointRoute, Invocation, InvocationFailed

    class Keep:
        def __init__(self) -> None:
            self.events: list[InvocationEvent] = []

        def observe(self, event: InvocationEvent) -> None:
            self.events.append(event)

    route, kept = EndpointRoute("ep", []), Keep()
    route.observers.append(kept)
    forwarded = header_block([(b"content-type", b"text/csv"), (b"accept", b"application/json"),
                              (b"x-amzn-sagemaker-inference-id", b"inf-1"),
                              (b"x-amzn-sagemaker-custom-attributes", b"a=1")])
    started = time.perf_counter()
    route.observe(b"1,2", forwarded, 123.0, started,
                  Invocation("AllTraffic", "i-1", 503, "application/json", b"out", None, 0.25))
    built = kept.events[-1]
    assert (built.endpoint, built.variant, built.instance_id, built.status) == ("ep", "AllTraffic", "i-1", 503)
    assert (built.arrived, built.model_seconds, built.request_body) == (123.0, 0.25, b"1,2")
    assert 0 <= built.total_seconds < 60
    assert (built.content_type, built.accept, built.inference_id, built.custom_attributes) == (
        "text/csv", "application/json", "inf-1", "a=1")
    assert (built.response_body, built.response_content_type) == (b"out", "application/json")
    route.observe(b"", b"", 0.0, started, InvocationFailed("no instance", 200, "v"))
    bare = kept.events[-1]
    assert (bare.content_type, bare.accept, bare.inference_id, bare.custom_attributes) == (None, None, None, None)
