"""The edge agent: serves a signed package, spools what it served, syncs with its server.

``Agent(package, spool=DIR, server=URL, fleet=F, device=D, trust_keys=[PEM])``:

* **Serving.** ``predict(rows)`` (in-process) and ``invoke(body, content_type, accept)`` (what
  ``moorage-edge serve``'s ``/invocations`` calls) run the current package's ``EdgeModel``. The model is
  one attribute read per call, so switching packages is one assignment: a request in flight finishes on
  the session it started with.
* **Capture.** With a spool, every inference is appended to it as a SageMaker capture record before the
  call returns (``spool.py``: crash-safe, capped, sealed into numbered segments). A record that cannot be
  spooled (a full disk) is counted as an error; the inference still answers, as SageMaker's capture
  never fails a request.
* **Sync** (with a server): one thread seals old segments and uploads the sealed ones, oldest first,
  deleting each only after the server's 200 (so a ``kill -9`` mid-upload sends the same segment again,
  to the same key); while the server is away it backs off (0.5 s doubling to 30 s). Another thread sends
  a heartbeat every ``heartbeat_interval_s`` (package, backlog, dropped, last sync, errors) and asks for
  the fleet's deployment: a package other than the one served is downloaded, its SHA1 checked against
  GetDeployments', verified against the trusted keys, loaded and self-tested, and only then switched
  to; a failure keeps the current package and is reported (DeploymentResult FAIL, with the reason).
* **State** (``DIR/agent.json``, replaced whole): the current and previous packages (kept on disk under
  ``DIR/packages/`` by SHA1), the package given on the command line, and the last deployment's result.
  A restart serves the last good package, unless a different package is given on the command line.

The state directory is the spool directory: ``DIR/capture/`` holds the spool.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moorage.edge import codecs
from moorage.edge.codecs import CodecError
from moorage.edge.credentials import find_key
from moorage.edge.model import EdgeModel, SelfTestError
from moorage.edge.package import MAX_ARCHIVE_BYTES, Package, PackageError, file_digest, verify
from moorage.edge.records import capture_line
from moorage.edge.signing import Signer
from moorage.edge.spool import DEFAULT_MAX_BYTES, DEFAULT_SEGMENT_BYTES, Spool, SpoolError, write_atomically
from moorage.edge.sync import DeviceClient, ServerError

log = logging.getLogger("moorage.edge")

STATE = "agent.json"
PACKAGES = "packages"
CAPTURE = "capture"
DEFAULT_REGION = "us-east-1"
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.5, 30.0
# Answers that sending the same segment again cannot change (a malformed segment, other bytes already
# stored under its name, too large): the segment is set aside so the ones after it still go. Others
# (403 while a key is being replaced, 5xx, no answer) are retried with backoff.
_REFUSED_FOR_GOOD = frozenset({400, 409, 413})
_DEVICE_NAME = re.compile(r"^[a-zA-Z0-9](-*_*[a-zA-Z0-9])*$")  # sagemaker-edge's DeviceName


def agent_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("moorage")
    except PackageNotFoundError:
        return "0"


@dataclass(frozen=True)
class DeploymentOutcome:
    """What the last package switch came to, as SendHeartbeat's DeploymentResult reports it."""

    deployment_name: str
    handle: str
    sha1: str
    status: str  # SUCCESS | FAIL
    message: str
    started: float
    ended: float
    model_name: str = ""
    model_version: str = ""

    def as_result(self, serving: EdgeModel) -> dict[str, Any]:
        model: dict[str, Any] = {"ModelHandle": self.handle, "DesiredState": "DEPLOY",
                                 "State": "DEPLOY" if self.status == "SUCCESS" else "UNDEPLOY",
                                 "Status": self.status}
        if self.model_name:
            model.update(ModelName=self.model_name, ModelVersion=self.model_version)
        if self.status != "SUCCESS":
            model["StatusReason"] = self.message
            model["RollbackFailureReason"] = ""
        return {"DeploymentName": self.deployment_name, "DeploymentStatus": self.status,
                "DeploymentStatusMessage": self.message if self.status != "SUCCESS"
                else f"serving {serving.handle}",
                "DeploymentStartTime": round(self.started, 3), "DeploymentEndTime": round(self.ended, 3),
                "DeploymentModels": [model]}


class AgentError(Exception):
    """The agent cannot start: no usable package, a bad option; the message says what to do."""


class Agent:
    """A package served in-process, with capture and (given a server) sync. Close it when done."""

    def __init__(self, package: str | os.PathLike[str] | Package, spool: str | os.PathLike[str] | None = None,
                 server: str | None = None, *, fleet: str | None = None, device: str | None = None,
                 trust_keys: Iterable[Any] = (), credentials: str | os.PathLike[str] | None = None,
                 region: str | None = None, intra_op_threads: int = 1, outputs: Sequence[str] = (),
                 heartbeat_interval_s: float = 30.0, spool_max_bytes: int = DEFAULT_MAX_BYTES,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, segment_age_s: float = 60.0,
                 fsync_interval_s: float = 1.0, timeout_s: float = 30.0, upload_pause_file: str | None = None,
                 start: bool = True) -> None:
        self.trust_keys = list(trust_keys)
        self.intra_op_threads = intra_op_threads
        self.outputs = tuple(outputs)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.errors = 0
        self.invocations = 0
        self.last_inference: float | None = None
        self.last_sync: float | None = None
        self.last_error = ""
        self._closed = threading.Event()
        self._wake_heartbeat = threading.Event()
        self._threads: list[threading.Thread] = []
        self._switch_lock = threading.Lock()
        self.directory = Path(spool).expanduser() if spool is not None else None
        if server is not None and self.directory is None:
            raise AgentError("an agent with a server needs a spool directory (where captured data and pulled "
                             "packages wait)")
        if server is not None and not (fleet and device):
            raise AgentError("an agent with a server needs --fleet and --device (the names it was registered under)")
        for what, name in (("fleet", fleet), ("device", device)):
            if name is not None and not _DEVICE_NAME.match(name):
                raise AgentError(f"{what} name {name!r} must be letters, digits, '-' and '_' (SageMaker's DeviceName)")
        self.fleet = fleet
        self.device = device or "edge"
        self._state: dict[str, Any] = {}
        self.last_outcome: DeploymentOutcome | None = None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / PACKAGES).mkdir(exist_ok=True)
            self._state = self._read_state()
            outcome = self._state.get("last_outcome")
            if isinstance(outcome, dict):
                with contextlib.suppress(TypeError):
                    self.last_outcome = DeploymentOutcome(**outcome)
        self._model = self._first_model(package)
        self.spool = None
        if self.directory is not None:
            self.spool = Spool(self.directory / CAPTURE, self.device, max_bytes=spool_max_bytes,
                               segment_bytes=segment_bytes, segment_age_s=segment_age_s,
                               fsync_interval_s=fsync_interval_s)
        self.client: DeviceClient | None = None
        if server is not None:
            found = find_key(credentials)
            if found is None:
                raise AgentError("no device key: set MOORAGE_ACCESS_KEY_ID/MOORAGE_SECRET_ACCESS_KEY, or pass "
                                 "--credentials FILE (or write ~/.moorage/edge-credentials)")
            signer = Signer(found.key, region or found.region or DEFAULT_REGION)
            assert fleet is not None
            self.client = DeviceClient(server, signer, fleet, self.device, timeout_s=timeout_s,
                                       upload_pause_file=upload_pause_file)
        if start:
            self.start()

    # ------------------------------------------------------------------------------------- packages

    @property
    def model(self) -> EdgeModel:
        return self._model

    def _load(self, package: Package | Path, *, self_test: bool) -> EdgeModel:
        verified = package if isinstance(package, Package) else verify(package, self.trust_keys)
        model = EdgeModel(verified, intra_op_threads=self.intra_op_threads, outputs=self.outputs)
        if self_test:
            model.self_test()
        return model

    def _first_model(self, package: str | os.PathLike[str] | Package) -> EdgeModel:
        """The package to start on: the last good one from the state, unless another one is given."""
        if isinstance(package, Package):
            return self._load(package, self_test=True)
        given = Path(package).expanduser()
        if not given.is_file():
            raise AgentError(f"package {given}: no such file")
        if not self.trust_keys:
            raise AgentError("no trusted key: pass --trust-key PEM (`moorage edge key` prints the server's)")
        given_sha1 = file_digest(given, "sha1")
        if self.directory is not None and self._state.get("given") == given_sha1:
            for sha1 in (self._state.get("current"), self._state.get("previous")):
                path = self._package_path(sha1) if isinstance(sha1, str) else None
                if path is None or not path.is_file():
                    continue
                try:
                    model = self._load(path, self_test=False)  # it passed its self-test when it was switched to
                except (PackageError, SelfTestError, ValueError) as exc:
                    log.warning("stored package %s is unusable (%s); trying the next one", path.name, exc)
                    continue
                if sha1 != self._state.get("current"):
                    self._update_state(current=sha1)
                log.info("serving %s, the last good package", model.handle)
                return model
        try:
            model = self._load(given, self_test=True)
        except (PackageError, SelfTestError, ValueError) as exc:
            raise AgentError(f"package {given} refused: {exc}") from exc
        if self.directory is not None:
            stored = self._package_path(given_sha1)
            if not stored.exists():
                shutil.copyfile(given, stored.with_name(stored.name + ".tmp"))
                os.replace(stored.with_name(stored.name + ".tmp"), stored)
            previous = self._state.get("current")
            self._update_state(given=given_sha1, current=given_sha1,
                               previous=previous if previous != given_sha1 else self._state.get("previous"))
        return model

    def _package_path(self, sha1: str) -> Path:
        assert self.directory is not None
        if not re.fullmatch(r"[0-9a-f]{40}", sha1):
            raise ValueError(f"not a SHA1: {sha1!r}")
        return self.directory / PACKAGES / f"{sha1}.tar.gz"

    def _read_state(self) -> dict[str, Any]:
        assert self.directory is not None
        try:
            state = json.loads((self.directory / STATE).read_bytes())
        except (FileNotFoundError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _update_state(self, **changes: Any) -> None:
        if self.directory is None:
            return
        self._state.update(changes)
        write_atomically(self.directory / STATE, json.dumps(self._state, indent=1).encode("utf-8"))

    # --------------------------------------------------------------------------------------- serving

    def predict(self, rows: Any) -> Any:
        """The current model's answer to ``rows`` (a list of rows or an array; a dict of named inputs for
        a graph with several), captured to the spool when there is one."""
        model = self._model
        data = rows if type(rows) is np.ndarray else (rows if isinstance(rows, dict) else codecs.rows(rows))
        prediction = model.predict(data)
        self.invocations += 1
        if self.spool is not None:
            now = time.time()
            self.last_inference = now
            try:
                if type(data) is np.ndarray:
                    request_type, request = codecs.CSV, _csv_rows(data)
                else:
                    request_type, request = codecs.JSON, codecs.encode(data, codecs.JSON)
                response_type = codecs.encoded_type(prediction, codecs.CSV)
                response = codecs.encode(prediction, response_type)
                self.spool.append(capture_line(request_type, request, response_type, response, now))
            except (SpoolError, ValueError, TypeError) as exc:
                self._count_error(f"capture: {exc}")
        return prediction

    def invoke(self, body: bytes, content_type: str | None, accept: str | None,
               inference_id: str | None = None) -> tuple[int, bytes, str]:
        """One ``/invocations`` request: (status, body, content type), errors as the container
        contract answers them (400, 406, 415 text; 500 for a model that fails)."""
        model = self._model
        try:
            media_type = codecs.choose_accept(accept)
            prediction = model.predict(codecs.decode(body, content_type))
            out_type = codecs.encoded_type(prediction, media_type)
            answer = codecs.encode(prediction, out_type)
        except CodecError as exc:
            return exc.status, str(exc).encode("utf-8"), "text/plain"
        except Exception as exc:
            self._count_error(f"invocation: {type(exc).__name__}: {exc}")
            return 500, f"{type(exc).__name__}: {exc}".encode(), "text/plain"
        self.invocations += 1
        if self.spool is not None:
            now = time.time()
            self.last_inference = now
            try:
                self.spool.append(capture_line(content_type, body, out_type, answer, now, inference_id))
            except SpoolError as exc:
                self._count_error(f"capture: {exc}")
        return 200, answer, out_type

    def _count_error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        log.warning("%s", message)

    # ------------------------------------------------------------------------------------------ sync

    def start(self) -> None:
        if self._threads:
            return
        if self.spool is not None:
            self._threads.append(threading.Thread(target=self._spool_loop, name="edge-spool", daemon=True))
        if self.client is not None:
            self._threads.append(threading.Thread(target=self._heartbeat_loop, name="edge-heartbeat", daemon=True))
        for thread in self._threads:
            thread.start()

    def _spool_loop(self) -> None:
        assert self.spool is not None
        backoff = 0.0
        next_try = 0.0
        while not self._closed.wait(0.1):
            try:
                self.spool.tick()
            except OSError as exc:
                self._count_error(f"spool: {exc}")
            if self.client is None or time.monotonic() < next_try:
                continue
            while not self._closed.is_set():
                segment = self.spool.oldest()
                if segment is None:
                    break
                try:
                    self.client.upload_segment(segment)
                except (ServerError, OSError) as exc:
                    if isinstance(exc, ServerError) and exc.status in _REFUSED_FOR_GOOD:
                        self.spool.reject(segment)
                        self._count_error(f"upload of {segment.name} refused, kept in rejected/: {exc}")
                        continue
                    self.spool.done(segment, uploaded=False)
                    self._count_error(f"upload of {segment.name}: {exc}")
                    backoff = min(_BACKOFF_MAX_S, max(_BACKOFF_MIN_S, backoff * 2))
                    next_try = time.monotonic() + backoff * random.uniform(0.8, 1.2)
                    break
                self.spool.done(segment, uploaded=True)
                self.last_sync = time.time()
                backoff = 0.0

    def _heartbeat_loop(self) -> None:
        while not self._closed.is_set():
            self.sync_once()
            self._wake_heartbeat.wait(self.heartbeat_interval_s)
            self._wake_heartbeat.clear()

    def sync_once(self) -> None:
        """One heartbeat and one look at the fleet's deployment (the heartbeat thread calls this)."""
        assert self.client is not None
        try:
            self.client.send_heartbeat(self.heartbeat())
        except ServerError as exc:
            self._count_error(f"heartbeat: {exc}")
            return
        try:
            deployments = self.client.get_deployments()
        except ServerError as exc:
            self._count_error(f"GetDeployments: {exc}")
            return
        if self.apply_deployments(deployments):
            try:  # tell the server at once how the switch went
                self.client.send_heartbeat(self.heartbeat())
            except ServerError as exc:
                self._count_error(f"heartbeat: {exc}")

    def heartbeat(self) -> dict[str, Any]:
        """SendHeartbeat's body, less the device and fleet names."""
        now = round(time.time(), 3)
        stats = self.spool.stats() if self.spool is not None else None
        values = {"SpoolBacklogRecords": stats.backlog_records if stats else 0,
                  "SpoolBacklogBytes": stats.backlog_bytes if stats else 0,
                  "SpoolDroppedRecords": stats.dropped_records if stats else 0,
                  "SpoolTornRecords": stats.torn_records if stats else 0,
                  "SpoolRejectedRecords": stats.rejected_records if stats else 0,
                  "LastSyncTime": round(self.last_sync, 3) if self.last_sync else 0,
                  "Errors": self.errors}
        model = self._model
        entry: dict[str, Any] = {"ModelName": model.name, "ModelVersion": model.version,
                                 "ModelMetrics": [{"MetricName": "Invocations", "Value": self.invocations,
                                                   "Timestamp": now}]}
        if self.last_inference:
            entry["LatestInference"] = round(self.last_inference, 3)
        body: dict[str, Any] = {
            "AgentVersion": agent_version(),
            "AgentMetrics": [{"MetricName": name, "Value": value, "Timestamp": now} for name, value in values.items()],
            "Models": [entry],
        }
        if self.last_outcome is not None:
            body["DeploymentResult"] = self.last_outcome.as_result(model)
        return body

    def apply_deployments(self, deployments: list[dict[str, Any]]) -> bool:
        """Act on GetDeployments' answer; True when a deployment was tried (switched to or refused)."""
        for deployment in deployments:
            for definition in deployment.get("Definitions") or []:
                if isinstance(definition, dict) and definition.get("State", "DEPLOY") == "DEPLOY":
                    return self._deploy(str(deployment.get("DeploymentName") or "deployment"), definition)
        return False

    def _deploy(self, deployment_name: str, definition: dict[str, Any]) -> bool:
        handle = str(definition.get("ModelHandle") or "")
        checksum = definition.get("Checksum") or {}
        sha1 = str(checksum.get("Sum") or "").lower()
        if not handle or not re.fullmatch(r"[0-9a-f]{40}", sha1) or checksum.get("Type", "SHA1") != "SHA1":
            self._count_error(f"deployment {deployment_name}: no model handle or SHA1 checksum in {definition}")
            return False
        if sha1 == self._state.get("current"):
            return False
        tried = self.last_outcome
        if tried is not None and tried.sha1 == sha1 and tried.status == "FAIL":
            return False  # refused already; reported with every heartbeat until another one comes
        started = time.time()
        assert self.client is not None and self.directory is not None
        target = self._package_path(sha1)
        try:
            got = self.client.download_package(handle, target.with_name(target.name + ".download"),
                                               MAX_ARCHIVE_BYTES)
        except ServerError as exc:
            if exc.unreachable:  # try again next heartbeat
                self._count_error(f"download of {handle}: {exc}")
                return False
            return self._refused(deployment_name, handle, sha1, started, f"download failed: {exc}")
        download = target.with_name(target.name + ".download")
        if got != sha1:
            download.unlink(missing_ok=True)
            return self._refused(deployment_name, handle, sha1, started,
                                 f"checksum mismatch: the package's SHA1 is {got}, GetDeployments says {sha1}")
        try:
            model = self._load(download, self_test=True)
        except (PackageError, SelfTestError, ValueError) as exc:
            download.unlink(missing_ok=True)
            return self._refused(deployment_name, handle, sha1, started, str(exc))
        os.replace(download, target)
        with self._switch_lock:
            previous = self._state.get("current")
            self._model = model  # the switch: requests in flight keep the model they read
            outcome = DeploymentOutcome(deployment_name, handle, sha1, "SUCCESS", f"serving {model.handle}",
                                        started, time.time(), model.name, model.version)
            self.last_outcome = outcome
            self._update_state(current=sha1, previous=previous, last_outcome=outcome.__dict__)
        self._prune_packages()
        log.info("deployment %s: now serving %s", deployment_name, model.handle)
        return True

    def _refused(self, deployment_name: str, handle: str, sha1: str, started: float, reason: str) -> bool:
        current = self._model.handle
        message = f"{reason}; still serving {current} (rolled back)"
        self._count_error(f"deployment {deployment_name} of {handle}: {message}")
        outcome = DeploymentOutcome(deployment_name, handle, sha1, "FAIL", message, started, time.time())
        self.last_outcome = outcome
        self._update_state(last_outcome=outcome.__dict__)
        return True

    def _prune_packages(self) -> None:
        """Keep the current and previous packages, and the one given on the command line."""
        assert self.directory is not None
        keep = {self._state.get(name) for name in ("current", "previous", "given")}
        for path in (self.directory / PACKAGES).iterdir():
            if path.name.removesuffix(".tar.gz") not in keep:
                path.unlink(missing_ok=True)

    # --------------------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Stop the background threads, fsync and close the spool (its open segment stays open: the
        next start appends to it)."""
        self._closed.set()
        self._wake_heartbeat.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.spool is not None:
            self.spool.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _csv_rows(data: np.ndarray) -> bytes:
    """Rows as the CSV a caller would have sent (a flat array is one row)."""
    if data.ndim <= 1 or data.shape[0] == 1:
        return ",".join(map(str, data.reshape(-1).tolist())).encode("utf-8")
    return "\n".join(",".join(map(str, row)) for row in data.reshape(len(data), -1).tolist()).encode("utf-8")
