"""Cluster mode on a real multi-node Ray cluster started here (a head and two worker raylets).

An endpoint's instances are Ray actors spread over the nodes and reached over TCP; a worker node
killed under steady traffic costs only the requests in flight on it, and the variant is brought back
to its count on the nodes left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from e2e_support import Deployer, MoorageServer, csv_body, pack_model, train_classifier
from ray_cluster_support import RAY_ENV, RayNodes

pytestmark = pytest.mark.e2e

pytest.importorskip("ray", reason="cluster mode needs moorage[ray]")


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[RayNodes]:
    # CPUs are counters to Ray: 8 per node, so memory (20 GiB a node) is what bounds the instances here.
    nodes = RayNodes(cpus_per_node=8)
    try:
        yield nodes.start(workers=2)
    finally:
        nodes.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, ray_nodes: RayNodes) -> Iterator[MoorageServer]:
    env = {**RAY_ENV, "MOORAGE_RAY_ADDRESS": ray_nodes.address, "MOORAGE_HEALTH_CHECK_INTERVAL": "1"}
    srv = MoorageServer(tmp_path_factory.mktemp("cluster-home"), env=env)
    srv.start(timeout=120)
    try:
        yield srv
    finally:
        srv.stop(timeout=60)


@pytest.fixture(scope="module")
def model_tarball(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    model, X = train_classifier()
    return pack_model(tmp_path_factory.mktemp("model"), model), X


def in_service(server: MoorageServer, name: str) -> list[dict[str, Any]]:
    return [i for i in server.instances(name) if i["State"] == "InService"]


def _exists(sm: Any, endpoint: str) -> bool:
    try:
        sm.describe_endpoint(EndpointName=endpoint)
    except ClientError:
        return False
    return True


def wait_for(what: str, check: Any, timeout: float = 120.0, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def test_instances_spread_over_nodes_and_a_lost_node_costs_only_its_requests(
        server: MoorageServer, ray_nodes: RayNodes, model_tarball: tuple[Path, Any]) -> None:
    tarball, X = model_tarball
    deployer = Deployer(server)
    try:
        name = deployer.deploy("ray3", tarball, count=3)
        instances = in_service(server, name)
        assert len(instances) == 3
        nodes = {i["Node"] for i in instances}
        assert len(nodes) == 3, f"instances not spread over the 3 nodes: {instances}"
        assert all(i["Address"].rsplit(":", 1)[1].isdigit() for i in instances)  # HOST:PORT, over TCP
        rt = server.rt()
        body = csv_body(X[:4])
        assert rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=body)["Body"].read()

        # Steady traffic from a few callers while a worker node dies.
        callers, stop = 4, threading.Event()
        ok, failed = [0] * callers, [0] * callers

        def call(n: int) -> None:
            client = server.rt()
            while not stop.is_set():
                try:
                    client.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=body)["Body"].read()
                    ok[n] += 1
                except ClientError:
                    failed[n] += 1

        threads = [threading.Thread(target=call, args=(n,), daemon=True) for n in range(callers)]
        for t in threads:
            t.start()
        wait_for("traffic to flow", lambda: sum(ok) >= 40, timeout=60)
        victim = ray_nodes.nodes[2]  # a worker node: it holds one of the three instances
        before = sum(ok)
        victim.kill()
        wait_for("traffic to go on after the node died", lambda: sum(ok) >= before + 100, timeout=90)
        # The variant comes back to three instances, on the nodes left.
        back = wait_for("the variant back at 3 instances",
                        lambda: (lambda live: live if len(live) == 3 and len({i["Node"] for i in live}) == 2
                                 else None)(in_service(server, name)), timeout=180)
        stop.set()
        for t in threads:
            t.join(60)
        assert sum(failed) <= callers, (
            f"{sum(failed)} requests failed (at most the {callers} in flight on the lost node may): ok={sum(ok)}")
        assert len({i["Node"] for i in back}) == 2
        print(f"node lost under traffic: {sum(ok)} answered, {sum(failed)} failed; back at 3 instances")
    finally:
        deployer.cleanup()


def test_an_instance_type_no_node_can_hold_fails_with_the_reason(
        server: MoorageServer, model_tarball: tuple[Path, Any]) -> None:
    tarball, _ = model_tarball
    deployer = Deployer(server)
    try:
        from e2e_support import new_name, variant

        name = new_name("raybig")
        deployer.model(name, tarball)
        deployer.config(name, [variant("AllTraffic", name, instance_type="ml.m5.24xlarge")])  # 96 vCPU
        deployer.endpoint(name, name)
        desc = deployer.wait_status(name, {"Failed"}, timeout=60)
        assert "no node of the Ray cluster can hold" in desc["FailureReason"], desc["FailureReason"]
    finally:
        deployer.cleanup()



def test_a_scale_out_the_cluster_has_no_room_for_waits_saying_so_then_fails_with_the_reason(
        server: MoorageServer, ray_nodes: RayNodes, model_tarball: tuple[Path, Any]) -> None:
    """ml.m5.xlarge asks for 4 CPU and 16 GiB: one fits a node (8 CPU, 20 GiB). One instance per node
    comes up; scaled to one more, the new one waits for room, the listing says why, and past its start
    bound the endpoint's FailureReason says it was pending, while the instances in service go on serving."""
    from e2e_support import new_name, variant

    tarball, X = model_tarball
    nodes = sum(node.alive for node in ray_nodes.nodes)  # (Ray itself takes a while to see a node gone)
    deployer = Deployer(server)
    try:
        name = new_name("rayfull")
        deployer.model(name, tarball, env={"MOORAGE_STARTUP_TIMEOUT": "20"})  # the start's bound
        deployer.config(name, [variant("AllTraffic", name, count=nodes, instance_type="ml.m5.xlarge")])
        deployer.endpoint(name, name)
        deployer.wait_in_service(name)
        server.sm().update_endpoint_weights_and_capacities(EndpointName=name, DesiredWeightsAndCapacities=[
            {"VariantName": "AllTraffic", "DesiredInstanceCount": nodes + 1}])
        waiting = wait_for("an instance waiting for room",
                           lambda: [i for i in server.instances(name) if i.get("Waiting")], timeout=60)
        assert "no node of the Ray cluster has room for 4 CPU, 16.0 GiB memory" in waiting[0]["Waiting"]
        desc = wait_for("the scale-out to fail", lambda: (lambda d: d if d.get("FailureReason") else None)(
            server.sm().describe_endpoint(EndpointName=name)), timeout=120)
        assert "pending: no node of the Ray cluster has room" in desc["FailureReason"], desc["FailureReason"]
        assert desc["EndpointStatus"] == "InService"
        assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == nodes
        rt = server.rt()
        assert rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=csv_body(X[:2]))["Body"].read()
    finally:
        deployer.cleanup()


def test_a_serial_pipeline_and_a_multi_model_endpoint_run_on_ray_too(
        server: MoorageServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same placement for a model of several containers (a chain of actors, the chain's logic in the
    router) and for a multi-model variant (each loaded model an actor of its own)."""
    import io
    import json
    import sys
    import tarfile

    from e2e_support import ROLE_ARN, new_name, variant

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "inference_pipeline"))
    from deploy import containers
    from pipeline import build

    work = tmp_path_factory.mktemp("ray-shapes")
    pipeline = build(work / "pipeline")
    deployer = Deployer(server)
    sm, rt = server.sm(), server.rt()
    try:
        name = new_name("raypipe")
        sm.create_model(ModelName=name, ExecutionRoleArn=ROLE_ARN, Containers=containers(pipeline.archives))
        deployer.models.append(name)
        deployer.config(name, [variant("AllTraffic", name)])
        deployer.endpoint(name, name)
        deployer.wait_in_service(name)
        rows = pipeline.held_out[:10]
        body = "\n".join(",".join(repr(float(v)) for v in row) for row in rows)
        answer = rt.invoke_endpoint(EndpointName=name, ContentType="text/csv", Accept="text/csv", Body=body)
        assert answer["Body"].read().decode().split() == pipeline.expected(rows)

        code = ("import json, os\n"
                "def model_fn(model_dir, context=None):\n"
                "    return open(os.path.join(model_dir, 'name.txt')).read().strip()\n"
                "def transform_fn(name, body, content_type, accept):\n"
                "    return json.dumps({'model': name}), 'application/json'\n")
        prefix = work / "models"
        prefix.mkdir()
        # The pipeline's three containers hold 24 GiB of the nodes' 40: gone before the models load.
        sm.delete_endpoint(EndpointName=name)
        wait_for("the pipeline's instances to go", lambda: not _exists(sm, name), timeout=120)
        for model in ("alpha", "beta"):
            with tarfile.open(prefix / f"{model}.tar.gz", "w:gz") as tar:
                for member, data in (("name.txt", model.encode()), ("code/inference.py", code.encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        mme = new_name("raymme")
        sm.create_model(ModelName=mme, ExecutionRoleArn=ROLE_ARN, PrimaryContainer={
            "Image": "sklearn", "Mode": "MultiModel", "ModelDataUrl": prefix.as_uri()})
        deployer.models.append(mme)
        deployer.config(mme, [variant("AllTraffic", mme)])
        deployer.endpoint(mme, mme)
        deployer.wait_in_service(mme)
        for model in ("alpha", "beta", "alpha"):
            reply = rt.invoke_endpoint(EndpointName=mme, ContentType="text/csv", Body=b"x",
                                       TargetModel=f"{model}.tar.gz")
            assert json.loads(reply["Body"].read()) == {"model": model}
    finally:
        deployer.cleanup()
