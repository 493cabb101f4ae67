"""Private virtualenvs for the peer servers (KServe, MLServer).

The peers are not project dependencies: each gets its own ``bench/.envs/<name>`` made with
``python3.11 -m venv`` and filled with pip on first use. A marker file records the exact
requirement list that was installed, so an unchanged one is reused (installing kserve or mlserver
takes minutes), a list that only gained requirements (onnxruntime, say) has them pip-installed
into the existing env, and any other change rebuilds it.

Run ``python bench/envs.py kserve mlserver`` to build them ahead of a bench run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ENVS = BENCH / ".envs"


def _project_version(dist: str) -> str | None:
    """The version of ``dist`` in the interpreter running the bench (so pickles load the same)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _pins(*dists: str) -> list[str]:
    pins = []
    for dist in dists:
        version = _project_version(dist)
        pins.append(f"{dist}=={version}" if version else dist)
    return pins


def _sklearn_pins() -> list[str]:
    # The peers unpickle the very objects the bench trained, so they get the same scikit-learn
    # (and joblib) as the interpreter that trained them.
    return _pins("scikit-learn", "joblib")


@dataclass(frozen=True)
class EnvSpec:
    name: str
    requirements: tuple[str, ...]
    # what to import to prove the env works
    smoke: str


def specs() -> dict[str, EnvSpec]:
    sk = tuple(_sklearn_pins())
    # the onnx model runs on the same onnxruntime as the baseline and moorage
    ort = tuple(_pins("onnxruntime"))
    return {
        "kserve": EnvSpec("kserve", ("kserve==0.21.*", *sk, *ort), "import kserve, sklearn, onnxruntime"),
        # mlserver 1.7.1's worker processes crash under uvloop 0.23, hence the pin.
        "mlserver": EnvSpec(
            "mlserver",
            ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.*", *sk, *ort),
            "import mlserver, mlserver_sklearn, sklearn, onnxruntime",
        ),
        # py-spy, for --profile
        "tools": EnvSpec(
            "tools",
            ("py-spy",),
            "import os, sys; sys.exit(not os.path.exists(os.path.join(os.path.dirname(sys.executable), 'py-spy')))",
        ),
    }


class EnvError(RuntimeError):
    pass


def env_dir(name: str) -> Path:
    return ENVS / name


def env_python(name: str) -> Path:
    return env_dir(name) / "bin" / "python"


def _python311() -> str:
    exe = shutil.which("python3.11")
    if exe:
        return exe
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    raise EnvError("python3.11 not found on PATH")


def ensure_env(name: str, log=print) -> Path:
    """Create (or reuse) the env for ``name``; return its python. Raises EnvError with the reason."""
    spec = specs()[name]
    root = env_dir(name)
    marker = root / ".bench-installed.json"
    wanted = list(spec.requirements)
    py = env_python(name)
    installed = None
    if marker.exists() and py.exists():
        try:
            installed = json.loads(marker.read_text())
        except ValueError:
            pass
    if installed == wanted:
        return py
    ENVS.mkdir(parents=True, exist_ok=True)
    logfile = ENVS / f"{name}-install.log"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    added = [req for req in wanted if req not in (installed or [])]
    incremental = isinstance(installed, list) and all(req in wanted for req in installed)
    if incremental:
        # only new requirements: install them into the existing env (pip keeps the others as they are)
        log(f"[env] adding {' '.join(added)} to {root}; log: {logfile}")
        steps = [[str(py), "-m", "pip", "install", *added], [str(py), "-c", spec.smoke]]
    else:
        log(f"[env] building {root} ({' '.join(wanted)}); log: {logfile}")
        if root.exists():
            shutil.rmtree(root)
        steps = [
            [_python311(), "-m", "venv", str(root)],
            [str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"],
            [str(py), "-m", "pip", "install", *wanted],
            [str(py), "-c", spec.smoke],
        ]
    with open(logfile, "a" if incremental else "w") as out:
        for cmd in steps:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
            if rc != 0:
                tail = _tail(logfile)
                raise EnvError(f"`{' '.join(cmd[2:] if cmd[0] == str(py) else cmd)}` failed (rc={rc}): {tail}")
    marker.write_text(json.dumps(wanted))
    return py


def _tail(path: Path, lines: int = 3) -> str:
    text = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(text[-lines:])[-400:]


def main(argv: list[str]) -> int:
    names = argv or list(specs())
    rc = 0
    for name in names:
        try:
            print(name, "->", ensure_env(name))
        except EnvError as exc:
            print(name, "FAILED:", exc)
            rc = 1
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
