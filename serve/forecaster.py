"""The Forecaster deployment: forecasts on a cache miss, and model inference for the
refresher.

* Models are loaded per (measure, sensor, version) through Serve model multiplexing:
  each replica keeps at most ``settings.serve.model_cache_size`` models (least
  recently used evicted) and the router sends a model id to a replica that holds it.
* Cache misses are batched with ``@serve.batch``: one InfluxQL query fetches the
  histories of every series in the batch, one Redis pipeline and one InfluxDB write
  store the results.
* ``training.predict`` (TensorFlow) is imported only when an ``rnn`` entry is served.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import numpy as np
from ray import serve

from aircast import forecasts, tuning
from aircast.cache import redis_client
from aircast.influx import InfluxV1
from aircast.queries import History, histories
from aircast.records import AGGREGATE_WINDOW_S
from aircast.registry import ModelEntry, Registry
from aircast.settings import Settings

log = logging.getLogger(__name__)


def lookback_s(settings: Settings, window: int) -> int:
    """How far back a history is searched: twice its length, so a sensor that paused
    for a while still gets a (gappy) forecast; older data is considered gone."""
    return 2 * max(window, settings.train.window) * AGGREGATE_WINDOW_S


@serve.deployment(graceful_shutdown_wait_loop_s=tuning.SERVE_DRAIN_POLL_S)
class Forecaster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.influx = InfluxV1(settings.influx)
        self.redis = redis_client(settings.redis)
        self.registry = Registry(settings.train.registry_dir, self.redis, settings.redis.key_prefix)
        # The multiplexed loader is built here because its LRU size is a setting. It
        # wraps a plain function: Serve keeps its model cache as an attribute of the
        # decorated callable, which a bound method cannot hold.

        async def load(mid: str) -> Any:
            return await self._load_model(mid)

        self._model = serve.multiplexed(max_num_models_per_replica=settings.serve.model_cache_size)(
            load
        )

    async def _load_model(self, mid: str) -> Any:
        return await asyncio.to_thread(self._load_model_sync, mid)

    def _load_model_sync(self, mid: str) -> Any:
        from training.predict import load_model  # TensorFlow: only for rnn entries

        entry = forecasts.entry_for_model_id(self.registry.root, mid)
        path = self.registry.model_path(entry)
        if path is None:
            raise ValueError(f"registry entry {mid} has no model path")
        log.info("model loaded model_id=%s path=%s", mid, path)
        return load_model(path)

    async def _predict(
        self, entry: ModelEntry, history: np.ndarray, issued_at: int
    ) -> dict[int, float]:
        model = await self._model(forecasts.model_id(entry))
        from training.predict import predict

        return await asyncio.to_thread(predict, model, entry, history, issued_at)

    async def predict(
        self, entry_json: str, means: list[float], issued_at: int
    ) -> dict[int, float]:
        """Run a trained model on a history (the refresher's path)."""
        entry = ModelEntry.from_json(entry_json)
        return await self._predict(entry, np.asarray(means, dtype=np.float64), issued_at)

    async def forecast(self, sensor_id: int, measure: str) -> dict[str, Any] | None:
        """A fresh forecast of one series (None when it has no recent aggregates)."""
        result: dict[str, Any] | None = await self._batched((sensor_id, measure))
        return result

    @serve.batch(
        max_batch_size=tuning.FORECAST_MAX_BATCH, batch_wait_timeout_s=tuning.FORECAST_BATCH_WAIT_S
    )
    async def _batched(self, items: list[tuple[int, str]]) -> list[dict[str, Any] | None]:
        entries = await asyncio.to_thread(self._entries, items)
        found = await asyncio.to_thread(self._histories, items, entries)
        out: list[dict[str, Any] | None] = []
        for (sensor_id, measure), entry in zip(items, entries, strict=True):
            history = found.get((sensor_id, measure))
            if history is None:
                out.append(None)
                continue
            out.append(await self._compute(entry, history))
        fresh = [p for p in out if p is not None]
        if fresh:
            await asyncio.to_thread(forecasts.store, self.redis, self.influx, self.settings, fresh)
        return out

    async def _compute(self, entry: ModelEntry, history: History) -> dict[str, Any]:
        if entry.kind != "rnn":
            return forecasts.compute(entry, history)
        series = np.asarray(history.means, dtype=np.float64)[-entry.window :]
        try:
            # training.predict takes the start of the last history window.
            values = await self._predict(entry, series, history.last_window)
        except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError) as exc:
            log.warning("model unavailable model_id=%s error=%s", forecasts.model_id(entry), exc)
            return forecasts.compute(entry, history, None, failure=str(exc))
        return forecasts.compute(entry, history, values)

    def _entries(self, items: list[tuple[int, str]]) -> list[ModelEntry]:
        return [
            self.registry.latest(sid, measure)
            or forecasts.default_entry(self.settings, sid, measure)
            for sid, measure in items
        ]

    def _histories(
        self, items: list[tuple[int, str]], entries: list[ModelEntry]
    ) -> dict[tuple[int, str], History]:
        wanted: dict[str, list[int]] = defaultdict(list)
        windows: dict[str, int] = defaultdict(int)
        for (sid, measure), entry in zip(items, entries, strict=True):
            wanted[measure].append(sid)
            windows[measure] = max(windows[measure], forecasts.history_steps(entry))
        out: dict[tuple[int, str], History] = {}
        for measure, sids in wanted.items():
            found = histories(
                self.influx,
                self.settings.influx.aggregates_database,
                measure,
                windows[measure],
                lookback_s(self.settings, windows[measure]),
                sorted(set(sids)),
            )
            for sid, history in found.items():
                out[(sid, measure)] = history
        return out
