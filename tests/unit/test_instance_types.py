"""Instance types: the table, the CPU threads and memory limit each instance gets, seen in real processes."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import botocore
import pytest

from e2e_support import ECHO_ENV_SERVER, ROLE_ARN, Deployer, file_url, invoke, new_name, pack_model, tar_dir, variant
from moorage.serving.instance_types import (
    CPU_THREADS_ENV,
    GIB,
    INSTANCE_TYPES,
    THREAD_VARIABLES,
    Resources,
    lookup,
    machine_cores,
    machine_memory_bytes,
    memory_limit,
    resources_for,
    thread_environment,
)

REQUIRED_FAMILIES = ("t2", "t3", "m4", "m5", "m6i", "c4", "c5", "c6i", "r5", "g4dn", "p3")


def hosting_enum() -> list[str]:
    """botocore's ProductionVariantInstanceType: the types SageMaker hosts endpoints on."""
    data = Path(botocore.__file__).parent / "data" / "sagemaker"
    [model] = sorted(data.glob("*/service-2.json.gz"))[-1:]
    with gzip.open(model) as fh:
        return json.load(fh)["shapes"]["ProductionVariantInstanceType"]["enum"]


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "vcpus", "memory"), [
    ("ml.t2.medium", 2, 4), ("ml.t3.2xlarge", 8, 32), ("ml.m4.10xlarge", 40, 160), ("ml.m5.large", 2, 8),
    ("ml.m5.24xlarge", 96, 384), ("ml.m6i.32xlarge", 128, 512), ("ml.c4.large", 2, 3.75), ("ml.c4.8xlarge", 36, 60),
    ("ml.c5.9xlarge", 36, 72), ("ml.c6i.24xlarge", 96, 192), ("ml.r5.large", 2, 16), ("ml.r5.24xlarge", 96, 768),
    ("ml.g4dn.xlarge", 4, 16), ("ml.g4dn.12xlarge", 48, 192), ("ml.p3.2xlarge", 8, 61), ("ml.p3.16xlarge", 64, 488),
])
def test_table_lookups(name: str, vcpus: int, memory: float) -> None:
    spec = lookup(name)
    assert spec is not None and spec.name == name
    assert (spec.vcpus, spec.memory_gib) == (vcpus, memory)
    assert lookup(name.upper()) == spec and lookup(f" {name} ") == spec


def test_gpus() -> None:
    assert [lookup(n).gpus for n in ("ml.g4dn.xlarge", "ml.g4dn.12xlarge", "ml.p3.8xlarge", "ml.m5.large")] == [
        1, 4, 4, 0]


def test_every_hosting_size_of_the_required_families_is_in_the_table() -> None:
    enum = hosting_enum()
    for family in REQUIRED_FAMILIES:
        listed = [t for t in enum if t.split(".")[1] == family]
        assert family == "t3" or listed, f"botocore lists no ml.{family}.* (the test needs updating)"
        missing = [t for t in listed if t not in INSTANCE_TYPES]
        assert not missing, f"{family}: {missing}"
        assert any(t.startswith(f"ml.{family}.") for t in INSTANCE_TYPES)


def test_table_is_consistent() -> None:
    for name, spec in INSTANCE_TYPES.items():
        assert name == spec.name and name.startswith("ml.")
        assert spec.vcpus >= 1 and spec.memory_gib >= 1 and spec.gpus >= 0
        size = name.split(".")[2]
        if size.endswith("xlarge") and size != "xlarge":
            # an Nxlarge has 4N vCPUs in every family in the table (c4.8xlarge's 36 is EC2's own exception)
            n = int(size[: -len("xlarge")])
            assert spec.vcpus in (4 * n, 36), name


# --------------------------------------------------------------------------------------------------
# resources per instance
# --------------------------------------------------------------------------------------------------
def test_threads_are_capped_at_the_machine_cores() -> None:
    cores = machine_cores()
    assert resources_for("ml.t2.medium").cpu_threads == min(2, cores)
    big = resources_for("ml.m5.24xlarge")
    assert big.cpu_threads == min(96, cores) and big.known
    total = machine_memory_bytes()
    assert big.memory_bytes == min(384 * GIB, total or 384 * GIB)
    small = resources_for("ml.c4.large")
    assert small.memory_bytes == min(int(3.75 * GIB), total or 4 * GIB)


@pytest.mark.parametrize("name", ["local", "local_cpu", "ml.z9.mega", "LOCAL"])
def test_local_and_unknown_types_get_machine_defaults_with_one_warning(name: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="moorage.instance_types")
    first = resources_for(name)
    assert first == Resources(name, machine_cores(), None, known=False)
    resources_for(name)
    resources_for(name)
    warnings = [r for r in caplog.records if name in r.getMessage()]
    assert len(warnings) <= 1  # once per process, so at most one here (an earlier test may have had it)
    assert memory_limit(first, "i-test").mechanism == "none"


def test_thread_environment_leaves_what_the_container_sets() -> None:
    res = Resources("ml.m5.xlarge", 3, 16 * GIB, known=True)
    assert thread_environment(res, {}) == {name: "3" for name in THREAD_VARIABLES}
    assert set(THREAD_VARIABLES) == {"MOORAGE_CPU_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                     "OPENBLAS_NUM_THREADS"}
    env = thread_environment(res, {"OMP_NUM_THREADS": "1", "OTHER": "x"})
    assert "OMP_NUM_THREADS" not in env and env[CPU_THREADS_ENV] == "3" and env["MKL_NUM_THREADS"] == "3"


# --------------------------------------------------------------------------------------------------
# memory limits (real processes)
# --------------------------------------------------------------------------------------------------
def test_no_memory_limit_unless_configured() -> None:
    limit = memory_limit(resources_for("ml.m5.large"), "i-test", server_env={})
    assert limit.mechanism == "none" and limit.prefix == []
    assert "MOORAGE_ENFORCE_MEMORY_LIMIT" in limit.note


@pytest.mark.skipif(not Path("/usr/bin/prlimit").exists() and not Path("/bin/prlimit").exists(),
                    reason="util-linux prlimit not installed")
def test_opt_in_rlimit_applies_to_the_process() -> None:
    res = Resources("ml.m5.large", 2, 3 * GIB, known=True)
    limit = memory_limit(res, "i-test", server_env={"MOORAGE_ENFORCE_MEMORY_LIMIT": "1"})
    assert limit.mechanism == "rlimit" and limit.limit_bytes == 3 * GIB
    code = "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0])"
    out = subprocess.run([*limit.prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         check=True)
    assert int(out.stdout) == 3 * GIB


def test_cgroup_limit_moves_the_process_in_before_it_runs(tmp_path: Path) -> None:
    """With MOORAGE_CGROUP_ROOT the process writes itself into its cgroup, then execs the command.

    A plain directory stands in for the delegated cgroup v2 root (this machine has no delegated
    one): the mechanics (memory.max written, the pid joining cgroup.procs before exec) are the same.
    """
    res = Resources("ml.m5.large", 2, 2 * GIB, known=True)
    limit = memory_limit(res, "i-abc", server_env={"MOORAGE_CGROUP_ROOT": str(tmp_path)})
    assert limit.mechanism == "cgroup" and limit.cgroup_dir == tmp_path / "moorage-i-abc"
    assert (limit.cgroup_dir / "memory.max").read_text().strip() == str(2 * GIB)
    proc = subprocess.run([*limit.prefix, sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=30, check=True)
    assert (limit.cgroup_dir / "cgroup.procs").read_text().strip() == proc.stdout.strip()
    limit.release()  # a real cgroup is removed once empty; this stand-in keeps its files


def test_unusable_cgroup_root_falls_back(tmp_path: Path) -> None:
    res = Resources("ml.m5.large", 2, 2 * GIB, known=True)
    limit = memory_limit(res, "i-x", server_env={"MOORAGE_CGROUP_ROOT": str(tmp_path / "missing" / "deeper")})
    assert limit.mechanism == "none"


# --------------------------------------------------------------------------------------------------
# real instances behind a real server
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_tar(artifacts: Path) -> Path:
    root = artifacts / "echo-env" / "model"
    root.mkdir(parents=True)
    (root / "serve").write_text(f"#!{sys.executable}\n{ECHO_ENV_SERVER}")
    (root / "serve").chmod(0o755)
    return tar_dir(root, root.parent / "model.tar.gz")


def deploy_typed(deployer: Deployer, sm: Any, data: Path, instance_type: str, image: str = "byo",
                 env: dict[str, str] | None = None) -> str:
    name = new_name("itype")
    container: dict[str, Any] = {"Image": image, "ModelDataUrl": file_url(data)}
    if env:
        container["Environment"] = env
    sm.create_model(ModelName=name, PrimaryContainer=container, ExecutionRoleArn=ROLE_ARN)
    deployer.models.append(name)
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
        variant("AllTraffic", name, instance_type=instance_type)])
    deployer.configs.append(name)
    deployer.endpoint(name, name)
    deployer.wait_in_service(name)
    return name


@pytest.mark.e2e
@pytest.mark.parametrize(("instance_type", "vcpus"), [("ml.t2.medium", 2), ("ml.c5.4xlarge", 16)])
def test_byo_instance_sees_its_thread_budget(deployer: Deployer, sm: Any, rt: Any, echo_tar: Path,
                                             instance_type: str, vcpus: int) -> None:
    name = deploy_typed(deployer, sm, echo_tar, instance_type)
    env = json.loads(invoke(rt, name, b"{}", "application/json")["Body"])["env"]
    expected = str(min(vcpus, machine_cores()))
    assert {k: env.get(k) for k in THREAD_VARIABLES} == dict.fromkeys(THREAD_VARIABLES, expected)
    assert env["SAGEMAKER_INSTANCE_TYPE"] == instance_type


@pytest.mark.e2e
def test_container_environment_wins_over_the_instance_type(deployer: Deployer, sm: Any, rt: Any,
                                                           echo_tar: Path) -> None:
    name = deploy_typed(deployer, sm, echo_tar, "ml.m5.xlarge", env={"OMP_NUM_THREADS": "1"})
    env = json.loads(invoke(rt, name, b"{}", "application/json")["Body"])["env"]
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["MOORAGE_CPU_THREADS"] == str(min(4, machine_cores()))


@pytest.mark.e2e
def test_local_instance_type_gets_the_machine_cores(deployer: Deployer, rt: Any, echo_tar: Path) -> None:
    """`local` is outside botocore's enum: the client skips its own validation, the server accepts it."""
    sm = deployer.server.sm(validate=False)
    name = deploy_typed(deployer, sm, echo_tar, "local")
    env = json.loads(invoke(rt, name, b"{}", "application/json")["Body"])["env"]
    assert env["MOORAGE_CPU_THREADS"] == str(machine_cores())


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_builtin_runtime_instance_environment(deployer: Deployer, sm: Any, artifacts: Path,
                                              classifier: tuple[Any, Any]) -> None:
    """A built-in (sklearn) instance: its thread variables, read from /proc/PID/environ."""
    tar = pack_model(artifacts / "itype-sklearn", classifier[0])
    name = deploy_typed(deployer, sm, tar, "ml.m5.2xlarge", image="sklearn")
    [instance] = deployer.server.instances(name)
    raw = Path(f"/proc/{instance['Pid']}/environ").read_bytes()
    env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    expected = str(min(8, machine_cores()))
    assert {k: env.get(k) for k in THREAD_VARIABLES} == dict.fromkeys(THREAD_VARIABLES, expected)
    assert "MOORAGE_SECRET_ACCESS_KEY" not in env  # the server's admin key never reaches model code
