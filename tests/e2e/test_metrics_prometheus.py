"""GET /metrics scraped by a real Prometheus server (Debian's ``prometheus`` package; `make test`
installs it where it can): moorage's invocation, utilisation and business series arrive in
Prometheus and answer PromQL queries."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_support import Deployer, MoorageServer, free_port, http_request, pack_model, wait_until

PROMETHEUS = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the prometheus binary is not installed (Debian: apt-get install prometheus; `make test` does it as root)")

INFERENCE_PY = """
import json


def model_fn(model_dir):
    return None


def input_fn(body, content_type):
    return json.loads(body)


def predict_fn(data, model):
    return data


def output_fn(prediction, accept):
    return json.dumps(prediction)
"""


class Prometheus:
    """A Prometheus server on loopback with its own config and data folder, stopped by close()."""

    def __init__(self, workdir: Path, target: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: moorage\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        assert PROMETHEUS is not None
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"prometheus exited: {self.log_tail()}"
            return http_request("GET", self.url + "/-/ready", timeout=2)[0] == 200

        wait_until(ready, timeout=timeout, what="prometheus /-/ready")

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, _, body = http_request("GET", f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}",
                                       timeout=5)
        assert status == 200, body
        doc = json.loads(body)
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MoorageServer]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOORAGE_METRICS_PERIOD", "1")
        srv = MoorageServer(tmp_path / "home").start(timeout=90)
    try:
        yield srv
    finally:
        srv.stop()


def test_real_prometheus_scrapes_moorage(server: MoorageServer, tmp_path: Path) -> None:
    deployer = Deployer(server)
    prometheus = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{server.port}")
    try:
        endpoint = deployer.deploy("scraped", pack_model(tmp_path / "model", None, inference_py=INFERENCE_PY).as_uri())
        runtime = server.rt()
        for i in range(25):
            runtime.invoke_endpoint(EndpointName=endpoint, Body=json.dumps({"i": i}), ContentType="application/json")
        body = json.dumps({"Namespace": "Shop", "MetricData": [{
            "MetricName": "CouponsRedeemed", "Values": [2, 3], "Unit": "Count",
            "Dimensions": [{"Name": "EndpointName", "Value": endpoint}]}]}).encode()
        status, _, answer = server.signed_request("POST", "/moorage/v1/metrics", body)
        assert status == 200, answer
        prometheus.wait_ready()
        selector = f'{{job="moorage",endpoint="{endpoint}",variant="AllTraffic"}}'

        def scraped() -> list[dict[str, Any]]:
            return prometheus.query(f"moorage_invocations_total{selector}")

        [series] = wait_until(scraped, timeout=60, what="moorage_invocations_total in Prometheus")
        assert float(series["value"][1]) == 25
        # The target's "instance" label is Prometheus's; moorage's instances are "instance_id".
        assert series["metric"]["instance"] == f"127.0.0.1:{server.port}"
        assert series["metric"]["instance_id"] == server.instances(endpoint)[0]["InstanceId"]
        [count] = prometheus.query(f"moorage_model_latency_seconds_count{selector}")
        assert float(count["value"][1]) == 25
        [p99] = prometheus.query(f"histogram_quantile(0.99, sum by (le) (moorage_model_latency_seconds_bucket"
                                 f"{selector}))")
        assert 0 < float(p99["value"][1]) < 60
        wait_until(lambda: prometheus.query(f"moorage_cpu_utilization_percent{selector}"), timeout=30,
                   what="CPU gauge in Prometheus")
        [coupons] = prometheus.query(f'moorage_business_coupons_redeemed_sum{{endpoint="{endpoint}",namespace="Shop"}}')
        assert float(coupons["value"][1]) == 5
    finally:
        prometheus.close()
        deployer.cleanup()
