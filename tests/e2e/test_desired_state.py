"""What an endpoint was told survives a restart: the store owns its desired state, serving converges on it.

Each kind of change (create, UpdateEndpointWeightsAndCapacities, UpdateEndpoint with and without
RetainAllVariantProperties) is followed by a SIGTERM restart on the same home; DescribeEndpoint
and the real traffic split must then be what they were before the restart. A shadow variant's
weight and count are desired state too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
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
    variant,
    wait_until,
)

pytestmark = pytest.mark.e2e

CALLS = 40


def _variants(srv: MoorageServer, name: str) -> dict[str, tuple[float, float, int, int]]:
    """variant -> (CurrentWeight, DesiredWeight, CurrentInstanceCount, DesiredInstanceCount)."""
    desc = srv.sm().describe_endpoint(EndpointName=name)
    assert desc["EndpointStatus"] == "InService", desc
    return {v["VariantName"]: (v["CurrentWeight"], v["DesiredWeight"], v["CurrentInstanceCount"],
                               v["DesiredInstanceCount"]) for v in desc["ProductionVariants"]}


def _split(srv: MoorageServer, name: str, X: Any) -> Counter[str]:
    rt = srv.rt()
    body = csv_body(X[:2])
    return Counter(rt.invoke_endpoint(EndpointName=name, Body=body, ContentType="text/csv")["InvokedProductionVariant"]
                   for _ in range(CALLS))


def _shadows(srv: MoorageServer, name: str) -> dict[str, tuple[float, float, int, int]]:
    desc = srv.sm().describe_endpoint(EndpointName=name)
    return {v["VariantName"]: (v["CurrentWeight"], v["DesiredWeight"], v["CurrentInstanceCount"],
                               v["DesiredInstanceCount"]) for v in desc.get("ShadowProductionVariants", [])}


def _settled(srv: MoorageServer, name: str, expected: dict[str, tuple[float, float, int, int]]) -> None:
    """Describe reaches ``expected`` (instances take a moment to pass /ping after a restart)."""
    wait_until(lambda: _variants(srv, name) == expected, 90, interval=0.5,
               what=f"{name} to settle at {expected}")


def _restart(srv: MoorageServer) -> None:
    srv.stop(timeout=30)
    srv.start(timeout=90)


def test_every_kind_of_change_survives_a_restart(
    fresh_server: Callable[..., MoorageServer], artifacts: Path, classifier: Any
) -> None:
    clf, X = classifier
    srv = fresh_server()
    dep = Deployer(srv)
    url = file_url(pack_model(artifacts / "desired-state", clf))

    # The case as a user reported it: one variant scaled to 2 at weight 0.5.
    single = dep.deploy("ds-single", url)
    srv.sm().update_endpoint_weights_and_capacities(
        EndpointName=single,
        DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredWeight": 0.5, "DesiredInstanceCount": 2}])
    _settled(srv, single, {"AllTraffic": (0.5, 0.5, 2, 2)})

    # Two variants of one model; the traffic split says which variant served.
    model = dep.model(new_name("ds-model"), url)
    config = dep.config(new_name("ds-config"), [variant("blue", model), variant("green", model)])
    split = dep.endpoint(new_name("ds-split"), config)
    dep.wait_in_service(split)
    created = {"blue": (1.0, 1.0, 1, 1), "green": (1.0, 1.0, 1, 1)}
    _settled(srv, split, created)

    # A production variant and a shadow; the shadow is told to copy half the requests, on two instances.
    shadowed = dep.endpoint(new_name("ds-shadowed"), dep.config(
        new_name("ds-config"), [variant("production", model)], shadows=[variant("shadow", model)]))
    dep.wait_in_service(shadowed)
    srv.sm().update_endpoint_weights_and_capacities(EndpointName=shadowed, DesiredWeightsAndCapacities=[
        {"VariantName": "shadow", "DesiredWeight": 0.5, "DesiredInstanceCount": 2}])
    told = {"shadow": (0.5, 0.5, 2, 2)}
    wait_until(lambda: _shadows(srv, shadowed) == told, 90, interval=0.5, what="the shadow to scale to 2")
    assert _variants(srv, shadowed) == {"production": (1.0, 1.0, 1, 1)}

    _restart(srv)  # after CreateEndpoint
    _settled(srv, split, created)
    wait_until(lambda: _shadows(srv, shadowed) == told, 90, interval=0.5, what="the shadow back at 2 instances")
    assert len(srv.instances(shadowed, "shadow")) == 2
    _settled(srv, single, {"AllTraffic": (0.5, 0.5, 2, 2)})
    assert set(_split(srv, split, X)) == {"blue", "green"}  # 1 in 2**39 to fail by chance

    # UpdateEndpointWeightsAndCapacities: all traffic to green, on two instances.
    srv.sm().update_endpoint_weights_and_capacities(EndpointName=split, DesiredWeightsAndCapacities=[
        {"VariantName": "blue", "DesiredWeight": 0.0},
        {"VariantName": "green", "DesiredWeight": 1.0, "DesiredInstanceCount": 2}])
    shifted = {"blue": (0.0, 0.0, 1, 1), "green": (1.0, 1.0, 2, 2)}
    _settled(srv, split, shifted)
    assert _split(srv, split, X) == Counter({"green": CALLS})
    _restart(srv)
    _settled(srv, split, shifted)
    assert _split(srv, split, X) == Counter({"green": CALLS})
    assert len(srv.instances(split, "green")) == 2

    # UpdateEndpoint to a new config, keeping what the variants were told.
    retained_config = dep.config(new_name("ds-config"), [variant("blue", model, weight=1.0),
                                                         variant("green", model, weight=1.0)])
    srv.sm().update_endpoint(EndpointName=split, EndpointConfigName=retained_config,
                             RetainAllVariantProperties=True)
    dep.wait_in_service(split)
    _settled(srv, split, shifted)
    _restart(srv)
    _settled(srv, split, shifted)
    assert _split(srv, split, X) == Counter({"green": CALLS})

    # UpdateEndpoint to a new config, taking its initial values: all traffic to blue now.
    blue_config = dep.config(new_name("ds-config"), [variant("blue", model, weight=1.0, count=2),
                                                     variant("green", model, weight=0.0)])
    srv.sm().update_endpoint(EndpointName=split, EndpointConfigName=blue_config)
    wait_until(lambda: srv.sm().describe_endpoint(EndpointName=split)["EndpointConfigName"] == blue_config, 90,
               interval=0.5, what="the update to the blue config")
    blue = {"blue": (1.0, 1.0, 2, 2), "green": (0.0, 0.0, 1, 1)}
    _settled(srv, split, blue)
    assert _split(srv, split, X) == Counter({"blue": CALLS})
    _restart(srv)
    _settled(srv, split, blue)
    assert _split(srv, split, X) == Counter({"blue": CALLS})
    _settled(srv, single, {"AllTraffic": (0.5, 0.5, 2, 2)})
