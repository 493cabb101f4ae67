"""How an endpoint picks the production variant of a request that names none (no TargetVariant).

One strategy a module, each a ``VariantChooser``: weighted random choice (``weighted.py``:
SageMaker's ``CurrentWeight``), a weighted choice by a hash of a request attribute (``sticky.py``),
rules on the request's attributes ahead of either (``rules.py``; ``attributes.py`` reads
``CustomAttributes``). Bandits need no chooser of their own: the control plane recomputes the
weights from the rewards off the request path. The route owns the variants and their weights; the
chooser only keeps what it needs to choose fast, rebuilt by ``update`` whenever weights change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class Weighted(Protocol):
    """What a chooser sees of a variant (the router's VariantRoute): its name and current weight."""

    name: str
    current_weight: float


V = TypeVar("V", bound=Weighted)


class NoVariantToChoose(Exception):
    """Every variant has weight 0: only a request that names its variant can be served."""


class VariantChooser(Protocol[V]):
    def update(self, variants: Sequence[V]) -> None:
        """The variants and their current weights changed; rebuild what ``choose`` reads."""

    def choose(self, forwarded_headers: bytes) -> V:
        """The variant for one request (its forwarded header block, for strategies that read it);
        raises NoVariantToChoose when none can take unnamed traffic."""
