"""The `moorage` command line against a real server: the main flows through the real entry point
(`python -m moorage` in a subprocess), exit codes, stdout/stderr; log reading on files laid out by hand."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner

from e2e_support import MoorageServer, csv_body, free_port, new_name, npy_body, save_model, wait_until
from moorage.cli.main import cli

INFERENCE_PY = """
import os

import joblib

LABELS = {0: "negative", 1: "positive"}


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def predict_fn(data, model):
    return [LABELS[int(c)] for c in model.predict(data)]
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("MOORAGE_HOME", "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key, None)
    return env


def moorage(*args: str, home: Path | None = None, timeout: float = 180,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real entry point; every client command gets --home so the server is found there."""
    command = [sys.executable, "-m", "moorage", *args]
    if home is not None:
        command += ["--home", str(home)]
    return subprocess.run(command, capture_output=True, timeout=timeout, env=_env(), input=stdin)


# The follower starts with SIGINT and SIGTERM ignored, as a shell's background job inherits SIGINT, so the
# tests show it installs its own handlers whatever the shell that started pytest did.
_IGNORING = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
             "signal.signal(signal.SIGTERM, signal.SIG_IGN); os.execv(sys.executable, sys.argv[1:])")


def follow(*args: str, stdout: IO[bytes], stderr: int | IO[bytes]) -> subprocess.Popen[bytes]:
    """``moorage logs ... --follow`` in a process that inherits SIGINT and SIGTERM ignored."""
    return subprocess.Popen([sys.executable, "-c", _IGNORING, sys.executable, "-m", "moorage", "logs", *args,
                             "--follow"], stdout=stdout, stderr=stderr, env=_env())


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> int:
    """Send ``sig``; the exit status, or a failure if the process does not end within a generous bound."""
    proc.send_signal(sig)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"moorage logs --follow did not stop on {sig.name}")


def text(result: subprocess.CompletedProcess[bytes]) -> str:
    return f"exit {result.returncode}\nstdout: {result.stdout.decode(errors='replace')}\n" \
           f"stderr: {result.stderr.decode(errors='replace')}"


@pytest.fixture(scope="module")
def project(artifacts: Path, classifier: tuple[Any, Any]) -> Path:
    root = artifacts / "cli-project"
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "src").mkdir(exist_ok=True)
    save_model(classifier[0], root / "model" / "model.joblib")
    (root / "src" / "inference.py").write_text(INFERENCE_PY)
    return root


# --------------------------------------------------------------------------------------------------
# the main flow: deploy -> invoke -> logs -> delete
# --------------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_deploy_invoke_logs_delete(server: MoorageServer, sm: Any, project: Path, tmp_path: Path,
                                   classifier: tuple[Any, Any]) -> None:
    clf, X = classifier
    name = new_name("cli-reviews")
    home = server.home
    result = moorage("deploy", str(project / "model"), "--image", "sklearn", "--instances", "2",
                     "--instance-type", "ml.m5.large", "--name", name, "--entry-point", "inference.py",
                     "--source-dir", str(project / "src"), "--env", "MY_FLAG=on", home=home)
    try:
        assert result.returncode == 0, text(result)
        out = result.stdout.decode()
        assert f"endpoint {name}: InService" in out, text(result)
        assert "2 instance(s)" in out
        env = sm.describe_model(ModelName=name)["PrimaryContainer"]["Environment"]
        assert env == {"MY_FLAG": "on", "SAGEMAKER_PROGRAM": "inference.py",
                       "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}

        # invoke: a file body, JSON out
        body_file = tmp_path / "rows.csv"
        body_file.write_bytes(csv_body(X[:4]))
        result = moorage("invoke", name, "--content-type", "text/csv", "--accept", "application/json",
                         "--body", f"@{body_file}", "--verbose", home=home)
        assert result.returncode == 0, text(result)
        expected = [{0: "negative", 1: "positive"}[int(c)] for c in clf.predict(X[:4])]
        assert json.loads(result.stdout) == expected
        assert "variant: AllTraffic" in result.stderr.decode()
        # a literal body, content type from the default; target variant; no --verbose: stderr stays quiet
        row = ",".join(repr(float(v)) for v in X[0])
        result = moorage("invoke", name, "--content-type", "text/csv", "--body", row, "--target-variant",
                         "AllTraffic", "--custom-attributes", "trace=1", home=home)
        assert result.returncode == 0 and result.stderr == b"", text(result)
        assert json.loads(result.stdout) == expected[:1]
        # binary in and out: .npy body from stdin, .npy answer on stdout byte for byte
        result = moorage("invoke", name, "--content-type", "application/x-npy", "--accept", "application/x-npy",
                         "--body", "@-", home=home, stdin=npy_body(X[:3]))
        assert result.returncode == 0, text(result)
        assert np.load(io.BytesIO(result.stdout), allow_pickle=False).tolist() == expected[:3]
        # a model error: exit 1, message on stderr
        result = moorage("invoke", name, "--content-type", "text/csv", "--body", "not,numbers,at,all", home=home)
        assert result.returncode == 1, text(result)
        assert result.stdout == b""
        err = result.stderr.decode()
        assert err.startswith("error:") and "ModelError" in err, text(result)

        # logs: every instance, prefixed, in API order
        listed = server.instances(name)
        instances = [i["InstanceId"] for i in listed]
        assert len(instances) == 2
        result = moorage("logs", name, home=home)
        assert result.returncode == 0, text(result)
        out = result.stdout.decode()
        for instance in instances:
            assert f"[AllTraffic/{instance}] " in out, out
        assert "could not convert string to float" in out  # the model error is logged by its instance
        assert all(line.startswith("[AllTraffic/i-") for line in out.splitlines()), out
        # --instance N (from 1, API order) and --instance ID: that file only, unprefixed
        for selector, index in (("2", 1), (instances[0], 0)):
            result = moorage("logs", name, "--instance", selector, "--lines", "all", home=home)
            assert result.returncode == 0, text(result)
            # that instance's file as it is (read after: it may have grown since, never shrunk)
            assert result.stdout and Path(listed[index]["LogPath"]).read_bytes().startswith(result.stdout), \
                text(result)
        result = moorage("logs", name, "--instance", "1", "--lines", "1", home=home)
        assert result.returncode == 0 and len(result.stdout.decode().splitlines()) == 1, text(result)
        result = moorage("logs", name, "--instance", "3", home=home)
        assert result.returncode == 1 and result.stderr.decode().startswith("error:"), text(result)
        result = moorage("logs", name, "--variant", "Nope", home=home)
        assert result.returncode == 1 and "error:" in result.stderr.decode(), text(result)

        result = moorage("endpoints", home=home)
        assert result.returncode == 0 and name in result.stdout.decode(), text(result)
    finally:
        result = moorage("delete", name, home=home)
    assert result.returncode == 0, text(result)
    out = result.stdout.decode()
    assert f"deleted endpoint {name}" in out and f"deleted model {name}" in out
    assert f"deleted endpoint config {name}" in out
    for call, kw in ((sm.describe_endpoint, {"EndpointName": name}), (sm.describe_model, {"ModelName": name}),
                     (sm.describe_endpoint_config, {"EndpointConfigName": name})):
        with pytest.raises(ClientError):
            call(**kw)
    result = moorage("delete", name, home=home)
    assert result.returncode == 1 and result.stderr.decode().startswith("error:"), text(result)


@pytest.mark.e2e
def test_failing_deploy_exits_1_with_reason(server: MoorageServer, sm: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "model.joblib").write_bytes(b"definitely not a joblib pickle")
    name = new_name("cli-bad")
    result = moorage("deploy", str(bad), "--name", name, "--timeout", "60", home=server.home)
    try:
        assert result.returncode == 1, text(result)
        err = result.stderr.decode()
        reason = sm.describe_endpoint(EndpointName=name)["FailureReason"]
        assert err.startswith("error:") and "Failed" in err, text(result)
        assert reason and reason.splitlines()[0] in err, (reason, err)
        assert f"endpoint {name}: Failed" in result.stdout.decode()
        # the failed instances are gone, but their logs are still on disk and readable
        result = moorage("logs", name, "--lines", "all", home=server.home)
        assert result.returncode == 0, text(result)
        lines = result.stdout.decode().splitlines()
        assert lines and all(line.startswith("[AllTraffic/i-") for line in lines), text(result)
    finally:
        result = moorage("delete", name, home=server.home)
        assert result.returncode == 0, text(result)


@pytest.mark.e2e
def test_deploy_no_wait_and_delete_keeping(server: MoorageServer, sm: Any, project: Path) -> None:
    name = new_name("cli-nowait")
    result = moorage("deploy", str(project / "model" / "model.joblib"), "--name", name, "--no-wait",
                     home=server.home)
    assert result.returncode == 0, text(result)
    assert f"endpoint {name}: Creating" in result.stdout.decode() or "InService" in result.stdout.decode()
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    result = moorage("deploy", str(project / "model"), "--name", name, home=server.home)
    assert result.returncode == 1 and "already exists" in result.stderr.decode(), text(result)
    result = moorage("delete", name, "--keep-config", "--keep-model", home=server.home)
    assert result.returncode == 0, text(result)
    assert "deleted model" not in result.stdout.decode() and "deleted endpoint config" not in result.stdout.decode()
    with pytest.raises(ClientError):
        sm.describe_endpoint(EndpointName=name)
    assert sm.describe_endpoint_config(EndpointConfigName=name)["EndpointConfigName"] == name
    assert sm.describe_model(ModelName=name)["ModelName"] == name
    sm.delete_endpoint_config(EndpointConfigName=name)
    sm.delete_model(ModelName=name)


@pytest.mark.e2e
def test_logs_follow(server: MoorageServer, project: Path, tmp_path: Path) -> None:
    name = new_name("cli-follow")
    result = moorage("deploy", str(project / "model"), "--name", name, home=server.home)
    assert result.returncode == 0, text(result)
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            out_path = tmp_path / f"follow-{sig}.out"
            with open(out_path, "wb") as out:
                proc = follow(name, "--lines", "0", "--home", str(server.home), stdout=out,
                              stderr=subprocess.STDOUT)
                marker = f"marker{sig.value}x"

                def logged(marker: str = marker, out_path: Path = out_path) -> bool:
                    # A bad cell makes the instance log a model error naming it. Invoked again until
                    # seen: the follower may not be watching yet when the first one is logged.
                    result = moorage("invoke", name, "--content-type", "text/csv", "--body", f"1,2,3,{marker}",
                                     home=server.home)
                    assert result.returncode == 1, text(result)
                    return marker in out_path.read_text(errors="replace")

                try:
                    wait_until(logged, 60, interval=0.5, what="the followed log to show the new line")
                finally:
                    code = stop(proc, sig)
            assert code == 0, out_path.read_text()
            lines = out_path.read_text().splitlines()
            assert lines and all(line.startswith("[AllTraffic/i-") for line in lines), lines
    finally:
        moorage("delete", name, home=server.home)


# --------------------------------------------------------------------------------------------------
# usage and connection errors
# --------------------------------------------------------------------------------------------------
def test_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (["deploy"], ["deploy", str(tmp_path), "--env", "NOEQUALS"], ["deploy", str(tmp_path),
                 "--instances", "0"], ["invoke", "ep"], ["logs", "ep", "--lines", "-1"], ["delete"],
                 ["serve", "--url", "ftp://x"], ["nosuchcommand"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)


def test_server_away_exits_1(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "credentials").write_text("[default]\naws_access_key_id = AKIDEXAMPLE\n"
                                      "aws_secret_access_key = secret\n")
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["invoke", "ep", "--body", "1"], ["delete", "ep"], ["endpoints"]):
        result = moorage(*args, "--url", url, home=home, timeout=60)
        assert result.returncode == 1, text(result)
        err = result.stderr.decode()
        assert err.startswith("error:") and "moorage" in err, text(result)
    result = moorage("deploy", str(tmp_path / "missing"), home=home)
    assert result.returncode == 1 and "does not exist" in result.stderr.decode(), text(result)
    result = moorage("invoke", "ep", "--body", f"@{tmp_path / 'missing.csv'}", home=home)
    assert result.returncode == 1 and result.stderr.decode().startswith("error: cannot read"), text(result)
    result = moorage("endpoints", home=tmp_path / "empty-home")
    assert result.returncode == 1 and "no credentials" in result.stderr.decode(), text(result)


# --------------------------------------------------------------------------------------------------
# logs from files laid out by hand: rotation, interleaving, following across a rotation
# --------------------------------------------------------------------------------------------------
def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


@pytest.fixture
def log_home(tmp_path: Path) -> Path:
    """A home with no server (no credentials): logs are found on disk."""
    home = tmp_path / "home"
    variant_a = home / "logs" / "ep" / "A"
    # i-one rotated twice: .log.2 is oldest, .log.1 newer, .log live
    _write(variant_a / "i-one.log.2", [f"2024-01-01 10:00:0{i},000 INFO one-{i}" for i in range(0, 3)])
    _write(variant_a / "i-one.log.1", [f"2024-01-01 10:00:0{i},000 INFO one-{i}" for i in range(3, 6)])
    _write(variant_a / "i-one.log", [f"2024-01-01 10:00:0{i},000 INFO one-{i}" for i in range(6, 9)]
           + ["Traceback (most recent call last):", "ValueError: one-boom"])
    _write(variant_a / "i-two.log", [f"2024-01-01 10:00:0{i},500 INFO two-{i}" for i in range(0, 9, 2)])
    _write(home / "logs" / "ep" / "B" / "i-three.log", ["2024-01-01 10:00:04,250 INFO three-4"])
    return home


def _logs(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["logs", "ep", "--home", str(home), *args])
    return result.exit_code, result.stdout, result.stderr


def test_logs_rotated_parts_in_order(log_home: Path) -> None:
    code, out, _ = _logs(log_home, "--instance", "i-one", "--lines", "all")
    assert code == 0
    assert out.splitlines() == [f"2024-01-01 10:00:0{i},000 INFO one-{i}" for i in range(9)] + [
        "Traceback (most recent call last):", "ValueError: one-boom"]
    code, out, _ = _logs(log_home, "--instance", "i-one", "--lines", "4")
    assert out.splitlines() == ["2024-01-01 10:00:07,000 INFO one-7", "2024-01-01 10:00:08,000 INFO one-8",
                                "Traceback (most recent call last):", "ValueError: one-boom"]
    code, out, _ = _logs(log_home, "--instance", "i-one", "--lines", "7")  # reaches into .log.1
    assert [line.split()[-1] for line in out.splitlines()[:3]] == ["one-4", "one-5", "one-6"]
    code, out, _ = _logs(log_home, "--instance", "i-one", "--lines", "0")
    assert code == 0 and out == ""


def test_logs_all_instances_interleaved(log_home: Path) -> None:
    code, out, _ = _logs(log_home, "--lines", "all")
    assert code == 0
    lines = out.splitlines()
    tags = [line.split()[-1] for line in lines]
    # each file keeps its own order; across files, lines go by their timestamps
    assert [t for t in tags if t.startswith("one") or t == "one-boom"][:9] == [f"one-{i}" for i in range(9)]
    assert tags.index("one-4") < tags.index("three-4") < tags.index("two-4") < tags.index("one-5")
    # unstamped lines (a traceback) go with the stamped line before them
    assert tags[-4:] == ["one-8", "last):", "one-boom", "two-8"], tags
    assert lines[tags.index("three-4")].startswith("[B/i-three] ")
    assert lines[tags.index("two-0")].startswith("[A/i-two] ")
    assert lines[-2] == "[A/i-one] ValueError: one-boom"
    code, out, _ = _logs(log_home, "--variant", "B")
    assert code == 0 and out.splitlines() == ["[B/i-three] 2024-01-01 10:00:04,250 INFO three-4"]
    code, _, err = _logs(log_home, "--instance", "i-nope")
    assert code == 1 and err.startswith("error:")
    code, _, err = _logs(log_home.parent / "elsewhere")
    assert code == 1 and err.startswith("error: no logs for endpoint ep")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_logs_follow_stops_on_signal_it_inherited_ignored(log_home: Path, tmp_path: Path,
                                                          sig: signal.Signals) -> None:
    out_path, err_path = tmp_path / "follow.out", tmp_path / "follow.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = follow("ep", "--home", str(log_home), "--instance", "i-two", "--lines", "1", stdout=out, stderr=err)
        try:
            # The tail is printed after the handlers are installed: once it shows, the signal is heard.
            wait_until(lambda: "two-8" in out_path.read_text(), 30, what="the initial tail")
        finally:
            code = stop(proc, sig)
    assert code == 0, err_path.read_text()
    assert out_path.read_text().splitlines() == ["2024-01-01 10:00:08,500 INFO two-8"]
    assert "Traceback" not in err_path.read_text()


def test_logs_follow_across_rotation(log_home: Path, tmp_path: Path) -> None:
    live = log_home / "logs" / "ep" / "A" / "i-two.log"
    out_path = tmp_path / "follow.out"
    with open(out_path, "wb") as out:
        proc = follow("ep", "--home", str(log_home), "--instance", "i-two", "--lines", "1", stdout=out,
                      stderr=subprocess.PIPE)
        try:
            wait_until(lambda: "two-8" in out_path.read_text(), 30, what="the initial tail")
            with open(live, "a") as fh:
                fh.write("after-1\npartial")
                fh.flush()
                time.sleep(0.6)
                fh.write(" line completed\n")
            wait_until(lambda: "partial line completed" in out_path.read_text(), 10, what="appended lines")
            # rotate as the server does: live -> .log.1, then a new live file
            with open(live, "a") as fh:
                fh.write("last-before-rotation\n")
            os.replace(live, live.with_name("i-two.log.1"))
            _write(live, ["first-after-rotation", "second-after-rotation"])
            wait_until(lambda: "second-after-rotation" in out_path.read_text(), 10, what="the rotated file")
        finally:
            code = stop(proc, signal.SIGTERM)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    assert out_path.read_text().splitlines() == [
        "2024-01-01 10:00:08,500 INFO two-8", "after-1", "partial line completed", "last-before-rotation",
        "first-after-rotation", "second-after-rotation"]
