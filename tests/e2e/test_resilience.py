"""Instances that die are replaced; a restarted server brings its endpoints back."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from e2e_support import (
    Deployer,
    MoorageServer,
    assert_predictions,
    err_code,
    err_status,
    file_url,
    pack_model,
    pid_alive,
    predict,
    wait_pids_gone,
    wait_until,
)

pytestmark = pytest.mark.e2e


def _in_service_pids(server: MoorageServer, name: str) -> list[int]:
    return [i["Pid"] for i in server.instances(name) if i["State"] == "InService"]


def test_killed_instance_is_replaced(
    server: MoorageServer, deployer: Deployer, artifacts: Path, classifier: Any
) -> None:
    model, X = classifier
    name = deployer.deploy("kill", file_url(pack_model(artifacts / "kill", model)), count=2)
    instances = server.instances(name)
    assert len(instances) == 2 and all(i["State"] == "InService" for i in instances), instances
    victim, survivor = instances[0]["Pid"], instances[1]["Pid"]

    rt = server.rt(read_timeout=15)
    stop = threading.Event()
    outcomes: list[str] = []  # "ok" / "5xx" / "model-error" / anything else is a failure
    bad: list[str] = []

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            rows = X[i % 200 : i % 200 + 3]
            i += 1
            try:
                assert_predictions(predict(rt, name, rows), model.predict(rows))
                outcomes.append("ok")
            except ClientError as exc:
                if err_code(exc) == "ModelError" or err_status(exc) >= 500:
                    outcomes.append("error")
                else:
                    bad.append(f"{err_status(exc)} {err_code(exc)} {exc}")
            except ReadTimeoutError as exc:
                bad.append(f"hang: {exc}")
            except Exception as exc:
                bad.append(repr(exc)[:300])

    threads = [threading.Thread(target=traffic, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        assert wait_pids_gone([victim], 5) == []

        # replaced: two InService instances again, the victim's pid not among them
        def replaced() -> list[int] | None:
            pids = _in_service_pids(server, name)
            return pids if len(pids) == 2 and victim not in pids else None

        pids = wait_until(replaced, 30, what="a replacement instance")
        assert survivor in pids, "the surviving instance was restarted too"
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert bad == [], f"unexpected failures: {bad[:5]}"
    assert outcomes.count("ok") > 10
    new_pid = next(p for p in pids if p != survivor)
    assert pid_alive(new_pid)

    # a few seconds later, everything succeeds
    for i in range(40):
        rows = X[i : i + 2]
        assert_predictions(predict(rt, name, rows), model.predict(rows))
    assert sm_status(deployer, name) == "InService"


def test_killed_single_instance_recovers(
    server: MoorageServer, deployer: Deployer, artifacts: Path, regressor: Any
) -> None:
    """With its only instance killed, an endpoint answers errors (never hangs) until replaced."""
    model, X = regressor
    name = deployer.deploy("kill1", file_url(pack_model(artifacts / "kill1", model)))
    (victim,) = _in_service_pids(server, name)
    rt = server.rt(read_timeout=15)
    os.kill(victim, signal.SIGKILL)
    assert wait_pids_gone([victim], 5) == []
    bad: list[str] = []

    def answers() -> bool:
        try:
            assert_predictions(predict(rt, name, X[:3]), model.predict(X[:3]))
            return True
        except ClientError as exc:
            if not (err_code(exc) == "ModelError" or err_status(exc) >= 500):
                bad.append(f"{err_status(exc)} {err_code(exc)}")
            return False
        except ReadTimeoutError as exc:
            bad.append(f"hang: {exc}")
            return False

    wait_until(answers, 30, interval=0.2, what="the endpoint to answer after its instance was killed")
    assert bad == [], f"unexpected errors while the instance was down: {bad[:5]}"
    pids = _in_service_pids(server, name)
    assert len(pids) == 1 and victim not in pids
    assert sm_status(deployer, name) == "InService"


def sm_status(deployer: Deployer, name: str) -> str:
    return deployer.sm.describe_endpoint(EndpointName=name)["EndpointStatus"]


def test_restarted_server_restores_endpoints(
    fresh_server: Callable[..., MoorageServer], artifacts: Path, classifier: Any, regressor: Any
) -> None:
    clf, X = classifier
    reg, _ = regressor
    srv = fresh_server()
    dep = Deployer(srv)
    ep_clf = dep.deploy("rs-clf", file_url(pack_model(artifacts / "restart-clf", clf)))
    ep_reg = dep.deploy("rs-reg", file_url(pack_model(artifacts / "restart-reg", reg)), count=2)
    rt = srv.rt()
    assert_predictions(predict(rt, ep_clf, X[:5]), clf.predict(X[:5]))
    old_pids = [i["Pid"] for ep in (ep_clf, ep_reg) for i in srv.instances(ep)]
    assert len(old_pids) == 3

    # graceful stop: SIGTERM, bounded, and it takes its instance processes with it
    t0 = time.monotonic()
    srv.stop(timeout=30)
    assert time.monotonic() - t0 < 30, "SIGTERM did not stop the server in time"
    assert srv.leftover_descendants == [], f"instance processes survived the server: {srv.leftover_descendants}"
    assert wait_pids_gone(old_pids, 5) == []

    srv.start(timeout=90)  # same home, same port
    sm, rt = srv.sm(), srv.rt()
    names = {e["EndpointName"] for e in sm.list_endpoints(MaxResults=100)["Endpoints"]}
    assert {ep_clf, ep_reg} <= names

    def serves() -> bool:
        assert_predictions(predict(rt, ep_clf, X[:5]), clf.predict(X[:5]))
        assert_predictions(predict(rt, ep_reg, X[:5]), reg.predict(X[:5]))
        return True

    wait_until(serves, 60, interval=0.5, what="endpoints to serve again after restart")
    for ep in (ep_clf, ep_reg):
        assert sm.describe_endpoint(EndpointName=ep)["EndpointStatus"] == "InService"
    assert len(srv.instances(ep_reg)) == 2
    new_pids = [i["Pid"] for ep in (ep_clf, ep_reg) for i in srv.instances(ep)]
    assert set(new_pids).isdisjoint(old_pids)
    # models and configs survived too
    for ep in (ep_clf, ep_reg):
        assert sm.describe_model(ModelName=ep)["ModelName"] == ep
        assert sm.describe_endpoint_config(EndpointConfigName=ep)["EndpointConfigName"] == ep
