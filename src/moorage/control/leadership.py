"""Which router runs the controllers: leader election through PostgreSQL's advisory lock.

Several routers share one PostgreSQL database (docs/cluster.md); exactly one of them, the leader,
runs the controllers (autoscaling, monitoring and inference-experiment schedules, the routing
experiments' looks, alarm evaluation, asynchronous-inference workers, settling cut-off work).

The lock is ``pg_try_advisory_lock(KEY)``, KEY a fixed 64-bit number derived from the name
``moorage-controllers``, taken on a connection of its own that stays open as long as this router
leads: PostgreSQL holds a session's advisory locks until the session ends, so the lock goes the
moment the leader's connection does. A router that does not lead tries again every
``MOORAGE_LEADER_CHECK_SECONDS`` (I, default 1 s). The leader runs ``SELECT 1`` on its connection
every I; when that fails or takes longer than ``CHECK_TIMEOUT_S`` it steps down at once (its
controllers stop) and closes the connection.

Takeover bounds (I = the check interval):

- the leader's process dies (crash, kill -9, OOM) or stops: its socket closes with it, PostgreSQL
  ends the session and releases the lock at once; another router takes it within I (plus one
  connect), so about I + 0.1 s;
- the leader's machine or network dies (no FIN ever comes): the session's server-side TCP keepalives
  (set per session: idle 5 s, then 3 probes 2 s apart) and ``tcp_user_timeout`` (10 s) end it within
  ``DEAD_PEER_S`` = 11 s, then within I: at most about 11 s + I. The leader itself, cut off, fails
  its next check within I + ``CHECK_TIMEOUT_S`` (3 s at the default I) and stops its controllers
  first, well before PostgreSQL lets another router lead.

With SQLite there is one server per home: it always leads (``Leadership`` calls ``on_lead`` at start).

Written over psycopg rather than SQLAlchemy's pool: the lock lives and dies with one connection
that must never go back to a pool, nor be replaced behind our back by ``pool_pre_ping``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.engine import make_url

from moorage.store.metadata import shared_database

log = logging.getLogger("moorage.cluster")

LOCK_NAME = "moorage-controllers"
# PostgreSQL's advisory lock keys are signed 64-bit integers: the first 8 bytes of the name's SHA-256.
LOCK_KEY = int.from_bytes(hashlib.sha256(LOCK_NAME.encode()).digest()[:8], "big", signed=True)
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 5, 2, 3
TCP_USER_TIMEOUT_MS = 10_000
DEAD_PEER_S = KEEPALIVE_IDLE_S + KEEPALIVE_INTERVAL_S * KEEPALIVE_COUNT  # 11 s
CONNECT_TIMEOUT_S = 5
CHECK_TIMEOUT_S = 2.0
STOPPING = "this router is stopping"

Callback = Callable[[], Awaitable[None]]


def takeover_bound(interval: float) -> float:
    """Seconds after the leader's machine is lost (the worst case) by which another router leads."""
    return DEAD_PEER_S + interval + CONNECT_TIMEOUT_S


def _conninfo(database_url: str) -> dict[str, Any]:
    """psycopg's connection arguments for a SQLAlchemy PostgreSQL URL, with keepalives on both sides."""
    url = make_url(database_url)
    args: dict[str, Any] = {k: v for k, v in (("host", url.host), ("port", url.port), ("user", url.username),
                                              ("password", url.password), ("dbname", url.database)) if v is not None}
    args.update({k: v for k, v in url.query.items() if isinstance(v, str)})
    # The server's side decides when a silent leader's session (and lock) ends; the client's side lets
    # the leader notice a dead server.
    server_side = (f"-c tcp_keepalives_idle={KEEPALIVE_IDLE_S} -c tcp_keepalives_interval={KEEPALIVE_INTERVAL_S} "
                   f"-c tcp_keepalives_count={KEEPALIVE_COUNT} -c tcp_user_timeout={TCP_USER_TIMEOUT_MS}")
    args["options"] = f"{args['options']} {server_side}" if args.get("options") else server_side
    args.update(keepalives=1, keepalives_idle=KEEPALIVE_IDLE_S, keepalives_interval=KEEPALIVE_INTERVAL_S,
                keepalives_count=KEEPALIVE_COUNT, tcp_user_timeout=TCP_USER_TIMEOUT_MS,
                connect_timeout=CONNECT_TIMEOUT_S, application_name="moorage-leadership", autocommit=True)
    return args


class Leadership:
    """Elects this router, or not; ``on_lead``/``on_step_down`` start and stop the controllers, and
    ``while_leading`` runs once every interval while it leads (settling cut-off work)."""

    def __init__(self, database_url: str, interval: float, *, on_lead: Callback, on_step_down: Callback,
                 while_leading: Callback | None = None, router_id: str = ""):
        self.database_url = database_url
        self.interval = float(interval)
        self.on_lead = on_lead
        self.on_step_down = on_step_down
        self.while_leading = while_leading
        self.router_id = router_id
        self.sqlite = not shared_database(database_url)
        self.leading = False
        self.led_since: float | None = None
        self._conn: Any = None  # psycopg.Connection holding the lock (or trying to)
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Lead now if nobody does (always with SQLite), then keep trying or checking every interval."""
        if self.sqlite:
            await self._lead()
        else:
            await self._try_lead()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the controllers (if leading) and let go of the lock."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.leading:
            await self._step_down(STOPPING)
        await asyncio.to_thread(self._close)

    async def wait_changed(self, timeout: float) -> bool:
        """For tests and tools: wait until leadership changes (True) or ``timeout`` passes (False)."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- the loop -------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if self.leading and not self.sqlite and not await self._still_holds():
                    await self._step_down("its connection to PostgreSQL failed")
                elif not self.leading and not self.sqlite:
                    await self._try_lead()
                if self.leading and self.while_leading is not None:
                    await self.while_leading()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("leadership check failed")

    async def _try_lead(self) -> None:
        try:
            got = await asyncio.to_thread(self._try_lock)
        except Exception as exc:
            log.debug("could not try for leadership: %s", exc)
            await asyncio.to_thread(self._close)
            return
        if got:
            await self._lead()

    async def _still_holds(self) -> bool:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._check), CHECK_TIMEOUT_S)
        except Exception as exc:  # includes the timeout: a check that hangs counts as failed
            log.warning("leadership check failed: %s", exc or type(exc).__name__)
            return False

    async def _lead(self) -> None:
        self.leading, self.led_since = True, time.time()
        log.info("this router leads the controllers (router %s)", self.router_id or "-")
        self._changed.set()
        try:
            await self.on_lead()
        except Exception:
            log.exception("starting the controllers failed")

    async def _step_down(self, why: str) -> None:
        # Controllers first: nothing may keep running once another router can take the lock.
        self.leading, self.led_since = False, None
        try:
            await self.on_step_down()
        except Exception:
            log.exception("stopping the controllers failed")
        finally:
            await asyncio.to_thread(self._close)
        (log.info if why == STOPPING else log.warning)("stepped down: this router no longer leads the controllers (%s)",
                                                       why)
        self._changed.set()

    # -- the connection (worker threads) ---------------------------------------------------------------
    def _connect(self) -> Any:
        if self._conn is None or self._conn.closed:
            import psycopg  # PostgreSQL only: `moorage[postgres]`

            self._conn = psycopg.connect(**_conninfo(self.database_url))
        return self._conn

    def _try_lock(self) -> bool:
        conn = self._connect()
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        return bool(row and row[0])

    def _check(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed:
            return False
        conn.execute("SELECT 1").fetchone()
        return True

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
