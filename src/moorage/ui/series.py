"""The charts' JSON: metrics-store statistics over the last hour or day, one x axis, one list per line.

A chart's URL answers ``{"x": [epoch seconds], "series": [{"label": ..., "values": [...]}], "unit": ...}``
(``ui/static/app.js`` draws it with uPlot). Every line shares the x axis: the window's buckets from its
aligned start to now, a value or ``null`` (no data) per bucket, so lines from different series line up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select

from moorage.metrics.store import Datapoint, MetricStore, datapoints
from moorage.metrics.vocabulary import dimensions_of

# window name -> (span, bucket) in seconds: 60 points over an hour, 144 over a day.
WINDOWS: dict[str, tuple[int, int]] = {"hour": (3600, 60), "day": (86400, 600)}
DEFAULT_WINDOW = "hour"


@dataclass(frozen=True)
class Window:
    name: str
    start: float  # the first bucket's start, a multiple of period
    end: float
    period: int

    def buckets(self) -> list[float]:
        """Every bucket's start; the last one holds ``end`` (the period now under way)."""
        return [self.start + i * self.period for i in range(round((self.end - self.start) // self.period) + 1)]


def window(name: str | None, now: float | None = None) -> Window:
    """The named window ending now (an unknown name: the default), its buckets aligned to its period."""
    key = name if name in WINDOWS else DEFAULT_WINDOW
    span, period = WINDOWS[key]
    end = time.time() if now is None else now
    start = (math.floor(end / period) - (span // period - 1)) * period
    return Window(key, float(start), end, period)


@dataclass(frozen=True)
class Line:
    """One line of a chart: a label and its statistic's datapoints (``scale`` multiplies each value)."""

    label: str
    points: Sequence[Datapoint]
    scale: float = 1.0


def chart(win: Window, lines: Iterable[Line], unit: str = "") -> dict[str, Any]:
    """The chart JSON of ``lines`` over ``win``."""
    xs = win.buckets()
    index = {x: i for i, x in enumerate(xs)}
    series = []
    for line in lines:
        values: list[float | None] = [None] * len(xs)
        for point in line.points:
            i = index.get(point.timestamp)
            if i is not None:
                values[i] = point.value * line.scale
        series.append({"label": line.label, "values": values})
    return {"x": xs, "series": series, "unit": unit, "window": win.name, "period": win.period}


def statistic(store: MetricStore, win: Window, namespace: str, metric: str, dimensions: dict[str, str],
              stat: str) -> list[Datapoint]:
    """One statistic of one series, per bucket of ``win``."""
    return store.statistics(namespace, metric, dimensions, stat, win.start, win.end + 1, win.period)


def rebucket(points: Iterable[Datapoint], win: Window, how: str = "average") -> list[Datapoint]:
    """Finer datapoints gathered into ``win``'s buckets: their average or maximum per bucket."""
    gathered: dict[float, list[Datapoint]] = {}
    for point in points:
        slot = win.start + math.floor((point.timestamp - win.start) / win.period) * win.period
        gathered.setdefault(slot, []).append(point)
    pick = max if how == "maximum" else (lambda values: sum(values) / len(values))
    return [Datapoint(slot, float(pick([p.value for p in found])), float(sum(p.sample_count for p in found)),
                      found[0].unit) for slot, found in sorted(gathered.items())]


def total(points: Iterable[Datapoint]) -> float:
    return float(sum(p.value for p in points))


def sums_by_series(store: MetricStore, namespace: str, metric: str, since: float,
                   dimension_names: frozenset[str]) -> dict[tuple[str, ...], float]:
    """The Sum of every series of ``metric`` with exactly ``dimension_names`` since ``since``, in one
    query (a list of 100 endpoints reads its traffic once, not once per endpoint); keyed by the
    dimensions' values in the order of their sorted names."""
    stmt = (select(datapoints.c.dimensions, func.sum(datapoints.c.value_sum).label("total"))
            .where(and_(datapoints.c.namespace == namespace, datapoints.c.metric_name == metric,
                        datapoints.c.timestamp >= since))
            .group_by(datapoints.c.dimensions))
    names = sorted(dimension_names)
    out: dict[tuple[str, ...], float] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(stmt):
            dims = dimensions_of(row.dimensions)
            if dims.keys() == dimension_names:
                out[tuple(dims[n] for n in names)] = float(row.total or 0.0)
    return out
