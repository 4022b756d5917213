"""The one retry policy: exponential backoff with jitter, on tenacity.

Every wait-and-try-again in aircast goes through here (InfluxDB requests, the snapshot
fetch, archive downloads, the collector's flush, a snapshot's ingest, a failed Ray job
or Serve deploy), so they all back off the same way:

* the n-th wait (n = 1, 2, ...) is drawn uniformly from ``[(1 - jitter) * d, d]`` with
  ``d = min(max_s, first_s * 2 ** (n - 1))`` ("equal jitter" for ``jitter = 0.5``):
  many clients that failed together do not come back together, and no wait exceeds
  ``max_s``;
* a server's own hint (``Retry-After`` on a :class:`TransientStatus`, ``retry_after`` of
  a :class:`~aircast.errors.BackpressureError`) is honoured, never shortened: the wait
  is drawn from ``[hint, hint * (1 + jitter)]``, with the hint capped at
  :data:`aircast.tuning.MAX_HINT_S` so one header cannot stall a stage for hours;
* before each wait one warning: ``<event> attempt=<n>/<attempts> retry_in=<s>s
  error=<type>: <first line>`` (``attempt=<n>`` when the attempts are unbounded).

What is worth retrying is the caller's decision (``retry_on``); an attempt's own error
is re-raised unchanged once the attempts are spent, for the caller to word.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import tenacity

from aircast import tuning
from aircast.errors import BackpressureError

__all__ = [
    "Backoff",
    "TransientStatus",
    "describe",
    "honour",
    "retry_after_s",
    "retrying",
    "transient_http",
]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: see the module docstring for the bounds."""

    first_s: float
    max_s: float
    jitter: float = 0.5  # the random share of each wait, 0 (none) to 1 (full jitter)

    def __post_init__(self) -> None:
        if self.first_s <= 0 or self.max_s < self.first_s:
            raise ValueError(f"backoff needs 0 < first_s <= max_s, got {self}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter is a share in [0, 1], got {self.jitter}")

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (1 = the first retry)."""
        return min(self.max_s, self.first_s * 2.0 ** max(0, retry - 1))

    def wait(self, retry: int) -> float:
        """A wait before retry number ``retry``, in ``[(1 - jitter) * d, d]``."""
        d = self.ceiling(retry)
        return d * (1.0 - self.jitter * random.random())

    def honour(self, hint: float) -> float:
        """A wait for a server's hint: at least the hint (capped), at most ``jitter`` more."""
        return honour(hint, self.jitter)


def honour(hint: float, jitter: float = 0.5) -> float:
    """A wait in ``[h, h * (1 + jitter)]`` with ``h = min(hint, tuning.MAX_HINT_S)``."""
    h = min(max(hint, 0.0), tuning.MAX_HINT_S)
    return h * (1.0 + jitter * random.random())


class TransientStatus(Exception):
    """An HTTP answer worth asking again (429 or 5xx), raised inside an attempt so the
    policy retries it; never leaves the module that raised it (it is reworded there)."""

    def __init__(self, status: int, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def retry_after_s(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date); None when
    absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def transient_http(exc: BaseException) -> bool:
    """The HTTP failures worth another attempt: no answer, or a :class:`TransientStatus`."""
    return isinstance(exc, httpx.TransportError | TransientStatus)


def describe(exc: BaseException | None) -> str:
    """``Type: first line of the message`` (a Ray error's message runs to many lines)."""
    if exc is None:
        return "none"
    text = str(exc)
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _hint_of(exc: BaseException | None) -> float | None:
    if isinstance(exc, BackpressureError | TransientStatus):
        return exc.retry_after
    return None


def retrying(
    *,
    backoff: Backoff,
    retry_on: Callable[[BaseException], bool],
    log: logging.Logger,
    event: str | Callable[[], str],
    attempts: int | None = None,
    stop_when: Callable[[], bool] | None = None,
    on_failure: Callable[[BaseException | None], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tenacity.Retrying:
    """A tenacity ``Retrying`` with aircast's policy; call it with the attempt function.

    ``attempts``: tries in all (None: until ``stop_when()`` is true). ``retry_on``: which
    errors are tried again; any other propagates at once. ``on_failure`` runs after
    every failed attempt that ``retry_on`` accepts (counters, pausing a consumer).
    ``event`` (or a function giving it, for context that changes) starts the warning
    logged before each wait. Once stopped, the last attempt's own error is raised."""
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")

    def wait(state: tenacity.RetryCallState) -> float:
        hint = _hint_of(_error(state))
        return backoff.honour(hint) if hint is not None else backoff.wait(state.attempt_number)

    def stop(state: tenacity.RetryCallState) -> bool:
        if attempts is not None and state.attempt_number >= attempts:
            return True
        return stop_when is not None and stop_when()

    def failed(state: tenacity.RetryCallState) -> None:
        if on_failure is not None:
            on_failure(_error(state))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        log.warning(
            "%s attempt=%s retry_in=%.2fs error=%s",
            event() if callable(event) else event,
            state.attempt_number if attempts is None else f"{state.attempt_number}/{attempts}",
            state.upcoming_sleep,
            describe(_error(state)),
        )

    return tenacity.Retrying(
        sleep=sleep,
        stop=stop,
        wait=wait,
        retry=tenacity.retry_if_exception(retry_on),
        after=failed,
        before_sleep=before_sleep,
        reraise=True,
    )


def _error(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None
