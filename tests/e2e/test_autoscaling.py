"""Target-tracking autoscaling end to end: the seed's boto3 policy scales out under load, never beyond
its maximum, and back in after it, with zero failed requests across the scale-in."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e_support import Deployer, MoorageServer, csv_body, file_url, invoke, pack_model, wait_until

pytestmark = pytest.mark.e2e

DIM = "sagemaker:variant:DesiredInstanceCount"
# One-second metrics and a short scale-in window keep the test under a minute or two; the rules are
# the production ones otherwise.
ENV = {"MOORAGE_METRICS_PERIOD": "1", "MOORAGE_AUTOSCALE_SCALE_IN_DATAPOINTS": "4"}


class Load:
    """Client threads invoking the endpoint; counts successes and failures; rate settable live."""

    def __init__(self, rt: Any, endpoint: str, body: bytes, threads: int) -> None:
        self.rt, self.endpoint, self.body = rt, endpoint, body
        self.interval = 0.0  # seconds between requests per thread; 0 = as fast as possible
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                invoke(self.rt, self.endpoint, self.body)
                with self._lock:
                    self.ok += 1
            except Exception as exc:
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
            if self.interval:
                self._stop.wait(self.interval)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


def _counts(sm: Any, endpoint: str) -> tuple[int, int, str]:
    desc = sm.describe_endpoint(EndpointName=endpoint)
    variant = desc["ProductionVariants"][0]
    return variant["CurrentInstanceCount"], variant["DesiredInstanceCount"], desc["EndpointStatus"]


def _watch_max(sm: Any, srv: MoorageServer, endpoint: str, seen: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            current, desired, _ = _counts(sm, endpoint)
            seen.extend([current, desired, len(srv.instances(endpoint))])
        except Exception:
            pass
        stop.wait(0.3)


def _activities(aas: Any, rid: str, include_not_scaled: bool = False) -> list[dict[str, Any]]:
    return aas.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                                           IncludeNotScaledActivities=include_not_scaled)["ScalingActivities"]


def test_seed_policy_scales_out_under_load_and_back_in_without_failures(
        fresh_server: Callable[..., MoorageServer], tmp_path: Path, classifier: tuple[Any, Any]) -> None:
    srv = fresh_server(env=ENV)
    sm, rt, aas = srv.sm(), srv.rt(), srv.client("application-autoscaling")
    deployer = Deployer(srv, sm)
    endpoint = deployer.deploy("scale", file_url(pack_model(tmp_path / "clf", classifier[0])))
    rid = f"endpoint/{endpoint}/variant/AllTraffic"

    # The seed's code: register the variant (min 1, max 3), then a target-tracking policy on
    # invocations per instance, with cooldowns shortened for the test.
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                                 MinCapacity=1, MaxCapacity=3)
    aas.put_scaling_policy(
        PolicyName="invocations-target", ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 600.0,  # 10 invocations per second per instance
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleOutCooldown": 5, "ScaleInCooldown": 5})

    seen: list[int] = []
    stop_watch = threading.Event()
    watcher = threading.Thread(target=_watch_max, args=(sm, srv, endpoint, seen, stop_watch), daemon=True)
    watcher.start()
    body = csv_body(classifier[1][:2])
    try:
        with Load(rt, endpoint, body, threads=4) as load:
            # Far above 10/s per instance: scale out, to the maximum and no further.
            wait_until(lambda: _counts(sm, endpoint)[:2] == (3, 3), timeout=90, what="scale-out to 3 instances")
            assert len(srv.instances(endpoint)) == 3
            time.sleep(3)  # keep pushing at the maximum: the target must hold at 3
            assert _counts(sm, endpoint)[1] == 3
            # Light load (about 2 requests per second in all): well under 90% of the target, so the
            # variant scales back in while requests keep flowing.
            load.interval = 2.0
            ok_before = load.ok
            wait_until(lambda: _counts(sm, endpoint) == (1, 1, "InService"), timeout=90,
                       what="scale-in to 1 instance")
            wait_until(lambda: len(srv.instances(endpoint)) == 1, timeout=30, what="drained instances stopped")
            time.sleep(1)
            assert load.ok > ok_before, "traffic kept flowing across the scale-in"
        assert load.failures == [], load.failures[:5]
    finally:
        stop_watch.set()
        watcher.join(timeout=10)
    assert seen and max(seen) <= 3, f"went beyond MaxCapacity: {max(seen)}"

    activities = _activities(aas, rid)
    outs = [a for a in activities if "to 3" in a["Description"] or "to 2" in a["Description"]]
    ins = [a for a in activities if a["Description"].endswith("count to 1.")]
    assert outs and ins, activities
    for activity in outs + ins:
        assert activity["StatusCode"] == "Successful", activity
        assert "SageMakerVariantInvocationsPerInstance" in activity["Cause"], activity["Cause"]
        assert "target 600" in activity["Cause"]
        assert activity["EndTime"] >= activity["StartTime"]
    assert any("ceil(" in a["Cause"] for a in outs)
    assert all("below" in a["Cause"] for a in ins)
    deployer.cleanup()


def test_minimum_above_current_capacity_scales_out_at_once(
        fresh_server: Callable[..., MoorageServer], tmp_path: Path, classifier: tuple[Any, Any]) -> None:
    srv = fresh_server(env=ENV)
    sm, aas = srv.sm(), srv.client("application-autoscaling")
    deployer = Deployer(srv, sm)
    endpoint = deployer.deploy("minimum", file_url(pack_model(tmp_path / "clf", classifier[0])))
    rid = f"endpoint/{endpoint}/variant/AllTraffic"
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                                 MinCapacity=2, MaxCapacity=4)
    wait_until(lambda: _counts(sm, endpoint) == (2, 2, "InService"), timeout=60, what="scale-out to the minimum")
    activity = _activities(aas, rid)[0]
    assert "below the minimum 2" in activity["Cause"]
    wait_until(lambda: _activities(aas, rid)[0]["StatusCode"] == "Successful", timeout=30, what="activity closed")

    # The autoscaled count is the endpoint's desired state in the store: a restart brings it back as
    # it was (not the config's 1), before the autoscaler has looked at anything.
    srv.stop(timeout=30)
    srv.start(timeout=90)
    sm = srv.sm()
    variant = sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"][0]
    assert variant["DesiredInstanceCount"] == 2
    wait_until(lambda: _counts(sm, endpoint) == (2, 2, "InService"), timeout=60, what="both instances back")
    deployer.sm = sm
    deployer.cleanup()
