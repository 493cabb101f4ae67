"""How an endpoint picks the production variant of a request that names none (no TargetVariant).

One strategy a module, each a ``VariantChooser``: today weighted random choice (SageMaker's
``CurrentWeight``); rules on the request, sticky assignment, shadows and bandits come as siblings.
The route owns the variants and their weights; the chooser only keeps what it needs to choose fast,
rebuilt by ``update`` whenever weights change.
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
