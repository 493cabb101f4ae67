"""What starts one instance of a production variant, wherever it runs.

A ``LaunchSpec`` names the model by its artifact location (``model_data_url``: ``file://``,
``s3://``, a local archive) and carries the container's environment, instance type and command.
``model_dir`` is where the artifact was unpacked on the machine that built the spec; a launcher on
another machine (a Ray node) calls ``on_this_node`` to unpack it there from the location, and the
paths the environment derived from the old folder follow it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from moorage.settings import InstanceSettings


class Materializer(Protocol):
    def materialize(self, url: str) -> Path: ...


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start an instance of one production variant."""

    runtime: str
    model_dir: Path
    environment: dict[str, str] = field(default_factory=dict)
    instance_type: str = "ml.m5.large"
    command: tuple[str, ...] = ()  # runtime "byo": the server's argv, run with cwd = model_dir
    requirements: Path | None = None  # a requirements.txt to install into a per-model environment
    envs_dir: Path | None = None  # where those environments are cached (home/envs)
    startup_timeout: float | None = None  # overrides the pool's /ping deadline (MOORAGE_STARTUP_TIMEOUT)
    model_data_url: str | None = None  # the artifact's location: what another node unpacks
    background: bool = False  # runs only on spare CPU (SCHED_IDLE): a shadow variant's instances (shadow.py)
    # A container of a serial inference pipeline: its ContainerHostname, and whether the pipeline is
    # invoked one container at a time (InferenceExecutionConfig.Mode Direct) rather than in order.
    container_hostname: str | None = None
    direct: bool = False
    # Mode MultiModel: model_data_url is a prefix of archives, one loaded per TargetModel
    # (multi_model_pool.py); MultiModelConfig.ModelCacheSetting Disabled turns model_caching off.
    multi_model: bool = False
    model_caching: bool = True
    # The server's settings for instances (memory limits, code environments, log rotation).
    instances: InstanceSettings = field(default_factory=InstanceSettings)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, to travel to another process or node."""
        data = dataclasses.asdict(self)
        for key in ("model_dir", "requirements", "envs_dir"):
            if data[key] is not None:
                data[key] = str(data[key])
        data["command"] = list(self.command)
        data["instances"] = self.instances.to_plain()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LaunchSpec:
        return cls(runtime=data["runtime"], model_dir=Path(data["model_dir"]), environment=dict(data["environment"]),
                   instance_type=data["instance_type"], command=tuple(data["command"]),
                   requirements=Path(data["requirements"]) if data.get("requirements") else None,
                   envs_dir=Path(data["envs_dir"]) if data.get("envs_dir") else None,
                   startup_timeout=data.get("startup_timeout"), model_data_url=data.get("model_data_url"),
                   background=bool(data.get("background")), container_hostname=data.get("container_hostname"),
                   direct=bool(data.get("direct")), multi_model=bool(data.get("multi_model")),
                   model_caching=bool(data.get("model_caching", True)),
                   instances=InstanceSettings.from_plain(data.get("instances") or {}))

    def on_this_node(self, artifacts: Materializer) -> LaunchSpec:
        """This spec where it runs: unchanged when the unpacked model is here (a shared disk), else the
        model unpacked from its location into ``artifacts``, with paths under the old folder moved."""
        if self.model_dir.is_dir() or not self.model_data_url:
            return self
        local = artifacts.materialize(self.model_data_url)
        old = str(self.model_dir)

        def moved(value: str) -> str:
            return str(local) + value[len(old):] if value == old or value.startswith(old + "/") else value

        requirements = Path(moved(str(self.requirements))) if self.requirements else None
        return dataclasses.replace(self, model_dir=local, requirements=requirements,
                                   environment={k: moved(v) for k, v in self.environment.items()})
