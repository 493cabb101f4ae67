"""The settings tree: one parser's rules, defaults, sources, secrets, `moorage serve --print-settings`,
and docs/settings.md kept equal to the declarations."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moorage.capture import WriterSettings
from moorage.settings import (
    SECTIONS,
    CaptureSettings,
    InstanceSettings,
    Settings,
    SettingsError,
    default_home,
    documented_rows,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "settings.md"
# What the server read before the tree, and so what the tree must still default to.
PREVIOUS_DEFAULTS = {
    "server.host": "127.0.0.1", "server.port": 8080, "server.log_level": "INFO",
    "metrics.enabled": True, "metrics.period": 60.0, "metrics.retention": 15 * 86400.0,
    "autoscale.scale_out_datapoints": 3, "autoscale.scale_in_datapoints": 15,
    "capture.flush_seconds": 1.0, "capture.queue_records": 10_000, "capture.queue_bytes": 64 * 1024 * 1024,
    "capture.batch_records": 256, "capture.file_bytes": 16 * 1024 * 1024, "capture.file_seconds": 300.0,
    "capture.object_bytes": 4 * 1024 * 1024,
    "monitor.concurrency": 2, "monitor.tick_seconds": 1.0,
    "instances.cgroup_root": None, "instances.enforce_memory_limit": False, "instances.allow_requirements": True,
    "instances.requirements_timeout": 900.0, "instances.log_max_bytes": 10 * 1024 * 1024, "instances.log_backups": 3,
    "batch.backend": "local", "cluster.ray_address": None, "cluster.ray_namespace": "moorage",
    "server.access_key_id": None, "server.secret_access_key": None,
}


def value(settings: Settings, path: str) -> object:
    section, name = path.split(".")
    return getattr(getattr(settings, section), name)


def test_defaults_are_the_ones_the_server_had(tmp_path: Path) -> None:
    settings = Settings.load({}, home=tmp_path)
    for path, expected in PREVIOUS_DEFAULTS.items():
        assert value(settings, path) == expected, path
    assert settings.home == tmp_path.resolve()
    assert settings.database_url == f"sqlite:///{tmp_path.resolve() / 'moorage.db'}"
    assert set(settings.sources.values()) == {"default", "flag --home"}


# -- the rules ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "Yes", "on", "ON", " on "])
def test_true_is_spelled_every_way(text: str) -> None:
    settings = Settings.load({"MOORAGE_ENFORCE_MEMORY_LIMIT": text, "MOORAGE_METRICS": text})
    assert settings.instances.enforce_memory_limit is True and settings.metrics.enabled is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "NO", "off", "Off"])
def test_false_is_spelled_every_way(text: str) -> None:
    settings = Settings.load({"MOORAGE_ALLOW_REQUIREMENTS": text, "MOORAGE_METRICS": text})
    assert settings.instances.allow_requirements is False and settings.metrics.enabled is False


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("0.5", 0.5), ("90s", 90.0), ("15m", 900.0),
                                               ("2h", 7200.0), ("15d", 15 * 86400.0), ("1.5M", 90.0)])
def test_durations(text: str, seconds: float) -> None:
    assert Settings.load({"MOORAGE_METRICS_RETENTION": text}).metrics.retention == seconds


@pytest.mark.parametrize(("text", "size"), [("4096", 4096), ("512K", 512 * 1024), ("64M", 64 * 1024**2),
                                            ("64MiB", 64 * 1024**2), ("64mb", 64 * 1024**2), ("1G", 1024**3),
                                            ("1.5K", 1536)])
def test_sizes(text: str, size: int) -> None:
    assert Settings.load({"MOORAGE_CAPTURE_QUEUE_BYTES": text}).capture.queue_bytes == size


@pytest.mark.parametrize(("variable", "text", "reason"), [
    ("MOORAGE_METRICS", "maybe", "is not a boolean"),
    ("MOORAGE_ENFORCE_MEMORY_LIMIT", "2", "is not a boolean"),
    ("MOORAGE_METRICS_PERIOD", "ten", "is not a duration"),
    ("MOORAGE_METRICS_PERIOD", "5x", "is not a duration"),
    ("MOORAGE_METRICS_PERIOD", "inf", "is not a duration"),
    ("MOORAGE_METRICS_PERIOD", "0", "must be more than 0"),
    ("MOORAGE_CAPTURE_FILE_BYTES", "16Q", "is not a size"),
    ("MOORAGE_CAPTURE_FILE_BYTES", "0.3K", "is not a whole number of bytes"),
    ("MOORAGE_CAPTURE_QUEUE_RECORDS", "0", "must be at least 1"),
    ("MOORAGE_MONITOR_CONCURRENCY", "2.5", "is not a whole number"),
    ("MOORAGE_AUTOSCALE_SCALE_OUT_DATAPOINTS", "three", "is not a whole number"),
    ("MOORAGE_LOG_BACKUPS", "-1", "must be at least 0"),
    ("MOORAGE_REQUIREMENTS_TIMEOUT", "0.5", "must be at least 1"),
    ("MOORAGE_BATCH_BACKEND", "spark", "is not one of local, ray"),
    ("MOORAGE_LOG_LEVEL", "loud", "is not one of DEBUG"),
])
def test_a_bad_value_is_named_with_its_variable(variable: str, text: str, reason: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.load({variable: text})
    assert str(caught.value).startswith(f"{variable}={text!r} {reason}")
    assert caught.value.problems == [str(caught.value)]


def test_every_bad_value_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.load({"MOORAGE_METRICS": "maybe", "MOORAGE_CAPTURE_QUEUE_RECORDS": "0"}, port=70000)
    assert len(caught.value.problems) == 3
    message = str(caught.value)
    assert "MOORAGE_METRICS='maybe'" in message and "MOORAGE_CAPTURE_QUEUE_RECORDS='0'" in message
    assert "--port='70000' must be at most 65535" in message


def test_blank_is_unset_and_choices_ignore_case() -> None:
    settings = Settings.load({"MOORAGE_METRICS": "  ", "MOORAGE_BATCH_BACKEND": "RAY", "MOORAGE_LOG_LEVEL": "debug"})
    assert settings.metrics.enabled is True and settings.sources["metrics.enabled"] == "default"
    assert settings.batch.backend == "ray" and settings.server.log_level == "DEBUG"


def test_flags_beat_variables_and_sources_say_which(tmp_path: Path) -> None:
    env = {"MOORAGE_HOME": str(tmp_path / "from-env"), "MOORAGE_DATABASE_URL": "sqlite:///elsewhere.db",
           "MOORAGE_MONITOR_TICK_SECONDS": "250"}
    settings = Settings.load(env, home=tmp_path / "from-flag", port=9000)
    assert settings.home == (tmp_path / "from-flag").resolve() and settings.port == 9000
    assert settings.database_url == "sqlite:///elsewhere.db"
    assert settings.sources["server.home"] == "flag --home" and settings.sources["server.port"] == "flag --port"
    assert settings.sources["server.database_url"] == "environment"
    assert settings.sources["monitor.tick_seconds"] == "environment" and settings.monitor.tick_seconds == 250.0
    assert settings.sources["server.host"] == "default"
    assert Settings.load(env).home == (tmp_path / "from-env").resolve()


def test_the_admin_key_is_set_whole_or_not_at_all() -> None:
    with pytest.raises(SettingsError, match="set both MOORAGE_ACCESS_KEY_ID and MOORAGE_SECRET_ACCESS_KEY"):
        Settings.load({"MOORAGE_ACCESS_KEY_ID": "AKID"})
    settings = Settings.load({"MOORAGE_ACCESS_KEY_ID": "AKID", "MOORAGE_SECRET_ACCESS_KEY": "s3cret"})
    assert settings.server.access_key_id == "AKID" and settings.server.secret_access_key == "s3cret"


def test_secrets_are_never_shown() -> None:
    settings = Settings.load({"MOORAGE_ACCESS_KEY_ID": "AKID", "MOORAGE_SECRET_ACCESS_KEY": "s3cret",
                              "MOORAGE_DATABASE_URL": "postgresql+psycopg://moorage:pa55word@db/moorage"})
    report = settings.report()
    assert "s3cret" not in report and "pa55word" not in report
    assert "postgresql+psycopg://moorage:***@db/moorage" in report and "AKID" in report
    with pytest.raises(SettingsError) as caught:
        Settings.load({"MOORAGE_DATABASE_URL": "pa55word"})
    assert "pa55word" not in str(caught.value) and "MOORAGE_DATABASE_URL=(hidden)" in str(caught.value)


def test_a_section_alone_reads_by_the_same_rules() -> None:
    assert WriterSettings is CaptureSettings
    assert CaptureSettings.from_env({"MOORAGE_CAPTURE_FILE_BYTES": "1M"}).file_bytes == 1024 * 1024
    instances = InstanceSettings.from_env({"MOORAGE_CGROUP_ROOT": "/sys/fs/cgroup/moorage"})
    assert InstanceSettings.from_plain(instances.to_plain()) == instances
    with pytest.raises(ValueError, match="MOORAGE_ALLOW_REQUIREMENTS='sometimes'"):
        InstanceSettings.from_env({"MOORAGE_ALLOW_REQUIREMENTS": "sometimes"})


def test_default_home_follows_the_servers_rule(tmp_path: Path) -> None:
    assert default_home({"MOORAGE_HOME": str(tmp_path)}) == tmp_path
    assert default_home({"MOORAGE_HOME": " "}) == Path("~/.moorage").expanduser()


# -- moorage serve --print-settings, and a bad value at start-up (the real entry point) -------------------
def _serve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    return subprocess.run([sys.executable, "-m", "moorage", "serve", *args], capture_output=True, text=True,
                          timeout=60, env={**clean, **env})


def test_print_settings_lists_every_setting_and_exits(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = _serve("--home", str(home), "--print-settings",
                    env={"MOORAGE_METRICS_PERIOD": "10s", "MOORAGE_ACCESS_KEY_ID": "AKID",
                         "MOORAGE_SECRET_ACCESS_KEY": "s3cret"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SETTING", "VARIABLE", "VALUE", "SOURCE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {f"{s.section}.{name}" for s in SECTIONS for name, _ in s.specs()}
    assert rows["metrics.period"] == ["metrics.period", "MOORAGE_METRICS_PERIOD", "10s", "environment"]
    assert rows["server.home"] == ["server.home", "MOORAGE_HOME", str(home.resolve()), "flag", "--home"]
    assert rows["capture.queue_bytes"][2:] == ["64M", "default"]
    assert "s3cret" not in result.stdout and rows["server.secret_access_key"][2] == "********"
    assert not home.exists()  # printed, not served


def test_a_bad_value_stops_serve_before_it_starts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = _serve("--home", str(home), "--port", "1", env={"MOORAGE_METRICS": "sometimes"})
    assert result.returncode == 1
    assert "MOORAGE_METRICS='sometimes' is not a boolean" in result.stderr
    assert not home.exists()


# -- docs/settings.md ---------------------------------------------------------------------------------
def _tables(text: str) -> dict[str, list[list[str]]]:
    """Every markdown table under each '## ' heading, as rows of cells without backticks."""
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif line.startswith("|") and not set(line) <= set("|-"):
            tables.setdefault(heading, []).append([c.strip().replace("`", "") for c in line.strip("|").split("|")])
    return {name: rows[1:] for name, rows in tables.items()}  # less each header row


def test_the_docs_table_is_the_tree() -> None:
    documented = [tuple(row) for row in _tables(DOC.read_text())["Server settings"]]
    assert documented == documented_rows()


def test_every_moorage_variable_in_the_code_is_documented() -> None:
    """A variable the code reads is either a setting of the tree or part of the container contract."""
    tables = _tables(DOC.read_text())
    settings = {row[0] for row in tables["Server settings"] if row[0]}
    container = {row[0] for row in tables["Container environment"]}
    assert settings == {spec.variable for s in SECTIONS for _, spec in s.specs() if spec.variable}
    in_code = set()
    for path in (ROOT / "src" / "moorage").rglob("*.py"):
        in_code |= set(re.findall(r"MOORAGE_[A-Z0-9]+(?:_[A-Z0-9]+)*", path.read_text()))
    assert in_code - settings - container == set()
    assert container - in_code == set()
