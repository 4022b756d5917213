"""InfluxDB through the one API every version speaks: line protocol on ``/write``,
InfluxQL on ``/query`` (the v1 HTTP API of 1.x, the v1 compatibility API of 2.x, and
3.x). Flux is deliberately not used: 3.x dropped it.

What this client may send is the contract of docs/influxdb.md: only the endpoints,
parameters and statements 1.x, 2.x (v1 compatibility API) and 3.x (v1 API) all accept;
tests/test_influx_contract.py records every request against a real server and holds
the code to that table.

Auth: username/password as Basic auth (every version; 3.x takes a token as the
password), or a token as ``Authorization: Token`` (2.x/3.x). Transient failures
(connection errors, 5xx) are retried under the policy of
:mod:`aircast.retry` (``retries`` times, exponential backoff from ``backoff_s`` with
jitter); 429, and 503 with ``Retry-After``, are back-pressure at once: a
:class:`BackpressureError` with ``retry_after`` (the header, else ``backoff_s``), no
retry in here. Any other refusal is a :class:`StorageError` carrying the server's own
message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import orjson

from aircast import tuning
from aircast.errors import BackpressureError, ConfigError, StorageError
from aircast.retry import Backoff, retry_after_s, retrying
from aircast.settings import InfluxSettings

log = logging.getLogger(__name__)


_UNITS = {
    "ns": 1e-9,
    "u": 1e-6,
    "µ": 1e-6,
    "ms": 1e-3,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
}
_DURATION = re.compile(r"(\d+)(ns|u|µ|ms|s|m|h|d|w)")


def duration_seconds(text: str) -> float | None:
    """An InfluxQL duration (``30d``, ``1h30m``, ``INF``) in seconds; ``None`` = forever.

    The one parser of retention settings for every stage (collector, backfill, the
    Kubernetes provisioning job)."""
    if text.strip().upper() in ("INF", "0", "0S"):
        return None
    parts = _DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ConfigError(f"not an InfluxQL duration: {text!r} (use e.g. 30d, 12h or INF)")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_str(value: str) -> str:
    """An InfluxQL string literal in single quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxV1:
    """A small synchronous client; one per actor/process, reused for every batch."""

    def __init__(self, settings: InfluxSettings, *, client: httpx.Client | None = None) -> None:
        self.settings = settings
        headers: dict[str, str] = {}
        auth: tuple[str, str] | None = None
        if settings.token is not None:
            headers["Authorization"] = f"Token {settings.token.get_secret_value()}"
        elif settings.username and settings.password is not None:
            auth = (settings.username, settings.password.get_secret_value())
        self._http = client or httpx.Client(
            base_url=settings.url.rstrip("/"),
            headers=headers,
            auth=auth,
            timeout=settings.timeout_s,
        )
        self._retrying = retrying(
            attempts=settings.retries + 1,
            backoff=Backoff(
                settings.backoff_s, max(settings.backoff_s, tuning.INFLUX_MAX_BACKOFF_S)
            ),
            retry_on=_transient,
            log=log,
            event=f"influx request failed url={settings.url}",
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> InfluxV1:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- low level ---------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request under the retry policy (:mod:`aircast.retry`): no answer and 5xx
        are tried again; back-pressure and any other refusal are raised at once."""
        try:
            return self._retrying(self._send, method, path, **kwargs)
        except httpx.TransportError as exc:
            raise StorageError(
                f"InfluxDB at {self.settings.url} unreachable after "
                f"{self.settings.retries + 1} attempts: {exc}"
            ) from exc

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One attempt: the response below 400, else the error it means."""
        response = self._http.request(method, path, **kwargs)
        status = response.status_code
        if status < 400:
            return response
        message = _error_text(response)
        hint = retry_after_s(response.headers.get("Retry-After"))
        # 429, and a 503 that says when to come back, are the server pacing us: the
        # caller pauses (the collector stops consuming) instead of hammering it.
        if status == 429 or (status == 503 and hint is not None):
            raise BackpressureError(
                f"InfluxDB asks to slow down ({status}): {message}",
                retry_after=self.settings.backoff_s if hint is None else hint,
                status=status,
            )
        if status >= 500:
            raise StorageError(f"InfluxDB failed ({status}): {message}", status)
        raise StorageError(
            f"InfluxDB refused ({status}): {message}{self._missing_database_hint(message)}",
            status,
        )

    def _missing_database_hint(self, message: str) -> str:
        """What to do when the server does not know a database (1.x "database not
        found", 2.x "bucket ... not found"): empty for any other message."""
        if not re.search(r"(database|bucket).*not found", message, re.IGNORECASE):
            return ""
        if self.settings.manage_databases:
            return " (the databases are created at start: did ensure_databases() run?)"
        return (
            " (influx.manage_databases is false: create the database outside aircast, on "
            "2.x a bucket and its DBRP mapping, see docs/influxdb.md)"
        )

    # -- API ---------------------------------------------------------------------

    def ping(self) -> bool:
        """True when the server answers ``/ping`` (no retries: a health probe)."""
        try:
            return self._http.get("/ping", timeout=2.0).status_code == 204
        except httpx.TransportError:
            return False

    def write(
        self,
        lines: Sequence[str] | bytes,
        database: str,
        *,
        precision: str = "ns",
        retention_policy: str | None = None,
    ) -> None:
        """Write one batch of line protocol; raises unless the server acknowledged it."""
        body = lines if isinstance(lines, bytes) else "\n".join(lines).encode("utf-8")
        if not body:
            return
        params = {"db": database, "precision": precision}
        if retention_policy:
            params["rp"] = retention_policy
        self._request("POST", "/write", params=params, content=body)

    def query(
        self, q: str, database: str | None = None, *, epoch: str | None = None
    ) -> list[dict[str, Any]]:
        """Run InfluxQL; returns the ``series`` of every statement, flattened.

        Never a chunked answer: 2.x's v1 compatibility API does not chunk
        (docs/influxdb.md), so a caller bounds an answer's size by paging sensors
        (:mod:`aircast.queries`). A statement error (e.g. a syntax error) is a
        :class:`StorageError`.
        """
        params: dict[str, str] = {"q": q}
        if database:
            params["db"] = database
        if epoch:
            params["epoch"] = epoch
        # POST: InfluxQL that changes state (CREATE, DROP) must not be a GET.
        response = self._request("POST", "/query", data=params)
        # orjson: an audit decodes many large answers, where the stdlib's json is the
        # bottleneck; InfluxDB writes no NaN or big integers orjson refuses.
        payload = orjson.loads(response.content)
        series: list[dict[str, Any]] = []
        for result in payload.get("results", []):
            if "error" in result:
                hint = self._missing_database_hint(str(result["error"]))
                raise StorageError(f"InfluxQL error: {result['error']} (query: {q}){hint}")
            series.extend(result.get("series", []))
        return series

    def rows(
        self, q: str, database: str | None = None, *, epoch: str | None = None
    ) -> list[dict[str, Any]]:
        """Run InfluxQL and return every row as a dict (tags merged in)."""
        out: list[dict[str, Any]] = []
        for s in self.query(q, database, epoch=epoch):
            tags = s.get("tags", {})
            for values in s.get("values", []):
                row = dict(zip(s["columns"], values, strict=True))
                row.update(tags)
                out.append(row)
        return out

    def create_database(self, name: str, retention: str = "INF") -> None:
        """Create a database with an ``aircast`` default retention policy (idempotent)."""
        self.query(f"CREATE DATABASE {quote_ident(name)}")
        duration = "INF" if retention.upper() == "INF" else retention
        # CREATE RETENTION POLICY fails if it exists with other settings; ALTER covers it.
        existing = {
            row["name"] for row in self.rows(f"SHOW RETENTION POLICIES ON {quote_ident(name)}")
        }
        verb = "ALTER" if "aircast" in existing else "CREATE"
        self.query(
            f"{verb} RETENTION POLICY aircast ON {quote_ident(name)} "
            f"DURATION {duration} REPLICATION 1 DEFAULT"
        )

    def ensure_databases(self) -> None:
        """Every database aircast writes, with its retention (no manual step).

        Only with ``influx.manage_databases`` (InfluxDB 1.x): ``CREATE DATABASE`` and
        ``CREATE``/``ALTER RETENTION POLICY`` are 1.x statements. On 2.x the deployment
        creates the buckets and their DBRP mappings (kuberay's influxdb-provision Job);
        3.x creates a database at its first write and sets retention on the database.
        Without it nothing is sent at all; a write to a database that does not exist then
        fails with the server's "not found" and a hint (:func:`_missing_database_hint`)."""
        if not self.settings.manage_databases:
            log.info(
                "influx databases are provisioned outside aircast (influx.manage_databases "
                "is false) raw=%s aggregates=%s predictions=%s",
                self.settings.raw_database,
                self.settings.aggregates_database,
                self.settings.predictions_database,
            )
            return
        s = self.settings
        for name, retention in (
            (s.raw_database, s.raw_retention),
            (s.aggregates_database, s.aggregates_retention),
            (s.predictions_database, s.predictions_retention),
        ):
            self.create_database(name, retention)
            log.info("influx database ready db=%s retention=%s", name, retention)

    def databases(self) -> list[str]:
        return [row["name"] for row in self.rows("SHOW DATABASES")]

    def count(self, measurement: str, database: str, where: str = "") -> int:
        """Number of points of ``measurement`` (its ``value`` field)."""
        clause = f" WHERE {where}" if where else ""
        rows = self.rows(f'SELECT count("value") FROM {quote_ident(measurement)}{clause}', database)
        return int(rows[0]["count"]) if rows else 0


def _transient(exc: BaseException) -> bool:
    """Worth another attempt: no answer, or a server error that is not back-pressure."""
    if isinstance(exc, httpx.TransportError):
        return True
    return (
        isinstance(exc, StorageError)
        and not isinstance(exc, BackpressureError)
        and (exc.status or 0) >= 500
    )


def _error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return response.text.strip()[:500]


def line_batches(lines: Iterable[str], size: int) -> Iterable[list[str]]:
    """Split lines into lists of at most ``size``."""
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
