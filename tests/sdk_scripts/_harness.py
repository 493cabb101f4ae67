"""What every SDK script shares. Runs inside the SageMaker SDK's own venv, never in moorage's.

It watches: every botocore call the SDK makes is recorded (service, operation,
endpoint, error code and message), and so is every host name the process looks up, so a test can
show that the unmodified SDK spoke to the moorage server and to nothing else (telemetry, STS's
regional endpoint, IAM). The SDK's behaviour is untouched (the recorded functions call the
originals), except that a look-up of any host but loopback fails, so nothing leaves the machine.

A script calls :func:`run` with its ``main(params) -> dict``; the parameters arrive as a JSON
document in ``argv[1]``. The outcome is printed as one line, ``SDK-RESULT {json}``, last on stdout:
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": traceback, "failed_calls": [...]}``,
with the calls and hosts either way.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import botocore.client
import botocore.exceptions

RESULT_PREFIX = "SDK-RESULT "

CALLS: Counter[str] = Counter()  # "service:Operation" -> how many times
ENDPOINTS: set[str] = set()
FAILED: list[dict[str, Any]] = []
HOSTS: set[str] = set()

_make_api_call = botocore.client.BaseClient._make_api_call
_getaddrinfo = socket.getaddrinfo


def _recording_api_call(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
    service = self.meta.service_model.service_name
    CALLS[f"{service}:{operation_name}"] += 1
    ENDPOINTS.add(self.meta.endpoint_url)
    try:
        return _make_api_call(self, operation_name, api_params)
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        FAILED.append({
            "service": service, "operation": operation_name, "endpoint": self.meta.endpoint_url,
            "params": _brief(api_params), "status": exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
            "code": error.get("Code"), "message": error.get("Message"),
        })
        raise
    except Exception as exc:  # a connection to somewhere unreachable, a parameter the model refuses
        FAILED.append({"service": service, "operation": operation_name, "endpoint": self.meta.endpoint_url,
                       "params": _brief(api_params), "exception": f"{type(exc).__name__}: {exc}"})
        raise


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _recording_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    name = host.decode() if isinstance(host, bytes) else str(host)
    HOSTS.add(name)
    if name not in LOOPBACK:
        # Nothing leaves the machine, even where it has a network: what the SDK would have sent
        # out (telemetry, STS's regional endpoint) fails here as on a machine without one, and the
        # host it wanted is on record for the test to report.
        raise socket.gaierror(socket.EAI_NONAME, f"{name}: outside hosts are refused in the SDK tests")
    return _getaddrinfo(host, *args, **kwargs)


def _brief(params: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters, bodies left out and long values cut (for a failure report)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key == "Body" or hasattr(value, "read"):
            out[key] = "<body>"
        else:
            text = json.dumps(value, default=str)
            out[key] = value if len(text) <= 400 else text[:400] + "..."
    return out


botocore.client.BaseClient._make_api_call = _recording_api_call  # type: ignore[method-assign]
socket.getaddrinfo = _recording_getaddrinfo  # type: ignore[assignment]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll until truthy; every wait in these scripts is bounded."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}: last {last!r}")


def run(main: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    params = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    started = time.monotonic()
    outcome: dict[str, Any]
    try:
        outcome = {"ok": True, "result": main(params)}
    except BaseException:  # the test reports it: the traceback and the calls that failed
        outcome = {"ok": False, "error": traceback.format_exc()[-6000:]}
    outcome.update(
        seconds=round(time.monotonic() - started, 1),
        calls=dict(sorted(CALLS.items())),
        endpoints=sorted(ENDPOINTS),
        hosts=sorted(HOSTS),
        failed_calls=FAILED[-20:],
    )
    sys.stdout.flush()
    print("\n" + RESULT_PREFIX + json.dumps(outcome, default=str), flush=True)
