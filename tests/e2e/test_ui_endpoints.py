"""The dashboard's Endpoints pages in a real headless chromium against a real ``moorage serve``.

Signing in (and a wrong secret refused), an endpoint made through boto3 in the list, its invocation
chart growing after traffic, a viewer who sees but cannot press, a deployer's weight change reaching
DescribeEndpoint, and unsafe requests without the session or its CSRF token refused. Screenshots of
each page go to test-artifacts/ui/.
"""
# ruff: noqa: F811 - the fixtures imported from ui_support are parameters of the tests by the same names

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from e2e_support import Deployer, MoorageServer, csv_body, new_name, pack_model, train_classifier, variant, wait_until
from ui_support import browser, http_session, login, screenshot, ui_page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    """A server of this module's own, publishing metrics every second (charts update within seconds)."""
    server = MoorageServer(tmp_path_factory.mktemp("ui-home"), env={"MOORAGE_METRICS_PERIOD": "1"})
    server.start(timeout=90)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def endpoint(ui_server: MoorageServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """An endpoint with two variants (3:1), made through boto3; and its classifier's inputs."""
    model, X = train_classifier()
    tarball = pack_model(tmp_path_factory.mktemp("ui-model"), model)
    deployer = Deployer(ui_server)
    try:
        name = new_name("ui")
        deployer.model(name, tarball.as_uri())
        deployer.config(name, [variant("Main", name, weight=3.0), variant("Canary", name, weight=1.0)])
        deployer.endpoint(name, name)
        deployer.wait_in_service(name)
        yield name, X
    finally:
        deployer.cleanup()


def make_key(server: MoorageServer, role: str) -> tuple[str, str]:
    status, _, reply = server.signed_request("POST", "/moorage/v1/access-keys", json.dumps({"Role": role}).encode())
    assert status == 200, reply
    doc = json.loads(reply)
    return doc["AccessKeyId"], doc["SecretAccessKey"]


def chart_total(page: Any, chart: str) -> float:
    return float(page.get_attribute(f"#chart-{chart} .chart-plot", "data-total") or 0)


def test_sign_in_and_a_wrong_secret_is_refused(ui_server: MoorageServer, ui_page: Any) -> None:
    page = ui_page
    login(page, ui_server, ui_server.access_key_id, "not-the-secret", expect_ok=False)
    assert "/ui/login" in page.url
    assert "Wrong access key id or secret" in page.inner_text("main")
    assert not [c for c in page.context.cookies() if c["name"] == "moorage_ui"]
    screenshot(page, "login")
    login(page, ui_server, ui_server.access_key_id, ui_server.secret_access_key)
    assert page.url.endswith("/ui/endpoints")
    session = next(c for c in page.context.cookies() if c["name"] == "moorage_ui")
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/ui"
    assert ui_server.access_key_id in page.inner_text("header")


def test_a_page_without_a_session_goes_to_the_login(ui_server: MoorageServer, ui_page: Any) -> None:
    page = ui_page
    page.goto(f"{ui_server.url}/ui/endpoints")
    assert "/ui/login" in page.url and "next=%2Fui%2Fendpoints" in page.url
    reply = requests.get(f"{ui_server.url}/ui/endpoints", allow_redirects=False, timeout=10)
    assert reply.status_code == 303 and reply.headers["location"].startswith("/ui/login")
    # Signing in from there comes back to the page asked for.
    page.fill("input[name=access_key_id]", ui_server.access_key_id)
    page.fill("input[name=secret_access_key]", ui_server.secret_access_key)
    with page.expect_navigation():
        page.click("form.stack button[type=submit]")
    assert page.url.endswith("/ui/endpoints")


def test_an_endpoint_appears_and_its_invocation_chart_follows_traffic(
        ui_server: MoorageServer, endpoint: tuple[str, Any], ui_page: Any) -> None:
    name, X = endpoint
    page = ui_page
    login(page, ui_server, ui_server.access_key_id, ui_server.secret_access_key)
    row = page.locator(f'tr[data-endpoint="{name}"]')
    assert row.count() == 1
    text = row.inner_text()
    assert "InService" in text and "Main" in text and "Canary" in text and "75%" in text and "25%" in text
    screenshot(page, "endpoints")

    page.click(f'tr[data-endpoint="{name}"] a')
    page.wait_for_url(f"**/ui/endpoints/{name}")
    page.wait_for_function("() => document.querySelector('#chart-invocations .chart-plot').dataset.renders >= 1")
    before = chart_total(page, "invocations")
    runtime = ui_server.rt()
    sent = 40
    for i in range(sent):
        runtime.invoke_endpoint(EndpointName=name, Body=csv_body(X[i % len(X):][:1]), ContentType="text/csv")
    # app.js polls the chart's JSON every few seconds; its last render's total grows by what was sent.
    page.wait_for_function(
        f"() => Number(document.querySelector('#chart-invocations .chart-plot').dataset.total) >= {before + sent}",
        timeout=30_000)
    # The JSON the page fetches says the same: per-variant lines whose values add up to the traffic.
    data = page.request.get(f"{ui_server.url}/ui/endpoints/{name}/charts/invocations?window=hour").json()
    assert [s["label"] for s in data["series"]] == ["Main", "Canary"]
    assert len(data["x"]) == 60 and all(len(s["values"]) == 60 for s in data["series"])
    assert sum(v or 0 for s in data["series"] for v in s["values"]) >= before + sent
    latency = page.request.get(f"{ui_server.url}/ui/endpoints/{name}/charts/model-latency").json()
    assert any(v is not None for s in latency["series"] for v in s["values"])
    # Instances over time: each variant has run one instance.
    def instances() -> dict[str, list[float]]:
        doc = page.request.get(f"{ui_server.url}/ui/endpoints/{name}/charts/instances").json()
        return {s["label"]: [v for v in s["values"] if v is not None] for s in doc["series"]}

    counts = wait_until(lambda: (lambda got: got if all(got.values()) else None)(instances()), timeout=30,
                        what="instance samples of both variants")
    assert set(counts) == {"Main", "Canary"} and all(v[-1] == 1.0 for v in counts.values()), counts
    # The variants table puts the configured split next to the traffic that flowed (refreshed live).
    page.wait_for_function(
        "() => [...document.querySelectorAll('#variants td[data-invocations]')]"
        f".reduce((n, td) => n + Number(td.dataset.invocations), 0) >= {before + sent}", timeout=30_000)
    assert "75.0%" in page.inner_text('#variants tr[data-variant="Main"]')
    assert page.locator("#instances tbody tr").count() == 2
    page.wait_for_timeout(200)  # let uPlot finish its paint before the picture
    screenshot(page, "endpoint")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the same page, one column
    screenshot(page, "endpoint-phone")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.click(".window-switch button[data-window=day]")
    page.wait_for_function("() => document.querySelector('#chart-invocations .chart-plot').dataset.renders >= 2")
    day = page.request.get(f"{ui_server.url}/ui/endpoints/{name}/charts/invocations?window=day").json()
    assert day["window"] == "day" and len(day["x"]) == 144


def test_a_viewer_sees_but_cannot_change(ui_server: MoorageServer, endpoint: tuple[str, Any], ui_page: Any) -> None:
    name, _ = endpoint
    viewer = make_key(ui_server, "viewer")
    page = ui_page
    login(page, ui_server, *viewer)
    page.goto(f"{ui_server.url}/ui/endpoints/{name}")
    assert "InService" in page.inner_text("#endpoint-status")
    button = page.locator('#variants tr[data-variant="Main"] form.action button')
    assert button.is_disabled()
    assert "viewer" in (button.get_attribute("title") or "")
    screenshot(page, "endpoint-viewer")
    # Forcing the form's POST with the viewer's session and its valid CSRF token is refused all the same.
    token = page.get_attribute('#variants tr[data-variant="Main"] input[name=csrf_token]', "value")
    reply = page.request.post(f"{ui_server.url}/ui/endpoints/{name}/variants/Main",
                              form={"csrf_token": token or "", "weight": "9"}, max_redirects=0)
    assert reply.status == 403, reply.text()
    weights = {v["VariantName"]: v["DesiredWeight"]
               for v in ui_server.sm().describe_endpoint(EndpointName=name)["ProductionVariants"]}
    assert weights["Main"] != 9.0


def test_a_deployer_changes_a_variant_weight(ui_server: MoorageServer, endpoint: tuple[str, Any],
                                             ui_page: Any) -> None:
    name, _ = endpoint
    page = ui_page
    login(page, ui_server, *make_key(ui_server, "deployer"))
    page.goto(f"{ui_server.url}/ui/endpoints/{name}")
    form = page.locator('#variants tr[data-variant="Canary"] form.action')
    form.locator("input[name=weight]").fill("2")
    with page.expect_navigation():
        form.locator("button").click()
    assert "updated=Canary" in page.url
    sm = ui_server.sm()

    def canary_weight() -> float:
        variants = sm.describe_endpoint(EndpointName=name)["ProductionVariants"]
        return next(v["DesiredWeight"] for v in variants if v["VariantName"] == "Canary")

    wait_until(lambda: canary_weight() == 2.0, timeout=30, what="Canary's DesiredWeight 2")
    Deployer(ui_server).wait_status(name, {"InService"})
    # A bad value is refused with the reason, and changes nothing.
    page.goto(f"{ui_server.url}/ui/endpoints/{name}")
    form = page.locator('#variants tr[data-variant="Canary"] form.action')
    form.locator("input[name=instance_count]").fill("-1")
    form.evaluate("f => f.querySelector('input[name=instance_count]').removeAttribute('min')")
    with page.expect_navigation():
        form.locator("button").click()
    assert "instance count must be a whole number" in page.inner_text("main")
    sm.update_endpoint_weights_and_capacities(  # back to the module's split for the other tests
        EndpointName=name, DesiredWeightsAndCapacities=[{"VariantName": "Canary", "DesiredWeight": 1.0}])
    Deployer(ui_server).wait_status(name, {"InService"})


def test_unsafe_requests_need_the_session_and_its_csrf_token(ui_server: MoorageServer,
                                                             endpoint: tuple[str, Any]) -> None:
    name, _ = endpoint
    url = f"{ui_server.url}/ui/endpoints/{name}/variants/Main"
    # No session cookie at all.
    assert requests.post(url, data={"weight": "3"}, allow_redirects=False, timeout=10).status_code == 403
    session, csrf = http_session(ui_server, ui_server.access_key_id, ui_server.secret_access_key)
    # The session, but no token, or a wrong one, or the token of another session.
    assert session.post(url, data={"weight": "3"}, allow_redirects=False, timeout=10).status_code == 403
    assert session.post(url, data={"weight": "3", "csrf_token": "x" * 43}, allow_redirects=False,
                        timeout=10).status_code == 403
    _, other = http_session(ui_server, ui_server.access_key_id, ui_server.secret_access_key)
    assert session.post(url, data={"weight": "3", "csrf_token": other}, allow_redirects=False,
                        timeout=10).status_code == 403
    # The session with its own token goes through (the refusals above were for the token, not the rest).
    ok = session.post(url, data={"weight": "3", "csrf_token": csrf}, allow_redirects=False, timeout=10)
    assert ok.status_code == 303, ok.text[:500]
    # Signing out ends the session: its cookie no longer opens a page.
    assert session.post(f"{ui_server.url}/ui/logout", data={"csrf_token": csrf}, allow_redirects=False,
                        timeout=10).status_code == 303
    reply = session.get(f"{ui_server.url}/ui/endpoints", allow_redirects=False, timeout=10)
    assert reply.status_code == 303


