"""The map's layer of one measure: every sensor that reported it recently, as columns.

Shape (the contract between ``GET /v1/map`` and the browser map)::

    {"measure", "label", "unit", "generated_at", "stale_after_s",
     "index": "caqi" | None, "licence": {...}, "count",
     "id", "lat", "lon", "value", "time", "mean_1h", "mean_24h", "aqi_1h", "aqi_24h",
     "city"}

one list entry per sensor, sorted by id. ``value``/``time`` are the latest raw
reading; ``mean_1h``/``mean_24h`` the time averages of the 10-minute aggregates
(None where none exist). ``aqi_1h`` is the CAQI hourly grid's sub-index of the 1 h
mean, ``aqi_24h`` the CAQI daily grid's of the 24 h mean: the averaging periods the
index defines. Both are None for measures that are not PM. Columns rather than one
object per sensor: at 15,000 sensors the body is about a third of the size and the
browser reads typed columns without building an object per sensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson

from aircast import aqi, licence
from aircast.measures import BY_NAME
from aircast.queries import Located

# CAQI (CiteairII) daily grid: 24-hour means of PM10 0/15/30/50/100 and PM2.5
# 0/10/20/30/60 µg/m³ map to 0/25/50/75/100 (the hourly grid is in aircast.aqi).
CAQI_DAILY_PM10: tuple[aqi.Band, ...] = (
    (0.0, 15.0, 0.0, 25.0),
    (15.0, 30.0, 25.0, 50.0),
    (30.0, 50.0, 50.0, 75.0),
    (50.0, 100.0, 75.0, 100.0),
)
CAQI_DAILY_PM25: tuple[aqi.Band, ...] = (
    (0.0, 10.0, 0.0, 25.0),
    (10.0, 20.0, 25.0, 50.0),
    (20.0, 30.0, 50.0, 75.0),
    (30.0, 60.0, 75.0, 100.0),
)
PM_MEASURES = ("P1", "P2")
# The per-sensor lists, in the contract's order.
COLUMNS = (
    "id", "lat", "lon", "value", "time", "mean_1h", "mean_24h", "aqi_1h", "aqi_24h", "city"
)  # fmt: skip


def caqi_hourly(measure: str, mean_1h: float | None) -> int | None:
    """The CAQI hourly sub-index of a PM measure's 1-hour mean (None if not PM)."""
    if measure not in PM_MEASURES or not _usable(mean_1h):
        return None
    return round(aqi.caqi_subindex(measure, mean_1h))  # type: ignore[arg-type]


def caqi_daily(measure: str, mean_24h: float | None) -> int | None:
    """The CAQI daily sub-index of a PM measure's 24-hour mean (None if not PM)."""
    if measure not in PM_MEASURES or not _usable(mean_24h):
        return None
    bands = CAQI_DAILY_PM10 if measure == "P1" else CAQI_DAILY_PM25
    return round(_piecewise(mean_24h, bands))  # type: ignore[arg-type]


def _piecewise(c: float, bands: tuple[aqi.Band, ...]) -> float:
    """Linear within the band holding ``c``; above the grid, the last band's slope
    (as :mod:`aircast.aqi` continues the hourly grid)."""
    for c_lo, c_hi, i_lo, i_hi in bands:
        if c <= c_hi:
            return i_lo + (c - c_lo) * (i_hi - i_lo) / (c_hi - c_lo)
    c_lo, c_hi, i_lo, i_hi = bands[-1]
    return i_lo + (c - c_lo) * (i_hi - i_lo) / (c_hi - c_lo)


def _usable(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value >= 0.0


def _rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def layer(
    measure: str,
    latest: Mapping[int, Located],
    mean_1h: Mapping[int, float],
    mean_24h: Mapping[int, float],
    generated_at: int,
    stale_after_s: int,
) -> dict[str, Any]:
    """The layer's JSON object; sensors without coordinates are left out (a map
    cannot place them)."""
    m = BY_NAME[measure]
    placed = sorted(
        (s for s in latest.values() if math.isfinite(s.latitude) and math.isfinite(s.longitude)),
        key=lambda s: s.sensor_id,
    )
    means_1h = [mean_1h.get(s.sensor_id) for s in placed]
    means_24h = [mean_24h.get(s.sensor_id) for s in placed]
    return {
        "measure": measure,
        "label": m.label,
        "unit": m.unit,
        "generated_at": generated_at,
        "stale_after_s": stale_after_s,
        "index": "caqi" if measure in PM_MEASURES else None,
        "licence": licence.as_dict(),
        "count": len(placed),
        "id": [s.sensor_id for s in placed],
        "lat": [s.latitude for s in placed],
        "lon": [s.longitude for s in placed],
        "value": [s.value for s in placed],
        "time": [s.time for s in placed],
        "mean_1h": [_rounded(v) for v in means_1h],
        "mean_24h": [_rounded(v) for v in means_24h],
        "aqi_1h": [caqi_hourly(measure, v) for v in means_1h],
        "aqi_24h": [caqi_daily(measure, v) for v in means_24h],
        "city": [s.city for s in placed],
    }


def render(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body)
