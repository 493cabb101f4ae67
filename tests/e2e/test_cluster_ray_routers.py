"""Two routers over one PostgreSQL database with their instances on one Ray cluster: the instances are
shared, not one set per router.

Both routers run `--ray` against a real Ray cluster (a head and a worker raylet) and share a real
PostgreSQL database. An endpoint created through one is served by both with the same instances
(the same TCP addresses); scaling through either router changes the one set; a router that stops
leaves the instances serving for the other; deleting the endpoint stops them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_support import (
    Deployer,
    MoorageServer,
    csv_body,
    file_url,
    new_name,
    pack_model,
    train_classifier,
    variant,
    wait_until,
)
from postgres_support import PostgresServer, postgres_server  # noqa: F401 - a fixture
from ray_cluster_support import RAY_ENV, RayNodes

pytestmark = pytest.mark.e2e

pytest.importorskip("ray", reason="cluster mode needs moorage[ray]")

WAIT = 120.0


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[RayNodes]:
    nodes = RayNodes(cpus_per_node=8)
    try:
        yield nodes.start(workers=1)
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def routers(postgres_server: PostgresServer, ray_nodes: RayNodes,  # noqa: F811 - the fixture imported above
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MoorageServer, MoorageServer]]:
    env = {**RAY_ENV, "MOORAGE_DATABASE_URL": postgres_server.new_database(), "MOORAGE_RAY_ADDRESS": ray_nodes.address,
           "MOORAGE_CLUSTER_SYNC_SECONDS": "1", "MOORAGE_HEALTH_CHECK_INTERVAL": "1"}
    root = tmp_path_factory.mktemp("ray-routers")
    a = MoorageServer(root / "a", env=env)
    b = MoorageServer(root / "b", env=env)
    try:
        a.start(timeout=120)  # first: it leads
        wait_until(lambda: "this router leads the controllers" in a.log_tail(200), 30, 0.2, "router A to lead")
        b.start(timeout=120)
        yield a, b
    finally:
        b.stop(timeout=60)
        a.stop(timeout=60)


def addresses(server: MoorageServer, name: str) -> set[str]:
    return {i["Address"] for i in server.instances(name) if i["State"] == "InService"}


def same_instances(a: MoorageServer, b: MoorageServer, name: str, count: int) -> set[str] | None:
    on_a, on_b = addresses(a, name), addresses(b, name)
    return on_a if len(on_a) == count and on_a == on_b else None


def test_routers_share_one_set_of_instances(routers: tuple[MoorageServer, MoorageServer],
                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    a, b = routers
    model, X = train_classifier()
    tarball: Path = pack_model(tmp_path_factory.mktemp("model"), model)
    deployer = Deployer(a)
    body = csv_body(X[:3])

    def answers(server: MoorageServer, name: str) -> Any:
        return server.rt().invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=body)["Body"].read()

    try:
        name = new_name("shared")
        deployer.model(name, file_url(tarball))
        deployer.config(name, [variant("AllTraffic", name, count=2)])
        deployer.endpoint(name, name)
        deployer.wait_in_service(name)
        first = wait_until(lambda: same_instances(a, b, name, 2), WAIT, 0.5,
                           "both routers to serve the endpoint with the same 2 instances")
        assert answers(a, name) == answers(b, name)

        # Scaled through B (which does not lead): one set of 3, on both.
        b.sm().update_endpoint_weights_and_capacities(EndpointName=name, DesiredWeightsAndCapacities=[
            {"VariantName": "AllTraffic", "DesiredInstanceCount": 3}])
        three = wait_until(lambda: same_instances(a, b, name, 3), WAIT, 0.5, "one set of 3 instances on both")
        assert first < three
        # ...and in, through A: the same one left on both.
        a.sm().update_endpoint_weights_and_capacities(EndpointName=name, DesiredWeightsAndCapacities=[
            {"VariantName": "AllTraffic", "DesiredInstanceCount": 1}])
        one = wait_until(lambda: same_instances(a, b, name, 1), WAIT, 0.5, "one instance left, the same on both")
        assert one < three

        # B stops: A serves on with the same instance (B left it running).
        b.stop(timeout=60)
        assert addresses(a, name) == one
        assert answers(a, name)
        b.start(timeout=120)
        wait_until(lambda: same_instances(a, b, name, 1) == one, WAIT, 0.5, "restarted B to use the same instance")
    finally:
        deployer.cleanup()
