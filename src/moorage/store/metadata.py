"""Metadata store: every control-plane resource as a row, in SQLite by default or PostgreSQL by URL.

One generic table holds all resource kinds (model, endpoint-config, endpoint, later transform jobs
and monitoring schedules): each row keeps the fields the control plane filters and sorts on as
columns (name, status, times) and the rest as a JSON document. A new resource kind therefore needs
no migration, and list operations filter in SQL rather than in Python.

A second table holds each endpoint's desired state, one row per variant (shadow variants marked in
their state document): the weight
and instance count the endpoint was last told to have (by its config, UpdateEndpointWeightsAndCapacities
or the autoscaler), and a JSON document for what later strategies learn (a rollout's step, a
routing policy's state). The store is its one owner: the control plane writes it first and the
data plane converges on it, so a restart brings back what the endpoint was told, not its config's
initial values. Changing one variant is one UPDATE of one row, safe with several writers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

metadata_obj = MetaData()

resources = Table(
    "resources",
    metadata_obj,
    Column("kind", String(64), primary_key=True),
    Column("name", String(256), primary_key=True),
    Column("arn", String(512), nullable=False, unique=True),
    Column("status", String(64), nullable=True, index=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("modified_at", Float, nullable=False),
    Column("body", JSON, nullable=False),
)

tags = Table(
    "tags",
    metadata_obj,
    Column("arn", String(512), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)


desired_variants = Table(
    "desired_variants",
    metadata_obj,
    Column("endpoint", String(256), primary_key=True),
    Column("variant", String(256), primary_key=True),
    Column("position", Integer, nullable=False),  # the variant's place in its endpoint config
    Column("weight", Float, nullable=False),
    Column("instance_count", Integer, nullable=False),
    Column("state", JSON, nullable=False),
    Column("modified_at", Float, nullable=False),
)


class AlreadyExists(Exception):
    pass


@dataclass
class Resource:
    kind: str
    name: str
    arn: str
    status: str | None
    created_at: float
    modified_at: float
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DesiredVariant:
    """What one variant of an endpoint should be: the control plane's word, serving's goal."""

    variant: str
    weight: float
    instance_count: int
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def shadow(self) -> bool:
        """A ShadowProductionVariant: its weight is the share of production's requests it gets copies of."""
        return bool(self.state.get("shadow"))


@dataclass
class ListQuery:
    name_contains: str | None = None
    status: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    modified_after: float | None = None
    modified_before: float | None = None
    sort_by: str = "created_at"  # a column name: name | created_at | status
    descending: bool = True
    offset: int = 0
    limit: int | None = None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers proceed during a write; the server is the only writer.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    metadata_obj.create_all(engine)
    return engine


def shared_database(url: str | None) -> bool:
    """Whether other routers may share this database (cluster mode): anything but SQLite, a file of one
    server's home. The one rule the router registry, the leader election, the store sync and the Ray
    launcher go by."""
    return bool(url) and not str(url).startswith("sqlite")


class MetadataStore:
    def __init__(self, url: str):
        self.engine = make_engine(url)
        self.shared = shared_database(url)

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    def create(self, kind: str, name: str, arn: str, body: dict[str, Any], status: str | None = None) -> Resource:
        now = time.time()
        row = {"kind": kind, "name": name, "arn": arn, "status": status, "created_at": now,
               "modified_at": now, "body": body}
        try:
            with self._tx() as conn:
                conn.execute(insert(resources).values(**row))
        except IntegrityError as exc:
            raise AlreadyExists(f"{kind} {name} already exists") from exc
        return Resource(**row)

    def get(self, kind: str, name: str) -> Resource | None:
        with self._tx() as conn:
            row = conn.execute(
                select(resources).where(and_(resources.c.kind == kind, resources.c.name == name))
            ).mappings().first()
        return Resource(**row) if row else None

    def get_by_arn(self, arn: str) -> Resource | None:
        with self._tx() as conn:
            row = conn.execute(select(resources).where(resources.c.arn == arn)).mappings().first()
        return Resource(**row) if row else None

    def update(self, kind: str, name: str, *, status: str | None = None, body: dict[str, Any] | None = None,
               touch: bool = True) -> Resource | None:
        values: dict[str, Any] = {}
        if status is not None:
            values["status"] = status
        if body is not None:
            values["body"] = body
        if touch:
            values["modified_at"] = time.time()
        if not values:
            return self.get(kind, name)
        with self._tx() as conn:
            conn.execute(
                update(resources).where(and_(resources.c.kind == kind, resources.c.name == name)).values(**values)
            )
        return self.get(kind, name)

    def transition(self, kind: str, name: str, expected: Sequence[str], status: str,
                   body: dict[str, Any] | None = None, *, modified_at: float | None = None) -> bool:
        """Set ``status`` (and ``body``) only while the row's status is one of ``expected`` (and, given
        ``modified_at``, the row is unchanged since it was read), in one statement: how one of several
        routers claims a piece of work; False when another got there first."""
        values: dict[str, Any] = {"status": status, "modified_at": time.time()}
        if body is not None:
            values["body"] = body
        where = [resources.c.kind == kind, resources.c.name == name, resources.c.status.in_(list(expected))]
        if modified_at is not None:
            where.append(resources.c.modified_at == modified_at)
        with self._tx() as conn:
            result = conn.execute(update(resources).where(and_(*where)).values(**values))
        return bool(result.rowcount)

    def delete(self, kind: str, name: str) -> bool:
        with self._tx() as conn:
            found = conn.execute(
                select(resources.c.arn).where(and_(resources.c.kind == kind, resources.c.name == name))
            ).first()
            if not found:
                return False
            conn.execute(delete(resources).where(and_(resources.c.kind == kind, resources.c.name == name)))
            conn.execute(delete(tags).where(tags.c.arn == found.arn))
        return True

    def list(self, kind: str, query: ListQuery | None = None) -> list[Resource]:
        q = query or ListQuery()
        stmt = select(resources).where(resources.c.kind == kind)
        if q.name_contains:
            # SageMaker names are case-insensitive; lower() on both sides makes every backend agree
            # (LIKE is case-insensitive on SQLite but not on PostgreSQL).
            stmt = stmt.where(func.lower(resources.c.name).contains(q.name_contains.lower(), autoescape=True))
        if q.status:
            stmt = stmt.where(resources.c.status == q.status)
        if q.created_after is not None:
            stmt = stmt.where(resources.c.created_at > q.created_after)
        if q.created_before is not None:
            stmt = stmt.where(resources.c.created_at < q.created_before)
        if q.modified_after is not None:
            stmt = stmt.where(resources.c.modified_at > q.modified_after)
        if q.modified_before is not None:
            stmt = stmt.where(resources.c.modified_at < q.modified_before)
        column = resources.c[q.sort_by]
        stmt = stmt.order_by(column.desc() if q.descending else column.asc(), resources.c.name.asc())
        stmt = stmt.offset(q.offset)
        if q.limit is not None:
            stmt = stmt.limit(q.limit)
        with self._tx() as conn:
            return [Resource(**row) for row in conn.execute(stmt).mappings()]

    def statuses(self, kind: str, statuses: Sequence[str]) -> list[Resource]:
        stmt = select(resources).where(and_(resources.c.kind == kind, resources.c.status.in_(list(statuses))))
        with self._tx() as conn:
            return [Resource(**row) for row in conn.execute(stmt.order_by(resources.c.created_at)).mappings()]

    # Tags ----------------------------------------------------------------------------------------
    def put_tags(self, arn: str, pairs: Sequence[tuple[str, str]]) -> None:
        with self._tx() as conn:
            for key, value in pairs:
                conn.execute(delete(tags).where(and_(tags.c.arn == arn, tags.c.key == key)))
                conn.execute(insert(tags).values(arn=arn, key=key, value=value))

    def delete_tags(self, arn: str, keys: Sequence[str]) -> None:
        with self._tx() as conn:
            conn.execute(delete(tags).where(and_(tags.c.arn == arn, tags.c.key.in_(list(keys)))))

    def get_tags(self, arn: str) -> list[tuple[str, str]]:
        with self._tx() as conn:
            rows = conn.execute(select(tags.c.key, tags.c.value).where(tags.c.arn == arn).order_by(tags.c.key))
            return [(r.key, r.value) for r in rows]

    # Desired state of endpoints ------------------------------------------------------------------
    def replace_desired(self, endpoint: str, variants: Sequence[DesiredVariant]) -> None:
        """Make ``variants`` (in config order) the endpoint's whole desired state, in one transaction."""
        now = time.time()
        with self._tx() as conn:
            conn.execute(delete(desired_variants).where(desired_variants.c.endpoint == endpoint))
            for position, v in enumerate(variants):
                conn.execute(insert(desired_variants).values(
                    endpoint=endpoint, variant=v.variant, position=position, weight=float(v.weight),
                    instance_count=int(v.instance_count), state=dict(v.state), modified_at=now))

    def update_desired(self, endpoint: str, variant: str, *, weight: float | None = None,
                       instance_count: int | None = None, state: dict[str, Any] | None = None) -> bool:
        """Change what is given for one variant; False when the endpoint has no such variant."""
        values: dict[str, Any] = {"modified_at": time.time()}
        if weight is not None:
            values["weight"] = float(weight)
        if instance_count is not None:
            values["instance_count"] = int(instance_count)
        if state is not None:
            values["state"] = dict(state)
        with self._tx() as conn:
            result = conn.execute(update(desired_variants).where(
                and_(desired_variants.c.endpoint == endpoint, desired_variants.c.variant == variant)).values(**values))
        return bool(result.rowcount)

    def desired(self, endpoint: str) -> list[DesiredVariant]:
        """The endpoint's desired state, in config order; empty when none was ever written."""
        stmt = (select(desired_variants).where(desired_variants.c.endpoint == endpoint)
                .order_by(desired_variants.c.position))
        with self._tx() as conn:
            return [DesiredVariant(r.variant, r.weight, r.instance_count, dict(r.state or {}))
                    for r in conn.execute(stmt)]

    def delete_desired(self, endpoint: str) -> None:
        with self._tx() as conn:
            conn.execute(delete(desired_variants).where(desired_variants.c.endpoint == endpoint))
