"""A small pool of asynchronous psycopg connections for the routes that run on the event loop.

`open` makes the first few at start-up (a request that has to wait for a new backend to fork
waits tens of milliseconds under load); more are opened on need, up to `size`; a request that
finds them all busy waits for one. Each use is one transaction (BEGIN ... COMMIT, rolled back on
any error); a connection that broke or was cut off inside a transaction is closed and replaced
by a fresh one later. The pool belongs to one event loop (the worker's); the app closes it at
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from sqlalchemy.engine import make_url

from alignloop.platform.db import CONNECT_TIMEOUT_S


def libpq_conninfo(url: str) -> str:
    """The libpq form of an SQLAlchemy PostgreSQL URL (postgresql+psycopg://... -> postgresql://...)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class ConnectionPool:
    def __init__(self, conninfo: str, *, size: int, connect_timeout_s: int = CONNECT_TIMEOUT_S):
        if "connect_timeout" not in conninfo_to_dict(conninfo):  # the caller's own takes precedence
            conninfo = make_conninfo(conninfo, connect_timeout=connect_timeout_s)
        self.conninfo, self.size = conninfo, size
        self._idle: list[psycopg.AsyncConnection] = []
        self._slots: asyncio.Semaphore | None = None

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:  # made on first use, inside the event loop that serves requests
            self._slots = asyncio.Semaphore(self.size)
        return self._slots

    async def _acquire(self) -> psycopg.AsyncConnection:
        slots = self._semaphore()
        await slots.acquire()  # one slot per connection in use, idle or fresh
        if self._idle:
            return self._idle.pop()
        try:
            return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
        except BaseException:
            slots.release()
            raise

    async def open(self, count: int) -> None:
        """Open up to `count` connections now (at start-up), so that early requests find them ready."""
        made = []
        try:
            for _ in range(min(count, self.size)):
                made.append(await self._acquire())
        finally:
            for connection in made:
                await self._release(connection)

    async def _release(self, connection: psycopg.AsyncConnection) -> None:
        try:
            if connection.closed or connection.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(Exception):  # broken, or cut off mid-statement: never reuse it
                    await connection.close()
            else:
                self._idle.append(connection)
        finally:
            self._semaphore().release()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled connection inside one transaction: committed when the block ends, rolled back
        when it raises (`raise psycopg.Rollback()` rolls back and leaves the block quietly)."""
        connection = await self._acquire()
        try:
            async with connection.transaction():
                yield connection
        finally:
            await self._release(connection)

    async def close(self) -> None:
        """Close the idle connections (at shutdown, when no request holds one)."""
        while self._idle:
            with contextlib.suppress(Exception):
                await self._idle.pop().close()
        self._slots = None
