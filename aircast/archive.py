"""The sensor.community daily archive: per-sensor CSV files → feed records.

Layout (a folder, or an http(s) base URL laid out like ``archive.sensor.community``,
whose day folders are directory index pages linking the files)::

    <base>/YYYY-MM-DD/YYYY-MM-DD_<sensortype>_sensor_<id>.csv     (also .csv.gz)

Each file is ``;``-separated with a header line, e.g.::

    sensor_id;sensor_type;location;lat;lon;timestamp;P1;durP1;ratioP1;P2;durP2;ratioP2
    15092;SDS011;7647;56.963;-2.211;2019-03-01T00:00:15;23.07;;;10.90;;

Every data row becomes one record in the shape of the live feed
(``static/v1/data.json``, see :mod:`aircast.records`), so archive data goes through
exactly the same validation as live data::

    {"id": None, "timestamp": "2019-03-01 00:00:15",
     "location": {"id": 7647, "latitude": "56.963", "longitude": "-2.211",
                  "country": "", "indoor": 0},
     "sensor": {"id": 15092, "sensor_type": {"name": "SDS011"}},
     "sensordatavalues": [{"value": "23.07", "value_type": "P1"},
                          {"value": "10.90", "value_type": "P2"}]}

Columns:

* measure columns map to measure names of :mod:`aircast.measures` (the archive says
  ``pressure_sealevel`` where the feed says ``pressure_at_sealevel``);
* diagnostic columns are skipped: ``durP1``/``ratioP1``/``durP2``/``ratioP2`` are the
  PPD42NS pulse duration and low-pulse ratio (raw signal of another dust sensor, always
  empty for SDS011, not a measurement of air), ``altitude`` is station metadata the
  BME280 firmware may fill in — neither is a measure the pipeline keeps;
* any other column is passed on under its own name, so :func:`aircast.records.split_record`
  rejects it as ``unknown_type`` instead of it vanishing;
* an empty cell is an absent value (the feed omits absent values too); a row whose
  measure cells are all empty becomes a record with empty ``sensordatavalues``, which
  the parser rejects as ``missing_field``.

A row that cannot be read at all (wrong number of cells, a file with no header) is
yielded as ``{"_raw": line, "_source": "file:line", "_error": why}``: it has no
``location``, so ``split_record`` rejects it (``missing_field``) with the raw line kept
for the dead-letter topic. Counts therefore add up: one record per data line, always.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
from collections.abc import Iterable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx

from aircast import tuning
from aircast.errors import AircastError, InvalidRecord
from aircast.records import parse_timestamp
from aircast.retry import Backoff, TransientStatus, retry_after_s, retrying, transient_http

log = logging.getLogger(__name__)

# Archive column → measure name (aircast.measures).
MEASURE_COLUMNS: dict[str, str] = {
    "P1": "P1",
    "P2": "P2",
    "temperature": "temperature",
    "humidity": "humidity",
    "pressure": "pressure",
    "pressure_sealevel": "pressure_at_sealevel",
    "noise_LAeq": "noise_LAeq",
    "noise_LA_min": "noise_LA_min",
    "noise_LA_max": "noise_LA_max",
}
# Diagnostics and metadata, not measures (see the module docstring).
SKIPPED_COLUMNS: frozenset[str] = frozenset({"durP1", "ratioP1", "durP2", "ratioP2", "altitude"})
IDENTITY_COLUMNS: tuple[str, ...] = (
    "sensor_id",
    "sensor_type",
    "location",
    "lat",
    "lon",
    "timestamp",
)

_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})_([A-Za-z0-9-]+)_sensor_(\d+)\.csv(\.gz)?$")
_HREF = re.compile(r"""href\s*=\s*["']([^"'?#]+)["']""", re.IGNORECASE)


class ArchiveError(AircastError):
    """The archive cannot be read (unreachable URL, unreadable folder)."""


def days(start: date, end: date) -> list[date]:
    """Every day from ``start`` to ``end``, both included."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


# -- sources ------------------------------------------------------------------------


def _is_url(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def get(client: httpx.Client, url: str) -> httpx.Response | None:
    """GET under the retry policy (no answer, 429 and 5xx tried again); ``None`` for 404."""
    policy = retrying(
        attempts=tuning.ARCHIVE_HTTP_RETRIES + 1,
        backoff=Backoff(*tuning.ARCHIVE_HTTP_BACKOFF_S),
        retry_on=transient_http,
        log=log,
        event=f"archive get failed url={url}",
    )
    try:
        return policy(_get_once, client, url)
    except httpx.TransportError as exc:
        raise ArchiveError(f"archive unreachable: {url}: {exc}") from exc
    except TransientStatus as exc:
        raise ArchiveError(f"archive refused {url}: HTTP {exc.status}") from exc


def _get_once(client: httpx.Client, url: str) -> httpx.Response | None:
    response = client.get(url)
    status = response.status_code
    if status == 404:
        return None
    if status < 400:
        return response
    if status == 429 or status >= 500:
        raise TransientStatus(status, retry_after_s(response.headers.get("Retry-After")))
    raise ArchiveError(f"archive refused {url}: HTTP {status}")


def _decode(name: str, data: bytes) -> str:
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def _day_files(source: str | Path, day: date) -> Iterator[tuple[str, str]]:
    """(file name, text) of every sensor file of ``day``, sorted by name."""
    stamp = day.isoformat()
    if _is_url(source):
        base = str(source).rstrip("/")
        with httpx.Client(timeout=tuning.ARCHIVE_HTTP_TIMEOUT_S, follow_redirects=True) as client:
            index = get(client, f"{base}/{stamp}/")
            if index is None:
                log.warning("archive day missing url=%s/%s/", base, stamp)
                return
            names = sorted(
                {
                    href.rsplit("/", 1)[-1]
                    for href in _HREF.findall(index.text)
                    if _FILE.match(href.rsplit("/", 1)[-1])
                    and href.rsplit("/", 1)[-1].startswith(stamp)
                }
            )
            for name in names:
                response = get(client, f"{base}/{stamp}/{name}")
                if response is None:
                    raise ArchiveError(f"archive lists {name} but it is missing ({base}/{stamp}/)")
                yield name, _decode(name, response.content)
        return
    folder = Path(source) / stamp
    if not folder.is_dir():
        log.warning("archive day missing folder=%s", folder)
        return
    for path in sorted(folder.iterdir()):
        if _FILE.match(path.name) and path.name.startswith(stamp):
            try:
                yield path.name, _decode(path.name, path.read_bytes())
            except OSError as exc:
                raise ArchiveError(f"cannot read {path}: {exc}") from exc


# -- rows → feed records ------------------------------------------------------------


def _id(text: str) -> int | str:
    # Non-numeric ids stay text so the parser rejects them with its own reason.
    return int(text) if text.isdigit() else text


def _feed_timestamp(text: str) -> str:
    """The archive's ISO ``2019-03-01T00:00:16`` in the feed's ``2019-03-01 00:00:16``."""
    return text.replace("T", " ", 1) if len(text) > 10 and text[10] == "T" else text


def row_record(header: list[str], cells: list[str]) -> dict[str, Any]:
    """One archive row (cells matching ``header``) as a feed record."""
    row = dict(zip(header, cells, strict=True))
    values = [
        {"value": text, "value_type": MEASURE_COLUMNS.get(column, column)}
        for column, text in row.items()
        if column not in SKIPPED_COLUMNS and column not in IDENTITY_COLUMNS and text != ""
    ]
    return {
        "id": None,
        "timestamp": _feed_timestamp(row.get("timestamp", "")),
        "location": {
            "id": _id(row.get("location", "")),
            "latitude": row.get("lat", ""),
            "longitude": row.get("lon", ""),
            "country": "",
            "indoor": 0,
        },
        "sensor": {
            "id": _id(row.get("sensor_id", "")),
            "sensor_type": {"name": row.get("sensor_type", "")},
        },
        "sensordatavalues": values,
    }


def file_records(name: str, text: str) -> Iterator[dict[str, Any]]:
    """Every data line of one archive file as a record (unreadable lines as ``_raw``)."""
    lines = text.splitlines()
    if not lines:
        return
    header = lines[0].strip().split(";")
    known = not any(c not in header for c in IDENTITY_COLUMNS)
    rows = csv.reader(lines[1:], delimiter=";")
    for number, (line, cells) in enumerate(zip(lines[1:], rows, strict=True), start=2):
        if not line.strip():
            continue  # a trailing blank line is not a row
        if known and len(cells) == len(header):
            yield row_record(header, cells)
            continue
        why = (
            f"{len(cells)} cells, header has {len(header)}"
            if known
            else f"header lacks {', '.join(c for c in IDENTITY_COLUMNS if c not in header)}"
        )
        yield {"_raw": line, "_source": f"{name}:{number}", "_error": why}


def _order(record: dict[str, Any]) -> str:
    stamp = record.get("timestamp")
    return stamp if isinstance(stamp, str) else ""


def iter_day_records(source: str | Path, day: date) -> Iterator[dict[str, Any]]:
    """Every row of ``day`` as a feed record, all sensors merged in timestamp order.

    Unreadable rows (``_raw``) sort first: they have no timestamp.
    """
    records: list[dict[str, Any]] = []
    for name, text in _day_files(source, day):
        records.extend(file_records(name, text))
    # Stable sort: equal timestamps keep file order (sensor files sorted by name).
    records.sort(key=_order)
    yield from records


def iter_records(source: str | Path, start: date, end: date) -> Iterator[dict[str, Any]]:
    """Every record of the days ``start`` .. ``end`` (inclusive), in time order."""
    for day in days(start, end):
        yield from iter_day_records(source, day)


def _epoch(record: dict[str, Any]) -> int | None:
    try:
        return parse_timestamp(record["timestamp"])
    except (InvalidRecord, KeyError, TypeError):
        return None


def snapshots(
    records: Iterable[dict[str, Any]], window_s: int = 300
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Consecutive ``window_s`` windows of time-ordered records: ``(window start, records)``.

    Like successive responses of the live feed (a window of 5 minutes). Every window
    between the first and the last record is yielded, empty ones included, so a replay
    keeps its pace. A record without a usable timestamp joins the current window (it is
    not dropped; the validation rejects it downstream).
    """
    current: int | None = None
    pending: list[dict[str, Any]] = []  # records seen before the first timestamp
    batch: list[dict[str, Any]] = []
    for record in records:
        epoch = _epoch(record)
        if epoch is None:
            (batch if current is not None else pending).append(record)
            continue
        start = epoch - epoch % window_s
        if current is None:
            current, batch, pending = start, [*pending, record], []
            continue
        if start <= current:  # out of order by less than a window: keep it here
            batch.append(record)
            continue
        yield current, batch
        current += window_s
        while current < start:
            yield current, []
            current += window_s
        batch = [record]
    if current is not None:
        yield current, batch
    elif pending:
        yield 0, pending
