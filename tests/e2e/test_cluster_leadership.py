"""Exactly one router runs the controllers, and another takes over when it dies (control/leadership.py).

Two real `moorage serve` processes, each with its own home and port, share a real PostgreSQL database
(tests/postgres_support.py). The first to start leads (its log says "this router leads the
controllers"); the other does not. A monitoring schedule fires every few seconds under the leader,
and an asynchronous request sent to the other router is answered (the leader works the queues).
Then the leader is frozen (SIGSTOP: its session and advisory lock stay, as a hung process's would)
across a fire time, so that time passes with no scheduler running, a second asynchronous request is
accepted meanwhile, and the leader is killed (SIGKILL). The other router must lead within the stated
bound, answer the waiting request, run the fire time that passed (once), and go on firing: the
schedule's executions have every scheduled time exactly once, none skipped, none twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from e2e_support import (
    ROLE_ARN,
    Deployer,
    MoorageServer,
    file_url,
    new_name,
    pack_model,
    train_classifier,
    variant,
    wait_until,
)
from moorage.control.leadership import takeover_bound
from postgres_support import PostgresServer, postgres_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.e2e

LEADS = "this router leads the controllers"
CHECK_SECONDS = 1.0  # MOORAGE_LEADER_CHECK_SECONDS
# The schedule's rate, seconds: well over a takeover after a process's death (about 1 s), so that the one
# fire time that passes while nobody leads is still the latest when the next leader looks.
PERIOD = 6


def send_async(srv: MoorageServer, endpoint: str, inputs: Path, name: str) -> Path:
    """An asynchronous request through ``srv``; returns where its answer will be written."""
    source = inputs / f"{name}.csv"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("0.1,0.2,0.3,0.4\n")
    accepted = srv.rt().invoke_endpoint_async(EndpointName=endpoint, InputLocation=source.as_uri(),
                                              ContentType="text/csv")
    return Path(accepted["OutputLocation"].removeprefix("file://"))


def leads(srv: MoorageServer) -> bool:
    return LEADS in srv.log_path.read_text(errors="replace")


def schedule_config(endpoint: str, output: Path) -> dict[str, Any]:
    return {"ScheduleConfig": {"ScheduleExpression": f"rate({PERIOD} seconds)"},
            "MonitoringJobDefinition": {
                "MonitoringInputs": [{"EndpointInput": {"EndpointName": endpoint,
                                                        "LocalPath": "/opt/ml/processing/input"}}],
                "MonitoringOutputConfig": {"MonitoringOutputs": [{"S3Output": {
                    "S3Uri": output.as_uri(), "LocalPath": "/opt/ml/processing/output"}}]},
                "MonitoringResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large",
                                                          "VolumeSizeInGB": 1}},
                "MonitoringAppSpecification": {"ImageUri": "moorage/model-monitor"},
                "RoleArn": ROLE_ARN}}


def scheduled_times(sm: Any, schedule: str) -> list[tuple[float, float]]:
    """(ScheduledTime, CreationTime) of each execution of ``schedule``, in ScheduledTime order."""
    out: list[tuple[float, float]] = []
    kwargs: dict[str, Any] = {"MonitoringScheduleName": schedule, "MaxResults": 100}
    while True:
        page = sm.list_monitoring_executions(**kwargs)
        out += [(e["ScheduledTime"].timestamp(), e["CreationTime"].timestamp())
                for e in page["MonitoringExecutionSummaries"]]
        if not page.get("NextToken"):
            return sorted(out)
        kwargs["NextToken"] = page["NextToken"]


def test_one_router_leads_and_another_takes_over_without_repeating_or_skipping_a_fire(
        postgres_server: PostgresServer, tmp_path: Path) -> None:  # noqa: F811 - the fixture imported above
    url = postgres_server.new_database()
    env = {"MOORAGE_DATABASE_URL": url, "MOORAGE_LEADER_CHECK_SECONDS": str(CHECK_SECONDS),
           "MOORAGE_MONITOR_TICK_SECONDS": "0.2", "MOORAGE_CLUSTER_SYNC_SECONDS": "1"}
    a = MoorageServer(tmp_path / "a", env=env)
    b = MoorageServer(tmp_path / "b", env=env)
    try:
        a.start(timeout=90)
        b.start(timeout=90)
        wait_until(lambda: leads(a), 10, what="the first router leads")
        time.sleep(3 * CHECK_SECONDS)  # b has tried several times by now
        assert not leads(b), b.log_tail()

        # A schedule needs an endpoint; made through the router that does not lead (any router takes API calls).
        sm = b.sm()
        dep = Deployer(b, sm)
        name = new_name("lead")
        dep.model(name, file_url(pack_model(tmp_path / "clf", train_classifier()[0])))
        sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant("AllTraffic", name)],
                                  AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": (tmp_path / "out").as_uri()}})
        dep.configs.append(name)
        dep.endpoint(name, name)
        dep.wait_in_service(name)
        # Accepted by b, which does not lead; answered by a, which works the queues.
        first = send_async(b, name, tmp_path / "in", "first")
        wait_until(first.exists, 60, what="the leader answers a request the other router accepted")

        schedule = new_name("lead-sched")
        sm.create_monitoring_schedule(MonitoringScheduleName=schedule,
                                      MonitoringScheduleConfig=schedule_config(name, tmp_path / "monitoring"))

        # Fires under a; freeze a right after one, so that the next fire time passes with no scheduler.
        before = wait_until(lambda: (t := scheduled_times(sm, schedule)) and len(t) >= 2 and t, 4 * PERIOD + 20,
                            what="two fires under the first leader")
        last = before[-1][0]
        wait_until(lambda: scheduled_times(sm, schedule)[-1][0] > last, 2 * PERIOD + 10, what="another fire")
        a._snapshot_descendants()  # its instances are reaped at the end, though a dies first
        os.kill(a.pid or 0, signal.SIGSTOP)
        frozen_at = time.time()
        fired_last = scheduled_times(sm, schedule)[-1][0]
        missed = fired_last + PERIOD  # passes while a is frozen: nobody runs the scheduler
        wait_until(lambda: time.time() > missed + 0.5, 2 * PERIOD, what="a fire time passes")
        assert scheduled_times(sm, schedule)[-1][0] == fired_last  # a frozen leader fires nothing
        assert not leads(b)  # its lock holds while its session lives
        waiting = send_async(b, name, tmp_path / "in", "waiting")  # accepted; nobody works the queues now

        assert not waiting.exists()  # a is frozen and b does not lead: nobody answers it yet
        os.kill(a.pid or 0, signal.SIGKILL)
        killed_at = time.time()
        wait_until(lambda: leads(b), takeover_bound(CHECK_SECONDS), interval=0.05, what="the other router leads")
        took = time.time() - killed_at
        print(f"takeover after the leader's SIGKILL: {took:.2f} s (bound {takeover_bound(CHECK_SECONDS):.0f} s "
              f"for a lost machine; about {CHECK_SECONDS:g} s + a connect for a dead process)")
        assert took < takeover_bound(CHECK_SECONDS)
        wait_until(waiting.exists, 60, what="the new leader answers the request accepted while nobody led")

        # b catches up the fire time that passed while nobody led, then fires on schedule.
        wait_until(lambda: scheduled_times(sm, schedule)[-1][0] >= missed + 2 * PERIOD, 4 * PERIOD + 20,
                   what="two more fires under the new leader")
        times = scheduled_times(sm, schedule)
        scheduled = [t for t, _ in times]
        assert len(scheduled) == len(set(scheduled)), f"a fire time ran twice: {scheduled}"
        steps = {round(later - earlier, 3) for earlier, later in itertools.pairwise(scheduled)}
        assert steps == {PERIOD}, f"a fire time was skipped: {[dt.datetime.fromtimestamp(t) for t in scheduled]}"
        caught_up = dict(times)[missed]
        assert caught_up > frozen_at, "the fire time that passed while nobody led ran after the switch"
        assert not a.alive()
        dep.cleanup()
        sm.delete_monitoring_schedule(MonitoringScheduleName=schedule)
    finally:
        if a.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(a.pid, signal.SIGCONT)  # a frozen server could not stop
        b.stop()
        a.stop()
