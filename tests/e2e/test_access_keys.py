"""Access keys with roles, end to end: keys made through the admin-only native routes (and ``moorage keys``),
then every operation of every door called with each role's key, checked against what the role may do;
refusals in AWS's shape and logged with the key id, never the secret; revoke, rotate, and a restart."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, SharedCredentialProvider
from botocore.exceptions import ClientError
from starlette.routing import BaseRoute, Mount, Route

from e2e_support import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    MoorageServer,
    err_code,
    err_status,
    http_request,
    new_name,
)
from moorage.api.app import MoorageApp
from moorage.config import Credentials as MoorageCredentials
from moorage.config import Settings

pytestmark = pytest.mark.e2e

Key = tuple[str, str]
# Operation names that change something, and names that only read, whatever the service.
WRITES = ("Create", "Delete", "Update", "Put", "Start", "Stop", "Add", "Register", "Deregister", "Attach",
          "Detach", "Associate", "Disassociate", "Enable", "Disable", "Import", "Retry", "Tag", "Untag", "Set",
          "Send", "Rename", "Batch Delete", "Invoke")
READS = ("Describe", "List", "Get", "Search")
# Named like writes, but they only read logs (IAM counts them as reads too).
QUERIES = {"StartQuery", "StopQuery", "StartLiveTail"}


def make_key(server: MoorageServer, role: str, endpoints: list[str] | None = None) -> Key:
    body: dict[str, Any] = {"Role": role}
    if endpoints is not None:
        body["EndpointNames"] = endpoints
    status, _, reply = server.signed_request("POST", "/moorage/v1/access-keys", json.dumps(body).encode())
    assert status == 200, reply
    doc = json.loads(reply)
    assert doc["Role"] == role
    return doc["AccessKeyId"], doc["SecretAccessKey"]


def signed(server: MoorageServer, key: Key, method: str, path: str, body: bytes = b"", service: str = "sagemaker",
           headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = AWSRequest(method=method, url=server.url + path, data=body, headers=dict(headers or {}))
    SigV4Auth(Credentials(*key), service, REGION).add_auth(request)
    return http_request(method, server.url + path, body=body or None, headers=dict(request.headers.items()))


def json_call(server: MoorageServer, key: Key, target: str, service: str, body: bytes = b"{}",
              ) -> tuple[int, dict[str, str], bytes]:
    return signed(server, key, "POST", "/", body, service,
                  {"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"})


def denied(reply: tuple[int, dict[str, str], bytes]) -> bool:
    _, headers, _ = reply
    return headers.get("x-amzn-errortype") == "AccessDeniedException"


def client(server: MoorageServer, service: str, key: Key) -> Any:
    return boto3.session.Session().client(
        service, endpoint_url=server.url, region_name=REGION, aws_access_key_id=key[0], aws_secret_access_key=key[1],
        config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}))


def operations(service: str) -> list[str]:
    return list(botocore.session.get_session().get_service_model(service).operation_names)


def _walk(server: MoorageServer, key: Key, service: str, prefix: str, signing: str) -> dict[str, bool]:
    """Every operation of a botocore model, called with an empty request: name -> refused for access."""
    return {op: denied(json_call(server, key, f"{prefix}.{op}", signing)) for op in operations(service)}


JSON_SERVICES = [("sagemaker", "SageMaker", "sagemaker"),
                 ("cloudwatch", "GraniteServiceVersion20100801", "monitoring"),
                 ("logs", "Logs_20140328", "logs"),
                 ("application-autoscaling", "AnyScaleFrontendService", "application-autoscaling")]


@pytest.mark.parametrize(("service", "prefix", "signing"), JSON_SERVICES, ids=[s[0] for s in JSON_SERVICES])
def test_a_viewer_reads_and_changes_nothing_on_every_json_operation(server: MoorageServer, service: str,
                                                                    prefix: str, signing: str) -> None:
    verdicts = _walk(server, make_key(server, "viewer"), service, prefix, signing)
    writes = [op for op in verdicts if op.startswith(WRITES) and not (service == "logs" and op in QUERIES)]
    reads = [op for op in verdicts if op.startswith(READS)]
    assert writes and reads
    assert [op for op in writes if not verdicts[op]] == []
    assert [op for op in reads if verdicts[op]] == []


@pytest.mark.parametrize(("service", "prefix", "signing"), JSON_SERVICES, ids=[s[0] for s in JSON_SERVICES])
def test_an_invoker_may_call_no_control_plane_operation(server: MoorageServer, service: str, prefix: str,
                                                        signing: str) -> None:
    verdicts = _walk(server, make_key(server, "invoker"), service, prefix, signing)
    assert [op for op, refused in verdicts.items() if not refused] == []


@pytest.mark.parametrize(("service", "prefix", "signing"), JSON_SERVICES, ids=[s[0] for s in JSON_SERVICES])
def test_a_deployer_may_call_every_operation(server: MoorageServer, service: str, prefix: str, signing: str) -> None:
    verdicts = _walk(server, make_key(server, "deployer"), service, prefix, signing)
    assert [op for op, refused in verdicts.items() if refused] == []


def test_the_refusal_is_aws_shaped_and_logged_with_the_key_id_only(server: MoorageServer) -> None:
    key = make_key(server, "viewer")
    with pytest.raises(ClientError) as caught:
        client(server, "sagemaker", key).delete_endpoint(EndpointName="access-nowhere")
    assert (err_code(caught.value), err_status(caught.value)) == ("AccessDeniedException", 400)
    assert caught.value.response["Error"]["Message"] == (
        f"User: arn:aws:iam::000000000000:user/{key[0]} is not authorized to perform: sagemaker:DeleteEndpoint on "
        "resource: arn:aws:sagemaker:us-east-1:000000000000:endpoint/access-nowhere because no identity-based "
        "policy allows the sagemaker:DeleteEndpoint action")
    log = server.log_path.read_text()
    mine = [line for line in log.splitlines() if key[0] in line]
    assert any("access denied" in line and "sagemaker:DeleteEndpoint" in line for line in mine)
    assert key[1] not in log


def test_an_invoker_invokes_and_gives_feedback_only(server: MoorageServer) -> None:
    key = make_key(server, "invoker")
    runtime = client(server, "sagemaker-runtime", key)
    # Allowed: the endpoint's absence is what answers, not the key's role.
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(EndpointName=new_name("nowhere"), Body=b"1", ContentType="text/csv")
    assert err_code(caught.value) == "ValidationError"
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint_async(EndpointName=new_name("nowhere"), InputLocation="s3://b/k")
    assert err_code(caught.value) != "AccessDeniedException"
    status, headers, _ = signed(server, key, "POST", f"/moorage/v1/endpoints/{new_name('nowhere')}/feedback",
                                b'{"Feedback": []}')
    assert headers.get("x-amzn-errortype") != "AccessDeniedException"
    # Not allowed: reading the native API, or anything the admin does.
    for method, path in (("GET", "/moorage/v1/endpoints"), ("GET", "/moorage/v1/access-keys"),
                         ("POST", "/moorage/v1/metrics")):
        status, headers, _ = signed(server, key, method, path, b"{}" if method == "POST" else b"")
        assert (status, headers["x-amzn-errortype"]) == (403, "AccessDeniedException"), path
    # STS's GetCallerIdentity is anyone's.
    assert client(server, "sts", key).get_caller_identity()["Account"]


def test_keys_limited_to_endpoints(server: MoorageServer) -> None:
    mine, other = new_name("mine"), new_name("other")
    invoker = make_key(server, "invoker", [mine])
    runtime = client(server, "sagemaker-runtime", invoker)
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(EndpointName=mine, Body=b"1", ContentType="text/csv")
    assert err_code(caught.value) == "ValidationError"  # allowed: it is not there
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(EndpointName=other, Body=b"1", ContentType="text/csv")
    assert err_code(caught.value) == "AccessDeniedException"
    assert f"on resource: arn:aws:sagemaker:us-east-1:000000000000:endpoint/{other}" in \
        caught.value.response["Error"]["Message"]

    deployer = client(server, "sagemaker", make_key(server, "deployer", [mine]))
    for call in (lambda n: deployer.delete_endpoint(EndpointName=n),
                 lambda n: deployer.update_endpoint_weights_and_capacities(
                     EndpointName=n, DesiredWeightsAndCapacities=[{"VariantName": "v", "DesiredWeight": 1.0}])):
        with pytest.raises(ClientError) as caught:
            call(other)
        assert err_code(caught.value) == "AccessDeniedException"
        with pytest.raises(ClientError) as caught:
            call(mine)
        assert err_code(caught.value) != "AccessDeniedException"
    scaling = client(server, "application-autoscaling", make_key(server, "deployer", [mine]))
    with pytest.raises(ClientError) as caught:
        scaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=f"endpoint/{other}/variant/v",
                                         ScalableDimension="sagemaker:variant:DesiredInstanceCount",
                                         MinCapacity=1, MaxCapacity=2)
    assert err_code(caught.value) == "AccessDeniedException"
    # What names no endpoint follows the role: a limited deployer still makes models.
    assert deployer.list_models()["Models"] is not None


@pytest.mark.parametrize(("role", "endpoints", "message"), [
    ("root", None, "is not one of"), ("viewer", ["a"], "cannot"), ("invoker", [], "at least one"),
    ("invoker", ["bad name!"], "is not an endpoint name")])
def test_bad_grants_are_refused(server: MoorageServer, role: str, endpoints: list[str] | None, message: str) -> None:
    body: dict[str, Any] = {"Role": role}
    if endpoints is not None:
        body["EndpointNames"] = endpoints
    status, headers, reply = server.signed_request("POST", "/moorage/v1/access-keys", json.dumps(body).encode())
    assert (status, headers["x-amzn-errortype"]) == (400, "ValidationException") and message in reply.decode()


def test_only_the_admin_manages_keys(server: MoorageServer) -> None:
    for role in ("deployer", "viewer", "invoker"):
        key = make_key(server, role)
        for method, path in (("POST", "/moorage/v1/access-keys"), ("GET", "/moorage/v1/access-keys"),
                             ("DELETE", f"/moorage/v1/access-keys/{key[0]}"),
                             ("POST", f"/moorage/v1/access-keys/{key[0]}/rotate"),
                             ("POST", "/moorage/v1/edge/fleets/f/devices/d/keys")):
            status, headers, _ = signed(server, key, method, path, b'{"Role": "admin"}' if method == "POST" else b"")
            assert (status, headers["x-amzn-errortype"]) == (403, "AccessDeniedException"), (role, method, path)


def test_s3_and_the_native_api_follow_the_roles(server: MoorageServer) -> None:
    bucket = new_name("access-bucket")
    admin = client(server, "s3", (server.access_key_id, server.secret_access_key))
    admin.create_bucket(Bucket=bucket)
    admin.put_object(Bucket=bucket, Key="k", Body=b"v")
    viewer = client(server, "s3", make_key(server, "viewer"))
    assert viewer.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    with pytest.raises(ClientError) as caught:
        viewer.put_object(Bucket=bucket, Key="k", Body=b"overwritten")
    assert (err_code(caught.value), err_status(caught.value)) == ("AccessDenied", 403)
    assert admin.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    with pytest.raises(ClientError) as caught:
        viewer.delete_object(Bucket=bucket, Key="k")
    assert err_code(caught.value) == "AccessDenied"
    assert [o["Key"] for o in viewer.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]
    assert viewer.head_object(Bucket=bucket, Key="k")["ContentLength"] == 1
    deployer = client(server, "s3", make_key(server, "deployer"))
    deployer.put_object(Bucket=bucket, Key="d", Body=b"deployed")
    deployer.delete_object(Bucket=bucket, Key="d")
    with pytest.raises(ClientError) as caught:
        client(server, "s3", make_key(server, "invoker")).get_object(Bucket=bucket, Key="k")
    assert err_code(caught.value) == "AccessDenied"
    viewer_key = make_key(server, "viewer")
    assert signed(server, viewer_key, "GET", "/moorage/v1/endpoints")[0] == 200
    status, headers, _ = signed(server, viewer_key, "PUT", f"/moorage/v1/alarms/{new_name('a')}", b"{}")
    assert (status, headers["x-amzn-errortype"]) == (403, "AccessDeniedException")


def test_revoke_and_rotate(server: MoorageServer) -> None:
    key = make_key(server, "viewer")
    sm = client(server, "sagemaker", key)
    sm.list_models()
    status, _, reply = server.signed_request("POST", f"/moorage/v1/access-keys/{key[0]}/rotate")
    assert status == 200, reply
    rotated = json.loads(reply)
    assert (rotated["ReplacedAccessKeyId"], rotated["Role"]) == (key[0], "viewer")
    with pytest.raises(ClientError) as caught:
        sm.list_models()
    assert err_code(caught.value) == "UnrecognizedClientException"
    new = client(server, "sagemaker", (rotated["AccessKeyId"], rotated["SecretAccessKey"]))
    new.list_models()
    status, _, reply = server.signed_request("GET", "/moorage/v1/access-keys")
    listed = {k["AccessKeyId"]: k for k in json.loads(reply)["AccessKeys"]}
    assert rotated["AccessKeyId"] in listed and key[0] not in listed
    assert listed[server.access_key_id]["Role"] == "admin"
    assert all("SecretAccessKey" not in k for k in listed.values())
    assert server.signed_request("DELETE", f"/moorage/v1/access-keys/{rotated['AccessKeyId']}")[0] == 200
    with pytest.raises(ClientError) as caught:
        new.list_models()
    assert err_code(caught.value) == "UnrecognizedClientException"
    status, headers, _ = server.signed_request("DELETE", f"/moorage/v1/access-keys/{rotated['AccessKeyId']}")
    assert (status, headers["x-amzn-errortype"]) == (404, "ResourceNotFound")
    status, _, _ = server.signed_request("DELETE", f"/moorage/v1/access-keys/{server.access_key_id}")
    assert status == 400


def _moorage(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("MOORAGE_HOME", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
                                                             "AWS_SECRET_ACCESS_KEY")}
    return subprocess.run([sys.executable, "-m", "moorage", "keys", *args, "--home", str(home)], capture_output=True,
                          timeout=120, env=env)


def test_the_cli_makes_keys_that_survive_a_restart(fresh_server: Callable[..., MoorageServer],
                                                   tmp_path: Path) -> None:
    srv = fresh_server()
    out = tmp_path / "deployer-credentials"
    made = _moorage(srv.home, "create", "--role", "deployer", "--endpoints", "a,b", "--credentials-out", str(out))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # Read as every AWS tool reads it: botocore's shared-credentials provider.
    loaded = SharedCredentialProvider(str(out), "default").load()
    assert loaded is not None
    key = (loaded.access_key, loaded.secret_key)
    assert key[1].encode() not in made.stdout
    printed = _moorage(srv.home, "create", "--role", "viewer")
    assert printed.returncode == 0 and b"secret access key:" in printed.stdout
    listing = _moorage(srv.home, "list")
    assert listing.returncode == 0 and key[0].encode() in listing.stdout and key[1].encode() not in listing.stdout

    srv.stop()
    srv.start()
    deployer = client(srv, "sagemaker", key)
    assert deployer.list_endpoints()["Endpoints"] == []
    with pytest.raises(ClientError) as caught:
        deployer.delete_endpoint(EndpointName="c")
    assert err_code(caught.value) == "AccessDeniedException"
    rotated = _moorage(srv.home, "rotate", key[0], "--credentials-out", str(out))
    assert rotated.returncode == 0, rotated.stderr
    assert _moorage(srv.home, "revoke", "MRGKNOSUCHKEY0000000").returncode != 0
    with pytest.raises(ClientError) as caught:
        deployer.list_endpoints()
    assert err_code(caught.value) == "UnrecognizedClientException"
    assert key[1] not in srv.log_path.read_text()


# -- every native route, per role ---------------------------------------------------------------------------------
# Native routes an invoker may call (feedback and ground truth), and those only the admin may (keys).
INVOKER_ROUTES = {("POST", "/moorage/v1/endpoints/{name}/feedback"),
                  ("POST", "/moorage/v1/endpoints/{name}/ground-truth")}
ADMIN_ROUTES = {("GET", "/moorage/v1/access-keys"), ("POST", "/moorage/v1/access-keys"),
                ("DELETE", "/moorage/v1/access-keys/{key}"), ("POST", "/moorage/v1/access-keys/{key}/rotate"),
                ("POST", "/moorage/v1/edge/fleets/{fleet}/devices/{device}/keys"),
                ("DELETE", "/moorage/v1/edge/fleets/{fleet}/devices/{device}/keys")}


def _native_routes(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, str, str]]:
    """(method, route, concrete path) of every native route."""
    found = []
    for route in routes:
        if isinstance(route, Mount):
            found += _native_routes(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            params = {name: "a/b" if "path" in type(convertor).__name__.lower() else "probe"
                      for name, convertor in route.param_convertors.items()}
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    found.append((method, prefix + route.path, prefix + route.path_format.format(**params)))
    return found


@pytest.fixture(scope="module")
def native_routes(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str, str]]:
    """The routes the server registers, read off a MoorageApp built on a home of its own (never served)."""
    app = MoorageApp(Settings.load(home=tmp_path_factory.mktemp("routes-home")),
                     [MoorageCredentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)])
    try:
        return _native_routes(list(app.native.routes))
    finally:
        app.store.close()


@pytest.mark.parametrize("role", ["viewer", "invoker", "deployer"])
def test_every_native_route_follows_the_role(server: MoorageServer, native_routes: list[tuple[str, str, str]],
                                             role: str) -> None:
    key = make_key(server, role)
    assert len(native_routes) >= 20, native_routes
    wrong = []
    for method, route, path in native_routes:
        body = b"" if method in ("GET", "DELETE") else b"{}"
        reply = signed(server, key, method, path, body, headers={"X-Amz-Content-SHA256": hashlib.sha256(body)
                                                                   .hexdigest()})
        if (method, route) in ADMIN_ROUTES:
            allowed = False
        elif role == "invoker":
            allowed = (method, route) in INVOKER_ROUTES
        elif role == "viewer":
            allowed = method == "GET"
        else:
            allowed = True
        if denied(reply) == allowed:
            wrong.append((method, route, reply[0], reply[2][:200]))
    assert wrong == []


def test_the_query_and_cbor_doors_follow_the_roles(server: MoorageServer) -> None:
    viewer = make_key(server, "viewer")
    cloudwatch = client(server, "cloudwatch", viewer)  # boto3's own protocol for CloudWatch
    assert cloudwatch.list_metrics()["Metrics"] is not None
    with pytest.raises(ClientError) as caught:
        cloudwatch.put_metric_data(Namespace="Access/Test", MetricData=[{"MetricName": "m", "Value": 1.0}])
    assert "AccessDenied" in err_code(caught.value)
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    status, _, body = signed(server, viewer, "POST", "/", b"Action=ListMetrics&Version=2010-08-01", "monitoring", form)
    assert status == 200, body
    status, _, body = signed(server, viewer, "POST", "/", b"Action=PutMetricData&Version=2010-08-01&Namespace=A%2FT"
                             b"&MetricData.member.1.MetricName=m&MetricData.member.1.Value=1", "monitoring", form)
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    status, _, body = signed(server, make_key(server, "invoker"), "POST", "/",
                             b"Action=GetCallerIdentity&Version=2011-06-15", "sts", form)
    assert status == 200, body
