"""Access keys over a real SQLite store (control/access_keys.py) and the verifier that decides with them
(api/access.py): grants checked, secrets kept out of what is listed, revoke and rotate seen at once, keys
read back by a new process on the same home, and refusals that name the key id and never the secret."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.api.access import ADMIN, ANYONE, INVOKE, READ, WRITE, AccessDeniedException, KeyedVerifier, kind_of
from moorage.api.sigv4 import Action, Principal
from moorage.config import Settings
from moorage.control.access_keys import AccessKeys
from moorage.control.context import Context
from moorage.errors import ResourceNotFound, ValidationException
from moorage.serving.route_table import RouteTable
from moorage.store.artifacts import ArtifactStore
from moorage.store.metadata import MetadataStore


def _context(home: Path) -> Context:
    settings = Settings.load(home=home)
    settings.home.mkdir(parents=True, exist_ok=True)
    return Context(settings, MetadataStore(settings.database_url), ArtifactStore(settings.models_dir),
                   RouteTable(settings.logs_dir))


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    context = _context(tmp_path / "home")
    try:
        yield context
    finally:
        context.store.close()


def _principal(key_id: str) -> Principal:
    return Principal(key_id, "us-east-1", "sagemaker")


@pytest.mark.parametrize(("role", "endpoints", "message"), [
    ("superuser", None, "is not one of"), ("viewer", ["a"], "cannot"), ("admin", ["a"], "cannot"),
    ("deployer", [" "], "at least one"), ("invoker", ["a_b"], "is not an endpoint name"),
    ("invoker", ["-a"], "is not an endpoint name"), ("invoker", ["a" * 64], "is not an endpoint name")])
def test_bad_grants_are_refused(ctx: Context, role: str, endpoints: list[str] | None, message: str) -> None:
    with pytest.raises(ValidationException, match=message):
        AccessKeys(ctx).create(role, endpoints)


def test_keys_persist_without_their_secret_in_what_is_listed(ctx: Context, tmp_path: Path) -> None:
    keys = AccessKeys(ctx)
    made = keys.create("invoker", ["b", "a", "b"])
    assert made.endpoints == ("b", "a")
    assert "SecretAccessKey" not in made.describe() and made.issued()["SecretAccessKey"] == made.secret_access_key
    again = _context(tmp_path / "home")  # another process on the same home
    try:
        assert AccessKeys(again).get(made.access_key_id) == made
    finally:
        again.store.close()


def test_revoke_and_rotate_take_effect_at_once(ctx: Context) -> None:
    keys = AccessKeys(ctx)
    key = keys.create("deployer", ["e1"])
    verifier = KeyedVerifier({"ADMIN": "s"}, account_id="000000000000", region="us-east-1", keys=keys)
    assert verifier.role_of(key.access_key_id) == "deployer"
    rotated = keys.rotate(key.access_key_id)
    assert (rotated.role, rotated.endpoints) == ("deployer", ("e1",))
    assert rotated.access_key_id != key.access_key_id and rotated.secret_access_key != key.secret_access_key
    assert keys.get(key.access_key_id) is None and verifier.role_of(key.access_key_id) is None
    keys.revoke(rotated.access_key_id)
    assert keys.list() == []
    with pytest.raises(ResourceNotFound):
        keys.revoke(rotated.access_key_id)
    with pytest.raises(ResourceNotFound):
        keys.rotate(key.access_key_id)


@pytest.mark.parametrize(("action", "kind"), [
    (Action("sagemaker", "CreateEndpoint"), WRITE), (Action("sagemaker", "DescribeEndpoint"), READ),
    (Action("sagemaker", "InvokeEndpoint"), INVOKE), (Action("sts", "GetCallerIdentity"), ANYONE),
    (Action("logs", "StartQuery"), READ), (Action("cloudwatch", "PutMetricData"), WRITE),
    (Action("moorage", "GET /moorage/v1/endpoints"), READ), (Action("moorage", "GET /moorage/v1/access-keys"), ADMIN),
    (Action("moorage", "POST /moorage/v1/endpoints/{name}/feedback"), INVOKE),
    (Action("moorage", "PUT /moorage/v1/artifacts/{key:path}"), WRITE),
    (Action("s3", "HEAD /b/k"), READ), (Action("s3", "DELETE /b/k"), WRITE)])
def test_the_map(action: Action, kind: str) -> None:
    assert kind_of(action) == kind


def test_refusals_name_the_key_and_log_no_secret(ctx: Context, caplog: pytest.LogCaptureFixture) -> None:
    keys = AccessKeys(ctx)
    viewer, invoker = keys.create("viewer"), keys.create("invoker", ["mine"])
    verifier = KeyedVerifier({"ADMIN": "s"}, account_id="000000000000", region="us-east-1", keys=keys)
    verifier.authorize(_principal("ADMIN"), Action("moorage", "POST /moorage/v1/access-keys"))
    verifier.authorize(_principal(viewer.access_key_id), Action("sagemaker", "ListEndpoints"))
    verifier.authorize(_principal(invoker.access_key_id), Action("sagemaker", "InvokeEndpoint", ("mine",)))
    with caplog.at_level(logging.WARNING, logger="moorage.access"):
        with pytest.raises(AccessDeniedException) as caught:
            verifier.authorize(_principal(invoker.access_key_id), Action("sagemaker", "InvokeEndpoint", ("Other",)))
        assert caught.value.message == (
            f"User: arn:aws:iam::000000000000:user/{invoker.access_key_id} is not authorized to perform: "
            "sagemaker:InvokeEndpoint on resource: arn:aws:sagemaker:us-east-1:000000000000:endpoint/other because "
            "no identity-based policy allows the sagemaker:InvokeEndpoint action")
        with pytest.raises(AccessDeniedException):
            verifier.authorize(_principal(viewer.access_key_id), Action("sagemaker", "DeleteModel"))
        with pytest.raises(AccessDeniedException):  # a key revoked after its signature was checked
            verifier.authorize(_principal("MRGKGONE000000000000"), Action("sagemaker", "ListModels"))
    text = caplog.text
    assert invoker.access_key_id in text and viewer.access_key_id in text and "MRGKGONE000000000000" in text
    assert invoker.secret_access_key not in text and viewer.secret_access_key not in text
