"""The retry policy (aircast.retry): jitter within its bounds, how many attempts, and
back-pressure at once. The HTTP clients are driven against a real server on 127.0.0.1
that answers from a script (503, 429, ... then 200); nothing of the HTTP layer is faked.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from aircast import archive, tuning
from aircast.backfill import Backfill
from aircast.errors import BackpressureError, StorageError
from aircast.influx import InfluxV1
from aircast.retry import Backoff, honour, retry_after_s, retrying
from aircast.settings import InfluxSettings
from aircast.sources import HttpSource, SourceError

Answer = tuple[int, dict[str, str], bytes]  # status, headers, body


@dataclass
class Script:
    """What the server answers, in order (the last answer repeats), and when it was asked."""

    answers: list[Answer]
    times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self) -> Answer:
        with self.lock:
            self.times.append(time.monotonic())
            return self.answers[min(len(self.times), len(self.answers)) - 1]

    @property
    def requests(self) -> int:
        return len(self.times)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


@contextmanager
def scripted(*answers: Answer) -> Iterator[tuple[str, Script]]:
    """A real HTTP server on 127.0.0.1 answering every request from ``answers``."""
    script = Script(list(answers))

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status, headers, body = script.next()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", script
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def error(status: int, headers: dict[str, str] | None = None) -> Answer:
    return status, headers or {}, json.dumps({"error": f"status {status}"}).encode()


NO_CONTENT: Answer = (204, {}, b"")
JITTER_LOW = 0.5  # the default jitter: each wait in [d / 2, d]
# A loaded machine may sleep (and serve) late, never early: upper bounds get slack.
SLACK_S = 0.5
# The log line rounds each wait to 0.01 s, so the slept time may be up to half that below it.
LOGGED_ROUNDING_S = 0.005


def waits_logged(caplog: pytest.LogCaptureFixture, event: str) -> list[float]:
    return [
        float(m.group(1))
        for r in caplog.records
        if r.getMessage().startswith(event)
        and (m := re.search(r"retry_in=([0-9.]+)s", r.getMessage()))
    ]


# -- the policy itself ---------------------------------------------------------------


def test_each_wait_is_jittered_within_its_bounds() -> None:
    backoff = Backoff(first_s=0.5, max_s=4.0)
    assert [backoff.ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for n in range(1, 7):
        d = backoff.ceiling(n)
        waits = [backoff.wait(n) for _ in range(2_000)]
        assert all(d * (1 - backoff.jitter) <= w <= d for w in waits), n
        # Jitter: spread over the range, not one value (2,000 draws of a uniform).
        assert max(waits) - min(waits) > 0.8 * d * backoff.jitter, n
    full = Backoff(first_s=1.0, max_s=1.0, jitter=1.0)
    assert all(0.0 <= full.wait(3) <= 1.0 for _ in range(1_000))
    assert Backoff(first_s=1.0, max_s=8.0, jitter=0.0).wait(3) == 4.0
    with pytest.raises(ValueError):
        Backoff(first_s=2.0, max_s=1.0)
    with pytest.raises(ValueError):
        Backoff(first_s=1.0, max_s=2.0, jitter=1.5)


def test_a_servers_hint_is_honoured_never_shortened() -> None:
    waits = [honour(2.0) for _ in range(2_000)]
    assert all(2.0 <= w <= 3.0 for w in waits)
    assert max(waits) - min(waits) > 0.8
    hint = tuning.MAX_HINT_S
    assert all(hint <= honour(10 * hint) <= 1.5 * hint for _ in range(100))
    assert retry_after_s("7") == 7.0
    assert retry_after_s(" 0 ") == 0.0
    assert retry_after_s(None) is None
    assert retry_after_s("soon") is None
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    hint = retry_after_s(in_a_minute)
    assert hint is not None and 55.0 <= hint <= 60.0
    long_ago = format_datetime(datetime.now(UTC) - timedelta(days=1), usegmt=True)
    assert retry_after_s(long_ago) == 0.0


class Flaky(Exception):
    pass


def test_attempts_failures_and_stop() -> None:
    slept: list[float] = []
    failures: list[BaseException | None] = []
    calls = 0

    def twice_then_ok() -> str:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise Flaky(f"call {calls}")
        return "ok"

    policy = retrying(
        attempts=3,
        backoff=Backoff(first_s=1.0, max_s=10.0),
        retry_on=lambda exc: isinstance(exc, Flaky),
        log=logging.getLogger("test"),
        event="flaky",
        on_failure=failures.append,
        sleep=slept.append,
    )
    assert policy(twice_then_ok) == "ok"
    assert calls == 3 and len(failures) == 2
    assert 0.5 <= slept[0] <= 1.0 and 1.0 <= slept[1] <= 2.0
    # Spent: the last attempt's own error, unchanged.
    calls = -10
    with pytest.raises(Flaky, match="call -7"):
        policy(twice_then_ok)
    # Not worth retrying: raised at once.
    calls = 0
    with pytest.raises(ZeroDivisionError):
        policy(lambda: 1 / 0)
    # Unbounded until stop_when says so; then the error of the attempt that just failed.
    stopping = False

    def failed(exc: BaseException | None) -> None:
        nonlocal stopping
        failures.append(exc)
        stopping = len(failures) >= 3

    failures.clear()
    unbounded = retrying(
        backoff=Backoff(first_s=0.01, max_s=0.01),
        retry_on=lambda exc: isinstance(exc, Flaky),
        stop_when=lambda: stopping,
        on_failure=failed,
        log=logging.getLogger("test"),
        event="flaky",
        sleep=slept.append,
    )
    calls = -100
    with pytest.raises(Flaky, match="call -97"):
        unbounded(twice_then_ok)
    assert len(failures) == 3


# -- InfluxDB --------------------------------------------------------------------------


def influx(url: str, *, retries: int = 3, backoff_s: float = 0.2) -> InfluxV1:
    return InfluxV1(InfluxSettings(url=url, retries=retries, backoff_s=backoff_s))


def test_influx_retries_5xx_with_jittered_backoff(caplog: pytest.LogCaptureFixture) -> None:
    with (
        scripted(error(503), error(502), NO_CONTENT) as (url, script),
        influx(url) as client,
        caplog.at_level(logging.WARNING, logger="aircast.influx"),
    ):
        client.write(["m value=1"], "db")
    assert script.requests == 3
    waits = waits_logged(caplog, "influx request failed")
    assert len(waits) == 2
    for n, (wait, gap) in enumerate(zip(waits, script.gaps(), strict=True), start=1):
        d = 0.2 * 2 ** (n - 1)
        assert JITTER_LOW * d <= wait <= d, (n, wait)
        assert wait - LOGGED_ROUNDING_S <= gap <= wait + SLACK_S, (n, wait, gap)
    assert "attempt=1/4" in caplog.text and "attempt=2/4" in caplog.text


def test_influx_gives_up_after_its_retries() -> None:
    with (
        scripted(error(500)) as (url, script),
        influx(url, retries=2, backoff_s=0.05) as client,
        pytest.raises(StorageError, match=r"failed \(500\)") as info,
    ):
        client.write(["m value=1"], "db")
    assert not isinstance(info.value, BackpressureError)
    assert info.value.status == 500
    assert script.requests == 3


@pytest.mark.parametrize(
    ("answer", "retry_after"),
    [
        (error(429, {"Retry-After": "7"}), 7.0),
        (error(429), 0.2),  # no hint: the client's first backoff step
        (error(503, {"Retry-After": "2"}), 2.0),
    ],
)
def test_influx_backpressure_is_raised_at_once(answer: Answer, retry_after: float) -> None:
    with (
        scripted(answer, NO_CONTENT) as (url, script),
        influx(url) as client,
        pytest.raises(BackpressureError) as info,
    ):
        client.write(["m value=1"], "db")
    assert script.requests == 1  # not retried in the client: the caller pauses
    assert info.value.retry_after == retry_after
    assert info.value.status == answer[0]


def test_influx_refusal_is_not_retried() -> None:
    with (
        scripted(error(400), NO_CONTENT) as (url, script),
        influx(url) as client,
        pytest.raises(StorageError, match=r"refused \(400\)"),
    ):
        client.write(["m value="], "db")
    assert script.requests == 1


def test_influx_unreachable_after_its_attempts(caplog: pytest.LogCaptureFixture) -> None:
    with scripted(NO_CONTENT) as (url, _):
        pass  # the port is closed again: nothing listens there now
    with (
        influx(url, retries=1, backoff_s=0.05) as client,
        caplog.at_level(logging.WARNING),
        pytest.raises(StorageError, match="unreachable after 2 attempts"),
    ):
        client.write(["m value=1"], "db")
    assert len(waits_logged(caplog, "influx request failed")) == 1


# -- the snapshot source and the archive ------------------------------------------------


def test_source_retries_5xx_and_honours_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps([{"id": 1}]).encode()
    answers = (error(503), error(429, {"Retry-After": "1"}), (200, {}, body))
    with scripted(*answers) as (url, script):
        source = HttpSource(url + "/data.json", retries=3, backoff_s=0.1)
        with caplog.at_level(logging.WARNING, logger="aircast.sources"):
            snapshot = source.fetch()
        source.close()
    assert snapshot is not None and snapshot.records == [{"id": 1}]
    assert script.requests == 3
    first, second = script.gaps()
    assert 0.05 <= first <= 0.1 + SLACK_S
    assert 1.0 <= second <= 1.5 + SLACK_S  # the server's hint, jittered upwards only
    assert waits_logged(caplog, "fetch failed source=live")[1] >= 1.0


def test_source_gives_up_with_the_attempts_counted() -> None:
    with scripted(error(502)) as (url, script):
        source = HttpSource(url + "/data.json", retries=2, backoff_s=0.01)
        with pytest.raises(SourceError, match=r"failed after 3 attempts: .*HTTP 502"):
            source.fetch()
        source.close()
    assert script.requests == 3


def test_source_refusal_is_not_retried() -> None:
    with scripted(error(403)) as (url, script):
        source = HttpSource(url + "/data.json", retries=3, backoff_s=0.01)
        with pytest.raises(SourceError, match="refused: HTTP 403"):
            source.fetch()
        source.close()
    assert script.requests == 1


def test_archive_get_retries_then_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "ARCHIVE_HTTP_BACKOFF_S", (0.05, 0.05))
    with scripted(error(502), (200, {}, b"day index")) as (url, script), httpx.Client() as c:
        response = archive.get(c, url + "/2024-01-01/")
        assert response is not None and response.content == b"day index"
        assert script.requests == 2
    with scripted(error(404)) as (url, script), httpx.Client() as c:
        assert archive.get(c, url + "/2024-01-02/") is None
        assert script.requests == 1


def test_backfill_waits_out_backpressure(caplog: pytest.LogCaptureFixture) -> None:
    """The client raises back-pressure at once; the backfill, its caller, waits the
    server's Retry-After (never less) and sends the same batch again."""
    answers = (error(429, {"Retry-After": "1"}), NO_CONTENT)
    with scripted(*answers) as (url, script), influx(url) as client:
        settings = InfluxSettings(url=url, raw_retention="INF")
        backfill = Backfill(client, settings, batch_lines=10)
        with caplog.at_level(logging.WARNING, logger="aircast.backfill"):
            assert backfill._write(["m value=1", "m value=2"], "db") == 2
    assert script.requests == 2
    assert 1.0 <= script.gaps()[0] <= 1.5 + SLACK_S
    assert "backfill write slowed down db=db attempt=1/" in caplog.text
