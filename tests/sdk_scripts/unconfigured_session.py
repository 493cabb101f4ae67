"""A Session with no default bucket configured, asked for its default bucket and its execution role:
both make the SDK call STS's GetCallerIdentity at an endpoint it names itself."""

from __future__ import annotations

from typing import Any

import sagemaker
from _harness import run


def main(params: dict[str, Any]) -> dict[str, Any]:
    session = sagemaker.Session()
    out: dict[str, Any] = {}
    for what, call in (("bucket", session.default_bucket),
                       ("role", lambda: sagemaker.get_execution_role(session))):
        try:
            out[what] = call()
        except Exception as exc:  # what the user would see
            out[f"{what}_error"] = type(exc).__name__
    return out


run(main)
