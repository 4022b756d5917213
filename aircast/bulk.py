"""Bulk work with the cyclic garbage collector paused.

Parsing a snapshot (a network-size file: 19 MB of JSON, ~1M dicts, lists and strings)
or working through a shard of it allocates containers fast enough to start a collection
every 700 of them, and the fuller passes walk every live container, the snapshot's own
included. JSON cannot make a reference cycle, so reference counting frees all of them;
the passes only cost time, and with the collector paused parsing and sharding a file
take steady times instead of up to several times as long (``make bench-ingest``).

The pause is the process's (``gc`` has no other kind): a second thread's work in the
meantime is not collected either, and whatever cycles anything made meanwhile are
collected after it. But a process that does its allocating inside the pause starts few
collections outside it, and the full ones come seldom: large data must not wait in a
reference cycle (an ``httpx.Response`` is one; see ``HttpSource._get``), or it is held
for many minutes.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection inside; it resumes after (unless it was off before)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
