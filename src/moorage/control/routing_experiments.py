"""Routing experiments: a group's canary by rule, sticky assignment, A/B tests with rewards, bandits.

(SageMaker's shadow-test API, CreateInferenceExperiment, is ``inference_experiments.py``.)

An endpoint config's tags say how its traffic is split (``experiments/routing.py``). When a fleet of
that config is built, ``prepare`` gives its route a chooser (rules ahead of a sticky or weighted
choice) and, for an experiment, an ``AssignmentLog`` among its observers: each answered request
that carries an ``InferenceId`` queues (endpoint, id, variant, time), and the ticker stores them
(``store/assignments.py``) every ``update_interval``. ``feedback`` credits rewards to those rows and
to each variant's reward statistics in its desired state, in one transaction. Rewards may instead
come from ground truth (``credit_ground_truth``: labels sent for the endpoint's InferenceIds are
compared with the answers its log kept) or from a business metric (read each tick since the last
one read, a marker kept in the variant's state so a restart neither loses nor repeats any).

The ticker then looks at every experiment whose rewards changed: each treatment's always-valid
p-value against the control (the first variant) is lowered to its running minimum, which is only
valid if every look is counted, so the looks happen here, not when someone reads the report; for
a bandit policy the statistics become weights (``experiments/bandits.py``), written to the desired
state first and then to the live route, so DescribeEndpoint's ``CurrentWeight`` shows them and a
restart resumes from them; each new weight is also a metric (``moorage/Experiments``
``VariantWeight``). A variant a new config adds starts from the prior; one it drops drops out.

The read-modify-write of a variant's state is serialised per endpoint by a lock: one server writes
an endpoint's state (several routers over one database would take the row lock the store asks for).

With several routers on one database every router stores the assignments it answered and credits the
rewards it is sent, but only the controller leader (control/leadership.py; ``leading``) looks: business
metric rewards, p-values and bandit weights are written by one router, so no look is counted twice.
Another router's live weights follow the store (control/cluster_sync.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from moorage.control.context import ENDPOINT, ENDPOINT_CONFIG, Context
from moorage.errors import ResourceNotFound, ValidationException
from moorage.experiments import sequential
from moorage.experiments.bandits import bandit_weights
from moorage.experiments.rewards import BINARY, ArmStats
from moorage.experiments.routing import GROUND_TRUTH, RoutingPolicy, RoutingTagError, parse_routing_tags
from moorage.metrics.vocabulary import INVOCATION_5XX, INVOCATION_NAMESPACE, INVOCATIONS, MODEL_LATENCY
from moorage.monitor.common.attributes import extract, label_text
from moorage.serving.choosers import VariantChooser
from moorage.serving.choosers.rules import RuleChooser
from moorage.serving.choosers.sticky import StickyChooser
from moorage.serving.choosers.weighted import WeightedChooser
from moorage.serving.invocation_events import InvocationEvent
from moorage.serving.router import EndpointRoute, VariantRoute
from moorage.store.assignments import ANSWER_BYTES, AssignmentStore
from moorage.store.metadata import Resource

log = logging.getLogger("moorage.experiments")

MAX_FEEDBACK = 1000
ALPHA = 0.05
WEIGHT_NAMESPACE, WEIGHT_METRIC = "moorage/Experiments", "VariantWeight"
PURGE_EVERY_S = 600.0
METHOD = ("mixture sequential probability ratio test (always-valid p-values and intervals, Johari et al.); "
          "see moorage.experiments.sequential")
_INFERENCE_ID = b"x-amzn-sagemaker-inference-id: "

# endpoint, inference id, variant, served at, answer and its content type (rewards from ground truth)
Assignment = tuple[str, str, str, float, str | None, str | None]
METRIC_GRACE_S = 1.0  # business-metric rewards are read up to this long ago: a put in flight lands first


class AssignmentLog:
    """An InvocationObserver of an experiment's fleet: queues who served each InferenceId (and, for
    rewards from ground truth, what it answered)."""

    __slots__ = ("keep_answers", "owner")

    def __init__(self, owner: RoutingExperiments, keep_answers: bool = False):
        self.owner = owner
        self.keep_answers = keep_answers

    def observe(self, event: InvocationEvent) -> None:
        if event.status >= 300 or _INFERENCE_ID not in event.forwarded_headers:
            return
        inference_id = event.inference_id
        if not inference_id:
            return
        owner = self.owner
        if len(owner.pending) >= owner.queue_records:
            owner.dropped += 1
            return
        answer = (event.response_body[:ANSWER_BYTES].decode("utf-8", "replace"), event.response_content_type) \
            if self.keep_answers else (None, None)
        owner.pending.append((event.endpoint, inference_id, event.variant, event.arrived, *answer))


def policy_of(ctx: Context, config_name: str, config: Mapping[str, Any]) -> RoutingPolicy:
    """The routing policy the config's tags give (tags changed since to something unusable: weights)."""
    tags = ctx.store.get_tags(ctx.arn(ENDPOINT_CONFIG, config_name))
    try:
        return parse_routing_tags(tags, [v["VariantName"] for v in config["ProductionVariants"]])
    except RoutingTagError as exc:
        log.error("endpoint config %s: %s; routing by weights", config_name, exc)
        return RoutingPolicy()


def check_routing_tags(tags: list[tuple[str, str]], config: Mapping[str, Any]) -> None:
    """ValidationException naming the tag, for a config whose routing tags cannot be used."""
    try:
        parse_routing_tags(tags, [v["VariantName"] for v in config.get("ProductionVariants") or []])
    except RoutingTagError as exc:
        raise ValidationException(str(exc)) from exc


class RoutingExperiments:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        settings = ctx.settings.experiments
        self.window = float(settings.assignment_window)
        self.interval = float(settings.update_interval)
        self.queue_records = int(settings.queue_records)
        self.assignments = AssignmentStore(ctx.store.engine)
        self.pending: deque[Assignment] = deque()
        self._flushing = asyncio.Lock()
        self.dropped = 0
        self.policies: dict[str, RoutingPolicy] = {}  # endpoint -> the policy of the fleet serving it
        self._looked: dict[str, dict[str, int]] = {}  # endpoint -> variant -> rewards at the last look
        self._locks: dict[str, threading.Lock] = {}
        self._rng = np.random.default_rng()
        self._task: asyncio.Task[None] | None = None
        self._last_purge = 0.0
        self.leading = True  # the looks (and the purge) run only on the controller leader; set by the app

    # Fleets -----------------------------------------------------------------------------------------
    def prepare(self, route: EndpointRoute, config_name: str, config: Mapping[str, Any]) -> RoutingPolicy:
        """Give a new fleet of ``config_name`` its chooser, and its assignment log for an experiment."""
        policy = policy_of(self.ctx, config_name, config)
        chooser: VariantChooser[VariantRoute] = (StickyChooser(policy.sticky, salt=config_name) if policy.sticky
                                                 else WeightedChooser())
        if policy.rules:
            chooser = RuleChooser([(r.key, r.value, r.variant) for r in policy.rules], chooser)
        route.chooser = chooser
        route.reweigh()
        if policy.tagged:
            route.observers.append(AssignmentLog(self, keep_answers=policy.reward_source == GROUND_TRUTH))
        return policy

    def serving(self, endpoint: str, policy: RoutingPolicy | None) -> None:
        """``endpoint``'s serving fleet now follows ``policy`` (None: the endpoint is gone)."""
        if policy is None or not policy.tagged:
            self.policies.pop(endpoint, None)
            self._looked.pop(endpoint, None)
            return
        self.policies[endpoint] = policy
        # The weights stored are those of the rewards stored: look again only once new rewards come.
        self._looked[endpoint] = self._reward_counts(endpoint)

    def _reward_counts(self, endpoint: str) -> dict[str, int]:
        return {d.variant: ArmStats.from_dict(d.state.get("rewards")).n
                for d in self.ctx.store.desired(endpoint) if not d.shadow}

    def forget(self, endpoint: str) -> None:
        self.serving(endpoint, None)
        self.assignments.forget_endpoint(endpoint)

    # Rewards ----------------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Store the queued assignments (so a reward sent right after its answer finds it). One flush at
        a time: a reward that comes while the periodic flush is storing the rows it took waits for them,
        where it would otherwise find the queue empty and look them up before they are stored."""
        async with self._flushing:
            if not self.pending:
                return
            rows = [self.pending.popleft() for _ in range(len(self.pending))]
            try:
                await asyncio.to_thread(self.assignments.record, rows)
            except Exception:
                log.exception("storing %d experiment assignment(s) failed; they are dropped", len(rows))
                self.dropped += len(rows)

    def _policy(self, row: Resource) -> RoutingPolicy:
        """The policy of the endpoint's serving fleet; while a restart brings it back, its config's."""
        policy = self.policies.get(row.name)
        if policy is not None:
            return policy
        config = self.ctx.store.get(ENDPOINT_CONFIG, row.body.get("EndpointConfigName", ""))
        return policy_of(self.ctx, config.name, config.body) if config is not None else RoutingPolicy()

    def _lock(self, endpoint: str) -> threading.Lock:
        return self._locks.setdefault(endpoint, threading.Lock())

    async def feedback(self, endpoint: str, document: Any) -> dict[str, Any]:
        row = self.ctx.store.get(ENDPOINT, endpoint)
        if row is None:
            raise ResourceNotFound(f'Could not find endpoint "{self.ctx.arn(ENDPOINT, endpoint)}".')
        policy = self._policy(row)
        if not policy.tagged:
            raise ValidationException(
                f"Endpoint {endpoint} is not an experiment: tag its endpoint config with moorage:routing "
                f"(weights, epsilon-greedy, ucb1 or thompson) to collect rewards.")
        rewards = _parse_feedback(document, policy.reward)
        await self.flush()
        now = time.time()

        def credit() -> Any:
            with self._lock(endpoint):
                return self.assignments.credit(endpoint, rewards, not_before=now - self.window, now=now,
                                               merge=_merge_rewards)

        result = await asyncio.to_thread(credit)
        return {"Accepted": result.accepted, "Unknown": result.unknown, "Duplicate": result.duplicate}

    async def credit_ground_truth(self, endpoint: str, labels: list[tuple[str, Any]]) -> dict[str, Any] | None:
        """Rewards from labels of an experiment rewarded by ground truth (None for any other endpoint):
        each label against the answer kept for its InferenceId."""
        row = self.ctx.store.get(ENDPOINT, endpoint)
        if row is None:
            return None
        policy = self._policy(row)
        if not policy.tagged or policy.reward_source != GROUND_TRUTH:
            return None
        await self.flush()
        now = time.time()
        answers = await asyncio.to_thread(self.assignments.answers, endpoint, [i for i, _ in labels],
                                          not_before=now - self.window)
        rewards, unscored = [], []
        for inference_id, label in labels:
            answer = answers.get(inference_id)
            reward = _ground_truth_reward(answer, label, policy) if answer is not None else None
            if reward is None:
                unscored.append(inference_id)
            else:
                rewards.append((inference_id, reward))

        def credit() -> Any:
            with self._lock(endpoint):
                return self.assignments.credit(endpoint, rewards, not_before=now - self.window, now=now,
                                               merge=_merge_rewards)

        result = await asyncio.to_thread(credit) if rewards else None
        return {"Accepted": result.accepted if result else 0, "Unknown": unscored,
                "Duplicate": result.duplicate if result else []}

    async def _collect_metric_rewards(self, endpoint: str, policy: RoutingPolicy, now: float) -> None:
        """A business metric's new values, per variant, into its reward statistics."""
        metrics, source = self.ctx.metrics, policy.reward_metric
        if metrics is None or source is None:
            return
        namespace, name = source
        row = self.ctx.store.get(ENDPOINT, endpoint)
        since = float((row.body if row else {}).get("ExperimentStartTime") or now)
        until = now - METRIC_GRACE_S

        def collect() -> None:
            with self._lock(endpoint):
                for goal in self.ctx.store.desired(endpoint):
                    if goal.shadow:
                        continue
                    start = float(goal.state.get("metric_through") or since)
                    if until <= start:
                        continue
                    dims = {"EndpointName": endpoint, "VariantName": goal.variant}
                    span = math.ceil(until - start)
                    counts = metrics.statistics(namespace, name, dims, "SampleCount", start, until, span)
                    sums = metrics.statistics(namespace, name, dims, "Sum", start, until, span)
                    n = int(sum(p.value for p in counts))
                    total = float(sum(p.value for p in sums))
                    state = dict(goal.state, metric_through=until)
                    if n:
                        # Binary rewards (each value 0 or 1): the sum of squares is the sum.
                        state["rewards"] = ArmStats.from_dict(state.get("rewards")).merge(
                            ArmStats(n, total, total)).to_dict()
                    self.ctx.store.update_desired(endpoint, goal.variant, state=state)

        await asyncio.to_thread(collect)

    # The ticker -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except Exception:
                log.exception("experiments tick failed")

    async def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        await self.flush()
        if not self.leading:
            return
        for endpoint, policy in list(self.policies.items()):
            try:
                if policy.reward_metric is not None:
                    await self._collect_metric_rewards(endpoint, policy, now)
                await self._look(endpoint, policy)
            except Exception:
                log.exception("updating the experiment of %s failed", endpoint)
        if now - self._last_purge >= PURGE_EVERY_S:
            self._last_purge = now
            purged = await asyncio.to_thread(self.assignments.purge, now - self.window)
            if purged:
                log.info("forgot %d experiment assignment(s) older than %g s", purged, self.window)

    async def _look(self, endpoint: str, policy: RoutingPolicy) -> None:
        row = self.ctx.store.get(ENDPOINT, endpoint)
        if row is None or row.status != "InService":
            return  # an update or a scaling in progress owns the weights for now
        desired = [d for d in self.ctx.store.desired(endpoint) if not d.shadow]
        counts = {d.variant: ArmStats.from_dict(d.state.get("rewards")).n for d in desired}
        if counts == self._looked.get(endpoint):
            return
        self._looked[endpoint] = counts
        arms = {d.variant: ArmStats.from_dict(d.state.get("rewards")) for d in desired}
        weights = (bandit_weights(policy.policy, arms, reward=policy.reward, epsilon=policy.epsilon,
                                  min_weight=policy.min_weight, rng=self._rng) if policy.bandit else None)
        control = desired[0].variant if desired else None

        def write() -> None:
            with self._lock(endpoint):
                for goal in self.ctx.store.desired(endpoint):
                    if goal.shadow or goal.variant not in arms:
                        continue
                    state = dict(goal.state)
                    if goal.variant != control and control is not None:
                        looked = sequential.compare(arms[control], arms[goal.variant], alpha=ALPHA,
                                                    reward=policy.reward, previous_p_value=state.get("p_value"),
                                                    treatment_name=goal.variant)
                        if not math.isnan(looked.p_value):
                            state["p_value"] = looked.p_value
                    self.ctx.store.update_desired(endpoint, goal.variant, state=state,
                                                  weight=weights[goal.variant] if weights else None)

        await asyncio.to_thread(write)
        if weights is None:
            return
        route = self.ctx.routes.fleet(endpoint)
        if route is not None:
            for name, weight in weights.items():
                if name in route.variants:
                    route.variants[name].current_weight = weight
            self.ctx.routes.reweigh(route)
        metrics = self.ctx.metrics
        if metrics is not None:
            def record() -> None:
                for name, weight in weights.items():
                    metrics.put_metric(WEIGHT_NAMESPACE, WEIGHT_METRIC, {"EndpointName": endpoint, "VariantName": name},
                                       weight, unit="None")

            await asyncio.to_thread(record)

    # The report -------------------------------------------------------------------------------------
    async def report(self, endpoint: str) -> dict[str, Any]:
        row = self.ctx.store.get(ENDPOINT, endpoint)
        if row is None:
            raise ResourceNotFound(f'Could not find endpoint "{self.ctx.arn(ENDPOINT, endpoint)}".')
        await self.flush()
        policy = self._policy(row)
        since = float(row.body.get("ExperimentStartTime") or row.created_at)
        desired = [d for d in self.ctx.store.desired(endpoint) if not d.shadow]
        snapshot = self.ctx.routes.snapshot(endpoint)
        kept = await asyncio.to_thread(self.assignments.counts, endpoint, since)
        now = time.time()
        variants = []
        arms: dict[str, ArmStats] = {}
        for goal in desired:
            arm = arms[goal.variant] = ArmStats.from_dict(goal.state.get("rewards"))
            live = snapshot.variants.get(goal.variant) if snapshot is not None else None
            interval = sequential.mean_interval(arm, alpha=ALPHA, reward=policy.reward)
            variants.append({
                "VariantName": goal.variant, "CurrentWeight": live.current_weight if live else goal.weight,
                "DesiredWeight": goal.weight, "Invocations": self._metric(endpoint, goal.variant, INVOCATIONS, "Sum",
                                                                          since, now),
                "AssignmentsKept": kept.get(goal.variant, (0, 0))[0], "Rewards": arm.n,
                "MeanReward": _number(arm.mean), "MeanRewardInterval": [_number(interval.low), _number(interval.high)],
                "Guardrails": {
                    "ModelLatencyP99Microseconds": self._metric(endpoint, goal.variant, MODEL_LATENCY, "p99", since,
                                                                now),
                    "ErrorRate": self._metric(endpoint, goal.variant, INVOCATION_5XX, "Average", since, now)}})
        comparisons = []
        if desired:
            control = desired[0]
            for goal in desired[1:]:
                result = sequential.compare(arms[control.variant], arms[goal.variant], alpha=ALPHA,
                                            reward=policy.reward, previous_p_value=goal.state.get("p_value"),
                                            treatment_name=goal.variant)
                comparisons.append({
                    "Control": control.variant, "Treatment": goal.variant, "Difference": _number(result.difference),
                    "Lift": _number(result.lift), "Interval": [_number(result.interval.low),
                                                               _number(result.interval.high)],
                    "PValue": _number(result.p_value), "Verdict": result.verdict,
                    "NeededPerVariant": result.needed_per_variant})
        return {"EndpointName": endpoint, "EndpointConfigName": row.body.get("EndpointConfigName"),
                "Since": since, "Alpha": ALPHA, "Method": METHOD,
                "Routing": {"Policy": policy.policy, "Reward": policy.reward, "RewardSource": policy.reward_source,
                            "Epsilon": policy.epsilon,
                            "MinWeight": policy.min_weight, "Sticky": policy.sticky,
                            "Rules": [f"{r.key}={r.value} -> {r.variant}" for r in policy.rules],
                            "Experiment": policy.tagged},
                "Variants": variants, "Comparisons": comparisons, "AssignmentsDropped": self.dropped}

    def _metric(self, endpoint: str, variant: str, metric: str, statistic: str, since: float,
                now: float) -> float | None:
        """One statistic of the variant's metric over the whole experiment, or None without data."""
        metrics = self.ctx.metrics
        if metrics is None:
            return None
        period = metrics.publish_period(endpoint)
        start = math.floor(since / period) * period
        span = math.ceil(now + 1 - start)
        points = metrics.statistics(INVOCATION_NAMESPACE, metric, {"EndpointName": endpoint, "VariantName": variant},
                                    statistic, start, start + span, span)
        return points[0].value if points else None


def _ground_truth_reward(answer: tuple[str, str | None], label: Any, policy: RoutingPolicy) -> float | None:
    """1 when the answer's prediction equals the label, else 0 (continuous: minus the absolute error);
    None when the prediction cannot be read from the answer."""
    text, content_type = answer
    try:
        prediction = extract({"observedContentType": content_type, "data": text}, policy.reward_attribute)
    except ValueError:
        return None
    if policy.reward == BINARY:
        try:
            return 1.0 if float(prediction) == float(label) else 0.0
        except (TypeError, ValueError):
            return 1.0 if label_text(prediction).strip() == label_text(label).strip() else 0.0
    try:
        return -abs(float(prediction) - float(label))
    except (TypeError, ValueError):
        return None


def _merge_rewards(state: dict[str, Any], rewards: list[float]) -> dict[str, Any]:
    return {**state, "rewards": ArmStats.from_dict(state.get("rewards")).merge(ArmStats.of(rewards)).to_dict()}


def _number(value: float | None) -> float | None:
    """JSON has no NaN: an undefined value is null."""
    return None if value is None or not math.isfinite(value) else float(value)


def _parse_feedback(document: Any, reward_kind: str) -> list[tuple[str, float]]:
    """The (InferenceId, Reward) pairs of a feedback document; ValidationException names the bad item."""
    items = document.get("Feedback") if isinstance(document, dict) else None
    if not isinstance(items, list) or not items:
        raise ValidationException('The body must be {"Feedback": [{"InferenceId": "...", "Reward": 1.0}, ...]}.')
    if len(items) > MAX_FEEDBACK:
        raise ValidationException(f"Feedback: at most {MAX_FEEDBACK} items a call ({len(items)} given).")
    out = []
    for index, item in enumerate(items):
        where = f"Feedback[{index}]"
        if not isinstance(item, dict):
            raise ValidationException(f"{where}: must be an object with InferenceId and Reward.")
        inference_id, reward = item.get("InferenceId"), item.get("Reward")
        if not isinstance(inference_id, str) or not inference_id or len(inference_id) > 256:
            raise ValidationException(f"{where}.InferenceId: must be a string of 1 to 256 characters.")
        if isinstance(reward, bool) or not isinstance(reward, int | float) or not math.isfinite(reward):
            raise ValidationException(f"{where}.Reward: {reward!r} is not a number.")
        if reward_kind == BINARY and reward not in (0, 1):
            raise ValidationException(f"{where}.Reward: this experiment's rewards are binary (0 or 1), "
                                      f"not {reward!r}.")
        out.append((inference_id, float(reward)))
    return out
