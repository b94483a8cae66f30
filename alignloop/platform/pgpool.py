"""A small pool of asynchronous psycopg connections for the routes that run on the event loop.

Connections are opened on first need, up to `size`; a request that finds them all busy waits for
one. Each use is one transaction (BEGIN ... COMMIT, rolled back on any error); a connection that
broke or was cut off inside a transaction is closed and replaced by a fresh one later. The pool
belongs to one event loop (the worker's): the app opens it at startup and closes it at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy.engine import make_url


def libpq_conninfo(url: str) -> str:
    """The libpq form of an SQLAlchemy PostgreSQL URL (postgresql+psycopg://... -> postgresql://...)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class ConnectionPool:
    def __init__(self, conninfo: str, *, size: int):
        self.conninfo, self.size = conninfo, size
        self._idle: asyncio.Queue[psycopg.AsyncConnection] | None = None
        self._opened = 0

    def _queue(self) -> asyncio.Queue[psycopg.AsyncConnection]:
        if self._idle is None:  # made on first use, inside the event loop that serves requests
            self._idle = asyncio.Queue()
        return self._idle

    async def _acquire(self) -> psycopg.AsyncConnection:
        idle = self._queue()
        if idle.empty() and self._opened < self.size:
            self._opened += 1
            try:
                return await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)
            except BaseException:
                self._opened -= 1
                raise
        return await idle.get()

    async def _discard(self, connection: psycopg.AsyncConnection) -> None:
        self._opened -= 1
        with contextlib.suppress(Exception):
            await connection.close()

    async def _release(self, connection: psycopg.AsyncConnection) -> None:
        if connection.closed or connection.info.transaction_status != TransactionStatus.IDLE:
            await self._discard(connection)  # broken, or cut off mid-statement: never reuse it
        else:
            self._queue().put_nowait(connection)

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
        idle = self._queue()
        while not idle.empty():
            await self._discard(idle.get_nowait())
        self._idle = None
