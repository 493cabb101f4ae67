"""Which variant served each InferenceId of an experiment, and the rewards credited to it.

An experiment's rewards arrive later than its answers (minutes to days), naming the request by the
``InferenceId`` its caller gave InvokeEndpoint. The router's observer queues ``(endpoint,
inference id, variant, time)`` and the control plane writes them here in batches; a reward then
finds its row, is credited once (a second reward for the same id is a duplicate), and is added to
the variant's reward statistics (``state["rewards"]`` of its desired state, ``metadata.py``) in the
same transaction, so a restart resumes from exactly what was credited. Rows older than the
window the server keeps (seven days by default) are purged; a reward for one is unknown.

The first assignment of an id wins: a caller that reuses an InferenceId cannot move its reward.
Where rewards come from ground truth, the row also keeps the answer (its first 4 KB and content
type), so a label that arrives later can be compared with the prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Float, MetaData, String, Table, Text, and_, bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from moorage.store.metadata import desired_variants

assignments_metadata = MetaData()

assignments = Table(
    "inference_assignments",
    assignments_metadata,
    Column("endpoint", String(256), primary_key=True),
    Column("inference_id", String(256), primary_key=True),
    Column("variant", String(256), nullable=False),
    Column("served_at", Float, nullable=False, index=True),
    Column("reward", Float, nullable=True),
    Column("rewarded_at", Float, nullable=True),
    Column("answer", Text, nullable=True),  # kept for rewards from ground truth only
    Column("answer_type", String(256), nullable=True),
)
ANSWER_BYTES = 4096

_CHUNK = 500  # ids per IN (...) query: well under SQLite's bound-parameter limit


@dataclass
class Credit:
    """What a batch of rewards did: how many were credited, and the ids that were not."""

    accepted: int = 0
    unknown: list[str] = field(default_factory=list)
    duplicate: list[str] = field(default_factory=list)
    by_variant: dict[str, list[float]] = field(default_factory=dict)  # the credited rewards per variant


class AssignmentStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        assignments_metadata.create_all(engine)

    def _insert_ignoring_known(self, conn: Connection) -> Any:
        if conn.dialect.name == "postgresql":
            return postgresql.insert(assignments).on_conflict_do_nothing()
        return sqlite.insert(assignments).on_conflict_do_nothing()

    def record(self, rows: Sequence[tuple[str, str, str, float, str | None, str | None]]) -> None:
        """Keep (endpoint, inference id, variant, served at, answer, answer's content type) rows; an id
        already kept stays as it was."""
        if not rows:
            return
        with self.engine.begin() as conn:
            conn.execute(self._insert_ignoring_known(conn),
                         [{"endpoint": e, "inference_id": i, "variant": v, "served_at": t, "answer": a,
                           "answer_type": c} for e, i, v, t, a, c in rows])

    def answers(self, endpoint: str, ids: Sequence[str], *, not_before: float) -> dict[str, tuple[str, str | None]]:
        """inference id -> (answer, content type) of the kept rows that have one."""
        out: dict[str, tuple[str, str | None]] = {}
        unique = list(dict.fromkeys(ids))
        with self.engine.connect() as conn:
            for start in range(0, len(unique), _CHUNK):
                for row in conn.execute(select(assignments.c.inference_id, assignments.c.answer,
                                               assignments.c.answer_type)
                                        .where(and_(assignments.c.endpoint == endpoint,
                                                    assignments.c.inference_id.in_(unique[start:start + _CHUNK]),
                                                    assignments.c.served_at >= not_before,
                                                    assignments.c.answer.is_not(None)))):
                    out[row.inference_id] = (row.answer, row.answer_type)
        return out

    def credit(self, endpoint: str, rewards: Sequence[tuple[str, float]], *, not_before: float, now: float,
               merge: Callable[[dict[str, Any], list[float]], dict[str, Any]]) -> Credit:
        """Credit each (inference id, reward) once, and fold the credited rewards of each variant into
        its desired state with ``merge(state, rewards) -> new state``, in the same transaction (a
        variant no longer on the endpoint keeps its rewards on their rows only)."""
        out = Credit()
        with self.engine.begin() as conn:
            ids = list(dict.fromkeys(i for i, _ in rewards))
            found: dict[str, tuple[str, float, float | None]] = {}
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start:start + _CHUNK]
                for row in conn.execute(select(assignments.c.inference_id, assignments.c.variant,
                                               assignments.c.served_at, assignments.c.rewarded_at)
                                        .where(and_(assignments.c.endpoint == endpoint,
                                                    assignments.c.inference_id.in_(chunk)))):
                    found[row.inference_id] = (row.variant, row.served_at, row.rewarded_at)
            credited: list[dict[str, Any]] = []
            seen: set[str] = set()
            for inference_id, reward in rewards:
                known = found.get(inference_id)
                if known is None or known[1] < not_before:
                    out.unknown.append(inference_id)
                elif known[2] is not None or inference_id in seen:
                    out.duplicate.append(inference_id)
                else:
                    seen.add(inference_id)
                    credited.append({"key_id": inference_id, "reward": float(reward), "rewarded_at": now})
                    out.by_variant.setdefault(known[0], []).append(float(reward))
            if credited:
                conn.execute(update(assignments).where(and_(
                    assignments.c.endpoint == endpoint, assignments.c.inference_id == bindparam("key_id")))
                    .values(reward=bindparam("reward"), rewarded_at=bindparam("rewarded_at")), credited)
            out.accepted = len(credited)
            for variant, values in out.by_variant.items():
                where = and_(desired_variants.c.endpoint == endpoint, desired_variants.c.variant == variant)
                row = conn.execute(select(desired_variants.c.state).where(where).with_for_update()).first()
                if row is not None:
                    conn.execute(update(desired_variants).where(where).values(
                        state=merge(dict(row.state or {}), values), modified_at=now))
        return out

    def counts(self, endpoint: str, since: float = 0.0) -> dict[str, tuple[int, int]]:
        """variant -> (requests kept, rewards credited), for the assignments since ``since``."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(assignments.c.variant, func.count(), func.count(assignments.c.rewarded_at))
                                .where(and_(assignments.c.endpoint == endpoint, assignments.c.served_at >= since))
                                .group_by(assignments.c.variant)).all()
        return {row[0]: (int(row[1]), int(row[2])) for row in rows}

    def forget_endpoint(self, endpoint: str) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(delete(assignments).where(assignments.c.endpoint == endpoint)).rowcount)

    def purge(self, before: float) -> int:
        """Drop the assignments served before ``before``; returns how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(delete(assignments).where(assignments.c.served_at < before)).rowcount)
