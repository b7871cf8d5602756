"""``with`` and ``async with`` for the test servers that have ``start()`` and ``stop()``
(or, for servers run from the event loop, ``async start()`` and ``async close()``)."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self


class StartStop:
    """Subclasses define ``start() -> Self`` and ``stop()``; blocking ones are run in a
    thread under ``async with`` so an event loop in the test keeps running."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


class AsyncStartClose:
    """Subclasses define ``async start() -> Self`` and ``async close()``; a start that
    fails is closed too, so nothing it began outlives the test."""

    async def start(self) -> Self:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        try:
            return await self.start()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
