"""Models and endpoint configs over the SageMaker control plane (boto3 `sagemaker` client)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    ROLE_ARN,
    SKLEARN_IMAGE,
    SM_SKLEARN_IMAGE,
    err_code,
    err_message,
    err_status,
    file_url,
    new_name,
    pack_model,
    variant,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def model_tar(artifacts: Path, classifier: tuple[Any, Any]) -> Path:
    return pack_model(artifacts / "models-clf", classifier[0])


def _container(model_tar: Path, image: str = SKLEARN_IMAGE, **extra: Any) -> dict[str, Any]:
    return {"Image": image, "ModelDataUrl": file_url(model_tar), **extra}


def _expect_validation(exc_info: pytest.ExceptionInfo[ClientError], *words: str) -> None:
    exc = exc_info.value
    assert err_code(exc) == "ValidationException", exc.response
    assert err_status(exc) == 400, exc.response
    msg = err_message(exc).lower()
    for word in words:
        assert word.lower() in msg, f"{word!r} not in message {err_message(exc)!r}"


def list_all(method: Any, key: str, page_size: int = 2, **kw: Any) -> tuple[list[dict[str, Any]], int]:
    """Follow NextToken (bounded); returns (items, number of pages)."""
    items: list[dict[str, Any]] = []
    token = None
    for page in range(1, 51):
        args = dict(kw, MaxResults=page_size)
        if token:
            args["NextToken"] = token
        resp = method(**args)
        assert len(resp[key]) <= page_size
        items.extend(resp[key])
        token = resp.get("NextToken")
        if not token:
            return items, page
    raise AssertionError("more than 50 pages: NextToken never ends")


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image", [SKLEARN_IMAGE, SM_SKLEARN_IMAGE])
def test_model_create_describe_delete(sm: Any, model_tar: Path, image: str) -> None:
    name = new_name("Model")  # mixed case: ARNs are lower-cased by SageMaker
    env = {"SAGEMAKER_PROGRAM": "inference.py", "MY_SETTING": "42"}
    container = _container(model_tar, image, Environment=env)
    created = sm.create_model(ModelName=name, PrimaryContainer=container, ExecutionRoleArn=ROLE_ARN)
    arn = created["ModelArn"]
    assert arn.startswith("arn:aws:sagemaker:us-east-1:"), arn
    assert arn.endswith(f":model/{name.lower()}"), arn

    desc = sm.describe_model(ModelName=name)
    assert desc["ModelName"] == name
    assert desc["ModelArn"] == arn
    assert desc["PrimaryContainer"]["Image"] == image
    assert desc["PrimaryContainer"]["ModelDataUrl"] == file_url(model_tar)
    assert desc["PrimaryContainer"]["Environment"] == env
    assert desc["ExecutionRoleArn"] == ROLE_ARN
    assert isinstance(desc["CreationTime"], dt.datetime)
    now = dt.datetime.now(dt.UTC)
    assert abs((now - desc["CreationTime"]).total_seconds()) < 300

    sm.delete_model(ModelName=name)
    with pytest.raises(ClientError) as exc_info:
        sm.describe_model(ModelName=name)
    _expect_validation(exc_info, "could not find model")


@pytest.mark.parametrize(
    "image",
    [
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/tensorflow-inference:2.13-cpu",
        "nginx:latest",
    ],
)
def test_unsupported_image_is_rejected(sm: Any, model_tar: Path, image: str) -> None:
    name = new_name("badimage")
    with pytest.raises(ClientError) as exc_info:
        sm.create_model(ModelName=name, PrimaryContainer=_container(model_tar, image))
    _expect_validation(exc_info)
    msg = err_message(exc_info.value).lower()
    assert "sklearn" in msg or "scikit-learn" in msg, f"supported images not named: {msg!r}"
    # nothing was created
    with pytest.raises(ClientError) as missing:
        sm.describe_model(ModelName=name)
    _expect_validation(missing, "could not find")


def test_model_accepts_plain_path_and_directory(sm: Any, model_tar: Path) -> None:
    for url in (str(model_tar), str(model_tar.parent / "model")):
        name = new_name("pathmodel")
        sm.create_model(ModelName=name, PrimaryContainer={"Image": SKLEARN_IMAGE, "ModelDataUrl": url})
        assert sm.describe_model(ModelName=name)["PrimaryContainer"]["ModelDataUrl"] == url
        sm.delete_model(ModelName=name)


def test_duplicate_model_is_rejected(sm: Any, model_tar: Path) -> None:
    name = new_name("dupmodel")
    sm.create_model(ModelName=name, PrimaryContainer=_container(model_tar))
    try:
        with pytest.raises(ClientError) as exc_info:
            sm.create_model(ModelName=name, PrimaryContainer=_container(model_tar))
        _expect_validation(exc_info)
        assert name in err_message(exc_info.value) or "exist" in err_message(exc_info.value).lower()
    finally:
        sm.delete_model(ModelName=name)


@pytest.mark.parametrize("op", ["describe_model", "delete_model"])
def test_missing_model(sm: Any, op: str) -> None:
    with pytest.raises(ClientError) as exc_info:
        getattr(sm, op)(ModelName=new_name("nosuchmodel"))
    _expect_validation(exc_info, "could not find")


@pytest.mark.parametrize("bad_name", ["bad_name", "-leading-dash", "has space", "x" * 64])
def test_invalid_model_name(sm: Any, model_tar: Path, bad_name: str) -> None:
    with pytest.raises(ClientError) as exc_info:
        sm.create_model(ModelName=bad_name, PrimaryContainer=_container(model_tar))
    _expect_validation(exc_info)


def test_missing_required_field(server: Any, model_tar: Path) -> None:
    raw = server.sm(validate=False)  # let the request reach the server without ModelName
    with pytest.raises(ClientError) as exc_info:
        raw.create_model(PrimaryContainer=_container(model_tar))
    _expect_validation(exc_info)
    assert "modelname" in err_message(exc_info.value).lower()


def test_list_models_filter_sort_paging(sm: Any, model_tar: Path) -> None:
    prefix = new_name("lm")
    suffixes = ["c", "a", "e", "b", "d"]  # created out of name order
    names = [f"{prefix}-{s}" for s in suffixes]
    for n in names:
        sm.create_model(ModelName=n, PrimaryContainer=_container(model_tar))
    try:
        items, pages = list_all(sm.list_models, "Models", NameContains=prefix, SortBy="Name", SortOrder="Ascending")
        assert [m["ModelName"] for m in items] == sorted(names)
        assert pages == 3
        for m in items:
            assert m["ModelArn"].endswith(f":model/{m['ModelName'].lower()}")
            assert isinstance(m["CreationTime"], dt.datetime)

        items, _ = list_all(sm.list_models, "Models", NameContains=prefix, SortBy="Name", SortOrder="Descending")
        assert [m["ModelName"] for m in items] == sorted(names, reverse=True)

        # default: CreationTime, Descending
        items, _ = list_all(sm.list_models, "Models", page_size=3, NameContains=prefix)
        assert sorted(m["ModelName"] for m in items) == sorted(names)
        times = [m["CreationTime"] for m in items]
        assert times == sorted(times, reverse=True)

        items, _ = list_all(sm.list_models, "Models", NameContains=prefix, SortBy="CreationTime", SortOrder="Ascending")
        times = [m["CreationTime"] for m in items]
        assert times == sorted(times)
        assert len({m["ModelName"] for m in items}) == 5

        # a filter that matches one, and one that matches none
        one = sm.list_models(NameContains=f"{prefix}-e")["Models"]
        assert [m["ModelName"] for m in one] == [f"{prefix}-e"]
        assert sm.list_models(NameContains=f"{prefix}-zz")["Models"] == []

        # a deleted model disappears from the list
        sm.delete_model(ModelName=names[0])
        items, _ = list_all(sm.list_models, "Models", page_size=10, NameContains=prefix)
        assert sorted(m["ModelName"] for m in items) == sorted(names[1:])
    finally:
        for n in names:
            try:
                sm.delete_model(ModelName=n)
            except ClientError:
                pass


# --------------------------------------------------------------------------------------------------
# endpoint configs
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_models(sm: Any, model_tar: Path) -> Any:
    names = [new_name("cfgmodel"), new_name("cfgmodel")]
    for n in names:
        sm.create_model(ModelName=n, PrimaryContainer=_container(model_tar))
    yield names
    for n in names:
        try:
            sm.delete_model(ModelName=n)
        except ClientError:
            pass


def test_endpoint_config_create_describe_delete(sm: Any, two_models: list[str]) -> None:
    name = new_name("Config")
    variants = [
        variant("A", two_models[0], weight=0.7, count=2),
        {"VariantName": "B", "ModelName": two_models[1], "InitialInstanceCount": 1,
         "InstanceType": "ml.c5.xlarge"},  # no weight: defaults to 1.0
    ]  # fmt: skip
    created = sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=variants)
    arn = created["EndpointConfigArn"]
    assert arn.startswith("arn:aws:sagemaker:us-east-1:"), arn
    assert arn.endswith(f":endpoint-config/{name.lower()}"), arn

    desc = sm.describe_endpoint_config(EndpointConfigName=name)
    assert desc["EndpointConfigName"] == name
    assert desc["EndpointConfigArn"] == arn
    assert isinstance(desc["CreationTime"], dt.datetime)
    got = {v["VariantName"]: v for v in desc["ProductionVariants"]}
    assert list(got) == ["A", "B"]
    assert got["A"]["ModelName"] == two_models[0]
    assert got["A"]["InitialInstanceCount"] == 2
    assert got["A"]["InstanceType"] == "ml.m5.large"
    assert got["A"]["InitialVariantWeight"] == pytest.approx(0.7)
    assert got["B"]["ModelName"] == two_models[1]
    assert got["B"]["InstanceType"] == "ml.c5.xlarge"
    assert got["B"]["InitialVariantWeight"] == pytest.approx(1.0)

    sm.delete_endpoint_config(EndpointConfigName=name)
    for op in (sm.describe_endpoint_config, sm.delete_endpoint_config):
        with pytest.raises(ClientError) as exc_info:
            op(EndpointConfigName=name)
        _expect_validation(exc_info, "could not find")


def test_endpoint_config_naming_missing_model(sm: Any) -> None:
    missing = new_name("ghostmodel")
    with pytest.raises(ClientError) as exc_info:
        sm.create_endpoint_config(
            EndpointConfigName=new_name("cfg"), ProductionVariants=[variant("AllTraffic", missing)]
        )
    _expect_validation(exc_info)
    msg = err_message(exc_info.value)
    assert missing in msg or "could not find model" in msg.lower(), msg


def test_duplicate_endpoint_config(sm: Any, two_models: list[str]) -> None:
    name = new_name("dupcfg")
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant("v", two_models[0])])
    try:
        with pytest.raises(ClientError) as exc_info:
            sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant("v", two_models[0])])
        _expect_validation(exc_info)
    finally:
        sm.delete_endpoint_config(EndpointConfigName=name)


BAD_VARIANTS = {
    "negative-weight": lambda m: [variant("A", m, weight=-0.5)],
    "zero-instances": lambda m: [variant("A", m, count=0)],
    "no-variants": lambda m: [],
    "duplicate-variant-names": lambda m: [variant("A", m), variant("A", m)],
    "bad-variant-name": lambda m: [variant("bad variant!", m)],
}


@pytest.mark.parametrize("case", list(BAD_VARIANTS))
def test_invalid_endpoint_config(server: Any, two_models: list[str], case: str) -> None:
    raw = server.sm(validate=False)  # botocore would catch some of these client-side
    name = new_name("badcfg")
    with pytest.raises(ClientError) as exc_info:
        raw.create_endpoint_config(EndpointConfigName=name, ProductionVariants=BAD_VARIANTS[case](two_models[0]))
    _expect_validation(exc_info)
    with pytest.raises(ClientError) as missing:
        raw.describe_endpoint_config(EndpointConfigName=name)
    _expect_validation(missing, "could not find")


def test_list_endpoint_configs_filter_sort_paging(sm: Any, two_models: list[str]) -> None:
    prefix = new_name("lc")
    names = [f"{prefix}-{s}" for s in ["b", "c", "a"]]
    for n in names:
        sm.create_endpoint_config(EndpointConfigName=n, ProductionVariants=[variant("v", two_models[0])])
    try:
        items, pages = list_all(
            sm.list_endpoint_configs, "EndpointConfigs", NameContains=prefix,
            SortBy="Name", SortOrder="Ascending",
        )  # fmt: skip
        assert [c["EndpointConfigName"] for c in items] == sorted(names)
        assert pages == 2
        for c in items:
            assert c["EndpointConfigArn"].endswith(f":endpoint-config/{c['EndpointConfigName'].lower()}")
        items, _ = list_all(
            sm.list_endpoint_configs, "EndpointConfigs", NameContains=prefix,
            SortBy="Name", SortOrder="Descending",
        )  # fmt: skip
        assert [c["EndpointConfigName"] for c in items] == sorted(names, reverse=True)
        items, _ = list_all(sm.list_endpoint_configs, "EndpointConfigs", page_size=1, NameContains=prefix)
        times = [c["CreationTime"] for c in items]
        assert times == sorted(times, reverse=True)  # default CreationTime Descending
        assert len(items) == 3
    finally:
        for n in names:
            try:
                sm.delete_endpoint_config(EndpointConfigName=n)
            except ClientError:
                pass
