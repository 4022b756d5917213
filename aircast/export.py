"""CSV downloads of a sensor's readings.

One header row, then one row per point, oldest first::

    sensor_id,measure,unit,resolution,time,time_iso,value,min,max,count

``time`` is epoch seconds (UTC; a window's start for aggregated resolutions),
``time_iso`` the same instant in ISO 8601; ``min``/``max``/``count`` are empty for raw
readings. Written with :mod:`csv` (RFC 4180 quoting, CRLF line ends), so any CSV
reader parses it back. The licence travels in the HTTP ``Link`` header (see
:mod:`aircast.licence`), not in the file, so the file stays one table.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from datetime import UTC, datetime

from aircast.queries import Point

HEADER = (
    "sensor_id",
    "measure",
    "unit",
    "resolution",
    "time",
    "time_iso",
    "value",
    "min",
    "max",
    "count",
)


def _cell(value: float | int | None) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def readings_csv(
    sensor_id: int, measure: str, unit: str, resolution: str, points: Iterable[Point]
) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER)
    for p in points:
        writer.writerow(
            (
                sensor_id,
                measure,
                unit,
                resolution,
                p.time,
                datetime.fromtimestamp(p.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                _cell(p.value),
                _cell(p.min),
                _cell(p.max),
                _cell(p.count),
            )
        )
    return out.getvalue()


def filename(sensor_id: int, measure: str, resolution: str, start: int, end: int) -> str:
    """A file name safe in a ``Content-Disposition`` header (ASCII letters, digits,
    ``_ - .`` only)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", measure)
    return f"aircast_{int(sensor_id)}_{safe}_{resolution}_{int(start)}_{int(end)}.csv"
