"""How a router decides to follow the store (control/cluster_sync.py), and the cheap read it decides on
(store/endpoint_states.py) over a real SQLite file and a real PostgreSQL server.

The end-to-end behaviour (two `moorage serve` processes over one PostgreSQL) is tests/e2e/test_cluster_routers.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.control.cluster_sync import Action, Here, decide
from moorage.store.endpoint_states import StoredEndpoint, read_endpoint_states
from moorage.store.metadata import DesiredVariant, MetadataStore, shared_database
from postgres_support import PostgresServer, postgres_server  # noqa: F401 - a fixture

DESIRED = (("A", 1.0, 1), ("B", 0.5, 2))


def row(status: str | None = "InService", config: str | None = "cfg-1", desired=DESIRED) -> StoredEndpoint:
    return StoredEndpoint("ep", status, config, desired)


# --------------------------------------------------------------------------------------------------
# decide
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["Creating", "InService", "Updating", "RollingBack"])
def test_an_endpoint_not_served_here_is_brought_up(status: str) -> None:
    assert decide(row(status), Here(None), None) is Action.BRING_UP


def test_nothing_is_done_while_work_for_the_endpoint_is_in_flight_here() -> None:
    # This router's own CreateEndpoint/UpdateEndpoint, or a follower's bring-up already queued.
    assert decide(row(), Here(None, busy=True), None) is Action.NOTHING
    assert decide(row(config="cfg-2"), Here("cfg-1", busy=True), DESIRED) is Action.NOTHING
    assert decide(row(desired=(("A", 0.1, 3),)), Here("cfg-1", busy=True, following=True), DESIRED) is Action.NOTHING


def test_another_config_in_the_row_replaces_the_fleet() -> None:
    assert decide(row(config="cfg-2"), Here("cfg-1"), DESIRED) is Action.REPLACE


def test_an_update_in_flight_elsewhere_keeps_the_old_fleet() -> None:
    # Updating names the old config until the update finishes on the router that runs it.
    assert decide(row("Updating", "cfg-1"), Here("cfg-1"), DESIRED) is Action.NOTHING


def test_changed_weights_or_counts_converge_and_unchanged_ones_do_nothing() -> None:
    assert decide(row(desired=(("A", 1.0, 1), ("B", 0.5, 3))), Here("cfg-1"), DESIRED) is Action.CONVERGE
    assert decide(row(desired=(("A", 2.0, 1), ("B", 0.5, 2))), Here("cfg-1"), DESIRED) is Action.CONVERGE
    assert decide(row(), Here("cfg-1"), DESIRED) is Action.NOTHING
    # A fleet this router built itself has no record of what it converged on yet: once, harmlessly.
    assert decide(row(), Here("cfg-1"), None) is Action.CONVERGE


@pytest.mark.parametrize("stored", [None, row("Deleting"), row("Failed")])
def test_a_gone_deleting_or_failed_endpoint_is_retired_here(stored: StoredEndpoint | None) -> None:
    assert decide(stored, Here("cfg-1"), DESIRED) is Action.RETIRE
    assert decide(stored, Here(None), None) is Action.NOTHING  # nothing here to retire
    # Its own tear-down in flight (DeleteEndpoint reached this router) finishes by itself...
    assert decide(stored, Here("cfg-1", busy=True), DESIRED) is Action.NOTHING
    # ...a follower's bring-up of it is cut short.
    assert decide(stored, Here(None, busy=True, following=True), None) is Action.RETIRE


def test_other_statuses_leave_the_fleet_alone() -> None:
    assert decide(row("OutOfService"), Here("cfg-1"), DESIRED) is Action.NOTHING
    assert decide(row("OutOfService"), Here(None), None) is Action.NOTHING


def test_only_a_shared_database_is_followed() -> None:
    assert shared_database("postgresql+psycopg://u@127.0.0.1:5432/moorage")
    assert not shared_database("sqlite:////tmp/home/moorage.db")
    assert not shared_database(None)


# --------------------------------------------------------------------------------------------------
# read_endpoint_states, on each backend
# --------------------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'moorage.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.new_database()
    opened = MetadataStore(url)
    try:
        yield opened
    finally:
        opened.close()


def test_the_read_has_each_endpoint_status_config_and_desired_state(store: MetadataStore) -> None:
    store.create("endpoint", "ep1", "arn:ep1", {"EndpointConfigName": "cfg-1", "Deployed": {"big": "x" * 1000}},
                 status="InService")
    store.create("endpoint", "ep2", "arn:ep2", {}, status="Creating")
    store.create("endpoint-config", "cfg-1", "arn:cfg-1", {"ProductionVariants": []})
    store.replace_desired("ep1", [DesiredVariant("B", 2.0, 3), DesiredVariant("A", 1.0, 1, {"shadow": True})])
    states = read_endpoint_states(store)
    assert set(states) == {"ep1", "ep2"}  # endpoints only
    assert states["ep1"] == StoredEndpoint("ep1", "InService", "cfg-1", (("B", 2.0, 3), ("A", 1.0, 1)))
    assert states["ep2"] == StoredEndpoint("ep2", "Creating", None, ())


def test_the_read_sees_weights_and_counts_but_not_learned_state(store: MetadataStore) -> None:
    store.create("endpoint", "ep", "arn:ep", {"EndpointConfigName": "cfg"}, status="InService")
    store.replace_desired("ep", [DesiredVariant("A", 1.0, 1), DesiredVariant("B", 1.0, 1)])
    before = read_endpoint_states(store)["ep"]
    # A routing experiment's rewards change only the state document: no router need converge on that.
    store.update_desired("ep", "A", state={"rewards": {"n": 5}})
    assert read_endpoint_states(store)["ep"] == before
    store.update_desired("ep", "B", weight=0.25, instance_count=2)
    assert read_endpoint_states(store)["ep"].desired == (("A", 1.0, 1), ("B", 0.25, 2))
    store.update("endpoint", "ep", status="Deleting")
    assert read_endpoint_states(store)["ep"].status == "Deleting"
    store.delete_desired("ep")
    store.delete("endpoint", "ep")
    assert read_endpoint_states(store) == {}
