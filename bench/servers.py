"""The servers under test, behind one small interface.

Every server is started as a process group pinned with ``taskset -c <core>`` *before* it starts,
so every process it forks (moorage's instances, MLServer's inference workers) inherits the pin;
after the first request the bench checks the whole process tree's affinity and records it.

A server: ``prepare()`` (install what it needs; raise :class:`Unavailable` with the reason),
``start(models)`` (serve all of them, return when ready), ``request(model)`` (the exact request
wrk replays), ``predictions(model, body)`` (decode an answer for the correctness check),
``stop()``. ``supports(model)`` lets a server skip a model it has no runtime for.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from envs import EnvError, ensure_env, env_dir
from loadgen import HttpRequest
from models import BenchModel

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


class Unavailable(RuntimeError):
    """The server cannot be installed or started; the message says why (it goes in the table)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_call(url: str, request: HttpRequest | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        if request is None:
            conn.request("GET", parts.path or "/")
        else:
            conn.request(request.method, parts.path, body=request.body, headers=request.headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def process_label(p: psutil.Process) -> str:
    """A short name for a server process: its script or ``-m`` module (plus the pid)."""
    cmd = p.cmdline()
    name = Path(cmd[0]).name if cmd else p.name()
    for i, arg in enumerate(cmd[1:], 1):
        if arg == "-c" and i + 1 < len(cmd):
            name = "-c " + cmd[i + 1][:40]
            break
        if arg == "-m" and i + 1 < len(cmd):
            name = " ".join(cmd[i + 1 : i + 3])
            break
        if arg.endswith(".py") or not arg.startswith("-"):
            name = Path(arg).name + (" " + cmd[i + 1] if i + 1 < len(cmd) and not cmd[i + 1].startswith("-") else "")
            break
    return f"{name} [{p.pid}]"


class PinnedProcess:
    """A command run in its own session (so its whole group can be stopped) pinned to one core."""

    def __init__(self, cmd: list[str], log_path: Path, *, cpu: int | str | None, env=None, cwd=None):
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
        full = ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd
        self.proc = subprocess.Popen(
            full, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def log_tail(self, n: int = 4) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])[-500:]

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            pids = [p.pid for p in self.tree()]
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            for pid in [self.proc.pid, *pids]:  # a child that left the group, or ignored TERM
                try:
                    psutil.Process(pid).kill()
                except psutil.NoSuchProcess:
                    pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        self._log.close()


def wait_ready(url: str, proc: PinnedProcess, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise Unavailable(f"{what} exited (rc={proc.proc.returncode}): {proc.log_tail()}")
        try:
            status, _ = http_call(url, timeout=2)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise Unavailable(f"{what} not ready after {timeout:.0f}s at {url}: {proc.log_tail()}")


class Server:
    key = "?"
    name = "?"
    detail = ""

    def __init__(self, workdir: Path, cpu: int | None = 0):
        self.workdir = workdir
        self.cpu = cpu
        self.procs: list[PinnedProcess] = []

    # -- interface ------------------------------------------------------------------------------
    def supports(self, model: BenchModel) -> str | None:
        """None if this server can serve ``model``, else why not."""
        return None if model.runtime == "sklearn" else f"no {model.runtime} runtime"

    def prepare(self) -> None:
        pass

    def start(self, models: list[BenchModel]) -> None:
        raise NotImplementedError

    def base_url(self, model: BenchModel) -> str:
        raise NotImplementedError

    def request(self, model: BenchModel) -> HttpRequest:
        raise NotImplementedError

    def predictions(self, model: BenchModel, body: bytes) -> list:
        return json.loads(body)["predictions"]

    def versions(self) -> dict[str, str]:
        return {}

    # -- shared ---------------------------------------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        return [p for proc in self.procs for p in proc.tree()]

    def affinity(self) -> dict[int, list[int]]:
        out = {}
        for p in self.processes():
            try:
                out[p.pid] = p.cpu_affinity()
            except psutil.NoSuchProcess:
                pass
        return out

    def cpu_snapshot(self) -> dict[int, tuple[str, float]]:
        """CPU seconds (user + system) used so far by each process of the server, with a label."""
        out = {}
        for p in self.processes():
            try:
                if p.cmdline()[:1] == ["taskset"]:
                    continue
                t = p.cpu_times()
                out[p.pid] = (process_label(p), t.user + t.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                pass
        return out

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs = []

    def _spawn(self, cmd: list[str], log_name: str, env=None, cwd=None) -> PinnedProcess:
        proc = PinnedProcess(cmd, self.workdir / "logs" / log_name, cpu=self.cpu, env=env, cwd=cwd)
        self.procs.append(proc)
        return proc


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


def _pip_versions(python: Path, dists: list[str]) -> dict[str, str]:
    code = (
        "import json,sys\nfrom importlib import metadata as m\nout={}\n"
        "for d in sys.argv[1:]:\n    try: out[d]=m.version(d)\n    except Exception: pass\n"
        "print(json.dumps(out))"
    )
    try:
        out = subprocess.run([str(python), "-c", code, *dists], capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


# -- (a) the raw ASGI baseline ------------------------------------------------------------------


class Baseline(Server):
    key = "a"
    name = "baseline"
    detail = "raw ASGI + uvicorn(uvloop, httptools), predict in-process"
    workers = 1  # processes sharing the port (--baseline-workers), for runs on several cores

    def supports(self, model: BenchModel) -> str | None:
        return None

    def start(self, models: list[BenchModel]) -> None:
        # one single-process app per model, on its own port (the idle ones cost nothing)
        self.ports: dict[str, int] = {}
        for model in models:
            port = free_port()
            proc = self._spawn(
                [
                    sys.executable,
                    str(BENCH / "baseline_app.py"),
                    "--runtime",
                    model.runtime,
                    "--model",
                    str(model.artifact),
                    "--port",
                    str(port),
                    *(["--input-fn", str(model.input_fn)] if model.input_fn else []),
                    "--workers",
                    str(self.workers),
                ],
                f"baseline-{model.name}.log",
            )
            self.ports[model.name] = port
            wait_ready(f"http://127.0.0.1:{port}/ping", proc, 60, f"baseline[{model.name}]")

    def base_url(self, model: BenchModel) -> str:
        return f"http://127.0.0.1:{self.ports[model.name]}"

    def request(self, model: BenchModel) -> HttpRequest:
        if model.is_binary:  # the raw bytes, as moorage gets them
            return HttpRequest("/invocations", model.body, {"Content-Type": model.content_type})
        body = json.dumps({"instances": [model.record]}).encode()
        return HttpRequest("/invocations", body, {"Content-Type": "application/json"})

    def versions(self) -> dict[str, str]:
        return _pip_versions(
            Path(sys.executable), ["uvicorn", "uvloop", "httptools", "orjson", "scikit-learn", "onnxruntime"]
        )


# -- (b) moorage ----------------------------------------------------------------------------------


class Moorage(Server):
    key = "b"
    name = "moorage"
    detail = "router + 1 instance process, SigV4-signed invocations"
    access_key = "MRGBENCHBENCHBENCH01"
    secret_key = "bench-secret-key-not-for-production-use"
    region = "us-east-1"

    def supports(self, model: BenchModel) -> str | None:
        return None  # Image=model.runtime: moorage has a runtime for each model in the bench

    def prepare(self) -> None:
        out = subprocess.run(
            [sys.executable, "-m", "moorage", "serve", "--help"], capture_output=True, text=True, cwd=ROOT
        )
        if out.returncode != 0:
            tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
            raise Unavailable(f"`python -m moorage serve --help` failed: {tail[0][:200]}")

    extra_args: tuple[str, ...] = ()  # more `moorage serve` options (cluster mode's --ray)
    extra_env: dict[str, str] = {}

    def start(self, models: list[BenchModel]) -> None:
        self.port = free_port()
        home = self.workdir / "moorage-home"
        env = _clean_env(MOORAGE_ACCESS_KEY_ID=self.access_key, MOORAGE_SECRET_ACCESS_KEY=self.secret_key,
                         **self.extra_env)
        env.pop("MOORAGE_HOME", None)
        env.pop("MOORAGE_RAY_ADDRESS", None)
        proc = self._spawn(
            [
                sys.executable,
                "-m",
                "moorage",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--home",
                str(home),
                *self.extra_args,
            ],
            "moorage.log",
            env=env,
            cwd=ROOT,
        )
        url = f"http://127.0.0.1:{self.port}"
        wait_ready(url + "/healthz", proc, 60, "moorage serve")
        import boto3

        client = boto3.client(
            "sagemaker",
            endpoint_url=url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )
        try:
            for model in models:
                self._deploy(client, model)
        except Exception as exc:
            raise Unavailable(f"deploy failed: {type(exc).__name__}: {exc}"[:400]) from exc

    # A routing policy (serving.py --routing thompson): the endpoint gets a second variant of the same
    # model and its config the tag moorage:routing, so every request goes through that policy's choice.
    routing: str | None = None

    def _deploy(self, client, model: BenchModel) -> None:
        name = self.endpoint(model)
        container = {"Image": model.runtime, "ModelDataUrl": model.tarball.resolve().as_uri()}
        if model.environment:
            container["Environment"] = dict(model.environment)
        client.create_model(ModelName=name, PrimaryContainer=container)
        variant = {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
                   "InstanceType": "ml.m5.large"}
        extra = {}
        variants = [variant]
        if self.routing:
            variants.append({**variant, "VariantName": "Challenger"})
            extra["Tags"] = [{"Key": "moorage:routing", "Value": self.routing}]
        client.create_endpoint_config(EndpointConfigName=name, ProductionVariants=variants, **extra)
        client.create_endpoint(EndpointName=name, EndpointConfigName=name)
        client.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 180})

    @staticmethod
    def endpoint(model: BenchModel) -> str:
        return f"bench-{model.name}"

    def base_url(self, model: BenchModel) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, model: BenchModel) -> HttpRequest:
        """Sign ONE request with botocore; wrk replays these exact headers (valid for 15 minutes)."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        path = f"/endpoints/{self.endpoint(model)}/invocations"
        # large payloads: the raw bytes (signed once here, with their SHA-256, however big they are)
        body, content_type = (model.body, model.content_type) if model.is_binary else (model.csv_body(), "text/csv")
        aws = AWSRequest(
            method="POST",
            url=self.base_url(model) + path,
            data=body,
            headers={"Content-Type": content_type, "Accept": "application/json"},
        )
        SigV4Auth(Credentials(self.access_key, self.secret_key), "sagemaker", self.region).add_auth(aws)
        return HttpRequest(path, body, {k: v for k, v in aws.headers.items()})

    def predictions(self, model: BenchModel, body: bytes) -> list:
        try:
            data = json.loads(body)
        except ValueError:  # CSV: one prediction per line
            return [line.strip() for line in body.decode().splitlines() if line.strip()]
        if isinstance(data, dict):
            data = data.get("predictions", data)
        return data if isinstance(data, list) else [data]

    def versions(self) -> dict[str, str]:
        return _pip_versions(
            Path(sys.executable), ["moorage", "uvicorn", "uvloop", "httptools", "botocore", "onnxruntime"]
        )


class MoorageOnRay(Moorage):
    """Cluster mode on one machine: a Ray head node started here (pinned like every server), and
    moorage with ``--ray``: the instance is a Ray actor reached over TCP instead of a Unix socket."""

    key = "r"
    name = "moorage-ray"
    detail = "router + 1 instance as a Ray actor (cluster mode, TCP link), SigV4-signed invocations"

    def prepare(self) -> None:
        super().prepare()
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise Unavailable("Ray is not installed: pip install 'moorage[ray]'") from exc

    def start(self, models: list[BenchModel]) -> None:
        port = free_port()
        temp = Path(tempfile.mkdtemp(prefix="mbr-"))  # short: Ray's socket paths live under it
        env = _clean_env(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        head = self._spawn([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
                            "--node-ip-address=127.0.0.1", "--num-cpus=4", "--include-dashboard=false",
                            "--disable-usage-stats", "--object-store-memory=100000000", f"--temp-dir={temp}"],
                           "ray-head.log", env=env)
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in head.log_path.read_text(errors="replace"):
            if not head.alive() or time.monotonic() > deadline:
                raise Unavailable(f"ray start failed: {head.log_tail()}")
            time.sleep(0.3)
        self.temp = temp
        self.extra_args = ("--ray", f"127.0.0.1:{port}")
        self.extra_env = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        super().start(models)

    def versions(self) -> dict[str, str]:
        return {**super().versions(), **_pip_versions(Path(sys.executable), ["ray"])}

    def stop(self) -> None:
        super().stop()  # moorage first, then the Ray node (reverse order of start)
        if getattr(self, "temp", None) is not None:
            shutil.rmtree(self.temp, ignore_errors=True)


# -- (c) KServe -----------------------------------------------------------------------------------


class KServe(Server):
    key = "c"
    name = "kserve"
    detail = "kserve.ModelServer, sklearn / onnxruntime Model subclasses, v1 :predict"

    def supports(self, model: BenchModel) -> str | None:
        if model.is_binary:
            return "no raw-bytes input (its protocol takes JSON tensors)"
        return None if model.runtime in ("sklearn", "onnx") else f"no {model.runtime} runtime"

    def prepare(self) -> None:
        try:
            self.python = ensure_env("kserve")
        except EnvError as exc:
            raise Unavailable(f"install failed: {exc}") from exc

    def start(self, models: list[BenchModel]) -> None:
        self.port = free_port()
        cmd = [
            str(self.python),
            str(BENCH / "kserve_server.py"),
            "--http_port",
            str(self.port),
            "--grpc_port",
            str(free_port()),
        ]
        for model in models:
            cmd += ["--bench-model", f"{model.name}={model.artifact}"]
        proc = self._spawn(cmd, "kserve.log", env=_clean_env(), cwd=self.workdir)
        for model in models:
            wait_ready(f"{self.base_url(model)}/v1/models/{model.name}", proc, 120, "kserve")

    def base_url(self, model: BenchModel) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, model: BenchModel) -> HttpRequest:
        body = json.dumps({"instances": [model.record]}).encode()
        return HttpRequest(f"/v1/models/{model.name}:predict", body, {"Content-Type": "application/json"})

    def versions(self) -> dict[str, str]:
        return _pip_versions(
            env_dir("kserve") / "bin" / "python", ["kserve", "fastapi", "uvicorn", "uvloop", "onnxruntime"]
        )


# -- (d) MLServer ---------------------------------------------------------------------------------


class MLServer(Server):
    key = "d"
    name = "mlserver"
    detail = (
        "mlserver + mlserver-sklearn (onnx: a custom MLModel running onnxruntime), v2 inference protocol, "
        "default parallel_workers=1"
    )

    def supports(self, model: BenchModel) -> str | None:
        if model.is_binary:
            return "no raw-bytes input (its protocol takes JSON tensors)"
        return None if model.runtime in ("sklearn", "onnx") else f"no {model.runtime} runtime"

    def prepare(self) -> None:
        try:
            self.python = ensure_env("mlserver")
        except EnvError as exc:
            raise Unavailable(f"install failed: {exc}") from exc

    def start(self, models: list[BenchModel]) -> None:
        self.port = free_port()
        repo = self.workdir / "mlserver-repo"
        repo.mkdir(parents=True, exist_ok=True)
        # Defaults except: ports, and debug=False (which turns off uvicorn's access log, as for all)
        settings = {
            "debug": False,
            "http_port": self.port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
        }
        (repo / "settings.json").write_text(json.dumps(settings, indent=2))
        for model in models:
            mdir = repo / model.name
            mdir.mkdir(exist_ok=True)
            implementation = "mlserver_sklearn.SKLearnModel"
            if model.runtime == "onnx":
                # MLServer 1.7 has no ONNX runtime: a custom MLModel, imported from the model's folder
                shutil.copy(BENCH / "mlserver_onnx_runtime.py", mdir / "mlserver_onnx_runtime.py")
                implementation = "mlserver_onnx_runtime.OnnxModel"
            (mdir / "model-settings.json").write_text(
                json.dumps(
                    {
                        "name": model.name,
                        "implementation": implementation,
                        "parameters": {"uri": str(model.artifact), "version": "v1"},
                    },
                    indent=2,
                )
            )
        mlserver = env_dir("mlserver") / "bin" / "mlserver"
        proc = self._spawn([str(mlserver), "start", str(repo)], "mlserver.log", env=_clean_env(), cwd=repo)
        for model in models:
            wait_ready(f"{self.base_url(model)}/v2/models/{model.name}/ready", proc, 180, "mlserver")

    def base_url(self, model: BenchModel) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, model: BenchModel) -> HttpRequest:
        if model.is_text:
            tensor = {"name": "input-0", "shape": [1], "datatype": "BYTES", "data": [model.record]}
        else:
            tensor = {
                "name": "input-0",
                "shape": [1, len(model.record)],
                # the ONNX graph takes float32: sent as such, MLServer decodes it to float32 directly
                "datatype": "FP32" if model.runtime == "onnx" else "FP64",
                "data": list(model.record),
            }
        body = json.dumps({"inputs": [tensor]}).encode()
        return HttpRequest(f"/v2/models/{model.name}/infer", body, {"Content-Type": "application/json"})

    def predictions(self, model: BenchModel, body: bytes) -> list:
        return json.loads(body)["outputs"][0]["data"]

    def versions(self) -> dict[str, str]:
        return _pip_versions(
            env_dir("mlserver") / "bin" / "python",
            ["mlserver", "mlserver-sklearn", "fastapi", "uvicorn", "uvloop", "onnxruntime"],
        )


class MoorageWorkers(Moorage):
    """(w) moorage with router workers (MOORAGE_ROUTER_WORKERS): InvokeEndpoint's HTTP and SigV4 in
    worker processes, the route table and the instance in the router's; for the bench's runs on
    several cores."""

    key = "w"
    name = "moorage+workers"
    detail = "router + N router workers + 1 instance process, SigV4-signed invocations"
    workers = 2

    def start(self, models: list[BenchModel]) -> None:
        self.extra_env = {"MOORAGE_ROUTER_WORKERS": str(self.workers)}
        super().start(models)


SERVERS: dict[str, type[Server]] = {cls.key: cls for cls in (Baseline, Moorage, MoorageWorkers, MoorageOnRay, KServe,
                                                             MLServer)}
