"""Sticky assignment: a request carrying the attribute ``key`` (``user=42``) gets the variant its
value hashes to, so one user sees one variant for the life of the config; the hash is uniform, so
the users split in proportion to the weights. Requests without it are chosen at random by weight.

The hash is keyed by a salt (the endpoint config's name): a new config reshuffles the users, as a
new experiment should. A change of weights moves only the users whose point crosses a threshold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Generic

from moorage.serving.choosers import V
from moorage.serving.choosers.attributes import attribute_pairs, custom_attributes
from moorage.serving.choosers.weighted import WeightedChooser

_SCALE = float(2**64)


def hash_point(salt: bytes, value: str) -> float:
    """A point in [0, 1) for ``value``, uniform over values and fixed for a salt."""
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8, key=salt[:64]).digest()
    return int.from_bytes(digest, "big") / _SCALE


class StickyChooser(Generic[V]):
    __slots__ = ("_salt", "_weighted", "key")

    def __init__(self, key: str, salt: str) -> None:
        self.key = key
        self._salt = salt.encode("utf-8")
        self._weighted: WeightedChooser[V] = WeightedChooser()

    def update(self, variants: Sequence[V]) -> None:
        self._weighted.update(variants)

    def choose(self, forwarded_headers: bytes) -> V:
        value = attribute_pairs(custom_attributes(forwarded_headers)).get(self.key)
        if value is None:
            return self._weighted.choose(forwarded_headers)
        return self._weighted.pick(hash_point(self._salt, value))
