"""Rules ahead of another chooser: the first ``key=value -> variant`` rule whose pair is in the
request's CustomAttributes picks the variant (the canary for a chosen group: ``beta=true -> B``),
whatever its weight; other requests go to the chooser behind (weights, sticky)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic

from moorage.serving.choosers import V, VariantChooser
from moorage.serving.choosers.attributes import attribute_pairs, custom_attributes


class RuleChooser(Generic[V]):
    __slots__ = ("_by_name", "rules", "then")

    def __init__(self, rules: Sequence[tuple[str, str, str]], then: VariantChooser[V]) -> None:
        self.rules = tuple(rules)  # (key, value, variant name), in order
        self.then = then
        self._by_name: dict[str, V] = {}

    def update(self, variants: Sequence[V]) -> None:
        self._by_name = {v.name: v for v in variants}
        self.then.update(variants)

    def choose(self, forwarded_headers: bytes) -> V:
        text = custom_attributes(forwarded_headers)
        if text is not None:
            pairs = attribute_pairs(text)
            for key, value, variant in self.rules:
                if pairs.get(key) == value and variant in self._by_name:
                    return self._by_name[variant]
        return self.then.choose(forwarded_headers)
