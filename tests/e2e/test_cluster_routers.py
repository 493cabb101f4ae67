"""Several routers over one PostgreSQL database: what one router is told, every other serves.

Two real `moorage serve` processes, each with its own home and port, share a real PostgreSQL
database (tests/postgres_support.py); each runs its own instances (no Ray here: tests/e2e/test_cluster_ray.py).
An endpoint created, re-weighted, updated or deleted through one router is served accordingly by the
other within a bounded wait (MOORAGE_CLUSTER_SYNC_SECONDS, control/cluster_sync.py), and a router
restarted comes back serving everything. The two routers are shared by the module's tests; each
test makes its own endpoints and waits on conditions, never on time.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    Deployer,
    MoorageServer,
    assert_predictions,
    err_code,
    err_message,
    file_url,
    invoke,
    new_name,
    pack_model,
    predict,
    train_classifier,
    train_regressor,
    variant,
    wait_pids_gone,
    wait_until,
)
from postgres_support import PostgresServer, postgres_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.e2e

SYNC_SECONDS = 1.0
# A follower learns of a change within one sync interval; bringing a fleet up then takes an instance's
# start (a process and a model load) on a machine other tests share: the waits allow for that.
SERVE_WAIT = 90.0
CHANGE_WAIT = 30.0


class Routers:
    def __init__(self, a: MoorageServer, b: MoorageServer, models: dict[str, tuple[str, Any, np.ndarray]]):
        self.a, self.b = a, b
        self.models = models  # name -> (ModelDataUrl, estimator, X)


@pytest.fixture(scope="module")
def routers(postgres_server: PostgresServer,  # noqa: F811 - the fixture imported above
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routers]:
    url = postgres_server.new_database()
    root = tmp_path_factory.mktemp("routers")
    env = {"MOORAGE_DATABASE_URL": url, "MOORAGE_CLUSTER_SYNC_SECONDS": str(SYNC_SECONDS)}
    models = {}
    for kind, (estimator, X) in (("classifier", train_classifier()), ("regressor", train_regressor())):
        models[kind] = (file_url(pack_model(root / kind, estimator)), estimator, X)
    a = MoorageServer(root / "a", env=env)
    b = MoorageServer(root / "b", env=env)
    try:
        a.start(timeout=90)
        b.start(timeout=90)
        yield Routers(a, b, models)
    finally:
        b.stop()
        a.stop()


def deploy(dep: Deployer, models: dict[str, tuple[str, Any, np.ndarray]], variants: list[tuple[str, str, int]],
           *, wait: bool = True) -> str:
    """A model per distinct kind, a config of ``variants`` (name, model kind, count) and an endpoint."""
    name = new_name("cluster")
    for kind in {k for _, k, _ in variants}:
        dep.model(f"{name}-{kind}", models[kind][0])
    dep.config(name, [variant(v, f"{name}-{kind}", count=count) for v, kind, count in variants])
    dep.endpoint(name, name)
    if wait:
        dep.wait_in_service(name)
    return name


def expected(models: dict[str, tuple[str, Any, np.ndarray]], kind: str) -> tuple[np.ndarray, np.ndarray]:
    _, estimator, X = models[kind]
    return X[:5], estimator.predict(X[:5])


def served(srv: MoorageServer, endpoint: str, models: dict[str, tuple[str, Any, np.ndarray]], kind: str) -> bool:
    """Whether ``srv`` answers ``endpoint`` with ``kind``'s predictions (an error or another model's: no)."""
    X, want = expected(models, kind)
    try:
        assert_predictions(predict(srv.rt(), endpoint, X), want)
    except (AssertionError, ClientError):
        return False
    return True


def gone(srv: MoorageServer, endpoint: str) -> bool:
    try:
        invoke(srv.rt(), endpoint, b"1,2,3,4")
    except ClientError as exc:
        return err_code(exc) == "ValidationError" and "not found" in err_message(exc)
    return False


@pytest.fixture
def via_a(routers: Routers) -> Iterator[Deployer]:
    dep = Deployer(routers.a)
    try:
        yield dep
    finally:
        dep.cleanup()


def test_an_endpoint_created_through_one_router_is_served_by_the_other(routers: Routers, via_a: Deployer) -> None:
    started = time.monotonic()
    name = deploy(via_a, routers.models, [("AllTraffic", "classifier", 1)], wait=False)
    wait_until(lambda: served(routers.b, name, routers.models, "classifier"), SERVE_WAIT, 0.05,
               f"router B to serve {name}, created through A")
    first_on_b = time.monotonic() - started
    via_a.wait_in_service(name)
    in_service = time.monotonic() - started
    print(f"\npropagation: CreateEndpoint on A -> first 200 on B {first_on_b:.2f} s "
          f"(A's DescribeEndpoint InService seen at {in_service:.2f} s)")
    assert served(routers.a, name, routers.models, "classifier")
    # B serves it with its own instances and reports them, and it wrote nothing: A ran the lifecycle.
    assert routers.b.instances(name)
    assert routers.b.sm().describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"


def test_weights_and_counts_changed_through_one_router_reach_the_other(routers: Routers, via_a: Deployer) -> None:
    name = deploy(via_a, routers.models, [("One", "classifier", 1), ("Two", "classifier", 1)])
    wait_until(lambda: served(routers.b, name, routers.models, "classifier"), SERVE_WAIT, 0.1,
               f"router B to serve {name}")
    started = time.monotonic()
    routers.b.sm().update_endpoint_weights_and_capacities(EndpointName=name, DesiredWeightsAndCapacities=[
        {"VariantName": "One", "DesiredWeight": 0.0}, {"VariantName": "Two", "DesiredInstanceCount": 2}])

    def weights_on_a() -> bool:
        desc = routers.a.sm().describe_endpoint(EndpointName=name)
        return {v["VariantName"]: v["CurrentWeight"] for v in desc["ProductionVariants"]}["One"] == 0.0

    wait_until(weights_on_a, CHANGE_WAIT, 0.05, f"A's DescribeEndpoint to show One's CurrentWeight 0 for {name}")
    print(f"\npropagation: UpdateEndpointWeightsAndCapacities on B -> CurrentWeight on A "
          f"{time.monotonic() - started:.2f} s")

    def count_on_a() -> bool:
        desc = routers.a.sm().describe_endpoint(EndpointName=name)
        two = next(v for v in desc["ProductionVariants"] if v["VariantName"] == "Two")
        return two["CurrentInstanceCount"] == 2 and two["DesiredInstanceCount"] == 2

    wait_until(count_on_a, SERVE_WAIT, 0.2, f"A to run 2 instances of {name}'s variant Two")
    print(f"propagation: ... -> A's second instance of Two in service {time.monotonic() - started:.2f} s")
    assert len(routers.a.instances(name, "Two")) == 2
    # A's own traffic follows the weights B was given: variant One gets nothing now.
    rt = routers.a.rt()
    answered = Counter(invoke(rt, name, b"1,2,3,4")["InvokedProductionVariant"] for _ in range(20))
    assert answered == Counter({"Two": 20})


def test_an_update_through_one_router_is_served_by_the_other(routers: Routers, via_a: Deployer) -> None:
    name = deploy(via_a, routers.models, [("AllTraffic", "classifier", 1)])
    wait_until(lambda: served(routers.b, name, routers.models, "classifier"), SERVE_WAIT, 0.1,
               f"router B to serve {name}")
    model = via_a.model(new_name("cluster-reg"), routers.models["regressor"][0])
    config = via_a.config(new_name("cluster-reg"), [variant("AllTraffic", model)])
    routers.a.sm().update_endpoint(EndpointName=name, EndpointConfigName=config)
    via_a.wait_status(name, {"InService"}, timeout=SERVE_WAIT)
    finished = time.monotonic()
    assert routers.a.sm().describe_endpoint(EndpointName=name)["EndpointConfigName"] == config
    assert served(routers.a, name, routers.models, "regressor")
    wait_until(lambda: served(routers.b, name, routers.models, "regressor"), SERVE_WAIT, 0.05,
               f"router B to serve {name}'s new model")
    print(f"\npropagation: UpdateEndpoint finished on A -> B serves the new model {time.monotonic() - finished:.2f} s")
    # B built its own fleet of the new config and retired the old one: one instance, the new model's.
    wait_until(lambda: len(routers.b.instances(name)) == 1, CHANGE_WAIT, 0.2, f"B's old fleet of {name} to go")


def test_an_endpoint_deleted_through_one_router_is_gone_on_the_other(routers: Routers, via_a: Deployer) -> None:
    name = deploy(via_a, routers.models, [("AllTraffic", "classifier", 1)])
    wait_until(lambda: served(routers.b, name, routers.models, "classifier"), SERVE_WAIT, 0.1,
               f"router B to serve {name}")
    pids = [i["Pid"] for i in routers.a.instances(name)]
    started = time.monotonic()
    routers.b.sm().delete_endpoint(EndpointName=name)
    wait_until(lambda: gone(routers.a, name), CHANGE_WAIT, 0.05, f"router A to answer that {name} is gone")
    print(f"\npropagation: DeleteEndpoint on B -> A answers not found {time.monotonic() - started:.2f} s")
    with pytest.raises(ClientError) as info:
        routers.a.sm().describe_endpoint(EndpointName=name)
    assert err_code(info.value) == "ValidationException"
    # A stopped the instances it ran for the endpoint.
    assert wait_pids_gone(pids, timeout=CHANGE_WAIT) == []


def test_a_restarted_router_comes_back_serving_everything(routers: Routers, via_a: Deployer) -> None:
    kept = deploy(via_a, routers.models, [("AllTraffic", "classifier", 1)])
    wait_until(lambda: served(routers.b, kept, routers.models, "classifier"), SERVE_WAIT, 0.1,
               f"router B to serve {kept}")
    routers.b.stop()
    # Made while B is down: B learns of it from the store when it is back.
    made = deploy(via_a, routers.models, [("AllTraffic", "regressor", 1)])
    routers.b.start(timeout=90)
    for name, kind in ((kept, "classifier"), (made, "regressor")):
        wait_until(lambda n=name, k=kind: served(routers.b, n, routers.models, k), SERVE_WAIT, 0.1,
                   f"restarted router B to serve {name}")
    # ...and it still follows A afterwards.
    routers.a.sm().delete_endpoint(EndpointName=made)
    wait_until(lambda: gone(routers.b, made), CHANGE_WAIT, 0.1, f"router B to drop {made}")


SLOW_LOAD = """
import os
import time

import joblib


def model_fn(model_dir):
    time.sleep(8)  # the creating router is killed meanwhile
    return joblib.load(os.path.join(model_dir, "model.joblib"))
"""


@pytest.fixture
def router_c(routers: Routers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    """A third router that reads the store only at its start (an hour's sync interval): it has no fleet of
    an endpoint made after it started until something makes it need one."""
    env = {**routers.a.extra_env, "MOORAGE_CLUSTER_SYNC_SECONDS": "3600"}
    c = MoorageServer(tmp_path_factory.mktemp("router-c"), env=env)
    c.start(timeout=90)
    try:
        yield c
    finally:
        c.stop()


def test_an_update_through_a_router_that_has_no_fleet_of_the_endpoint_yet_goes_ahead(
        routers: Routers, via_a: Deployer, router_c: MoorageServer) -> None:
    name = deploy(via_a, routers.models, [("AllTraffic", "classifier", 1)])
    model = via_a.model(new_name("cluster-reg"), routers.models["regressor"][0])
    config = via_a.config(new_name("cluster-reg"), [variant("AllTraffic", model)])
    router_c.sm().update_endpoint(EndpointName=name, EndpointConfigName=config)
    desc = Deployer(router_c, via_a.sm).wait_status(name, {"InService"}, timeout=SERVE_WAIT)
    assert desc["EndpointConfigName"] == config, desc.get("FailureReason")
    assert not desc.get("FailureReason")
    assert served(router_c, name, routers.models, "regressor")
    wait_until(lambda: served(routers.a, name, routers.models, "regressor"), SERVE_WAIT, 0.1,
               f"router A to serve {name}'s new model, updated through C")


def test_an_endpoint_whose_creating_router_died_is_finished_by_the_leader(
        routers: Routers, via_a: Deployer, router_c: MoorageServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    _, estimator, _ = routers.models["classifier"]
    slow = file_url(pack_model(tmp_path_factory.mktemp("slow"), estimator, inference_py=SLOW_LOAD))
    name = new_name("cluster-cut")
    via_a.model(name, slow)
    via_a.config(name, [variant("AllTraffic", name)])
    router_c.sm().create_endpoint(EndpointName=name, EndpointConfigName=name)
    via_a.endpoints.append(name)
    assert routers.a.sm().describe_endpoint(EndpointName=name)["EndpointStatus"] == "Creating"
    assert router_c.proc is not None
    router_c.proc.kill()  # mid-creation: its instance is still loading the model
    router_c.proc.wait(30)
    desc = via_a.wait_status(name, {"InService", "Failed"}, timeout=SERVE_WAIT)
    assert desc["EndpointStatus"] == "InService", desc.get("FailureReason")
    assert served(routers.a, name, routers.models, "classifier")


def test_a_transform_job_stopped_through_another_router_is_stopped_by_its_own(
        routers: Routers, tmp_path_factory: pytest.TempPathFactory) -> None:
    from batch_support import create_model, csv_rows, job_request, slow_model

    _, estimator, X = routers.models["classifier"]
    work = tmp_path_factory.mktemp("stop-elsewhere")
    tarball, env = slow_model(work / "slow", estimator)
    sm_a, sm_b = routers.a.sm(), routers.b.sm()
    model = create_model(sm_a, new_name("cluster-slow"), tarball, env)
    (work / "in").mkdir()
    (work / "in" / "rows.csv").write_text("\n".join(csv_rows(X[:200])) + "\n")
    name = new_name("cluster-stop")
    sm_a.create_transform_job(**job_request(name, model, str(work / "in"), str(work / "out"), strategy="SingleRecord"))
    def running_pids() -> list[int]:
        _, _, body = routers.a.signed_request("GET", f"/moorage/v1/transform-jobs/{name}")
        progress = json.loads(body)["Progress"]
        return [p for i in progress.get("Instances", []) for p in i["Pids"]] if progress.get("RecordsDone") else []

    pids = wait_until(running_pids, CHANGE_WAIT, 0.2, f"{name}'s first records on router A")
    sm_b.stop_transform_job(TransformJobName=name)  # B does not run it: A must notice and stop it
    assert sm_b.describe_transform_job(TransformJobName=name)["TransformJobStatus"] in ("Stopping", "Stopped")
    wait_until(lambda: sm_a.describe_transform_job(TransformJobName=name)["TransformJobStatus"] == "Stopped",
               CHANGE_WAIT, 0.2, f"{name} to be stopped by router A")
    # A really stopped it: its instance is gone and it wrote no output.
    assert wait_pids_gone(pids, timeout=CHANGE_WAIT) == []
    assert not (work / "out").exists() or list((work / "out").iterdir()) == []
    sm_a.delete_model(ModelName=model)
