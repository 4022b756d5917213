"""A per-key value rebuilt in the background while its previous version is served
(stale-while-revalidate), for responses that are expensive to build and read often
(the map layer: seconds of InfluxDB time at network size, asked for by every browser).

For each key:

* no value yet: the caller waits for the build;
* younger than ``ttl_s``: served as is;
* older than ``ttl_s`` but younger than ``STALE_FACTOR * ttl_s`` (:mod:`aircast.tuning`):
  served as is while one rebuild runs in the background;
* older still (nobody asked for a while): the caller waits for a fresh build.

One build per key at a time: concurrent callers share it. A failed background build
keeps the previous value (and logs); a build a caller waits for raises to it. With
``ttl_s = 0`` every call waits for a fresh build.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from aircast import tuning

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Entry(Generic[T]):
    built: float  # monotonic
    value: T


class Refreshing(Generic[T]):
    def __init__(
        self,
        build: Callable[[str], Awaitable[T]],
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._build = build
        self._ttl = ttl_s
        self._clock = clock
        self._entries: dict[str, _Entry[T]] = {}
        self._tasks: dict[str, asyncio.Task[T]] = {}

    async def get(self, key: str) -> T:
        entry = self._entries.get(key)
        age = None if entry is None else self._clock() - entry.built
        if entry is not None and age is not None and age < self._ttl:
            return entry.value
        task = self._rebuild(key)
        if entry is not None and age is not None and age < tuning.STALE_FACTOR * self._ttl:
            return entry.value
        return await asyncio.shield(task)

    def _rebuild(self, key: str) -> asyncio.Task[T]:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._run(key))
            task.add_done_callback(lambda t: self._done(key, t))
            self._tasks[key] = task
        return task

    async def _run(self, key: str) -> T:
        started = self._clock()
        value = await self._build(key)
        # Stamped with the build's start: its data is at least that old.
        self._entries[key] = _Entry(started, value)
        return value

    def _done(self, key: str, task: asyncio.Task[T]) -> None:
        self._tasks.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("rebuild failed key=%s error=%s", key, task.exception())
