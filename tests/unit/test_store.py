"""The metadata store (SQLite file, and a throwaway PostgreSQL server when one is installed) and list paging.

Everything here runs against real databases: a SQLite file in a temporary folder, and, where the
PostgreSQL server binaries are on the machine, a private ``postgres`` started for the session on a
free loopback port (stopped and removed at the end). Nothing is mocked.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from moorage.control.paging import list_query, page
from moorage.control.times import epoch, timestamp
from moorage.errors import ValidationException
from moorage.store.metadata import AlreadyExists, DesiredVariant, ListQuery, MetadataStore
from postgres_support import PostgresServer, postgres_server  # noqa: F401 - a fixture

# --------------------------------------------------------------------------------------------------
# the store, on each backend
# --------------------------------------------------------------------------------------------------
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'moorage.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def open_store(store_url: str) -> Iterator[Callable[[], MetadataStore]]:
    """Factory: a new MetadataStore on the same database each call; all are closed at teardown."""
    opened: list[MetadataStore] = []

    def factory() -> MetadataStore:
        s = MetadataStore(store_url)
        opened.append(s)
        return s

    try:
        yield factory
    finally:
        for s in opened:
            s.close()


@pytest.fixture
def store(open_store: Callable[[], MetadataStore]) -> MetadataStore:
    return open_store()


def arn(kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:us-east-1:123456789012:{kind}/{name.lower()}"


def make(store: MetadataStore, kind: str, name: str, status: str | None = None, **body: object):
    return store.create(kind, name, arn(kind, name), {"Name": name, **body}, status=status)


def names(rows) -> list[str]:
    return [r.name for r in rows]


def _wait_clock_past(t: float) -> None:
    """Make sure the next time.time() is strictly greater than ``t`` (coarse clocks exist)."""
    deadline = time.monotonic() + 1.0
    while time.time() <= t and time.monotonic() < deadline:
        time.sleep(0.001)


# --------------------------------------------------------------------------------------------------
# create / get / update / delete
# --------------------------------------------------------------------------------------------------
def test_create_then_get_and_get_by_arn(store: MetadataStore) -> None:
    body = {"Name": "m1", "PrimaryContainer": {"Image": "sklearn", "Environment": {"K": "v", "U": "é✓"}},
            "Nested": [1, 2.5, None, True]}
    created = store.create("model", "m1", arn("model", "m1"), body, status=None)
    assert created.created_at == created.modified_at

    got = store.get("model", "m1")
    assert got is not None
    assert (got.kind, got.name, got.arn, got.status) == ("model", "m1", arn("model", "m1"), None)
    assert got.body == body
    assert got.created_at == pytest.approx(created.created_at)

    by_arn = store.get_by_arn(arn("model", "m1"))
    assert by_arn is not None and by_arn.name == "m1" and by_arn.body == body

    assert store.get("model", "nope") is None
    assert store.get("endpoint", "m1") is None  # kinds are separate namespaces
    assert store.get_by_arn(arn("model", "nope")) is None


def test_duplicate_name_raises_already_exists_and_keeps_the_original(store: MetadataStore) -> None:
    make(store, "model", "dup", Version=1)
    with pytest.raises(AlreadyExists, match="dup"):
        store.create("model", "dup", arn("model", "dup") + "-other", {"Version": 2})
    with pytest.raises(AlreadyExists):  # the ARN is unique too
        store.create("model", "dup-2", arn("model", "dup"), {"Version": 3})
    row = store.get("model", "dup")
    assert row is not None and row.body["Version"] == 1
    assert names(store.list("model")) == ["dup"]
    # The same name under another kind is another resource.
    make(store, "endpoint", "dup")
    assert store.get("endpoint", "dup") is not None


def test_update_status_body_and_modified_time(store: MetadataStore) -> None:
    created = make(store, "endpoint", "ep", status="Creating", Config="c1")
    _wait_clock_past(created.modified_at)

    updated = store.update("endpoint", "ep", status="InService")
    assert updated is not None
    assert updated.status == "InService"
    assert updated.body == {"Name": "ep", "Config": "c1"}  # body untouched when not given
    assert updated.modified_at > created.modified_at
    assert updated.created_at == pytest.approx(created.created_at)

    again = store.update("endpoint", "ep", body={"Name": "ep", "Config": "c2"}, touch=False)
    assert again is not None
    assert again.status == "InService"  # status untouched when not given
    assert again.body["Config"] == "c2"
    assert again.modified_at == pytest.approx(updated.modified_at)

    assert store.update("endpoint", "missing", status="InService") is None
    assert store.get("endpoint", "missing") is None


def test_update_with_nothing_to_change_is_a_no_op(store: MetadataStore) -> None:
    created = make(store, "model", "same")
    row = store.update("model", "same", touch=False)
    assert row is not None and row.modified_at == pytest.approx(created.modified_at)


def test_delete(store: MetadataStore) -> None:
    make(store, "model", "a")
    make(store, "model", "b")
    assert store.delete("model", "a") is True
    assert store.get("model", "a") is None
    assert store.get_by_arn(arn("model", "a")) is None
    assert store.delete("model", "a") is False
    assert store.delete("endpoint", "b") is False  # wrong kind: nothing deleted
    assert names(store.list("model")) == ["b"]
    # The name is free again.
    make(store, "model", "a", Version=2)
    row = store.get("model", "a")
    assert row is not None and row.body["Version"] == 2


# --------------------------------------------------------------------------------------------------
# list: filters, order, paging
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def populated(store: MetadataStore):
    """Five endpoints created one after another (distinct times), plus a model that must never show up."""
    specs = [("alpha-one", "InService"), ("beta-two", "Creating"), ("alpha-three", "Failed"),
             ("gamma-four", "InService"), ("alpha-five", "Creating")]
    rows = []
    for name, status in specs:
        if rows:
            _wait_clock_past(rows[-1].created_at)
        rows.append(make(store, "endpoint", name, status=status))
    make(store, "model", "alpha-model")
    return rows


def test_list_default_is_newest_first_and_kind_scoped(store: MetadataStore, populated) -> None:
    assert names(store.list("endpoint")) == ["alpha-five", "gamma-four", "alpha-three", "beta-two", "alpha-one"]
    assert names(store.list("model")) == ["alpha-model"]
    assert store.list("transform-job") == []


def test_list_name_contains_and_status_filters(store: MetadataStore, populated) -> None:
    assert names(store.list("endpoint", ListQuery(name_contains="alpha", descending=False))) == [
        "alpha-one", "alpha-three", "alpha-five"]
    assert names(store.list("endpoint", ListQuery(name_contains="o", sort_by="name", descending=False))) == [
        "alpha-one", "beta-two", "gamma-four"]
    assert store.list("endpoint", ListQuery(name_contains="zzz")) == []
    assert names(store.list("endpoint", ListQuery(status="InService", descending=False))) == [
        "alpha-one", "gamma-four"]
    assert names(store.list("endpoint", ListQuery(status="Creating", name_contains="alpha"))) == ["alpha-five"]
    assert store.list("endpoint", ListQuery(status="Deleting")) == []


def test_list_name_contains_is_case_insensitive(request: pytest.FixtureRequest, store: MetadataStore,
                                                populated) -> None:
    """SageMaker names are case-insensitive (ARNs lower-case them); NameContains should not depend on the backend."""
    assert names(store.list("endpoint", ListQuery(name_contains="ALPHA", sort_by="name", descending=False))) == [
        "alpha-five", "alpha-one", "alpha-three"]


def test_list_time_filters_are_strict(store: MetadataStore, populated) -> None:
    t = [r.created_at for r in populated]
    after = store.list("endpoint", ListQuery(created_after=t[1], descending=False))
    assert names(after) == ["alpha-three", "gamma-four", "alpha-five"]
    before = store.list("endpoint", ListQuery(created_before=t[3], descending=False))
    assert names(before) == ["alpha-one", "beta-two", "alpha-three"]
    window = store.list("endpoint", ListQuery(created_after=t[0], created_before=t[4], descending=False))
    assert names(window) == ["beta-two", "alpha-three", "gamma-four"]
    assert store.list("endpoint", ListQuery(created_after=t[4])) == []

    # Touch two of them: only those are modified after the mark.
    _wait_clock_past(t[4])
    mark = time.time()
    _wait_clock_past(mark)
    store.update("endpoint", "alpha-one", status="Updating")
    store.update("endpoint", "beta-two", status="Updating")
    modified = store.list("endpoint", ListQuery(modified_after=mark, sort_by="name", descending=False))
    assert names(modified) == ["alpha-one", "beta-two"]
    untouched = store.list("endpoint", ListQuery(modified_before=mark, sort_by="name", descending=False))
    assert names(untouched) == ["alpha-five", "alpha-three", "gamma-four"]
    both = store.list("endpoint", ListQuery(modified_after=mark, status="Updating", name_contains="beta"))
    assert names(both) == ["beta-two"]


def test_list_sort_orders(store: MetadataStore, populated) -> None:
    by_name_asc = store.list("endpoint", ListQuery(sort_by="name", descending=False))
    assert names(by_name_asc) == sorted(r.name for r in populated)
    by_name_desc = store.list("endpoint", ListQuery(sort_by="name", descending=True))
    assert names(by_name_desc) == sorted((r.name for r in populated), reverse=True)
    by_created_asc = store.list("endpoint", ListQuery(sort_by="created_at", descending=False))
    assert names(by_created_asc) == [r.name for r in populated]
    # Status ties break by name, ascending, whatever the direction.
    by_status_asc = store.list("endpoint", ListQuery(sort_by="status", descending=False))
    assert names(by_status_asc) == ["alpha-five", "beta-two", "alpha-three", "alpha-one", "gamma-four"]
    by_status_desc = store.list("endpoint", ListQuery(sort_by="status", descending=True))
    assert names(by_status_desc) == ["alpha-one", "gamma-four", "alpha-three", "alpha-five", "beta-two"]


def test_list_offset_and_limit_page_through_everything_once(store: MetadataStore, populated) -> None:
    everything = names(store.list("endpoint", ListQuery(sort_by="name", descending=False)))
    seen: list[str] = []
    offset = 0
    for _ in range(10):  # bounded: 5 rows, pages of 2
        chunk = store.list("endpoint", ListQuery(sort_by="name", descending=False, offset=offset, limit=2))
        if not chunk:
            break
        assert len(chunk) <= 2
        seen.extend(names(chunk))
        offset += len(chunk)
    assert seen == everything
    assert names(store.list("endpoint", ListQuery(sort_by="name", descending=False, offset=4))) == everything[4:]
    assert store.list("endpoint", ListQuery(offset=99, limit=3)) == []
    assert names(store.list("endpoint", ListQuery(sort_by="name", descending=False, limit=0))) == []


def test_statuses_returns_matching_rows_oldest_first(store: MetadataStore, populated) -> None:
    rows = store.statuses("endpoint", ["InService", "Creating"])
    assert names(rows) == ["alpha-one", "beta-two", "gamma-four", "alpha-five"]
    assert names(store.statuses("endpoint", ["Failed"])) == ["alpha-three"]
    assert store.statuses("endpoint", ["Deleting"]) == []
    assert store.statuses("endpoint", []) == []
    assert store.statuses("model", ["InService"]) == []  # the model has no status


# --------------------------------------------------------------------------------------------------
# tags
# --------------------------------------------------------------------------------------------------
def test_tags_put_replace_get_delete(store: MetadataStore) -> None:
    r = make(store, "model", "tagged")
    other = make(store, "model", "other")
    assert store.get_tags(r.arn) == []

    store.put_tags(r.arn, [("team", "ml"), ("env", "dev"), ("moorage:routing", "thompson")])
    store.put_tags(other.arn, [("team", "data")])
    assert store.get_tags(r.arn) == [("env", "dev"), ("moorage:routing", "thompson"), ("team", "ml")]

    store.put_tags(r.arn, [("env", "prod"), ("owner", "")])  # replace one, add one, keep the rest
    assert store.get_tags(r.arn) == [("env", "prod"), ("moorage:routing", "thompson"), ("owner", ""),
                                     ("team", "ml")]
    store.put_tags(r.arn, [("dup", "first"), ("dup", "second")])  # the last value for a key wins
    assert dict(store.get_tags(r.arn))["dup"] == "second"

    store.delete_tags(r.arn, ["env", "dup", "not-there"])
    assert store.get_tags(r.arn) == [("moorage:routing", "thompson"), ("owner", ""), ("team", "ml")]
    store.delete_tags(r.arn, [])
    assert len(store.get_tags(r.arn)) == 3
    assert store.get_tags(other.arn) == [("team", "data")]  # other resources' tags untouched


def test_deleting_a_resource_removes_its_tags_only(store: MetadataStore) -> None:
    r = make(store, "endpoint", "gone")
    keep = make(store, "endpoint", "kept")
    store.put_tags(r.arn, [("a", "1"), ("b", "2")])
    store.put_tags(keep.arn, [("a", "1")])
    assert store.delete("endpoint", "gone")
    assert store.get_tags(r.arn) == []
    assert store.get_tags(keep.arn) == [("a", "1")]
    # A new resource under the same name starts without the old tags.
    make(store, "endpoint", "gone")
    assert store.get_tags(r.arn) == []


# --------------------------------------------------------------------------------------------------
# state survives a restart
# --------------------------------------------------------------------------------------------------
def test_reopening_the_database_keeps_resources_and_tags(open_store: Callable[[], MetadataStore]) -> None:
    first = open_store()
    make(first, "model", "m", Image="sklearn")
    make(first, "endpoint", "ep", status="Creating", Config="cfg")
    first.update("endpoint", "ep", status="InService")
    first.put_tags(arn("endpoint", "ep"), [("k", "v")])
    created = first.get("endpoint", "ep")
    first.close()

    second = open_store()  # a restarted server: same URL, new engine
    row = second.get("endpoint", "ep")
    assert row is not None and created is not None
    assert row.status == "InService"
    assert row.body == {"Name": "ep", "Config": "cfg"}
    assert row.created_at == pytest.approx(created.created_at)
    assert second.get_tags(arn("endpoint", "ep")) == [("k", "v")]
    assert names(second.statuses("endpoint", ["InService"])) == ["ep"]
    with pytest.raises(AlreadyExists):
        make(second, "model", "m")


def test_sqlite_file_is_created_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub-does-not-matter.db"
    s = MetadataStore(f"sqlite:///{path}")
    try:
        make(s, "model", "x")
    finally:
        s.close()
    assert path.is_file()
    s2 = MetadataStore(f"sqlite:///{path}")
    try:
        assert s2.get("model", "x") is not None
    finally:
        s2.close()


# --------------------------------------------------------------------------------------------------
# control.paging and control.times: list requests, NextToken, timestamps
# --------------------------------------------------------------------------------------------------
def _token(payload: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode()


def test_list_query_maps_a_sagemaker_request() -> None:
    q = list_query({"NameContains": "abc", "StatusEquals": "InService", "SortBy": "Name", "SortOrder": "Ascending",
                    "MaxResults": 3, "CreationTimeAfter": 100, "CreationTimeBefore": "1970-01-01T00:03:20Z",
                    "LastModifiedTimeAfter": 1.5, "LastModifiedTimeBefore": 400})
    assert q == ListQuery(name_contains="abc", status="InService", created_after=100.0, created_before=200.0,
                          modified_after=1.5, modified_before=400.0, sort_by="name", descending=False, offset=0,
                          limit=4)
    default = list_query({})
    assert (default.sort_by, default.descending, default.offset, default.limit) == ("created_at", True, 0, 11)
    assert list_query({"SortBy": "Status"}).sort_by == "status"
    assert list_query({"SortBy": "CreationTime"}).sort_by == "created_at"
    assert list_query({}, default_max=50).limit == 51


def test_next_token_round_trip_pages_through_a_real_store(store: MetadataStore) -> None:
    for i in range(7):
        make(store, "model", f"model-{i}")
    seen: list[str] = []
    req: dict[str, object] = {"SortBy": "Name", "SortOrder": "Ascending", "MaxResults": 3}
    tokens = []
    for _ in range(10):  # bounded
        query = list_query(req)
        rows, token = page(store.list("model", query), query)
        seen.extend(names(rows))
        if token is None:
            break
        tokens.append(token)
        req = {**req, "NextToken": token}
    assert seen == [f"model-{i}" for i in range(7)]
    assert len(tokens) == 2
    assert list_query({"NextToken": tokens[0]}).offset == 3
    assert list_query({"NextToken": tokens[1]}).offset == 6


def test_page_with_exactly_a_full_page_has_no_token(store: MetadataStore) -> None:
    for i in range(3):
        make(store, "model", f"m{i}")
    query = list_query({"MaxResults": 3})
    rows, token = page(store.list("model", query), query)
    assert len(rows) == 3 and token is None
    query = list_query({"MaxResults": 2})
    rows, token = page(store.list("model", query), query)
    assert len(rows) == 2 and token is not None


@pytest.mark.parametrize("token", [
    "not-a-token",
    "!!!!",
    "éé",
    base64.urlsafe_b64encode(b"not json").decode(),
    _token([1, 2, 3]),
    _token(7),
    _token({"page": 2}),
    _token({"offset": "abc"}),
    _token({"offset": None}),
])
def test_bad_next_token_is_a_validation_exception(token: str) -> None:
    with pytest.raises(ValidationException, match="NextToken"):
        list_query({"NextToken": token})


def test_next_token_with_negative_offset_is_a_validation_exception() -> None:
    with pytest.raises(ValidationException):
        list_query({"NextToken": _token({"offset": -3})})


def test_epoch_conversions() -> None:
    assert epoch(None) is None
    assert epoch(0) == 0.0
    assert epoch(1700000000) == 1700000000.0
    assert epoch(1700000000.25) == 1700000000.25
    assert epoch("2023-11-14T22:13:20Z") == 1700000000.0
    assert epoch("2023-11-14T22:13:20+00:00") == 1700000000.0
    assert epoch("2023-11-15T00:13:20+02:00") == 1700000000.0
    assert epoch("2023-11-14T22:13:20.5Z") == 1700000000.5
    assert epoch(dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)) == 1700000000.0
    with pytest.raises(ValidationException, match="Invalid timestamp"):
        epoch("yesterday")
    with pytest.raises(ValidationException):
        list_query({"CreationTimeAfter": "not-a-time"})
    assert timestamp(None) is None
    assert timestamp(1700000000.0) == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert epoch(timestamp(1234.5)) == 1234.5


@pytest.fixture
def eastern_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with the process's local time zone five hours behind UTC (a POSIX TZ needs no tz database)."""
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


def test_epoch_reads_timestamps_without_offset_as_utc(eastern_time: None) -> None:
    assert epoch("2023-11-14T22:13:20") == 1700000000.0
    assert epoch(dt.datetime(2023, 11, 14, 22, 13, 20)) == 1700000000.0


# --------------------------------------------------------------------------------------------------
# desired state of endpoints
# --------------------------------------------------------------------------------------------------
def test_desired_state_is_kept_in_config_order_and_survives_reopening(
        open_store: Callable[[], MetadataStore]) -> None:
    store = open_store()
    assert store.desired("ep") == []
    store.replace_desired("ep", [DesiredVariant("green", 1.0, 1), DesiredVariant("blue", 3.0, 2, {"step": 1})])
    store.replace_desired("other", [DesiredVariant("AllTraffic", 1.0, 1)])
    assert store.update_desired("ep", "blue", weight=0.5)
    assert store.update_desired("ep", "green", instance_count=4, state={"arms": [1, 2]})
    assert not store.update_desired("ep", "nope", weight=1.0)  # no such variant: nothing written
    expected = [DesiredVariant("green", 1.0, 4, {"arms": [1, 2]}), DesiredVariant("blue", 0.5, 2, {"step": 1})]
    assert store.desired("ep") == expected
    assert open_store().desired("ep") == expected  # another process (a restarted server) reads the same
    store.replace_desired("ep", [DesiredVariant("blue", 1.0, 1)])  # a new config: its variants only
    assert store.desired("ep") == [DesiredVariant("blue", 1.0, 1)]
    store.delete_desired("ep")
    assert store.desired("ep") == []
    assert store.desired("other") == [DesiredVariant("AllTraffic", 1.0, 1)]
