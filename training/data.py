"""Training series from the 10-minute aggregates in InfluxDB (what the collector or a
backfill wrote)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aircast.forecasting import Series, grid
from aircast.influx import InfluxV1, quote_ident
from aircast.settings import Settings

log = logging.getLogger(__name__)


def load_series(
    settings: Settings, start: int, end: int, measures: Sequence[str] | None = None
) -> list[Series]:
    """One grid series per (sensor, measure) over ``[start, end)`` (epoch seconds).

    Grouped by ``sensor_id`` only: a sensor that moved has several tag sets (location,
    city), and its windows are merged; a window written twice is averaged by the grid.
    """
    out: list[Series] = []
    with InfluxV1(settings.influx) as influx:
        for measure in measures or settings.train.measures:
            q = (
                f'SELECT "mean" FROM {quote_ident(measure)} '
                f'WHERE time >= {start}s AND time < {end}s GROUP BY "sensor_id"'
            )
            for s in influx.query(q, settings.influx.aggregates_database, epoch="s"):
                sensor = s.get("tags", {}).get("sensor_id")
                if not sensor or not str(sensor).isdigit():
                    continue
                points = [(int(t), float(v)) for t, v in s.get("values", []) if v is not None]
                first, values = grid(points, None, end)
                if values.size:
                    out.append(Series(int(sensor), measure, first, values))
    log.info("loaded series=%d start=%d end=%d", len(out), start, end)
    return sorted(out, key=lambda s: s.key)
