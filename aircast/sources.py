"""Where snapshots come from: the live API, the simulator, or an archive replay.

Every source yields :class:`Snapshot` objects whose records are in the live API's v1
``data.json`` format, so one ingestion path serves all three.

* :class:`HttpSource` — the live API (``ingest.live_url``) or the simulator's server at
  the same path. Timeouts, retries under :mod:`aircast.retry` (no answer, 429 and 5xx;
  exponential backoff with jitter, or the server's ``Retry-After``), and conditional
  GET (``ETag``/``Last-Modified``): a 304 means nothing new, and nothing is fetched
  twice.
* :class:`ArchiveSource` — daily archive CSVs (folder or http(s) base URL) turned into
  one snapshot per 5-minute window, optionally shifted in time so that the replayed
  span ends now (no reading lies in the future, and recent data stays inside the raw
  database's retention), and paced ``speedup`` times faster than real time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from typing import Any

import httpx
import orjson

from aircast import tuning
from aircast.bulk import collector_paused
from aircast.errors import AircastError
from aircast.records import format_timestamp, parse_timestamp
from aircast.retry import (
    Backoff,
    TransientStatus,
    describe,
    retry_after_s,
    retrying,
    transient_http,
)

log = logging.getLogger(__name__)


class SourceError(AircastError):
    """A snapshot could not be fetched (after retries) or is not a JSON array."""


@dataclass(frozen=True)
class Snapshot:
    source: str  # live | simulator | archive
    origin: str  # URL or archive location
    fetched_at: float
    records: list[Any]
    bytes: int = 0


class HttpSource:
    def __init__(
        self,
        url: str,
        *,
        name: str = "live",
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 1.0,
    ) -> None:
        self.url = url
        self.name = name
        self.retries = retries
        self.backoff_s = backoff_s
        self._retrying = retrying(
            attempts=retries + 1,
            backoff=Backoff(backoff_s, max(backoff_s, tuning.SOURCE_MAX_BACKOFF_S)),
            retry_on=transient_http,
            log=log,
            event=f"fetch failed source={name}",
        )
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            headers={
                "User-Agent": "aircast (+https://github.com/aircast)",
                "Accept-Encoding": "gzip",
            },
            follow_redirects=True,
        )
        self._etag: str | None = None
        self._last_modified: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HttpSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fetch(self) -> Snapshot | None:
        """The current snapshot, or None when the server says it has not changed."""
        headers: dict[str, str] = {}
        if self._etag:
            headers["If-None-Match"] = self._etag
        if self._last_modified:
            headers["If-Modified-Since"] = self._last_modified
        try:
            return self._retrying(self._fetch_once, headers)
        except (httpx.TransportError, TransientStatus) as exc:
            raise SourceError(
                f"{self.url} failed after {self.retries + 1} attempts: {describe(exc)}"
            ) from exc

    def _fetch_once(self, headers: dict[str, str]) -> Snapshot | None:
        """One GET: the snapshot, None for a 304; 429 and 5xx are
        :class:`TransientStatus` (tried again), any other status a :class:`SourceError`."""
        status, body, validators, hint = self._get(headers)
        if status == 304:
            return None
        if status == 200:
            return self._snapshot(body, validators)
        if status == 429 or status >= 500:
            raise TransientStatus(status, hint)
        raise SourceError(f"{self.url} refused: HTTP {status}")

    def _get(
        self, headers: dict[str, str]
    ) -> tuple[int, bytes, tuple[str | None, str | None], float | None]:
        """Status, body (of a 200 only), validators (ETag, Last-Modified) and the
        ``Retry-After`` hint in seconds.

        The body is read into bytes of its own, never kept on an ``httpx.Response``: a
        response sits in a reference cycle (with its stream), so what it holds is freed
        only by a cyclic collection, and with the garbage collector paused around
        parsing (:mod:`aircast.bulk`) those come seldom: every snapshot's body (a
        network-size one is ~200 MiB) would stay until the next full collection. Bytes
        of its own are freed by reference counting once the snapshot is parsed."""
        with self._http.stream("GET", self.url, headers=headers) as response:
            body = b"".join(response.iter_bytes()) if response.status_code == 200 else b""
            validators = (response.headers.get("ETag"), response.headers.get("Last-Modified"))
            hint = retry_after_s(response.headers.get("Retry-After"))
            return response.status_code, body, validators, hint

    def _snapshot(self, body: bytes, validators: tuple[str | None, str | None]) -> Snapshot:
        try:
            with collector_paused():
                records = _loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
            raise SourceError(f"{self.url} sent invalid JSON: {exc}") from exc
        if not isinstance(records, list):
            raise SourceError(f"{self.url} sent {type(records).__name__}, not a JSON array")
        # Remember validators only for a good body, so a bad one is fetched again.
        self._etag, self._last_modified = validators
        return Snapshot(self.name, self.url, time.time(), records, len(body))


def _loads(body: bytes) -> Any:
    """The body's JSON: orjson (faster than json on a network-size body, which the
    coordinator parses before any scraper starts), else json: it also reads NaN,
    infinities and integers beyond 64 bits, which orjson refuses, and words the errors."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def probe(url: str, timeout_s: float = 3.0) -> bool:
    """Whether ``url`` answers at all (used once by `make run` to choose live or not)."""
    try:
        response = httpx.head(url, timeout=timeout_s, follow_redirects=True)
    except httpx.HTTPError:
        return False
    return response.status_code < 500


def _shifted(record: Any, offset: int) -> Any:
    if not offset or not isinstance(record, dict) or "timestamp" not in record:
        return record
    try:
        t = parse_timestamp(str(record["timestamp"]))
    except AircastError:
        return record  # keep it as it is: the scraper dead-letters it with the reason
    return {**record, "timestamp": format_timestamp(t + offset)}


class ArchiveSource:
    """Replays archive days as 5-minute snapshots."""

    name = "archive"

    def __init__(
        self,
        archive: str,
        start: date,
        end: date,
        *,
        speedup: float = 60.0,
        shift_to_now: bool = True,
        window_s: int = 300,
    ) -> None:
        self.archive = archive
        self.start = start
        self.end = end
        self.speedup = speedup
        self.shift_to_now = shift_to_now
        self.window_s = window_s

    def windows(self) -> Iterator[Snapshot]:
        """Every window's snapshot, as fast as they can be read (no pacing)."""
        from aircast import archive  # the archive reader (CSV layout of the public archive)

        offset = 0
        if self.shift_to_now:
            now = int(time.time())
            span_end = int(
                datetime.combine(self.end + timedelta(days=1), dt_time(), UTC).timestamp()
            )
            offset = (now - now % self.window_s) - span_end
        for _window, records in archive.snapshots(
            archive.iter_records(self.archive, self.start, self.end), self.window_s
        ):
            yield Snapshot(
                self.name, self.archive, time.time(), [_shifted(r, offset) for r in records]
            )

    def paced(self) -> Iterator[Snapshot]:
        """Windows at ``speedup`` × real time: one every ``window_s / speedup`` seconds."""
        interval = self.window_s / self.speedup
        next_at = time.monotonic()
        for snapshot in self.windows():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
            yield snapshot
