"""A blue/green endpoint update as it runs: provision green, move traffic step by step, bake, finish or roll back.

The endpoint's status shows where the update is, as DescribeEndpoint shows it on SageMaker:
``Updating`` throughout (``EndpointConfigName`` still the old config) with a
``PendingDeploymentSummary`` whose variants carry ``VariantStatus`` (``Creating``, then
``ActivatingTraffic`` and ``Baking`` for each step); ``RollingBack`` while traffic returns to blue
after an alarm or a timeout; ``InService`` at the end, on the new config with ``LastDeploymentConfig``
after success, on the old one with a ``FailureReason`` after a rollback (the next successful update
clears it). Every phase is also kept as the update's history (``UpdateHistory``), for
``moorage rollout status``.

A rolling update (``roll``) is the same pair of fleets grown and shrunk in batches: green gains a
batch of instances, traffic follows capacity, blue loses as many, and the batch bakes; a rollback
first brings blue back to its size, then moves the traffic back.

Traffic moves through a ``TrafficShift`` in the route table (``serving/traffic_shift.py``): blue and
green both serve during the update, and the last step hands the endpoint to green alone. A restart
in the middle leaves the endpoint on its old config (the row still names it), as a rollback would.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from moorage.control.deployment_config import DeploymentPlan, Step
from moorage.serving.router import EndpointRoute
from moorage.serving.snapshot import EndpointSnapshot
from moorage.serving.traffic_shift import TrafficShift

log = logging.getLogger("moorage.blue_green")

ALARM_POLL_S = 0.5
ALARM = "ALARM"
KEEP_HISTORY = 200


class RolledBack(Exception):
    """The update ended with traffic back on blue; the message is the endpoint's FailureReason."""


@dataclass
class UpdateContext:
    """What the update needs from the endpoint's owner (control/endpoints.py)."""

    name: str
    config_name: str
    plan: DeploymentPlan
    save: Callable[..., None]  # save(status, **body changes) on the endpoint's row
    alarm_state: Callable[[str], str | None]
    publish: Callable[[EndpointRoute | TrafficShift], EndpointRoute | TrafficShift | None]
    retire: Callable[[EndpointRoute | TrafficShift], Awaitable[None]]
    pending_variants: Callable[[EndpointSnapshot, str, str], list[dict[str, Any]]]
    snapshot: Callable[[EndpointRoute], EndpointSnapshot]
    # served_by(fleet, "blue" | "green" | None): data capture notes which fleet served while both do.
    served_by: Callable[[EndpointRoute, str | None], None] = lambda fleet, which: None


class BlueGreenUpdate:
    def __init__(self, ctx: UpdateContext, blue: EndpointRoute):
        self.ctx = ctx
        self.blue = blue
        self.started = time.time()
        self.deadline = time.monotonic() + ctx.plan.max_execution_seconds
        self.history: list[dict[str, Any]] = []
        self.shift: TrafficShift | None = None
        self.blue_counts: dict[str, int] | None = None  # a rolling update's blue sizes, to restore on rollback

    # What DescribeEndpoint and the history show -------------------------------------------------------
    def record(self, phase: str, message: str, green: EndpointRoute | None = None, status: str | None = None,
               variant_status: str | None = None, **changes: Any) -> None:
        now = time.time()
        share = self.shift.green_share if self.shift is not None else 0.0
        self.history.append({"Time": now, "Phase": phase, "GreenShare": round(share, 4), "Message": message})
        del self.history[:-KEEP_HISTORY]
        log.info("update of endpoint %s: %s (green %.0f%%): %s", self.ctx.name, phase, share * 100, message)
        summary = None
        if green is not None and variant_status is not None:
            summary = {"EndpointConfigName": self.ctx.config_name, "StartTime": self.started,
                       "ProductionVariants": self.ctx.pending_variants(self.ctx.snapshot(green), variant_status,
                                                                       message)}
        update = {"EndpointConfigName": self.ctx.config_name, "StartTime": self.started, "Phase": phase,
                  "GreenShare": share, "Alarms": list(self.ctx.plan.alarms), "History": list(self.history)}
        if summary is not None:
            changes["PendingDeploymentSummary"] = summary
        self.ctx.save(status, UpdateHistory=update, **changes)

    # Running ----------------------------------------------------------------------------------------
    async def shift_traffic(self, green: EndpointRoute) -> None:
        """Move traffic to ``green`` step by step; raises RolledBack (traffic on blue, green retired)."""
        self._both_serve(green)
        capacity = max(1, sum(v.pool.desired for v in green.variants.values()))
        for step in self.ctx.plan.steps(capacity):
            self.record("ActivatingTraffic", f"Shifting {step.share:.0%} of the traffic to the new fleet.", green,
                        variant_status="ActivatingTraffic")
            self.shift.green_share = step.share
            await self._bake(green, step)

    def _both_serve(self, green: EndpointRoute) -> None:
        self.ctx.served_by(self.blue, "blue")
        self.ctx.served_by(green, "green")
        self.shift = TrafficShift(self.blue, green, 0.0)
        self.ctx.publish(self.shift)

    async def _bake(self, green: EndpointRoute, step: Step) -> None:
        what = "final baking period" if step.final else "baking period"
        self.record("Baking", f"Baking for {step.bake_seconds:g} seconds ({what}) with {step.share:.0%} of the "
                    f"traffic on the new fleet.", green, variant_status="Baking")
        until = time.monotonic() + step.bake_seconds
        while True:
            tripped = self._tripped()
            if tripped:
                await self.roll_back(green, f"alarm {tripped} went into ALARM during the {what} "
                                            f"(new fleet at {step.share:.0%} of the traffic)")
            if time.monotonic() > self.deadline:
                await self.roll_back(green, f"MaximumExecutionTimeoutInSeconds "
                                            f"({self.ctx.plan.max_execution_seconds:g} s) passed")
            left = until - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(ALARM_POLL_S, left))

    def _tripped(self) -> str | None:
        for alarm in self.ctx.plan.alarms:
            if self.ctx.alarm_state(alarm) == ALARM:
                return alarm
        return None

    async def roll(self, green: EndpointRoute, goals: dict[str, int]) -> None:
        """A rolling update: green (started empty) grows to ``goals`` a batch at a time while blue shrinks."""
        plan = self.ctx.plan
        assert plan.rolling_batch is not None
        self._both_serve(green)
        self.blue_counts = {v.name: v.pool.desired for v in self.blue.variants.values()}
        total = sum(goals.values())
        batch = plan.rolling_batch.instances(total)
        while (active := _size(green)) < total:
            count = min(batch, total - active)
            self.record("Creating", f"Provisioning {count} instance(s) of the new fleet ({active} of {total} "
                        f"in service).", green, variant_status="Creating")
            try:
                await _resize(green, _grown(_counts(green), goals, count))
            except Exception as exc:  # an instance that cannot start ends the update
                await self.roll_back(green, f"new instances could not start: {exc}")
            # Traffic moves first, to what the fleets will be once the old batch is gone, so no request
            # is sent to an instance that is about to drain.
            remaining_blue = _shrunk(_counts(self.blue), count)
            self.shift.green_share = _size(green) / (_size(green) + sum(remaining_blue.values()))
            self.record("ActivatingTraffic", f"Traffic on {_size(green)} new instance(s); stopping {count} old "
                        f"one(s).", green, variant_status="ActivatingTraffic")
            await _resize(self.blue, remaining_blue)
            await self._bake(green, Step(self.shift.green_share, plan.wait_seconds, final=_size(green) >= total))

    async def roll_back(self, green: EndpointRoute, why: str) -> None:
        """All traffic back to blue, green drained and stopped; then RolledBack(why)."""
        self.record("RollingBack", f"Rolling back: {why}.", green, status="RollingBack",
                    variant_status="ActivatingTraffic")
        if self.blue_counts is not None:
            # A rolling update stopped part of blue: bring it back (in batches) before traffic returns.
            plan = self.ctx.plan
            total = sum(self.blue_counts.values())
            batch = plan.rollback_batch.instances(total) if plan.rollback_batch is not None else total
            while (missing := total - _size(self.blue)) > 0:
                await _resize(self.blue, _grown(_counts(self.blue), self.blue_counts, min(batch, missing)))
                if self.shift is not None:  # traffic follows the capacity that is back
                    self.shift.green_share = min(self.shift.green_share,
                                                 _size(green) / (_size(green) + _size(self.blue)))
        if self.shift is not None:
            self.shift.green_share = 0.0
        self.ctx.publish(self.blue)
        self.ctx.served_by(self.blue, None)
        await self.ctx.retire(green)
        raise RolledBack(f"Update rolled back: {why}.")

    def finish(self, green: EndpointRoute) -> None:
        """Green alone serves the endpoint (the caller then retires blue, once the status says so)."""
        self.ctx.publish(green)
        self.ctx.served_by(green, None)


# Sizing a fleet in a rolling update -----------------------------------------------------------------
def _counts(fleet: EndpointRoute) -> dict[str, int]:
    return {v.name: v.pool.desired for v in fleet.variants.values()}


def _size(fleet: EndpointRoute) -> int:
    return sum(_counts(fleet).values())


def _grown(counts: dict[str, int], goals: dict[str, int], count: int) -> dict[str, int]:
    """``count`` more instances, each to the variant furthest below its goal."""
    out = dict(counts)
    for _ in range(count):
        name = max(goals, key=lambda n: goals[n] - out.get(n, 0))
        if goals[name] - out.get(name, 0) <= 0:
            break
        out[name] = out.get(name, 0) + 1
    return out


def _shrunk(counts: dict[str, int], count: int) -> dict[str, int]:
    """``count`` fewer instances, each from the variant that has the most."""
    out = dict(counts)
    for _ in range(count):
        name = max(out, key=lambda n: out[n])
        if out[name] == 0:
            break
        out[name] -= 1
    return out


async def _resize(fleet: EndpointRoute, counts: dict[str, int]) -> None:
    await asyncio.gather(*(fleet.variants[name].pool.scale_to(count) for name, count in counts.items()
                           if fleet.variants[name].pool.desired != count))
