"""The routing-experiment contract: endpoint-config tags that say how an endpoint splits its traffic.

boto3 users reach experiments through ``CreateEndpointConfig``'s ``Tags``, which botocore passes as
they are; these keys are the contract (values are strings):

- ``moorage:routing``: ``weights`` (SageMaker's random split by ``CurrentWeight``), ``epsilon-greedy``,
  ``ucb1`` or ``thompson`` (the weights then follow the rewards: ``bandits.py``);
  ``moorage:routing:epsilon`` (default 0.1), ``moorage:routing:reward`` (``binary`` or ``continuous``,
  default ``binary``), ``moorage:routing:min-weight`` (the exploration floor per variant, 0.01);
  ``moorage:routing:reward-source``: where rewards come from: ``feedback`` (the feedback API, the
  default), ``ground-truth`` (labels sent for the endpoint's InferenceIds: reward 1 when the
  prediction, read with ``moorage:routing:reward-attribute`` as a monitor's InferenceAttribute,
  equals the label, else 0; for continuous rewards minus the absolute error), or
  ``metric:Namespace/MetricName`` (a business metric put with the EndpointName and VariantName
  dimensions; binary rewards, each value 0 or 1);
- ``moorage:sticky``: a key of the request's ``CustomAttributes`` (``user``): requests that carry it
  get the variant its value hashes to, stable for the life of the config, in proportion to the weights;
- ``moorage:rule:N`` (N = 1, 2, ...): ``key=value -> VariantName``; the first rule (by N) whose pair is
  in the request's ``CustomAttributes`` sends it to that variant (a canary for a chosen group).

Any of them makes the endpoint an experiment: the variant that served each ``InferenceId`` is kept
so rewards can be credited to it. ``parse_routing_tags`` checks everything at CreateEndpointConfig
and names the tag that is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from moorage.experiments.bandits import BANDIT_POLICIES, POLICIES
from moorage.experiments.rewards import BINARY, REWARD_KINDS

ROUTING = "moorage:routing"
EPSILON = "moorage:routing:epsilon"
REWARD = "moorage:routing:reward"
MIN_WEIGHT = "moorage:routing:min-weight"
REWARD_SOURCE = "moorage:routing:reward-source"
REWARD_ATTRIBUTE = "moorage:routing:reward-attribute"
FEEDBACK, GROUND_TRUTH, METRIC = "feedback", "ground-truth", "metric:"
STICKY = "moorage:sticky"
RULE = "moorage:rule:"
_ROUTING_KEYS = (ROUTING, EPSILON, REWARD, MIN_WEIGHT, REWARD_SOURCE, REWARD_ATTRIBUTE)


class RoutingTagError(ValueError):
    """A routing tag that cannot be used; ``tag`` is its key."""

    def __init__(self, tag: str, message: str):
        super().__init__(f"Tag {tag}: {message}")
        self.tag = tag


@dataclass(frozen=True)
class Rule:
    """Requests whose CustomAttributes hold ``key=value`` go to ``variant``."""

    key: str
    value: str
    variant: str


@dataclass(frozen=True)
class RoutingPolicy:
    policy: str = "weights"
    epsilon: float = 0.1
    reward: str = BINARY
    min_weight: float = 0.01
    sticky: str | None = None
    rules: tuple[Rule, ...] = ()
    tagged: bool = False  # some routing tag was given: the endpoint is an experiment
    reward_source: str = FEEDBACK  # feedback, ground-truth, or metric:Namespace/MetricName
    reward_attribute: str | None = None  # ground truth: where the prediction is in the answer

    @property
    def reward_metric(self) -> tuple[str, str] | None:
        """(namespace, metric name) of a metric:Namespace/MetricName reward source."""
        if not self.reward_source.startswith(METRIC):
            return None
        namespace, _, name = self.reward_source[len(METRIC):].rpartition("/")
        return namespace, name

    @property
    def bandit(self) -> bool:
        return self.policy in BANDIT_POLICIES


def _number(tag: str, text: str, low: float, high: float, *, high_open: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise RoutingTagError(tag, f"{text!r} is not a number.") from None
    if not (low <= value < high if high_open else low <= value <= high):
        raise RoutingTagError(tag, f"{text} is outside [{low:g}, {high:g}{')' if high_open else ']'}.")
    return value


def parse_rule(tag: str, text: str, variants: Sequence[str]) -> Rule:
    condition, arrow, variant = text.partition("->")
    key, equals, value = condition.partition("=")
    key, value, variant = key.strip(), value.strip(), variant.strip()
    if not arrow or not equals or not key or not variant:
        raise RoutingTagError(tag, f"{text!r} is not of the form 'key=value -> VariantName'.")
    if variant not in variants:
        raise RoutingTagError(tag, f"the variant {variant!r} is not a production variant of this config "
                                   f"({', '.join(variants)}).")
    return Rule(key, value, variant)


def parse_routing_tags(tags: Iterable[tuple[str, str]], variants: Sequence[str]) -> RoutingPolicy:
    """The config's routing policy from its tags (others are ignored); RoutingTagError names a bad one."""
    given = {key: value for key, value in tags if key.startswith("moorage:")}
    for key in given:
        if key.startswith("moorage:routing") and key not in _ROUTING_KEYS:
            raise RoutingTagError(key, f"unknown routing tag; the routing tags are {', '.join(_ROUTING_KEYS)}.")
    policy = given.get(ROUTING, "weights").strip()
    if policy not in POLICIES:
        raise RoutingTagError(ROUTING, f"{policy!r} is not one of {', '.join(POLICIES)}.")
    reward = given.get(REWARD, BINARY).strip()
    if reward not in REWARD_KINDS:
        raise RoutingTagError(REWARD, f"{reward!r} is not one of {', '.join(REWARD_KINDS)}.")
    epsilon = _number(EPSILON, given[EPSILON], 0.0, 1.0) if EPSILON in given else 0.1
    min_weight = _number(MIN_WEIGHT, given[MIN_WEIGHT], 0.0, 1.0, high_open=True) if MIN_WEIGHT in given else 0.01
    source = given.get(REWARD_SOURCE, FEEDBACK).strip()
    if source not in (FEEDBACK, GROUND_TRUTH):
        namespace, _, name = source[len(METRIC):].rpartition("/") if source.startswith(METRIC) else ("", "", "")
        if not namespace or not name:
            raise RoutingTagError(REWARD_SOURCE, f"{source!r} is not feedback, ground-truth or "
                                                 f"metric:Namespace/MetricName.")
        if reward != BINARY:
            raise RoutingTagError(REWARD_SOURCE, "a metric's values are rewards of a binary experiment "
                                                 "(moorage:routing:reward binary): each value 0 or 1.")
    attribute = given.get(REWARD_ATTRIBUTE)
    if attribute is not None and source != GROUND_TRUTH:
        raise RoutingTagError(REWARD_ATTRIBUTE, "applies to moorage:routing:reward-source ground-truth only.")
    sticky = given.get(STICKY)
    if sticky is not None and (not sticky.strip() or any(c in sticky for c in "=;,")):
        raise RoutingTagError(STICKY, f"{sticky!r} is not a CustomAttributes key.")
    numbered = []
    for key, text in given.items():
        if not key.startswith(RULE):
            continue
        number = key[len(RULE):]
        if not number.isdigit() or int(number) < 1:
            raise RoutingTagError(key, "rules are numbered moorage:rule:1, moorage:rule:2, ...")
        numbered.append((int(number), parse_rule(key, text, variants)))
    tagged = any(k in given for k in _ROUTING_KEYS) or sticky is not None or bool(numbered)
    return RoutingPolicy(policy=policy, epsilon=epsilon, reward=reward, min_weight=min_weight,
                         sticky=sticky.strip() if sticky else None,
                         rules=tuple(rule for _, rule in sorted(numbered, key=lambda item: item[0])), tagged=tagged,
                         reward_source=source, reward_attribute=attribute.strip() if attribute else None)
