"""Forecasts without Ray: compute one from a registry entry and a history, store it
(Redis for lookups, InfluxDB ``predictions`` for the record), read it back.

A forecast payload (the JSON the API returns, plus ``source`` added on the way out)::

    {"sensor_id": 468, "measure": "P1", "unit": "µg/m³",
     "issued_at": 1714000200,          # end of the latest 10-minute window used
     "based_on": 1713999600,           # start of that window
     "served_by": "model" | "baseline",
     "model": {"kind": "rnn", "version": "...", "trained_at": ..., "skill": 0.21,
               "metrics": {"10m": {"model_mae": ..., "persistence_mae": ...}}},
     "note": "...",
     "points": [{"horizon_steps": 1, "horizon": "10m", "time": 1714000200,
                 "value": 12.3, "low": 10.9, "high": 14.0}, ...]}

``time`` of a point is the start of the 10-minute window it predicts, the same
timestamp the aggregate it will be compared with carries. ``skill`` is
``1 - MAE_model / MAE_persistence`` on held-out data (0 for persistence itself).
``low``/``high`` are the 80 % interval (10 % and 90 % quantiles) when the served entry
has one; a fallback to persistence after a model failure has none.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import redis

from aircast.cache import key
from aircast.forecasting import DAY_STEPS, baseline_forecast, interval_of
from aircast.influx import InfluxV1
from aircast.measures import BY_NAME
from aircast.queries import History, StoredForecast, forecast_lines
from aircast.records import AGGREGATE_WINDOW_S
from aircast.registry import ModelEntry, horizon_label
from aircast.settings import RedisSettings, Settings

log = logging.getLogger(__name__)

BASELINE_VERSION = "baseline"


def cache_key(settings: RedisSettings, measure: str, sensor_id: int) -> str:
    return key(settings, "forecast", measure, str(sensor_id))


def cache_ttl_s(settings: Settings) -> int:
    # Three refresh periods: a missed refresh still leaves a (labelled) forecast.
    return max(60, int(3 * settings.serve.forecast_refresh_s))


def default_entry(settings: Settings, sensor_id: int, measure: str) -> ModelEntry:
    """No model registered: persistence serves, with the training's horizons."""
    return ModelEntry(
        sensor_id=sensor_id,
        measure=measure,
        version=BASELINE_VERSION,
        kind="persistence",
        horizons=settings.train.horizons,
        window=settings.train.window,
    )


def model_id(entry: ModelEntry) -> str:
    """The multiplexed model id: one id per trained version."""
    return f"{entry.measure}:{entry.sensor_id}:{entry.version}"


def entry_for_model_id(registry_root: Path, mid: str) -> ModelEntry:
    """The registry entry a model id names (read from its ``meta.json``)."""
    measure, sensor, version = mid.split(":", 2)
    meta = registry_root / measure / sensor / version / "meta.json"
    return ModelEntry.from_json(meta.read_text(encoding="utf-8"))


def baseline_values(kind: str, history: np.ndarray, horizons: tuple[int, ...]) -> dict[int, float]:
    """A baseline's forecast (the shared implementation the training scores with)."""
    return baseline_forecast(kind, history, horizons)


def history_steps(entry: ModelEntry) -> int:
    """10-minute means an entry needs: its window, or a day for the seasonal baseline."""
    return max(entry.window, DAY_STEPS) if entry.kind == "seasonal_naive" else entry.window


def bounds(entry: ModelEntry, horizon: int, value: float) -> dict[str, float]:
    """``low``/``high`` of a point: the entry's validation residual quantiles around the
    served value (none when the entry has no interval for that horizon)."""
    quantiles = entry.intervals.get(horizon_label(horizon))
    if quantiles is None:
        return {}
    low, high = interval_of(value, quantiles, entry.log_space)
    return {"low": low, "high": high} if math.isfinite(low) and math.isfinite(high) else {}


def payload(
    entry: ModelEntry,
    history: History,
    values: dict[int, float],
    *,
    served_by: str,
    note: str = "",
) -> dict[str, Any]:
    issued_at = history.last_window + AGGREGATE_WINDOW_S
    m = BY_NAME.get(entry.measure)
    points = [
        {
            "horizon_steps": h,
            "horizon": horizon_label(h),
            "time": history.last_window + h * AGGREGATE_WINDOW_S,
            "value": float(v),
            **bounds(entry, h, v),
        }
        for h, v in sorted(values.items())
        if math.isfinite(v)
    ]
    return {
        "sensor_id": history.sensor_id,
        "measure": entry.measure,
        "unit": m.unit if m else "",
        "issued_at": issued_at,
        "based_on": history.last_window,
        "served_by": served_by,
        "model": {
            "kind": entry.kind,
            "version": entry.version,
            "trained_at": entry.trained_at,
            "skill": entry.skill,
            "metrics": entry.metrics,
        },
        "note": note,
        "points": points,
    }


def compute(
    entry: ModelEntry,
    history: History,
    model_values: dict[int, float] | None = None,
    failure: str = "",
) -> dict[str, Any]:
    """The forecast payload of one series. For a trained model (kind ``rnn``) the
    caller ran it and passes ``model_values``; without them (the model could not be
    loaded or failed) persistence serves and the payload says why."""
    series = np.asarray(history.means, dtype=np.float64)
    if entry.kind == "rnn":
        if model_values is not None:
            return payload(entry, history, model_values, served_by="model")
        fallback = ModelEntry(
            sensor_id=entry.sensor_id,
            measure=entry.measure,
            version=BASELINE_VERSION,
            kind="persistence",
            horizons=entry.horizons,
            window=entry.window,
        )
        values = baseline_values("persistence", series, entry.horizons)
        note = f"model {entry.version} unavailable ({failure or 'no runtime'}); persistence serves"
        return payload(fallback, history, values, served_by="baseline", note=note)
    values = baseline_values(entry.kind, series, entry.horizons)
    note = (
        "no trained model registered; persistence serves"
        if entry.version == BASELINE_VERSION
        else f"the registry promoted the {entry.kind} baseline (no model beat it)"
    )
    return payload(entry, history, values, served_by="baseline", note=note)


def store(
    client: redis.Redis[str],
    influx: InfluxV1,
    settings: Settings,
    payloads: Iterable[dict[str, Any]],
) -> int:
    """Cache forecasts for lookups and record them in the predictions database."""
    items = list(payloads)
    if not items:
        return 0
    ttl = cache_ttl_s(settings)
    pipe = client.pipeline(transaction=False)
    for p in items:
        body = json.dumps({**p, "source": "cache"})
        pipe.set(cache_key(settings.redis, p["measure"], p["sensor_id"]), body, ex=ttl)
    pipe.execute()
    lines = forecast_lines(
        StoredForecast(
            sensor_id=p["sensor_id"],
            measure=p["measure"],
            kind=p["model"]["kind"],
            version=p["model"]["version"],
            issued_at=p["issued_at"],
            values={pt["horizon_steps"]: pt["value"] for pt in p["points"]},
        )
        for p in items
    )
    influx.write(lines, settings.influx.predictions_database, precision="s")
    return len(items)


def clear_cache(client: redis.Redis[str], settings: RedisSettings) -> int:
    """Drop every cached forecast (the next read recomputes)."""
    keys = list(client.scan_iter(match=key(settings, "forecast", "*"), count=1000))
    return int(client.delete(*keys)) if keys else 0
