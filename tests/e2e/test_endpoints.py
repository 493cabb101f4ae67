"""Endpoint lifecycle: create/describe/list/delete, failures, weight/capacity updates, blue/green."""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    WAITER,
    Deployer,
    MoorageServer,
    assert_predictions,
    csv_body,
    decode_predictions,
    err_code,
    err_message,
    file_url,
    invoke,
    new_name,
    pack_model,
    predict,
    variant,
    wait_pids_gone,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def clf_tar(artifacts: Path, classifier: tuple[Any, Any]) -> Path:
    return pack_model(artifacts / "ep-clf", classifier[0])


@pytest.fixture(scope="module")
def reg_tar(artifacts: Path, regressor: tuple[Any, Any]) -> Path:
    return pack_model(artifacts / "ep-reg", regressor[0])


def _expect_validation(exc: ClientError, *words: str) -> None:
    assert err_code(exc) == "ValidationException", exc.response
    for w in words:
        assert w.lower() in err_message(exc).lower(), f"{w!r} not in {err_message(exc)!r}"


def _variants(desc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["VariantName"]: v for v in desc.get("ProductionVariants", [])}


# --------------------------------------------------------------------------------------------------
# lifecycle
# --------------------------------------------------------------------------------------------------
def test_endpoint_lifecycle(
    server: MoorageServer, sm: Any, rt: Any, deployer: Deployer, clf_tar: Path, classifier: Any
) -> None:
    model, X = classifier
    name = new_name("Life")
    deployer.model(name, file_url(clf_tar))
    deployer.config(name, [variant("AllTraffic", name, count=1)])

    t0 = time.monotonic()
    created = sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    deployer.endpoints.append(name)
    assert time.monotonic() - t0 < 5, "CreateEndpoint must return at once"
    arn = created["EndpointArn"]
    assert arn.startswith("arn:aws:sagemaker:us-east-1:") and arn.endswith(f":endpoint/{name.lower()}"), arn

    first = sm.describe_endpoint(EndpointName=name)
    assert first["EndpointStatus"] == "Creating", first

    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAITER)
    desc = sm.describe_endpoint(EndpointName=name)
    assert desc["EndpointName"] == name
    assert desc["EndpointArn"] == arn
    assert desc["EndpointConfigName"] == name
    assert desc["EndpointStatus"] == "InService"
    assert isinstance(desc["CreationTime"], dt.datetime)
    assert isinstance(desc["LastModifiedTime"], dt.datetime)
    assert desc["LastModifiedTime"] >= desc["CreationTime"]
    pv = _variants(desc)["AllTraffic"]
    assert pv["CurrentWeight"] == pytest.approx(1.0)
    assert pv["DesiredWeight"] == pytest.approx(1.0)
    assert pv["CurrentInstanceCount"] == 1
    assert pv["DesiredInstanceCount"] == 1

    assert_predictions(predict(rt, name, X[:7]), model.predict(X[:7]))

    # the native view agrees: one instance, in service, a live process
    instances = server.instances(name, "AllTraffic")
    assert len(instances) == 1 and instances[0]["State"] == "InService", instances
    pids = [i["Pid"] for i in instances]
    assert all(isinstance(p, int) and p > 0 for p in pids)
    for inst in instances:
        assert isinstance(inst["InstanceId"], str) and inst["InstanceId"], inst
        assert isinstance(inst["Outstanding"], int) and inst["Outstanding"] >= 0, inst
    native = server.native_endpoint(name)
    assert native["EndpointName"] == name
    assert [v["VariantName"] for v in native["Variants"]] == ["AllTraffic"]

    sm.delete_endpoint(EndpointName=name)
    try:
        status = sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
        assert status == "Deleting", status
    except ClientError as exc:  # already gone: also fine
        _expect_validation(exc, "could not find")
    sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=WAITER)
    deployer.endpoints.remove(name)

    with pytest.raises(ClientError) as exc_info:
        sm.describe_endpoint(EndpointName=name)
    _expect_validation(exc_info.value, "could not find endpoint")
    with pytest.raises(ClientError) as exc_info:
        sm.delete_endpoint(EndpointName=name)
    _expect_validation(exc_info.value, "could not find")
    assert wait_pids_gone(pids, 15) == [], "instance processes still alive after DeleteEndpoint"

    with pytest.raises(ClientError) as exc_info:
        invoke(rt, name, csv_body(X[:1]))
    assert err_code(exc_info.value) == "ValidationError"


def test_create_endpoint_with_missing_config(sm: Any) -> None:
    with pytest.raises(ClientError) as exc_info:
        sm.create_endpoint(EndpointName=new_name("nocfg"), EndpointConfigName=new_name("ghostcfg"))
    _expect_validation(exc_info.value, "could not find")


def test_invalid_endpoint_name(sm: Any) -> None:
    for bad in ("bad_name", "-x", "e" * 64):
        with pytest.raises(ClientError) as exc_info:
            sm.create_endpoint(EndpointName=bad, EndpointConfigName="whatever")
        _expect_validation(exc_info.value)


# --------------------------------------------------------------------------------------------------
# endpoints that fail, with a reason
# --------------------------------------------------------------------------------------------------
BAD_IMPORT = "import numpy\nraise RuntimeError('inference-module-exploded')\n\ndef model_fn(d):\n    pass\n"


@pytest.fixture(scope="module")
def failing_urls(artifacts: Path) -> dict[str, tuple[str, dict[str, str] | None, list[str]]]:
    """case -> (ModelDataUrl, Environment, key words any of which FailureReason must contain)."""
    root = artifacts / "failing"
    not_a_model = pack_model(root / "garbage", None, extra_files={"model.joblib": b"this is not a model"})
    import_error = pack_model(
        root / "import-error", None, extra_files={"model.joblib": b"unused"}, inference_py=BAD_IMPORT
    )
    vanishing = pack_model(root / "vanishing", None, extra_files={"model.joblib": b"deleted before use"})
    return {
        # CreateModel sees the archive; it is gone by CreateEndpoint (an S3 object deleted in between)
        "missing-model-data": (
            file_url(vanishing),
            None,
            [str(vanishing), "not exist", "not found", "no such", "could not find"],
        ),
        "not-a-model": (
            file_url(not_a_model),
            None,
            ["model.joblib", "load", "unpickl", "deserializ", "not a model", "invalid"],
        ),
        "inference-import-error": (
            file_url(import_error),
            {"SAGEMAKER_PROGRAM": "inference.py"},
            ["inference-module-exploded", "inference.py"],
        ),
    }


@pytest.mark.parametrize("case", ["missing-model-data", "not-a-model", "inference-import-error"])
def test_endpoint_fails_with_reason(
    server: MoorageServer, sm: Any, deployer: Deployer, failing_urls: Any, case: str
) -> None:
    url, env, words = failing_urls[case]
    name = new_name("fail")
    deployer.model(name, url, env=env)
    deployer.config(name, [variant("AllTraffic", name)])
    if case == "missing-model-data":
        Path(url.removeprefix("file://")).unlink()
    deployer.endpoint(name, name)
    desc = deployer.wait_status(name, {"Failed", "InService"}, timeout=60)
    assert desc["EndpointStatus"] == "Failed", desc
    reason = desc.get("FailureReason", "")
    assert reason, desc
    assert any(w.lower() in reason.lower() for w in words), f"FailureReason {reason!r} lacks any of {words}"
    # the waiter treats Failed as terminal failure, as in AWS
    with pytest.raises(Exception, match=r"Failed|failure"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 3})
    # a Failed endpoint can be deleted
    sm.delete_endpoint(EndpointName=name)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=WAITER)
    deployer.endpoints.remove(name)
    assert server.healthz() == 200


def test_create_model_with_missing_model_data(sm: Any, deployer: Deployer, artifacts: Path) -> None:
    """AWS rejects it at CreateModel ("Could not find model data at ..."); failing the endpoint later,
    with a FailureReason that names the data, is accepted too."""
    url = file_url(artifacts / "no-such-dir" / "model.tar.gz")
    name = new_name("nodata")
    try:
        deployer.model(name, url)
    except ClientError as exc:
        _expect_validation(exc)
        assert "model data" in err_message(exc).lower() or url in err_message(exc), err_message(exc)
        return
    deployer.config(name, [variant("AllTraffic", name)])
    deployer.endpoint(name, name)
    desc = deployer.wait_status(name, {"Failed", "InService"}, timeout=60)
    assert desc["EndpointStatus"] == "Failed" and "no-such-dir" in desc.get("FailureReason", ""), desc


# --------------------------------------------------------------------------------------------------
# listing
# --------------------------------------------------------------------------------------------------
def test_list_endpoints_filter_sort_status_paging(sm: Any, deployer: Deployer, clf_tar: Path, artifacts: Path) -> None:
    prefix = new_name("le")
    good = deployer.model(f"{prefix}-m", file_url(clf_tar))
    deployer.config(f"{prefix}-good", [variant("v", good)])
    garbage = pack_model(artifacts / f"{prefix}-garbage", None, extra_files={"model.joblib": b"not a model"})
    broken = deployer.model(f"{prefix}-x", file_url(garbage))
    deployer.config(f"{prefix}-bad", [variant("v", broken)])
    plan = {f"{prefix}-b": "good", f"{prefix}-d": "bad", f"{prefix}-a": "bad", f"{prefix}-c": "good",
            f"{prefix}-e": "bad"}  # fmt: skip
    for ep, kind in plan.items():
        deployer.endpoint(ep, f"{prefix}-{kind}")
    for ep in plan:
        deployer.wait_status(ep, {"InService", "Failed"}, timeout=60)

    def names(**kw: Any) -> list[str]:
        out: list[str] = []
        token = None
        for _ in range(20):
            args = dict(kw, NameContains=prefix, MaxResults=2)
            if token:
                args["NextToken"] = token
            resp = sm.list_endpoints(**args)
            assert len(resp["Endpoints"]) <= 2
            out.extend(e["EndpointName"] for e in resp["Endpoints"])
            token = resp.get("NextToken")
            if not token:
                return out
        raise AssertionError("NextToken never ends")

    assert names(SortBy="Name", SortOrder="Ascending") == sorted(plan)
    assert names(SortBy="Name", SortOrder="Descending") == sorted(plan, reverse=True)
    assert sorted(names(StatusEquals="InService")) == sorted(e for e, k in plan.items() if k == "good")
    assert sorted(names(StatusEquals="Failed")) == sorted(e for e, k in plan.items() if k == "bad")
    assert names(StatusEquals="Creating") == []

    resp = sm.list_endpoints(NameContains=prefix, MaxResults=10)  # default CreationTime Descending
    summaries = resp["Endpoints"]
    assert len(summaries) == 5
    times = [e["CreationTime"] for e in summaries]
    assert times == sorted(times, reverse=True)
    for e in summaries:
        assert e["EndpointStatus"] == ("InService" if plan[e["EndpointName"]] == "good" else "Failed")
        assert e["EndpointArn"].endswith(f":endpoint/{e['EndpointName'].lower()}")
        assert isinstance(e["LastModifiedTime"], dt.datetime)

    by_status = [e["EndpointStatus"] for e in sm.list_endpoints(NameContains=prefix, SortBy="Status",
                                                                 SortOrder="Ascending")["Endpoints"]]  # fmt: skip
    assert by_status == sorted(by_status)


# --------------------------------------------------------------------------------------------------
# traffic split and UpdateEndpointWeightsAndCapacities
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def split_endpoint(module_deployer: Deployer, clf_tar: Path, reg_tar: Path) -> str:
    """Variant A (classifier) 90%, variant B (regressor) 10%."""
    d = module_deployer
    name = new_name("split")
    a = d.model(f"{name}-a", file_url(clf_tar))
    b = d.model(f"{name}-b", file_url(reg_tar))
    d.config(name, [variant("A", a, weight=0.9), variant("B", b, weight=0.1)])
    d.endpoint(name, name)
    d.wait_in_service(name)
    return name


def _invoke_many(rt: Any, name: str, X: np.ndarray, n: int) -> list[tuple[str, np.ndarray, int]]:
    """n invocations, each of one row; returns (variant, prediction, row index)."""

    def one(i: int) -> tuple[str, np.ndarray, int]:
        row = i % len(X)
        resp = invoke(rt, name, csv_body(X[row : row + 1]), Accept="application/json")
        return resp["InvokedProductionVariant"], decode_predictions(resp["Body"], resp["ContentType"]), row

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def test_traffic_split_follows_weights(rt: Any, split_endpoint: str, classifier: Any, regressor: Any) -> None:
    clf, X = classifier
    reg, _ = regressor
    n, p = 1000, 0.1
    results = _invoke_many(rt, split_endpoint, X, n)
    counts = {"A": 0, "B": 0}
    for var, pred, row in results:
        assert var in counts, var
        counts[var] += 1
        # each reply comes from the model of the variant it names
        expected = (clf if var == "A" else reg).predict(X[row : row + 1])
        assert_predictions(pred, expected)
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    lo, hi = mean - 4.5 * sd, mean + 4.5 * sd
    assert lo <= counts["B"] <= hi, f"B got {counts['B']} of {n}; expected {mean:.0f} +- {4.5 * sd:.1f}"


def test_update_weights_and_capacities(
    server: MoorageServer, sm: Any, rt: Any, split_endpoint: str, regressor: Any
) -> None:
    reg, X = regressor
    name = split_endpoint
    before = sm.describe_endpoint(EndpointName=name)
    sm.update_endpoint_weights_and_capacities(
        EndpointName=name,
        DesiredWeightsAndCapacities=[
            {"VariantName": "A", "DesiredWeight": 0.0},
            {"VariantName": "B", "DesiredWeight": 1.0, "DesiredInstanceCount": 2},
        ],
    )
    during = sm.describe_endpoint(EndpointName=name)
    assert during["EndpointStatus"] == "Updating", during["EndpointStatus"]
    assert _variants(during)["B"]["DesiredInstanceCount"] == 2
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAITER)

    after = sm.describe_endpoint(EndpointName=name)
    v = _variants(after)
    assert v["A"]["CurrentWeight"] == pytest.approx(0.0)
    assert v["A"]["DesiredWeight"] == pytest.approx(0.0)
    assert v["A"]["CurrentInstanceCount"] == 1
    assert v["B"]["CurrentWeight"] == pytest.approx(1.0)
    assert v["B"]["DesiredWeight"] == pytest.approx(1.0)
    assert v["B"]["CurrentInstanceCount"] == 2
    assert v["B"]["DesiredInstanceCount"] == 2
    assert after["LastModifiedTime"] >= before["LastModifiedTime"]

    instances = server.instances(name, "B")
    assert len(instances) == 2 and all(i["State"] == "InService" for i in instances), instances
    assert len({i["Pid"] for i in instances}) == 2

    results = _invoke_many(rt, name, X, 60)
    assert {var for var, _, _ in results} == {"B"}
    for _, pred, row in results:
        assert_predictions(pred, reg.predict(X[row : row + 1]))


def test_update_weights_unknown_variant(sm: Any, split_endpoint: str) -> None:
    with pytest.raises(ClientError) as exc_info:
        sm.update_endpoint_weights_and_capacities(
            EndpointName=split_endpoint,
            DesiredWeightsAndCapacities=[{"VariantName": "NoSuchVariant", "DesiredWeight": 1.0}],
        )
    _expect_validation(exc_info.value)
    assert sm.describe_endpoint(EndpointName=split_endpoint)["EndpointStatus"] == "InService"


def test_update_weights_missing_endpoint(sm: Any) -> None:
    with pytest.raises(ClientError) as exc_info:
        sm.update_endpoint_weights_and_capacities(
            EndpointName=new_name("ghost"),
            DesiredWeightsAndCapacities=[{"VariantName": "A", "DesiredWeight": 1.0}],
        )
    _expect_validation(exc_info.value, "could not find")


def test_duplicate_endpoint(sm: Any, split_endpoint: str) -> None:
    with pytest.raises(ClientError) as exc_info:
        sm.create_endpoint(EndpointName=split_endpoint, EndpointConfigName=split_endpoint)
    _expect_validation(exc_info.value)
    assert sm.describe_endpoint(EndpointName=split_endpoint)["EndpointStatus"] == "InService"


# --------------------------------------------------------------------------------------------------
# UpdateEndpoint (blue/green) under load
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blue_green(
    server: MoorageServer, sm: Any, module_deployer: Deployer, clf_tar: Path, reg_tar: Path,
    classifier: Any, regressor: Any,
) -> dict[str, Any]:  # fmt: skip
    """Deploy the classifier, then UpdateEndpoint to the regressor while a client keeps invoking."""
    d = module_deployer
    clf, X = classifier
    reg, _ = regressor
    name = new_name("bg")
    blue = d.model(f"{name}-blue", file_url(clf_tar))
    green = d.model(f"{name}-green", file_url(reg_tar))
    d.config(f"{name}-blue", [variant("AllTraffic", blue)])
    d.config(f"{name}-green", [variant("AllTraffic", green)])
    d.endpoint(name, f"{name}-blue")
    d.wait_in_service(name)
    old_pids = [i["Pid"] for i in server.instances(name)]

    rt = server.rt(read_timeout=20)
    stop = threading.Event()
    ok: list[str] = []  # "blue" / "green" per successful request, in order
    failures: list[str] = []
    wrong: list[str] = []

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            row = X[i % len(X) : i % len(X) + 1]
            i += 1
            try:
                got = predict(rt, name, row)
            except Exception as exc:
                failures.append(repr(exc)[:300])
                continue
            try:
                values = got.astype(float).ravel()
                if values.shape == (1,) and np.allclose(values, clf.predict(row), rtol=1e-9, atol=0):
                    ok.append("blue")
                elif values.shape == (1,) and np.allclose(values, reg.predict(row), rtol=1e-9, atol=0):
                    ok.append("green")
                else:
                    wrong.append(f"{got!r}")
            except (TypeError, ValueError):
                wrong.append(f"{got!r}")

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        sm.update_endpoint(EndpointName=name, EndpointConfigName=f"{name}-green")
        status_after_call = sm.describe_endpoint(EndpointName=name)["EndpointStatus"]
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAITER)
        n_at_in_service = len(ok)
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(30)
    return {
        "name": name,
        "status_after_call": status_after_call,
        "ok": ok,
        "n_at_in_service": n_at_in_service,
        "failures": failures,
        "wrong": wrong,
        "old_pids": old_pids,
        "thread_done": not thread.is_alive(),
    }


def test_update_endpoint_blue_green(server: MoorageServer, sm: Any, rt: Any, blue_green: dict[str, Any],
                                    regressor: Any) -> None:  # fmt: skip
    name = blue_green["name"]
    assert blue_green["thread_done"], "an invocation hung during UpdateEndpoint"
    assert blue_green["status_after_call"] == "Updating"
    desc = sm.describe_endpoint(EndpointName=name)
    assert desc["EndpointStatus"] == "InService"
    assert desc["EndpointConfigName"] == f"{name}-green"
    assert blue_green["wrong"] == [], "replies matching neither model"
    ok = blue_green["ok"]
    assert "blue" in ok, "no request served before the update"
    assert ok[-1] == "green", "still served by the old model after InService"
    # once switched, never back to blue
    first_green = ok.index("green")
    assert "blue" not in ok[first_green:], "served by blue again after green"
    reg, X = regressor
    assert_predictions(predict(rt, name, X[:20]), reg.predict(X[:20]))
    # the old (blue) instances are stopped
    assert wait_pids_gone(blue_green["old_pids"], 20) == [], "blue instances still running"
    assert {i["Pid"] for i in server.instances(name)}.isdisjoint(blue_green["old_pids"])


def test_update_endpoint_zero_failed_requests(blue_green: dict[str, Any]) -> None:
    """Bonus: no request fails while UpdateEndpoint swaps the config."""
    total = len(blue_green["ok"]) + len(blue_green["failures"])
    assert total > 10, f"too little traffic during the update ({total})"
    assert blue_green["failures"] == [], f"{len(blue_green['failures'])}/{total} failed: {blue_green['failures'][:3]}"


def test_update_endpoint_missing_config(sm: Any, split_endpoint: str) -> None:
    with pytest.raises(ClientError) as exc_info:
        sm.update_endpoint(EndpointName=split_endpoint, EndpointConfigName=new_name("ghostcfg"))
    _expect_validation(exc_info.value, "could not find")
    wait_until(lambda: sm.describe_endpoint(EndpointName=split_endpoint)["EndpointStatus"] == "InService",
               10, what="endpoint still InService")  # fmt: skip
