"""Multi-model endpoints through boto3: 50 small models under one prefix, a memory budget that holds
about 10, random traffic from several threads with every answer right, loads and evictions in the
metrics, the model processes' memory bounded by the budget; a model added after deployment served;
bad targets answered clearly while the others keep serving; concurrent first calls load once.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
from botocore.exceptions import ClientError

from e2e_support import ROLE_ARN, Deployer, MoorageServer, err_code, err_message, new_name, variant, wait_until

pytestmark = pytest.mark.e2e

MODEL = '''
import json, os


def model_fn(model_dir, context=None):
    with open(os.path.join(model_dir, "name.txt")) as fh:
        name = fh.read().strip()
    if name.startswith("broken"):
        raise RuntimeError("this model cannot load")
    return name


def transform_fn(name, body, content_type, accept):
    text = body.decode() if isinstance(body, bytes) else body
    return json.dumps({"model": name, "echo": text}), "application/json"
'''
MODELS = 50
PER_MODEL_BYTES = 56 * 2**20  # about one small model process (a Python runtime with its handler)
BUDGET = 10 * PER_MODEL_BYTES


def _archive(path: Path, name: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member, data in (("name.txt", name.encode()), ("code/inference.py", MODEL.encode())):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _invoke(rt: Any, endpoint: str, target: str | None, body: str = "hi") -> dict[str, Any]:
    extra = {"TargetModel": target} if target is not None else {}
    reply = rt.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body=body.encode(), **extra)
    return json.loads(reply["Body"].read())


def _models_doc(server: MoorageServer, endpoint: str) -> dict[str, Any]:
    status, _, body = server.signed_request("GET", f"/moorage/v1/endpoints/{endpoint}/models")
    assert status == 200, body
    return json.loads(body)


def test_fifty_models_behind_one_endpoint(fresh_server: Any, tmp_path: Path) -> None:
    server: MoorageServer = fresh_server(env={"MOORAGE_METRICS_PERIOD": "1"})
    prefix = tmp_path / "models"
    for i in range(MODELS):
        _archive(prefix / f"m{i}.tar.gz", f"m{i}")
    _archive(prefix / "customers" / "eu" / "nested.tar.gz", "nested")
    _archive(prefix / "broken.tar.gz", "broken")
    (prefix / "corrupt.tar.gz").write_bytes(b"not a tar archive at all")
    outside = _archive(tmp_path / "outside" / "secret.tar.gz", "secret")
    (prefix / "escape.tar.gz").symlink_to(outside)
    dep = Deployer(server)
    sm = server.sm()
    name = new_name("mme")
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE_ARN, PrimaryContainer={
        "Image": "sklearn", "Mode": "MultiModel", "ModelDataUrl": prefix.as_uri(),
        "Environment": {"MOORAGE_MODEL_CACHE_BYTES": str(BUDGET)}})
    dep.models.append(name)
    dep.config(name, [variant("AllTraffic", name)])
    dep.endpoint(name, name)
    dep.wait_in_service(name)
    rt = server.rt()

    # Random traffic over all 50 from several threads: every answer from the model asked for.
    draw = random.Random(11)
    targets = [f"m{draw.randrange(MODELS)}" for _ in range(120)]

    def call(target: str) -> tuple[str, str]:
        return target, _invoke(rt, name, f"{target}.tar.gz")["model"]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(call, targets))
    assert all(asked == answered for asked, answered in answers)
    (host,) = _models_doc(server, name)["Variants"][0]["Hosts"]
    assert host["Evictions"] > 0 and host["Loads"] >= len(set(targets))
    # The model processes' memory stays within the budget, give or take the one being loaded.
    pids = [m["Pid"] for m in host["Models"]]
    rss = sum(psutil.Process(pid).memory_info().rss for pid in pids if psutil.pid_exists(pid))
    assert rss <= BUDGET + 2 * PER_MODEL_BYTES, (rss, len(pids))
    assert len(pids) <= 12

    # Nested keys, and a model added after deployment, are served without redeploying.
    assert _invoke(rt, name, "customers/eu/nested.tar.gz")["model"] == "nested"
    _archive(prefix / "late.tar.gz", "late")
    assert _invoke(rt, name, "late.tar.gz")["model"] == "late"

    # Concurrent first calls of one model load it once.
    _archive(prefix / "popular.tar.gz", "popular")
    loads_before = _models_doc(server, name)["Variants"][0]["Hosts"][0]["Loads"]
    with ThreadPoolExecutor(6) as pool:
        assert set(pool.map(lambda _: _invoke(rt, name, "popular.tar.gz")["model"], range(6))) == {"popular"}
    assert _models_doc(server, name)["Variants"][0]["Hosts"][0]["Loads"] == loads_before + 1

    # Bad targets: a clear error naming the target; the others keep serving.
    for target, code, words in [("missing.tar.gz", "ValidationError", "missing.tar.gz"),
                                ("corrupt.tar.gz", "ValidationError", "corrupt.tar.gz"),
                                ("../outside/secret.tar.gz", "ValidationError", "secret.tar.gz"),
                                ("/etc/passwd", "ValidationError", "/etc/passwd"),
                                ("escape.tar.gz", "ValidationError", "escape.tar.gz"),
                                ("broken.tar.gz", "ModelError", "broken.tar.gz")]:
        with pytest.raises(ClientError) as refused:
            _invoke(rt, name, target)
        assert err_code(refused.value) == code and words in err_message(refused.value), (target,
                                                                                        err_message(refused.value))
        assert _invoke(rt, name, "m1.tar.gz")["model"] == "m1"
    with pytest.raises(ClientError) as unnamed:
        _invoke(rt, name, None)
    assert err_code(unnamed.value) == "ValidationError" and "TargetModel" in err_message(unnamed.value)

    # SageMaker's multi-model metrics, and the invocations of each model.
    cw = server.client("cloudwatch")

    def total(metric: str, statistic: str, **dims: str) -> float:
        points = cw.get_metric_statistics(
            Namespace="AWS/SageMaker", MetricName=metric, Statistics=[statistic], Period=60,
            Dimensions=[{"Name": "EndpointName", "Value": name}, {"Name": "VariantName", "Value": "AllTraffic"},
                        *({"Name": k, "Value": v} for k, v in dims.items())],
            StartTime=time.time() - 900, EndTime=time.time() + 60)["Datapoints"]
        return sum(p[statistic] for p in points)

    wait_until(lambda: total("ModelLoadingTime", "SampleCount") >= len(set(targets)), 30, interval=0.3,
               what="ModelLoadingTime for every load")
    assert total("ModelCacheHit", "SampleCount") >= len(targets)
    assert total("ModelUnloadingTime", "SampleCount") >= host["Evictions"]
    assert total("LoadedModelCount", "Maximum") >= 1
    wait_until(lambda: total("Invocations", "Sum", TargetModel="m1.tar.gz") >= targets.count("m1") + 6, 30,
               interval=0.3, what="m1's invocations")

    # The command line shows what is loaded where.
    env = {k: v for k, v in os.environ.items() if k not in ("MOORAGE_HOME", "AWS_PROFILE")}
    shown = subprocess.run([sys.executable, "-m", "moorage", "models", name, "--home", str(server.home)],
                           capture_output=True, text=True, timeout=120, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "hit rate" in shown.stdout and "m1.tar.gz" in shown.stdout
    dep.cleanup()


def test_model_cache_disabled_and_bad_multi_model_models(server: MoorageServer, tmp_path: Path) -> None:
    prefix = tmp_path / "models"
    for i in range(2):
        _archive(prefix / f"m{i}.tar.gz", f"m{i}")
    dep = Deployer(server)
    sm = server.sm()
    name = new_name("mme-nocache")
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE_ARN, PrimaryContainer={
        "Image": "sklearn", "Mode": "MultiModel", "ModelDataUrl": prefix.as_uri(),
        "MultiModelConfig": {"ModelCacheSetting": "Disabled"}})
    dep.models.append(name)
    dep.config(name, [variant("AllTraffic", name)])
    dep.endpoint(name, name)
    dep.wait_in_service(name)
    rt = server.rt()
    assert _invoke(rt, name, "m0.tar.gz")["model"] == "m0"
    wait_until(lambda: not _models_doc(server, name)["Variants"][0]["Hosts"][0]["Models"], 30, interval=0.2,
               what="the model unloaded after its invocation (no caching)")
    assert _invoke(rt, name, "m0.tar.gz")["model"] == "m0"  # loaded again
    assert _models_doc(server, name)["Variants"][0]["Hosts"][0]["Loads"] >= 2

    for container, words in [({"ModelDataUrl": (prefix / "m0.tar.gz").as_uri()}, "folder"),
                             ({"MultiModelConfig": {"ModelCacheSetting": "Sometimes"}}, "modelCacheSetting"),
                             ({"Environment": {"MOORAGE_MODEL_CACHE_BYTES": "lots"}}, "MOORAGE_MODEL_CACHE_BYTES")]:
        with pytest.raises(ClientError) as refused:
            sm.create_model(ModelName=new_name("bad-mme"), ExecutionRoleArn=ROLE_ARN, PrimaryContainer={
                "Image": "sklearn", "Mode": "MultiModel", "ModelDataUrl": prefix.as_uri(), **container})
        assert err_code(refused.value) == "ValidationException" and words in err_message(refused.value)
    dep.cleanup()
