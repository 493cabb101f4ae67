"""Shadow variants through boto3: copies go out only after production answered, a blocked or failing
shadow never holds up or fails production, a shadow that falls behind drops copies and counts them,
and the comparison with production is kept per shadow.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e_support import Deployer, MoorageServer, new_name, pack_model, variant, wait_until

pytestmark = pytest.mark.e2e

PRODUCTION = '''
import json


def model_fn(model_dir, context=None):
    return None


def transform_fn(model, body, content_type, accept):
    return json.dumps({"answer": "production"}), "application/json"
'''
# Waits (bounded) for the test to open its gate; agrees with production on "same", fails on "boom".
SHADOW = '''
import json, os, time


def model_fn(model_dir, context=None):
    return os.environ["GATE"]


def transform_fn(gate, body, content_type, accept):
    deadline = time.time() + 120
    while not os.path.exists(gate) and time.time() < deadline:
        time.sleep(0.02)
    text = body.decode() if isinstance(body, bytes) else body
    if "boom" in text:
        raise RuntimeError("the shadow fails on boom")
    return json.dumps({"answer": "production" if "same" in text else "shadow"}), "application/json"
'''
QUEUE, CONCURRENCY = 5, 2


def _stats(srv: MoorageServer, endpoint: str) -> dict[str, Any]:
    (shadow,) = srv.native_endpoint(endpoint)["ShadowVariants"]
    return shadow["Shadow"]


def test_a_blocked_then_failing_shadow_never_holds_up_or_fails_production(
        fresh_server: Callable[..., MoorageServer], tmp_path: Path) -> None:
    srv = fresh_server(env={"MOORAGE_SHADOW_QUEUE_RECORDS": str(QUEUE),
                            "MOORAGE_SHADOW_CONCURRENCY": str(CONCURRENCY), "MOORAGE_METRICS_PERIOD": "1"})
    dep = Deployer(srv)
    sm, rt = srv.sm(), srv.rt()
    gate = tmp_path / "open"
    production = dep.model(new_name("prod"), pack_model(tmp_path / "prod", None, inference_py=PRODUCTION).as_uri())
    shadow = dep.model(new_name("shadow"), pack_model(tmp_path / "shadow", None, inference_py=SHADOW).as_uri(),
                       env={"GATE": str(gate)})
    sm.create_endpoint_config(EndpointConfigName=(config := new_name("shadowed")),
                              ProductionVariants=[variant("AllTraffic", production)],
                              ShadowProductionVariants=[variant("Shadow", shadow)])
    dep.configs.append(config)
    endpoint = dep.endpoint(new_name("shadowed"), config)
    desc = dep.wait_in_service(endpoint)
    assert [v["VariantName"] for v in desc["ShadowProductionVariants"]] == ["Shadow"]
    assert desc["ShadowProductionVariants"][0]["CurrentInstanceCount"] == 1
    assert [v["VariantName"] for v in desc["ProductionVariants"]] == ["AllTraffic"]

    # Every shadow copy is blocked: production still answers each request, with production's answer.
    calls = 20
    for _ in range(calls):
        reply = rt.invoke_endpoint(EndpointName=endpoint, Body=b"same,1", ContentType="text/csv")
        assert json.loads(reply["Body"].read()) == {"answer": "production"}
        assert reply["InvokedProductionVariant"] == "AllTraffic"
    stats = _stats(srv, endpoint)
    assert stats["Sampled"] == calls  # weight 1 beside production's 1: every request is copied
    assert stats["Sent"] <= CONCURRENCY and stats["Backlog"] <= QUEUE
    assert stats["Sent"] + stats["Backlog"] + stats["Dropped"] == calls
    assert stats["Dropped"] >= calls - CONCURRENCY - QUEUE  # behind: dropped and counted, not queued
    assert stats["Compared"] == 0  # nothing came back from the shadow yet

    gate.touch()
    kept = calls - stats["Dropped"]
    wait_until(lambda: _stats(srv, endpoint)["Compared"] == kept, 60, what="the shadow to catch up")
    stats = _stats(srv, endpoint)
    assert stats["AgreementExact"] == 1.0 and stats["Errors"] == 0 and stats["Backlog"] == 0
    assert stats["ShadowModelLatencyMs"]["p50"] >= 0

    # A shadow that fails never fails production.
    for _ in range(4):
        reply = rt.invoke_endpoint(EndpointName=endpoint, Body=b"boom", ContentType="text/csv")
        assert json.loads(reply["Body"].read()) == {"answer": "production"}
    wait_until(lambda: _stats(srv, endpoint)["Errors"] == 4, 60, what="the shadow's failures to be counted")
    assert _stats(srv, endpoint)["Compared"] == kept

    # Disagreement is measured too.
    for _ in range(2):
        rt.invoke_endpoint(EndpointName=endpoint, Body=b"different", ContentType="text/csv")
    wait_until(lambda: _stats(srv, endpoint)["Compared"] == kept + 2, 60, what="two more comparisons")
    assert _stats(srv, endpoint)["AgreementExact"] == round(kept / (kept + 2), 4)

    # The shadow's invocations are metrics under its own variant name, as SageMaker's are.
    cloudwatch = srv.client("cloudwatch")

    def shadow_invocations() -> float:
        points = cloudwatch.get_metric_statistics(
            Namespace="AWS/SageMaker", MetricName="Invocations", Statistics=["Sum"], Period=60,
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": "Shadow"}],
            StartTime=desc["CreationTime"] - dt.timedelta(minutes=5), EndTime=dt.datetime.now(dt.UTC)
            + dt.timedelta(minutes=5))
        return sum(p["Sum"] for p in points["Datapoints"])

    wait_until(lambda: shadow_invocations() == kept + 6, 60, what="the shadow's Invocations metric")

    # The command line's report.
    env = {k: v for k, v in os.environ.items() if k not in ("MOORAGE_HOME", "AWS_PROFILE")}
    shown = subprocess.run([sys.executable, "-m", "moorage", "shadow", "report", endpoint, "--home", str(srv.home)],
                           capture_output=True, timeout=120, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "Shadow" in shown.stdout.decode() and f"{kept / (kept + 2):.1%}" in shown.stdout.decode()
    dep.cleanup()
