"""A baselining job: dataset -> ``statistics.json`` + ``constraints.json`` in an output location."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.monitor.constraints import suggest_constraints
from moorage.monitor.datasets import Dataset
from moorage.monitor.formats import CONSTRAINTS_FILE, STATISTICS_FILE, Constraints, Statistics, join
from moorage.monitor.statistics import DatasetProfile, profile_dataset


@dataclass
class Baseline:
    profile: DatasetProfile
    statistics: Statistics
    constraints: Constraints


def suggest_baseline(dataset: str | Path, output: str | Path | None = None, format: str | None = None,
                     header: bool = True, monitoring_config: dict[str, Any] | None = None) -> Baseline:
    """Profile ``dataset``, suggest constraints, and (when ``output`` is given) write both files there."""
    profile = profile_dataset(Dataset.open(dataset, format, header))
    statistics = Statistics(profile.to_statistics())
    constraints = Constraints(suggest_constraints(statistics.body_dict, monitoring_config))
    if output is not None:
        statistics.save(join(output, STATISTICS_FILE))
        constraints.save(join(output, CONSTRAINTS_FILE))
    return Baseline(profile, statistics, constraints)
