"""``moorage serve``: start the platform on one port."""

from __future__ import annotations

import logging
import os
import sys

import orjson

from moorage.config import SERVER_FILE, Settings, admin_credentials


def serve(settings: Settings) -> None:
    import uvicorn

    from moorage.api.app import MoorageApp

    logging.basicConfig(level=os.environ.get("MOORAGE_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings.home.mkdir(parents=True, exist_ok=True)
    creds, generated = admin_credentials(settings)
    app = MoorageApp(settings, [creds])
    (settings.home / SERVER_FILE).write_bytes(
        orjson.dumps({"url": settings.url, "pid": os.getpid(), "region": settings.region}))
    print(f"moorage serving on {settings.url} (home {settings.home})", flush=True)
    if generated:
        print(f"generated an admin key; it is in {settings.credentials_path} "
              f"(AWS_SHARED_CREDENTIALS_FILE={settings.credentials_path})", flush=True)
    else:
        print(f"admin key id {creds.access_key_id}; credentials file {settings.credentials_path}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                lifespan="on", access_log=False, log_level="warning", timeout_graceful_shutdown=15,
                timeout_keep_alive=75)
