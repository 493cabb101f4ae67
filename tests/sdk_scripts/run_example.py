"""examples/sagemaker_sdk/deploy.py as the tests run it: its ``run_example`` under the harness, so
what the example sends, and where, is recorded like every other scenario's."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from _harness import run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sagemaker_sdk"
sys.path.insert(0, str(EXAMPLE))

from deploy import run_example  # noqa: E402


def main(params: dict[str, Any]) -> dict[str, Any]:
    return run_example(Path(params["build"]), params["endpoint_name"])


run(main)
