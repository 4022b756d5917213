"""The Refresher deployment (one replica): every ``settings.serve.forecast_refresh_s``
it recomputes the forecast of every series that has recent 10-minute aggregates and
stores them (Redis + InfluxDB ``predictions``), so API reads are lookups. Histories
are read one page of sensors at a time; a restarted replica resumes the schedule
(the last refresh's time is in Redis) instead of refreshing at once.

Baselines are computed here; series with a trained model (kind ``rnn``) go to the
Forecaster deployment under their multiplexed model id, so the model stays loaded on
the replica that already holds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
import redis
from ray import serve
from ray.serve.handle import DeploymentHandle

from aircast import forecasts, tuning
from aircast.cache import key, redis_client
from aircast.errors import StorageError
from aircast.influx import InfluxV1
from aircast.queries import history_pages, measures_with_aggregates
from aircast.registry import ModelEntry, Registry
from aircast.settings import Settings
from serve.forecaster import lookback_s

log = logging.getLogger(__name__)


@serve.deployment(num_replicas=1, graceful_shutdown_wait_loop_s=tuning.SERVE_DRAIN_POLL_S)
class Refresher:
    # Serve runs an async constructor on the replica's event loop (the refresh task
    # needs that loop); type checkers only know synchronous __init__.
    async def __init__(self, settings: Settings, forecaster: DeploymentHandle[Any]) -> None:  # type: ignore[misc]
        self.settings = settings
        self.forecaster = forecaster
        self.influx = InfluxV1(settings.influx)
        self.redis = redis_client(settings.redis)
        self.registry = Registry(settings.train.registry_dir, self.redis, settings.redis.key_prefix)
        self._refreshed_key = key(settings.redis, "forecasts", "refreshed_at")
        self._lock = asyncio.Lock()
        self._last: dict[str, Any] = {
            "finished_at": None,
            "forecasts": 0,
            "error": None,
            "next_at": None,
        }
        try:
            await asyncio.to_thread(self.influx.ensure_databases)
        except StorageError as exc:  # the loop retries; the API reports it on /health
            log.warning("influx databases not ensured error=%s", exc)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def _first_wait_s(self) -> float:
        """A restarted replica waits out the rest of the last refresh's interval: the
        stored forecasts are still good, and a refresh reads every sensor's history
        (at 10x ~100 CPU-s of influxd), so replica restarts must not multiply it."""
        try:
            raw = self.redis.get(self._refreshed_key)
        except redis.RedisError as exc:  # Redis away: refresh now; the API reports Redis itself
            log.warning("last refresh time not read error=%s", exc)
            return 0.0
        if raw is None:
            return 0.0
        due = float(raw) + self.settings.serve.forecast_refresh_s
        return max(0.0, min(due - time.time(), self.settings.serve.forecast_refresh_s))

    async def _loop(self) -> None:
        wait = await asyncio.to_thread(self._first_wait_s)
        self._last["next_at"] = int(time.time() + wait)
        if wait > 0:
            log.info("forecast refresh resumes in_s=%.0f (stored forecasts are current)", wait)
            await asyncio.sleep(wait)
        while True:
            try:
                await self.refresh()
            except StorageError as exc:
                log.warning("forecast refresh failed error=%s", exc)
            await asyncio.sleep(self.settings.serve.forecast_refresh_s)

    async def status(self) -> dict[str, Any]:
        return dict(self._last)

    async def reload(self) -> dict[str, Any]:
        """Forget cached forecasts and recompute all with the registry's current models."""
        cleared = await asyncio.to_thread(forecasts.clear_cache, self.redis, self.settings.redis)
        result = await self.refresh()
        return {"cleared": cleared, **result}

    async def refresh(self) -> dict[str, Any]:
        async with self._lock:
            started = time.monotonic()
            try:
                count = await self._refresh_all()
            except StorageError as exc:
                self._last = self._outcome(time.time(), 0, error=str(exc))
                raise
            finished = time.time()
            self._last = self._outcome(
                finished, count, duration_s=round(time.monotonic() - started, 3)
            )
            try:
                await asyncio.to_thread(self.redis.set, self._refreshed_key, str(finished))
            except redis.RedisError as exc:  # only costs a refresh on the next replica start
                log.warning("last refresh time not stored error=%s", exc)
            log.info(
                "forecasts refreshed count=%d duration_s=%.2f", count, self._last["duration_s"]
            )
            return dict(self._last)

    def _outcome(self, finished: float, count: int, **extra: Any) -> dict[str, Any]:
        return {
            "finished_at": int(finished),
            "forecasts": count,
            "error": None,
            "next_at": int(finished + self.settings.serve.forecast_refresh_s),
            **extra,
        }

    async def _refresh_all(self) -> int:
        db = self.settings.influx.aggregates_database
        measures = await asyncio.to_thread(measures_with_aggregates, self.influx, db)
        entries = {
            (e.measure, e.sensor_id): e for e in await asyncio.to_thread(self.registry.all_latest)
        }
        total = 0
        for measure in measures:
            window = max(
                [self.settings.train.window]
                + [forecasts.history_steps(e) for (m, _), e in entries.items() if m == measure]
            )
            pages = history_pages(
                self.influx, db, measure, window, lookback_s(self.settings, window)
            )
            batch: list[dict[str, Any]] = []
            # One page of sensors at a time: fetched in a thread, forecast, stored.
            while (found := await asyncio.to_thread(next, pages, None)) is not None:
                for sid, history in found.items():
                    entry = entries.get((measure, sid)) or forecasts.default_entry(
                        self.settings, sid, measure
                    )
                    batch.append(await self._one(entry, history))
                    if len(batch) >= tuning.REFRESH_STORE_BATCH:
                        total += await self._store(batch)
                        batch = []
            total += await self._store(batch)
        return total

    async def _one(self, entry: ModelEntry, history: Any) -> dict[str, Any]:
        if entry.kind != "rnn":
            return forecasts.compute(entry, history)
        series = np.asarray(history.means, dtype=np.float64)[-entry.window :]
        handle = self.forecaster.options(multiplexed_model_id=forecasts.model_id(entry))
        try:
            # training.predict takes the start of the last history window.
            values = await handle.predict.remote(
                entry.to_json(), series.tolist(), history.last_window
            )
        except Exception as exc:  # a replica-side failure surfaces as a Ray error type
            log.warning("model failed model_id=%s error=%s", forecasts.model_id(entry), exc)
            return forecasts.compute(entry, history, None, failure=str(exc))
        return forecasts.compute(entry, history, {int(k): float(v) for k, v in values.items()})

    async def _store(self, batch: list[dict[str, Any]]) -> int:
        if not batch:
            return 0
        return await asyncio.to_thread(
            forecasts.store, self.redis, self.influx, self.settings, batch
        )
